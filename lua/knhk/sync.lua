-- knhk.sync: channels, semaphores, locks and events that hold across
-- workers (lua/src/klua_chan.c). Waiting on any of them is a checkpoint.
local core = require "knhk.core"
local codec = require "knhk.codec"
local check = require "knhk.check"
local R = require "knhk.runtime"

local select, unpack, getmetatable, type = select, unpack, debug.getmetatable, type
local await, waiter = R.await, R.waiter
local bad_self, method, self_method = check.bad_self, check.method, check.self_method
local DONE, CLOSED, BLOB, SLOW, CANCELLED = R.DONE, R.CLOSED, R.BLOB, R.SLOW, R.CANCELLED
local raise_cancelled = R.raise_cancelled

local M = {}

local mts = core.metatables()

local function handle_kind(name, mt, kind)
  codec.register_handle(name, mt, function(h) return select(2, core.export(h)) end,
    function(n, copy) return core.import(kind, n, copy) end)
end

-- ------------------------------------------------------------- channels

local Channel = check.no_missing_methods({}, "channel")
M.Channel = Channel
mts.channel.__index = Channel
check.name_kind(mts.channel, "channel")
local channel_mt = mts.channel
local channels = { [channel_mt] = true }
mts.channel.__len = core.chan_len
mts.channel.__tostring = function(ch)
  return "knhk.channel" .. (core.chan_closed(ch) and " (closed)" or "")
end
handle_kind("channel", mts.channel, 2)

function M.is_channel(v) return getmetatable(v) == mts.channel end

-- knhk.channel([capacity]) -> channel, or nil, message, code (out of
-- memory). capacity 0: a rendezvous (send waits for a receiver); default
-- 64; at most CHAN_MAX (its slots are made at once). Values travel by
-- snapshot.
local CHAN_MAX = core.CHAN_MAX
function M.channel(capacity)
  if capacity == nil then capacity = 64 end
  check.arg("whole", capacity, 1, "channel", 2, 0, CHAN_MAX)
  local ch, msg, code = core.channel(capacity)
  if not ch then return nil, msg, code end
  return ch
end

local core_send_try, core_recv_try = core.send_try, core.recv_try

local function the_value_sent() return "the value sent" end

-- ch:send(value): waits for room; raises if the channel is closed. On a
-- rendezvous, returns once a receiver took the value; a send that raised
-- (cancelled, or the channel closed) did not happen.
--
-- send and recv run await's loop themselves (a try that must wait
-- suspends the task from C; resumed, it returns nothing, and they look
-- again): one frame fewer under a task waiting on a channel, which then
-- keeps LuaJIT's first coroutine stack (see runtime.lua's waiter).
function Channel:send(v)
  if getmetatable(self) ~= channel_mt then bad_self("send", "channel", self) end
  local st, reason = core_send_try(self, v)
  while st == nil do st, reason = core_send_try(self, v) end
  if st == CANCELLED then raise_cancelled(reason) end
  if st == SLOW then -- a value the inline form cannot hold: the codec's
    local ok, snap = pcall(codec.encode, 1, the_value_sent, v)
    if not ok then
      if type(snap) == "table" and snap.knhk_refused then R.raise("send: " .. snap.message) end
      error(snap, 0)
    end
    st = await(core.send_blob_try, self, snap)
  end
  if st == CLOSED then R.raise("send: the channel is closed") end
end

-- A receive: value, true; or nil, false once closed and drained.
local function take(self)
  local st, v = core_recv_try(self)
  while st == nil do st, v = core_recv_try(self) end
  if st == DONE then return v, true end
  if st == BLOB then return select(2, codec.decode(v)), true end
  if st == CANCELLED then raise_cancelled(v) end
  return nil, false
end

-- ch:recv() -> value, true; or nil, false once closed and drained.
function Channel:recv()
  if getmetatable(self) ~= channel_mt then bad_self("recv", "channel", self) end
  return take(self)
end

-- ch:close(): no more sends; receivers get what is left, then nil, false.
Channel.close = self_method(channels, "channel", "close", core.chan_close)
Channel.is_closed = self_method(channels, "channel", "is_closed", core.chan_closed)
Channel.capacity = self_method(channels, "channel", "capacity", core.chan_capacity)

-- for v in ch:values() do ... end: until closed and drained (a nil value
-- sent also ends the loop, as in any Lua iterator).
function Channel:values()
  if getmetatable(self) ~= channel_mt then bad_self("values", "channel", self) end
  return function() return take(self) end -- (a tail call: a frame fewer under a wait)
end

-- -------------------------------------------------- receive from any

local core_recv_any_try = core.recv_any_try

-- The channels of a recv_any call: its list argument, or its arguments
-- as one. Every one is checked here, before any crosses into C; a wrong
-- one is named by its argument (or its place in the list), at the
-- caller's line.
local function refuse_channel(n, at, got)
  check.raise(string.format("bad argument #%d to 'recv_any' (channel expected%s, got %s)", n,
    at and string.format(" at [%d]", at) or "", got))
