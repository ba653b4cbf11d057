-- knhk.sync: channels, semaphores, locks and events that hold across
-- workers. Waiting on any of them is a checkpoint (cancellable).
local K = require "knhk.ffi"
local R = require "knhk.runtime"
local codec = require "knhk.codec"
local check = require "knhk.check"

local ffi, C = K.ffi, K.C
local co_yield = coroutine.yield
local W_RECV, W_SEND, W_ACK = 0, 1, 2

local M = {}

-- Waits until try() succeeds (returns true, ...). `list` is the waiter list
-- of `s` to queue on between tries.
local function wait_for(where, s, list, try)
  local t = R.in_task(where, 3)
  local ptr = t.ptr
  while true do
    local token = R.token_of(t)
    if C.knhk_token_is_cancelled(token) ~= 0 then R.raise_cancelled(t, token) end
    local ok, a, b = try()
    if ok then return a, b end
    if C.klua_wait_begin(ptr, token) ~= 0 then R.raise_cancelled(t, token) end
    local w = C.klua_sync_wait(s, ptr, list)
    if w == nil then
      C.klua_wait_end(ptr)
      error(where .. ": out of memory", 3)
    end
    ok, a, b = try()
    if not ok then co_yield() end
    C.klua_wait_end(ptr)
    if not ok then ok, a, b = try() end
    C.klua_sync_unwait(s, w, ok and 1 or 0)
    if ok then return a, b end
  end
end

local function sync_handle(name, mt, new_ptr)
  codec.register_handle(name, mt, function(h)
    C.klua_sync_retain(h.ptr)
    return tonumber(ffi.cast("uintptr_t", h.ptr))
  end, function(n)
    return setmetatable({ ptr = ffi.gc(ffi.cast("klua_sync_t*", n), C.klua_sync_release) }, mt)
  end)
  return function(...)
    local p = new_ptr(...)
    if p == nil then return nil end
    return setmetatable({ ptr = ffi.gc(p, C.klua_sync_release) }, mt)
  end
end

-- ------------------------------------------------------------- channels

local Channel = {}
Channel.__index = Channel
M.Channel = Channel

-- A channel handle is a cdata (not a table), so that #ch reaches __len:
-- this LuaJIT honours __len only on userdata and cdata.
Channel.__gc = function(h) C.klua_sync_release(h.ptr) end
local ChannelHandle = ffi.metatype("klua_chan_handle_t", Channel)
codec.register_handle("channel", ChannelHandle, function(h)
  C.klua_sync_retain(h.ptr)
  return tonumber(ffi.cast("uintptr_t", h.ptr))
end, function(n) return ChannelHandle(ffi.cast("klua_sync_t*", n)) end)

-- Whether v is a channel handle (its metatable is not visible: a cdata).
function M.is_channel(v) return ffi.istype(ChannelHandle, v) end

local function new_channel(cap)
  local p = C.klua_chan_new(cap)
  if p == nil then return nil end
  return ChannelHandle(p)
end

-- knhk.channel([capacity]) -> channel. capacity 0: a rendezvous (send waits
-- for a receiver); default 64. Values travel by snapshot.
function M.channel(capacity)
  if capacity == nil then capacity = 64 end
  check.arg("whole", capacity, 1, "channel", 2, 0)
  local ch = new_channel(capacity)
  if not ch then return nil, "out of memory" end
  return ch
end

local seq = ffi.new("uint64_t[1]")

-- ch:send(value): waits for room; raises if the channel is closed.
function Channel:send(v)
  local ok, snap = pcall(codec.encode, 1, function() return "the value sent" end, v)
  if not ok then
    if type(snap) == "table" and snap.knhk_refused then error("send: " .. snap.message, 2) end
    error(snap, 0)
  end
  local p = self.ptr
  local my_seq
  wait_for("send", p, W_SEND, function()
    local rc = C.klua_chan_send(p, snap, #snap, seq)
    if rc == 0 then
      my_seq = seq[0]
      return true
    end
    if rc == K.ECLOSED then error("send: the channel is closed", 4) end
    return false
  end)
  if C.klua_chan_capacity(p) == 0 then -- a rendezvous: until it has been received
    local closed = false
    local ok, err = pcall(wait_for, "send", p, W_ACK, function()
      if C.klua_chan_taken(p) >= my_seq then return true end
      closed = C.klua_chan_closed(p) ~= 0
      return closed
    end)
    -- A send that was cancelled, or whose channel closed, did not happen:
    -- its value is taken back, unless a receiver got it meanwhile.
    if (closed or not ok) and C.klua_chan_withdraw(p, my_seq) == 1 then
      if ok then error("send: the channel is closed", 2) end
      error(err, 0)
    end
  end
end

local out_p, out_len = ffi.new("char*[1]"), ffi.new("size_t[1]")

-- ch:recv() -> value, true; or nil, false once closed and drained.
function Channel:recv()
  local p = self.ptr
  return wait_for("recv", p, W_RECV, function()
    local rc = C.klua_chan_recv(p, out_p, out_len)
    if rc == 0 then
      local bytes = out_p[0]
      local ok, _, v = pcall(codec.decode, bytes, out_len[0])
      C.klua_free(bytes)
      if not ok then error(_, 0) end
      return true, v, true
    end
    if rc == K.ECLOSED then return true, nil, false end
    return false
  end)
end

-- ch:close(): no more sends; receivers get what is left, then nil, false.
function Channel:close() return C.klua_chan_close(self.ptr) == 0 end
function Channel:is_closed() return C.klua_chan_closed(self.ptr) ~= 0 end
function Channel:__len() return tonumber(C.klua_chan_count(self.ptr)) end
function Channel:__tostring() return "knhk.channel" end

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
Semaphore.__index = Semaphore
M.Semaphore = Semaphore

local new_sem = sync_handle("semaphore", Semaphore, function(n) return C.klua_sem_new(n) end)

-- knhk.semaphore(n) -> semaphore with n permits.
function M.semaphore(n)
  check.arg("whole", n, 1, "semaphore", 2, 0)
  return new_sem(n)
end

function Semaphore:acquire()
  local p = self.ptr
  wait_for("acquire", p, W_RECV, function() return C.klua_sem_acquire(p) == 0 end)
end

function Semaphore:release() C.klua_sem_release(self.ptr) end
function Semaphore:permits() return tonumber(C.klua_sem_permits(self.ptr)) end

-- s:with(fn, ...) -> fn's results, holding a permit (released on error too).
function Semaphore:with(fn, ...)
  self:acquire()
  local res = { n = select("#", ...), pcall(fn, ...) }
  self:release()
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2, table.maxn(res))
end

-- knhk.lock() -> a lock: lock:lock(), lock:unlock(), lock:with(fn, ...).
local Lock = setmetatable({}, { __index = Semaphore })
Lock.__index = Lock
M.Lock = Lock
local new_lock = sync_handle("lock", Lock, function() return C.klua_sem_new(1) end)
function M.lock() return new_lock() end
Lock.lock = Semaphore.acquire
Lock.unlock = Semaphore.release

-- ---------------------------------------------------------------- events

local Event = {}
Event.__index = Event
M.Event = Event
local new_event = sync_handle("event", Event, function() return C.klua_event_new() end)

-- knhk.event() -> event: ev:set(), ev:is_set(), ev:wait().
function M.event() return new_event() end
function Event:set() C.klua_event_set(self.ptr) end
function Event:is_set() return C.klua_event_is_set(self.ptr) ~= 0 end
function Event:wait()
  local p = self.ptr
  wait_for("wait", p, W_RECV, function() return C.klua_event_is_set(p) ~= 0 end)
end

return M
