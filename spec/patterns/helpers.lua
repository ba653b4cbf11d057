-- Helpers for the pattern specs: running, reading traces, observing a case
-- as it runs (through its telemetry handle), and spreading instances over
-- workers.
local knhk = require "knhk"
local P = require "knhk.patterns"

local H = { knhk = knhk, P = P }

-- Runs fn in the runtime. A spec whose case hangs (a join that never
-- fires) fails after 20 s instead of waiting for ctest's timeout.
function H.run(fn, workers)
  return knhk.run(function() return knhk.fail_after(20, fn) end, { workers = workers or 2 })
end

-- Runs fn in the runtime under the virtual clock: timers and steps that
-- take time cost no real time, and knhk.now() says exactly when things
-- happened. A case that hangs fails at once, at a virtual year.
function H.virtual(fn, workers)
  return knhk.run(function() return knhk.fail_after(365 * 24 * 3600, fn) end,
    { workers = workers or 2, clock = "virtual" })
end

-- How many times `step` had `event` ("completed", "withdrawn", ...).
function H.count(result, step, event)
  local n = 0
  for _, t in ipairs(result.trace) do
    if t.step == step and t.event == (event or "completed") then n = n + 1 end
  end
  return n
end

-- Where in the trace the nth `event` of `step` is (nil if it never was).
function H.pos(result, step, event, nth)
  local n = 0
  for i, t in ipairs(result.trace) do
    if t.step == step and t.event == (event or "completed") then
      n = n + 1
      if n == (nth or 1) then return i end
    end
  end
  return nil
end

-- The trace as "step:event" strings, for messages.
function H.events(result)
  local out = {}
  for i, t in ipairs(result.trace) do out[i] = t.step .. ":" .. t.event end
  return table.concat(out, " ")
end

-- The number of distinct values in a list.
function H.distinct(list)
  local seen, n = {}, 0
  for _, v in ipairs(list) do
    if not seen[v] then
      seen[v] = true
      n = n + 1
    end
  end
  return n
end

-- A telemetry handle that records events and hands out knhk events set
-- when a step has started or ended a number of times: specs wait on them
-- to order what a case does, instead of sleeping. obs:after(step, n
-- [, outcome]) (outcome "completed" by default; "started" for starts).
function H.observer()
  local obs = { events = {}, counts = {}, waiting = {} }
  function obs:event(name, a)
    self.events[#self.events + 1] = { name = name, attrs = a }
    local what
    if name == "knhk.workflow.step.start" then what = "started"
    elseif name == "knhk.workflow.step.end" then what = a.outcome end
    if not what then return end
    local key = a.step .. "\0" .. what
    local n = (self.counts[key] or 0) + 1
    self.counts[key] = n
    local w = self.waiting[key]
    if w and w[n] then w[n]:set() end
  end
  function obs:after(step, n, outcome)
    local key = step .. "\0" .. (outcome or "completed")
    self.waiting[key] = self.waiting[key] or {}
    local ev = self.waiting[key][n or 1]
    if not ev then
      ev = knhk.event()
      self.waiting[key][n or 1] = ev
      if (self.counts[key] or 0) >= (n or 1) then ev:set() end
    end
    return ev
  end
  return obs
end

-- A task body that stands in for CPU work spread over `workers` workers:
-- it marks its worker, then computes without yielding until every worker
-- has been marked (so the instances not started yet stay queued for the
-- other workers to steal), giving up after a bounded amount of work.
-- Returns its worker.
function H.spreader(workers)
  local marks = {}
  for w = 1, workers do marks[w] = knhk.event() end
  return function()
    local me = knhk.current().worker
    marks[me + 1]:set()
    local x, rounds = 0, 0
    while rounds < 20000 do
      local all = true
      for _, ev in ipairs(marks) do
        if not ev:is_set() then
          all = false
          break
        end
      end
      if all then break end
      for j = 1, 10000 do x = x + j end
      rounds = rounds + 1
    end
    return me
  end
end

-- A cell shared by portable tasks (a one-slot channel under a lock) that
-- counts how many are inside a region at once: enter(), leave(), peak().
function H.overlap_counter()
  local cell, lock = knhk.channel(1), knhk.lock()
  cell:send({ now = 0, max = 0, entries = 0 })
  local c = {}
  function c.bump(d)
    lock:with(function()
      local v = cell:recv()
      v.now = v.now + d
      if d > 0 then v.entries = v.entries + 1 end
      if v.now > v.max then v.max = v.now end
      cell:send(v)
    end)
  end
  function c.read()
    local v
    lock:with(function()
      v = cell:recv()
      cell:send(v)
    end)
    return v
  end
  return c
end

-- The number of live tasks (to check that a case left none running).
function H.live() return #knhk.tasks() end

-- A barrier for portable tasks: b.arrive() counts one; b.event is set
-- once n have arrived (a task cancelled before it started runs no cleanup,
-- so specs of cancellation first wait until what they cancel is running).
function H.barrier(n)
  local cell, lock, ev = knhk.channel(1), knhk.lock(), knhk.event()
  cell:send(0)
  local b = { event = ev }
  function b.arrive()
    lock:with(function()
      local c = cell:recv() + 1
      cell:send(c)
      if c >= n then ev:set() end
    end)
  end
  return b
end

-- A body that arrives at `barrier` (if any), waits until cancelled, and
-- reports its cleanup on `ch` (in a shielded scope: a cancelled task's own
-- checkpoints raise again).
function H.blocker(ch, label, barrier)
  local arrive = barrier and barrier.arrive
  return function()
    if arrive then arrive() end
    local ok, err = pcall(function() knhk.event():wait() end)
    knhk.cancel_scope(function() ch:send(label or "cleaned up") end, { shield = true })
    if not ok then error(err, 0) end
  end
end

-- Closes a channel and returns what was left in it. (Not `#ch`: LuaJIT
-- without 5.2 compatibility ignores __len on tables, so #ch is always 0.)
function H.drain(ch)
  ch:close()
  local out = {}
  while true do
    local v, ok = ch:recv()
    if not ok then return out end
    out[#out + 1] = v
  end
end

return H
