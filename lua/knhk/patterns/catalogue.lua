-- knhk.patterns.catalogue: the 43 workflow control-flow patterns of
-- Russell, ter Hofstede, van der Aalst and Mulyar, "Workflow Control-Flow
-- Patterns: A Revised View" (2006), with their ids, families, a one-line
-- description each, and the construct of this library that expresses them.
local check = require "knhk.check"

local M = {}

local BASIC = "basic control-flow"
local BRANCHING = "advanced branching and synchronization"
local MI = "multiple instances"
local STATE = "state-based"
local CANCEL = "cancellation and force completion"
local ITERATION = "iteration"
local TERMINATION = "termination"
local TRIGGER = "trigger"

M.families = { BASIC, BRANCHING, MI, STATE, CANCEL, ITERATION, TERMINATION, TRIGGER }

-- { id, name, family, construct, description }
local rows = {
  { 1, "Sequence", BASIC, "P.sequence{ a, b, ... }",
    "A step starts only after the step before it has completed." },
  { 2, "Parallel Split", BASIC, "P.parallel_split{ a, b, ... }",
    "One thread of control splits into branches that run concurrently." },
  { 3, "Synchronization", BASIC, "P.synchronization()",
    "Parallel branches converge; the next step starts once every one has completed." },
  { 4, "Exclusive Choice", BASIC, "P.exclusive_choice{ {when = c, run = s}, ..., otherwise = s }",
    "Exactly one branch is chosen, by a condition on the case data." },
  { 5, "Simple Merge", BASIC, "P.simple_merge()",
    "Alternative branches converge; the one that arrives continues, without waiting." },
  { 6, "Multi-Choice", BRANCHING, "P.multi_choice{ {when = c, run = s}, ... }",
    "Every branch whose condition holds is chosen; the chosen ones run concurrently." },
  { 7, "Structured Synchronizing Merge", BRANCHING, "P.synchronizing_merge()",
    "Waits for exactly the branches the split before it started, then continues once." },
  { 8, "Multi-Merge", BRANCHING, "P.multi_merge()",
    "Every branch that arrives continues on its own: what follows runs once per arrival." },
  { 9, "Structured Discriminator", BRANCHING, "P.discriminator()",
    "The first branch to arrive continues, later ones are absorbed; it resets once all arrived." },
  { 10, "Arbitrary Cycles", ITERATION, "P.graph{ start = 'a', a = { run = f, next = ... }, ... }",
    "Loops with several entry and exit points, written as a graph of named steps." },
  { 11, "Implicit Termination", TERMINATION, "how wf:execute(ctx) ends every case",
    "The case ends when nothing is left to do; no end step is needed." },
  { 12, "Multiple Instances without Synchronization", MI, "P.mi{ count = n, run = f, join = P.detached() }",
    "Starts instances of a task and continues at once; nothing waits for them but the case." },
  { 13, "Multiple Instances with a priori Design-Time Knowledge", MI, "P.mi{ count = 3, run = f }",
    "Starts a number of instances fixed in the definition and waits for all of them." },
  { 14, "Multiple Instances with a priori Run-Time Knowledge", MI,
    "P.mi{ items = 'var' or count = function(vars) ... end, run = f }",
    "Starts as many instances as the case data says when the step starts; waits for all." },
  { 15, "Multiple Instances without a priori Run-Time Knowledge", MI,
    "P.mi{ count = n, run = f, dynamic = true } and P.add_instance(mi, item)",
    "Instances may start more instances while they run; waits for every one of them." },
  { 16, "Deferred Choice", STATE, "P.deferred_choice{ {on = trigger, run = s}, ... }",
    "The first of several triggers (message, signal, timer) to happen decides the branch." },
  { 17, "Interleaved Parallel Routing", STATE, "P.interleaved_parallel{ P.sequence{ a, b }, c }",
    "Tasks run once each, in any order their partial order allows, never two at once." },
  { 18, "Milestone", STATE, "P.milestone(name, s) and P.when_milestone(name, s)",
    "A step may start only while another branch is at a given point, the milestone." },
  { 19, "Cancel Task", CANCEL, "P.cancel_task(name)",
    "A task is withdrawn: if it runs it is cancelled, and its thread of control ends there." },
  { 20, "Cancel Case", CANCEL, "P.cancel_case()",
    "The whole case is withdrawn: everything still running is cancelled; it ends cancelled." },
  { 21, "Structured Loop", ITERATION, "P.while_do(cond, s), P.repeat_until(s, cond)",
    "A step repeats while (tested before) or until (tested after) a condition holds." },
  { 22, "Recursion", ITERATION, "P.define(name, s) and P.call(name)",
    "A step invokes the block it is part of, until a choice stops it." },
  { 23, "Transient Trigger", TRIGGER, "P.transient_trigger(name), P.wait_for, P.signal",
    "A signal enables a step that waits for it; with nobody waiting it is lost." },
  { 24, "Persistent Trigger", TRIGGER, "P.persistent_trigger(name), P.wait_for, P.signal",
    "A signal is kept until a step takes it." },
  { 25, "Cancel Region", CANCEL, "P.region(name, s) and P.cancel_region(name)",
    "A set of steps is withdrawn at once; those running are cancelled." },
  { 26, "Cancel Multiple Instance Activity", CANCEL, "P.cancel_mi(name)",
    "A multiple-instance task is withdrawn: running instances are cancelled, none continues." },
  { 27, "Complete Multiple Instance Activity", CANCEL, "P.complete_mi(name)",
    "A multiple-instance task is forced to complete: running instances are cancelled, "
      .. "the completed ones count, and the case goes on." },
  { 28, "Blocking Discriminator", BRANCHING, "P.blocking_discriminator()",
    "The first branch to arrive continues; a branch arriving again before the reset waits." },
  { 29, "Cancelling Discriminator", BRANCHING, "P.cancelling_discriminator()",
    "The first branch to arrive continues and the other branches are cancelled." },
  { 30, "Structured Partial Join", BRANCHING, "P.partial_join(k)",
    "Continues once k of the n branches arrived; resets once all have arrived." },
  { 31, "Blocking Partial Join", BRANCHING, "P.blocking_partial_join(k)",
    "Continues once k of n arrived; a branch arriving again before the reset waits." },
  { 32, "Cancelling Partial Join", BRANCHING, "P.cancelling_partial_join(k)",
    "Continues once k of the n branches arrived and cancels the others." },
  { 33, "Generalised AND-Join", BRANCHING, "P.generalised_and_join()",
    "Continues when every branch has delivered; extra deliveries are kept for the next firing." },
  { 34, "Static Partial Join for Multiple Instances", MI, "P.mi{ ..., join = P.partial(k) }",
    "Continues once k of the n instances completed; the others still run before it resets." },
  { 35, "Cancelling Partial Join for Multiple Instances", MI,
    "P.mi{ ..., join = P.cancelling_partial(k) }",
    "Continues once k of the n instances completed and cancels the others." },
  { 36, "Dynamic Partial Join for Multiple Instances", MI,
    "P.mi{ ..., dynamic = true, join = P.complete_when(cond) }",
    "Instances may be added while others run; continues once a completion condition holds, "
      .. "after which none can be added." },
  { 37, "Local Synchronizing Merge", BRANCHING, "P.local_synchronizing_merge()",
    "Waits for the branches still active, known locally: a branch not taken sends a skip token." },
  { 38, "General Synchronizing Merge", BRANCHING, "P.general_synchronizing_merge()",
    "Waits until every branch has arrived or can no longer arrive, judged on the whole case." },
  { 39, "Critical Section", STATE, "P.critical_section(name, s)",
    "Regions that share a name never run at the same time, on any worker." },
  { 40, "Interleaved Routing", STATE, "P.interleaved{ a, b, c }",
    "Tasks run once each, in any order, never two at once." },
  { 41, "Thread Merge", BRANCHING, "P.thread_merge(n)",
    "Merges n threads of control of one branch into one." },
  { 42, "Thread Split", BRANCHING, "P.thread_split(n)",
    "Starts n threads of control in one branch; what follows runs in each." },
  { 43, "Explicit Termination", TERMINATION, "P.terminate()",
    "Reaching this step ends the case at once: everything still running is cancelled." },
}

