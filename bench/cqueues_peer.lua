-- cqueues_peer: the second peer of the `lua` suite, cqueues (Debian's
-- lua-cqueues, running under LuaJIT): the same work written as a cqueues
-- user would write it. Threads are coroutines on one controller; a join is
-- a condition variable the task signals when it ends.
local ok, cqueues = pcall(require, "cqueues")
if not ok then return nil end
local condition = require "cqueues.condition"

local M = { VERSION = cqueues.VERSION }

local current_cq

-- A task: a coroutine on the controller, and a handle to join it.
local Task = {}
Task.__index = Task

function M.spawn(fn, ...)
  local args = { n = select("#", ...), ... }
  local t = setmetatable({ done = false, cond = condition.new() }, Task)
  current_cq:wrap(function()
    t.result = fn(unpack(args, 1, args.n))
    t.done = true
    t.cond:signal()
  end)
  return t
end

function Task:join()
  while not self.done do self.cond:wait() end
  return self.result
end

-- A bounded channel of a condition-variable hand-off.
local Channel = {}
Channel.__index = Channel

function M.channel(cap)
  return setmetatable({ buf = {}, h = 1, t = 0, cap = cap, can_recv = condition.new(),
                        can_send = condition.new() }, Channel)
end

function Channel:send(v)
  while self.t - self.h + 1 >= self.cap do self.can_send:wait() end
  self.t = self.t + 1
  self.buf[self.t] = v
  self.can_recv:signal(1)
end

function Channel:recv()
  while self.t < self.h do self.can_recv:wait() end
  local v = self.buf[self.h]
  self.buf[self.h] = nil
  self.h = self.h + 1
  self.can_send:signal(1)
  return v
end

M.sleep = cqueues.sleep

-- Runs main as the controller's first task until every task has ended.
function M.run(main, ...)
  local args = { n = select("#", ...), ... }
  current_cq = cqueues.new()
  local result
  current_cq:wrap(function() result = main(unpack(args, 1, args.n)) end)
  assert(current_cq:loop())
  current_cq = nil
  return result
end

return M
