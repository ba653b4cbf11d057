-- single_vm: the peer of the `lua` suite. A minimal coroutine scheduler in
-- plain LuaJIT: one VM, one thread, a FIFO run queue; spawn, join and
-- channels. What knhk does, minus snapshots, threads and stealing.
local M = {}

local queue, head, tail = {}, 1, 0
local current

local function push(co)
  tail = tail + 1
  queue[tail] = co
end

local Task = {}
Task.__index = Task

function M.spawn(fn, ...)
  local args = { n = select("#", ...), ... }
  local task = setmetatable({ done = false, waiters = {} }, Task)
  task.co = coroutine.create(function()
    task.result = fn(unpack(args, 1, args.n))
    task.done = true
    for _, w in ipairs(task.waiters) do push(w) end
  end)
  push(task.co)
  return task
end

function Task:join()
  while not self.done do
    self.waiters[#self.waiters + 1] = current
    coroutine.yield()
  end
  return self.result
end

-- A bounded channel with waiting senders and receivers.
local Channel = {}
Channel.__index = Channel

function M.channel(cap)
  return setmetatable({ buf = {}, h = 1, t = 0, cap = cap, rw = {}, sw = {} }, Channel)
end

function Channel:send(v)
  while self.t - self.h + 1 >= self.cap do
    self.sw[#self.sw + 1] = current
    coroutine.yield()
  end
  self.t = self.t + 1
  self.buf[self.t] = v
  local w = table.remove(self.rw, 1)
  if w then push(w) end
end

function Channel:recv()
  while self.t < self.h do
    self.rw[#self.rw + 1] = current
    coroutine.yield()
  end
  local v = self.buf[self.h]
  self.buf[self.h] = nil
  self.h = self.h + 1
  local w = table.remove(self.sw, 1)
  if w then push(w) end
  return v
end

-- Runs main as a task until the run queue is empty.
function M.run(main, ...)
  local root = M.spawn(main, ...)
  while head <= tail do
    local co = queue[head]
    queue[head] = nil
    head = head + 1
    current = co
    local ok, err = coroutine.resume(co)
    if not ok then error(err, 0) end
  end
  head, tail, queue = 1, 0, {}
  return root.result
end

return M