local by_id, by_name = {}, {}
M.entries = {}
for i, r in ipairs(rows) do
  local e = { id = r[1], name = r[2], family = r[3], construct = r[4], description = r[5] }
  assert(e.id == i, "catalogue rows must be in id order")
  M.entries[i] = e
  by_id[e.id] = e
  by_name[e.name:lower()] = e
end

local function copy(e)
  return { id = e.id, name = e.name, family = e.family, construct = e.construct,
           description = e.description }
end

-- The entry for an id (1-43) or a name (case-insensitive), or nil, message.
function M.get(key)
  local e
  if type(key) == "number" then
    e = by_id[key]
    if not e then return nil, "unknown pattern id " .. tostring(key) .. " (ids are 1-43)" end
  elseif type(key) == "string" then
    e = by_name[key:lower()]
    if not e then return nil, "unknown pattern name '" .. key .. "'" end
  else
    check.error("bad argument #1 to 'get' (pattern id or name expected, got " .. type(key) .. ")", 2)
  end
  return copy(e)
end

-- Every entry, in id order (copies: callers may keep and change them).
function M.list()
  local out = {}
  for i, e in ipairs(M.entries) do out[i] = copy(e) end
  return out
end

-- "Sequence (1)": how messages and diagrams name a pattern.
function M.tag(id)
  local e = by_id[id]
  return e and (e.name .. " (" .. id .. ")") or ("pattern " .. tostring(id))
end

return M
