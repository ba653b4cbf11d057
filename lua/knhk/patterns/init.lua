-- knhk.patterns: the 43 workflow control-flow patterns (Russell, ter
-- Hofstede, van der Aalst, Mulyar 2006) as composable Lua steps, built on
-- the public knhk API (nurseries, cancel scopes, tokens, channels, events).
--
--   local P = require "knhk.patterns"
--   local wf = P.workflow(P.sequence{
--     P.parallel_split{ check_stock, check_credit },
--     P.synchronization(),
--     P.exclusive_choice{ { when = "total > 1000", run = review }, otherwise = approve },
--     P.simple_merge(),
--     ship,
--   })
--   local result = wf:execute{ vars = { total = 250 } }   -- inside knhk.run
--   print(result.status, result.vars.shipped)
--   print(wf:to_mermaid())
--
-- A workflow is built first (P.workflow, or implicitly by a step's
-- :execute): the definition is checked as a whole and refused with a clear
-- error before anything runs. See README.md in this folder for the
-- catalogue, the rule for case data, and the mapping to the KNHK engine.
local catalogue = require "knhk.patterns.catalogue"
local workflow = require "knhk.patterns.workflow"
local check = require "knhk.check"

local P = { _VERSION = "knhk.patterns 0.1.0" }

-- one module per family of the catalogue; these are their constructors
local public = {
  basic = { "task", "skip", "sequence", "parallel_split", "synchronization", "exclusive_choice",
            "simple_merge" },
  branching = { "multi_choice", "synchronizing_merge", "multi_merge", "discriminator",
                "blocking_discriminator", "cancelling_discriminator", "partial_join",
                "blocking_partial_join", "cancelling_partial_join", "generalised_and_join",
                "local_synchronizing_merge", "general_synchronizing_merge", "thread_merge",
                "thread_split" },
  multiple = { "mi", "all", "detached", "partial", "cancelling_partial", "complete_when",
               "add_instance" },
  state = { "deferred_choice", "interleaved_parallel", "interleaved", "milestone",
            "when_milestone", "critical_section" },
  cancellation = { "cancel_task", "cancel_case", "region", "cancel_region", "cancel_mi",
                   "complete_mi" },
  iteration = { "while_do", "repeat_until", "define", "call", "graph" },
  termination = { "terminate" },
  triggers = { "transient_trigger", "persistent_trigger", "wait_for", "signal", "timer" },
}
for family, names in pairs(public) do
  local mod = require("knhk.patterns." .. family)
  for _, k in ipairs(names) do P[k] = assert(mod[k], k) end
end

-- P.workflow(step [, { name = }]) -> a built workflow: wf:execute(ctx),
-- wf:to_mermaid(), wf:to_dot(). `name` also lets P.call(name) recurse.
function P.workflow(step, opts)
  local wf = workflow.build(step, opts, 2) -- not a tail call: errors name the caller's line
  return wf
end

-- P.execute(wf or step, ctx) -> result (same as wf:execute(ctx)).
function P.execute(wf, ctx)
  if not workflow.is_workflow(wf) then wf = workflow.build(wf, nil, 2) end
  local result = wf:execute(ctx)
  return result
end

-- P.get(id or name) -> { id, name, family, construct, description }, or
-- nil, message for an unknown one. P.list() -> every entry, in id order.
P.get = catalogue.get
P.list = catalogue.list
P.families = catalogue.families

-- P.make(id or name, ...) -> the step for a pattern given by its catalogue
-- id or name (for definitions kept as data); the arguments are those of
-- its constructor (see each entry's `construct`).
local makers = {
  [1] = "sequence", [2] = "parallel_split", [3] = "synchronization", [4] = "exclusive_choice",
  [5] = "simple_merge", [6] = "multi_choice", [7] = "synchronizing_merge", [8] = "multi_merge",
  [9] = "discriminator", [10] = "graph", [16] = "deferred_choice",
  [17] = "interleaved_parallel", [18] = "milestone", [19] = "cancel_task", [20] = "cancel_case",
  [21] = "while_do", [22] = "define", [23] = "transient_trigger", [24] = "persistent_trigger",
  [25] = "region", [26] = "cancel_mi", [27] = "complete_mi", [28] = "blocking_discriminator",
  [29] = "cancelling_discriminator", [30] = "partial_join", [31] = "blocking_partial_join",
  [32] = "cancelling_partial_join", [33] = "generalised_and_join", [37] = "local_synchronizing_merge",
  [38] = "general_synchronizing_merge", [39] = "critical_section", [40] = "interleaved",
  [41] = "thread_merge", [42] = "thread_split", [43] = "terminate",
}
-- multiple instances: one constructor, the pattern chosen by its options
local mi_options = {
  [12] = function(t) t.join = P.detached() end,
  [13] = function(t)
    if type(t.count) ~= "number" then
      check.error("bad argument #2 to 'make' (pattern 13 needs count = a number, got "
        .. type(t.count) .. ")", 3)
    end
  end,
  [14] = function() end,
  [15] = function(t) t.dynamic = true end,
  [34] = function(t) t.join = P.partial(t.k or 0) end,
  [35] = function(t) t.join = P.cancelling_partial(t.k or 0) end,
  [36] = function(t) t.dynamic = true end,
}

function P.make(key, ...)
  local e, msg = catalogue.get(key)
  if not e then check.error("bad argument #1 to 'make' (" .. msg .. ")", 2) end
  if mi_options[e.id] then
    local t = ...
    if type(t) ~= "table" then
      check.error("bad argument #2 to 'make' (table of P.mi options expected, got " .. type(t) .. ")", 2)
    end
    local copy = {}
    for k, v in pairs(t) do copy[k] = v end
    mi_options[e.id](copy)
    copy.k = nil
    return P.mi(copy)
  end
  local ctor = makers[e.id]
  if not ctor then
    check.error("bad argument #1 to 'make' (pattern " .. e.id .. " (" .. e.name
      .. ") has no step of its own; it is " .. e.construct .. ")", 2)
  end
  return P[ctor](...)
end

return P