end

local function channel_list(n, first, ...)
  local list, from_table = first, false
  if n == 1 and type(first) == "table" and getmetatable(first) ~= channel_mt then
    from_table = true
  else
    list = { first, ... }
  end
  local count = from_table and #list or n
  if count == 0 then refuse_channel(1, nil, from_table and "an empty list" or "no value") end
  for i = 1, count do
    local ch = list[i]
    if getmetatable(ch) ~= channel_mt then
      if from_table then refuse_channel(1, i, check.what(ch)) end
      refuse_channel(i, nil, check.what(ch))
    end
  end
  return list
end

-- knhk.recv_any(ch1, ch2, ...) or knhk.recv_any{ ch1, ch2, ... } -> i, value:
-- waits for a value on any of the channels and takes exactly one, from
-- list[i] (never losing or repeating one, unlike knhk.select over
-- functions that recv); a closed and drained channel is passed over, and
-- once every one is, it returns nil. Buffered and rendezvous channels mix;
-- the look starts at a random one, so a busy channel does not starve the
-- others. A checkpoint, like recv.
function M.recv_any(...)
  local list = channel_list(select("#", ...), ...)
  local st, i, v = core_recv_any_try(list)
  while st == nil do st, i, v = core_recv_any_try(list) end
  if st == DONE then return i, v end
  if st == BLOB then return i, select(2, codec.decode(v)) end
  if st == CANCELLED then raise_cancelled(i) end
  return nil
end

-- ------------------------------------------------------------ semaphores

local Semaphore = check.no_missing_methods({}, "semaphore")
M.Semaphore = Semaphore
mts.semaphore.__index = Semaphore
check.name_kind(mts.semaphore, "semaphore")
-- a lock is a semaphore of one permit: the semaphore's methods take either
local semaphores = { [mts.semaphore] = true, [mts.lock] = true }
mts.semaphore.__tostring = function(s) return "knhk.semaphore (" .. core.permits(s) .. " permits)" end
handle_kind("semaphore", mts.semaphore, 3)

-- knhk.semaphore(n) -> a semaphore with n permits.
function M.semaphore(n)
  check.arg("whole", n, 1, "semaphore", 2, 0)
  return core.semaphore(n)
end

local acquire = waiter(core.acquire_try)

-- with(fn, ...) -> fn's results, holding a permit (released on error too).
local function with(s, fn, ...)
  if type(fn) ~= "function" and not check.callable(fn) then
    check.refuse(1, "with", "function or callable object", fn)
  end
  acquire(s)
  local res = R.pack(pcall(fn, ...))
  core.release(s)
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2, res.n)
end

-- The methods of semaphores, or of locks: each checks its self.
local function semaphore_methods(class, accepts, kind, names)
  for name, f in pairs({ acquire = acquire, release = core.release, permits = core.permits,
                         with = with, lock = acquire, unlock = core.release }) do
    if names[name] then
      class[name] = (name == "with" and method or self_method)(accepts, kind, name, f)
    end
  end
  return class
end

semaphore_methods(Semaphore, semaphores, "semaphore",
  { acquire = true, release = true, permits = true, with = true })

-- knhk.lock() -> a lock: lock:lock(), lock:unlock(), lock:with(fn, ...)
-- (and a semaphore's acquire, release, permits).
local Lock = check.no_missing_methods({}, "lock")
M.Lock = Lock
mts.lock.__index = Lock
mts.lock.__tostring = function() return "knhk.lock" end
check.name_kind(mts.lock, "lock")
handle_kind("lock", mts.lock, 4)
function M.lock() return core.semaphore(1, true) end
semaphore_methods(Lock, { [mts.lock] = true }, "lock",
  { acquire = true, release = true, permits = true, with = true, lock = true, unlock = true })

function M.is_lock(v) return getmetatable(v) == mts.lock end

function M.is_semaphore(v)
  local mt = getmetatable(v)
  return mt == mts.semaphore or mt == mts.lock
end

-- ---------------------------------------------------------------- events

local Event = check.no_missing_methods({}, "event")
M.Event = Event
mts.event.__index = Event
check.name_kind(mts.event, "event")
local events = { [mts.event] = true }
mts.event.__tostring = function(e) return "knhk.event" .. (core.event_is_set(e) and " (set)" or "") end
handle_kind("event", mts.event, 5)

function M.is_event(v) return getmetatable(v) == mts.event end

-- knhk.event() -> event: ev:set(), ev:is_set(), ev:wait().
function M.event() return core.event() end
Event.set = self_method(events, "event", "set", core.event_set)
Event.is_set = self_method(events, "event", "is_set", core.event_is_set)
Event.wait = self_method(events, "event", "wait", waiter(core.event_wait_try))

return M
