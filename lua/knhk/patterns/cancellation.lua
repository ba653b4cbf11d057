-- knhk.patterns.cancellation: cancellation and force completion (19, 20,
-- 25-27).
--
--   P.cancel_task(name)      19  withdraws the step `name`
--   P.cancel_case()          20  withdraws the whole case: it ends "cancelled"
--   P.region(name, s)        25  a region that can be withdrawn as a whole
--   P.cancel_region(name)    25  withdraws it
--   P.cancel_mi(name)        26  withdraws a multiple-instance step
--   P.complete_mi(name)      27  forces it to complete with what completed
--
-- Withdrawing a step cancels its cancel scope: whatever it runs (portable
-- tasks, child processes, nested steps) is cancelled and waited for, so
-- nothing is left running; its thread of control ends there (no token
-- leaves it). Tokens waiting to start it are removed too. Each of these
-- steps acts when it is reached, on the runs that exist then.
local S = require "knhk.patterns.step"
local engine = require "knhk.patterns.engine"

local M = {}

local function instant(kind, label_of, action, check)
  S.define(kind, {
    role = "node",
    compile = function(ctx, step, src)
      if step.target then
        ctx:reference(step, step.target, kind .. " '" .. step.target .. "'", check)
      end
      local node = ctx:node(step, { action = action, label = label_of(step), shape = "stop",
                                    named = false })
      ctx:link(src, node.id)
      return node.id
    end,
  })
end

local function must_be(kind, what)
  return function(target)
    if target.kind ~= kind then
      return "'" .. target.name .. "' is a " .. target.kind .. " step, not " .. what
    end
  end
end

local function target_ctor(kind, pattern)
  return function(name)
    S.check_name(name, kind, 1, 2)
    return S.new(kind, pattern, { target = name })
  end
end

-- 19
instant("cancel_task", function(s) return "cancel '" .. s.target .. "'" end,
  function(frame, node) engine.cancel_named(frame.case, node.step.target, frame) end)
M.cancel_task = target_ctor("cancel_task", 19)

-- 26
instant("cancel_mi", function(s) return "cancel instances of '" .. s.target .. "'" end,
  function(frame, node) engine.cancel_named(frame.case, node.step.target, frame) end,
  must_be("mi", "a multiple-instance step (P.mi)"))
M.cancel_mi = target_ctor("cancel_mi", 26)

-- 27: the instances still running are cancelled; the step then completes
-- with the results of those that completed.
instant("complete_mi", function(s) return "complete '" .. s.target .. "'" end,
  function(frame, node)
    local by = frame.case.named[node.step.target]
    if not by then return end
    for run in pairs(by) do
      run.forced, run.stopping = true, true
      if run.instances then run.instances:cancel() end
    end
  end,
  must_be("mi", "a multiple-instance step (P.mi)"))
M.complete_mi = target_ctor("complete_mi", 27)

-- 25
instant("cancel_region", function(s) return "cancel region '" .. s.target .. "'" end,
  function(frame, node) engine.cancel_named(frame.case, node.step.target, frame) end,
  must_be("region", "a region (P.region)"))
M.cancel_region = target_ctor("cancel_region", 25)

local function run_region(frame, node, run)
  local f = engine.run_frame(frame.case, node.subnets[1], frame, run)
  if not engine.completed(f) then return engine.WITHDRAWN end
end

S.define("region", {
  role = "node",
  compile = function(ctx, step, src)
    return ctx:composite(step, src, { step.body }, { activity = run_region,
      label = "region '" .. step.name .. "'" })
  end,
})

-- P.region(name, step): 25. A failure inside a region fails the case, and
-- like every failure cancels what runs in the region (and in the case).
function M.region(name, body)
  S.check_name(name, "region", 1, 2)
  body = S.as_step(body, "region", 2, "the region's step", 2)
  return S.new("region", 25, { name = name, body = body })
end

-- 20
instant("cancel_case", function() return "cancel case" end, function(frame, node)
  local case = frame.case
  case.cancel_step = node.name
  engine.stop(case)
end)

function M.cancel_case(t)
  return S.new("cancel_case", 20, { name = S.name_opt(t, "cancel_case", 1) })
end

return M
