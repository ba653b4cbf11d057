-- knhk.sync: channels, semaphores, locks and events that hold across
-- workers (lua/src/klua_chan.c). Waiting on any of them is a checkpoint.
local core = require "knhk.core"
local codec = require "knhk.codec"
local check = require "knhk.check"
local R = require "knhk.runtime"

local select, unpack = select, unpack
local await = R.await
local DONE, CLOSED, BLOB, SLOW = R.DONE, R.CLOSED, R.BLOB, R.SLOW

local M = {}

local mts = core.metatables()

local function handle_kind(name, mt, kind)
  codec.register_handle(name, mt, function(h) return select(2, core.export(h)) end,
    function(n) return core.import(kind, n) end)
end

-- ------------------------------------------------------------- channels

local Channel = {}
M.Channel = Channel
mts.channel.__index = Channel
mts.channel.__len = core.chan_len
mts.channel.__tostring = function(ch)
  return "knhk.channel" .. (core.chan_closed(ch) and " (closed)" or "")
end
handle_kind("channel", mts.channel, 2)

function M.is_channel(v) return getmetatable(v) == mts.channel end

-- knhk.channel([capacity]) -> channel. capacity 0: a rendezvous (send
-- waits for a receiver); default 64. Values travel by snapshot.
function M.channel(capacity)
  if capacity == nil then capacity = 64 end
  check.arg("whole", capacity, 1, "channel", 2, 0)
  local ch = core.channel(capacity)
  if not ch then return nil, "out of memory" end
  return ch
end

local core_send_try, core_recv_try = core.send_try, core.recv_try

local function the_value_sent() return "the value sent" end

-- ch:send(value): waits for room; raises if the channel is closed. On a
-- rendezvous, returns once a receiver took the value; a send that raised
-- (cancelled, or the channel closed) did not happen.
function Channel:send(v)
  local st = await(core_send_try, self, v)
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

-- ch:recv() -> value, true; or nil, false once closed and drained.
function Channel:recv()
  local st, v = await(core_recv_try, self)
  if st == DONE then return v, true end
  if st == BLOB then return select(2, codec.decode(v)), true end
  return nil, false
end

-- ch:close(): no more sends; receivers get what is left, then nil, false.
Channel.close = core.chan_close
Channel.is_closed = core.chan_closed
Channel.capacity = core.chan_capacity

-- for v in ch:values() do ... end: until closed and drained (a nil value
-- sent also ends the loop, as in any Lua iterator).
function Channel:values()
  return function()
    local v = self:recv()
    return v
  end
end

-- ------------------------------------------------------------ semaphores

local Semaphore = {}
M.Semaphore = Semaphore
mts.semaphore.__index = Semaphore
mts.semaphore.__tostring = function(s) return "knhk.semaphore (" .. core.permits(s) .. " permits)" end
handle_kind("semaphore", mts.semaphore, 3)

-- knhk.semaphore(n) -> a semaphore with n permits.
function M.semaphore(n)
  check.arg("whole", n, 1, "semaphore", 2, 0)
  return core.semaphore(n)
end

function Semaphore:acquire() await(core.acquire_try, self) end
Semaphore.release = core.release
Semaphore.permits = core.permits

-- s:with(fn, ...) -> fn's results, holding a permit (released on error too).
function Semaphore:with(fn, ...)
  self:acquire()
  local res = R.pack(pcall(fn, ...))
  self:release()
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2, res.n)
end

-- knhk.lock() -> a lock: lock:lock(), lock:unlock(), lock:with(fn, ...).
local Lock = setmetatable({}, { __index = Semaphore })
M.Lock = Lock
mts.lock.__index = Lock
mts.lock.__tostring = function() return "knhk.lock" end
handle_kind("lock", mts.lock, 4)
function M.lock() return core.semaphore(1, true) end
Lock.lock = Semaphore.acquire
Lock.unlock = core.release

function M.is_lock(v) return getmetatable(v) == mts.lock end

function M.is_semaphore(v)
  local mt = getmetatable(v)
  return mt == mts.semaphore or mt == mts.lock
end

-- ---------------------------------------------------------------- events

local Event = {}
M.Event = Event
mts.event.__index = Event
mts.event.__tostring = function(e) return "knhk.event" .. (core.event_is_set(e) and " (set)" or "") end
handle_kind("event", mts.event, 5)

function M.is_event(v) return getmetatable(v) == mts.event end

-- knhk.event() -> event: ev:set(), ev:is_set(), ev:wait().
function M.event() return core.event() end
Event.set = core.event_set
Event.is_set = core.event_is_set
function Event:wait() await(core.event_wait_try, self) end

return M
