-- Every refusal: a definition that cannot run is refused when it is
-- written (a step's own arguments) or when the workflow is built (what
-- needs the whole definition), before anything runs, with a message that
-- says what was expected, what was given, and where. "HERE" stands for the
-- file:line of this spec where the step was written.
local H = require "patterns.helpers"
local knhk, P = H.knhk, H.P

local f, g, h = function() end, function() end, function() end

-- Callable objects that cannot travel to the worker that runs a task: a
-- userdata, and a table of a class knhk.codec does not know.
local stays = newproxy(true)
getmetatable(stays).__call = function() end
local unknown = setmetatable({}, { __call = function() end })
local UNKNOWN_CLASS = "a table with a metatable knhk does not know (register its metatable with "
  .. "knhk.codec.register_class)"

local function message(err)
  return (tostring(err):gsub("^[^:]*:%d+: ", ""):gsub("refusals_spec%.lua:%d+", "HERE"))
end

local refusals = {
  -- a step's own arguments
  { "an empty sequence", function() return P.sequence{} end,
    "bad argument #1 to 'sequence' (a sequence needs at least one step)" },
  { "a step that is not a step", function() return P.sequence{ 42 } end,
    "bad argument #1 to 'sequence' (step 1 must be a function, a callable object or a step, got number)" },
  { "a branch that is not a step", function() return P.parallel_split{ f, "x" } end,
    "bad argument #1 to 'parallel_split' (branch 2 must be a function, a callable object or a step, got string)" },
  { "a missing branch function", function() return P.exclusive_choice{ { when = "x > 1" } } end,
    "bad argument #1 to 'exclusive_choice' (branch 1 has no 'run' (a function or a step; "
      .. "P.skip() for nothing))" },
  { "a condition that is not Lua", function() return P.exclusive_choice{ { when = "x >", run = f } } end,
    "bad argument #1 to 'exclusive_choice' (branch 1: 'when' 'x >' is not a Lua expression: "
      .. "condition 'x >':1: unexpected symbol near '<eof>')" }, -- as written: no ')' of ours
  { "two expressions for one condition", function() return P.exclusive_choice{ { when = "a, b", run = f } } end,
    "bad argument #1 to 'exclusive_choice' (branch 1: 'when' 'a, b' is not a Lua expression: "
      .. "it is not one expression)" },
  { "a non-callable task", function() return P.task("t", 42) end,
    "bad argument #2 to 'task' (function or callable object expected for the task, got number)" },
  { "k > n in a partial join of instances", function() return P.mi{ count = 3, run = f, join = P.partial(5) } end,
    "bad argument #1 to 'mi' (partial join needs 5 of 3 instances to complete; k must be at most count)" },
  { "instances that are not a function", function() return P.mi{ count = 3, run = {} } end,
    "bad argument #1 to 'mi' (run must be a function or callable object (each instance runs it as a "
      .. "portable task), got table)" },
  { "a task that cannot travel", function() return P.task("t", stays) end,
    "bad argument #2 to 'task' (the task function cannot travel to the worker that runs it: it is a userdata)" },
  { "a task of a class that cannot travel", function() return P.task{ name = "t", run = unknown } end,
    "bad argument #1 to 'task' (the task function cannot travel to the worker that runs it: it is "
      .. UNKNOWN_CLASS .. ")" },
  { "a step that cannot travel", function() return P.sequence{ f, stays } end,
    "bad argument #1 to 'sequence' (step 2 cannot travel to the worker that runs it: it is a userdata)" },
  { "a branch that cannot travel", function() return P.parallel_split{ f, unknown } end,
    "bad argument #1 to 'parallel_split' (branch 2 cannot travel to the worker that runs it: it is "
      .. UNKNOWN_CLASS .. ")" },
  { "instances that cannot travel", function() return P.mi{ count = 2, run = stays } end,
    "bad argument #1 to 'mi' (run cannot travel to the worker that runs it: it is a userdata)" },
  { "dynamic instances that cannot travel", function() return P.mi{ count = 2, run = unknown, dynamic = true } end,
    "bad argument #1 to 'mi' (run cannot travel to the worker that runs it: it is " .. UNKNOWN_CLASS .. ")" },
  { "a count written as a string", function() return P.mi{ count = "3", run = f } end,
    "bad argument #1 to 'mi' (count must be a whole number >= 0, got string \"3\")" },
  { "instances without a number", function() return P.mi{ run = f } end,
    "bad argument #1 to 'mi' (count (a number or a function of the case variables) or items expected)" },
  { "a completion condition on static instances", function()
      return P.mi{ count = 2, run = f, join = P.complete_when("true") } end,
    "bad argument #1 to 'mi' (complete_when is the dynamic partial join (36): add dynamic = true, "
      .. "or use P.partial(k) (34))" },
  { "results of detached instances", function() return P.mi{ count = 2, run = f, join = P.detached(), into = "o" } end,
    "bad argument #1 to 'mi' (into = 'o' would never be filled: with join = P.detached() the step "
      .. "completes at once, before any instance has a result; drop into, or wait for the instances "
      .. "with P.all() or P.partial(k))" },
  { "a partial join of 0", function() return P.partial_join(0) end,
    "bad argument #1 to 'partial_join' (k must be a whole number >= 1, got 0)" },
  { "a fraction of a thread", function() return P.thread_split(1.5) end,
    "bad argument #1 to 'thread_split' (n must be a whole number >= 1, got 1.5)" },
  { "a number of threads written as a string", function() return P.thread_split("2") end,
    "bad argument #1 to 'thread_split' (n must be a whole number >= 1, got string \"2\")" },
  { "a deferred choice on something that cannot fire", function()
      return P.deferred_choice{ { on = 5, run = f }, { on = P.timer(1), run = g } } end,
    "bad argument #1 to 'deferred_choice' (branch 1: 'on' must be a trigger, a timer, a channel, "
      .. "an event or a token, got number)" },
  { "a deferred choice of one", function() return P.deferred_choice{ { on = P.timer(1), run = g } } end,
    "bad argument #1 to 'deferred_choice' (a deferred choice needs at least 2 branches)" },
  { "interleaved routing of a sequence", function() return P.interleaved{ P.sequence{ f, g } } end,
    "bad argument #1 to 'interleaved' (entry 1 is a sequence step; interleaved routing (40) takes "
      .. "tasks (for ordered groups use interleaved_parallel (17)))" },
  { "a critical section's lock that is not a lock", function() return P.critical_section("x", f, { lock = 1 }) end,
    "bad argument #3 to 'critical_section' (lock must be a knhk.lock(), got number)" },
  { "an unknown pattern id", function() return P.make(99) end,
    "bad argument #1 to 'make' (unknown pattern id 99 (ids are 1-43))" },
  { "a pattern that is not a step", function() return P.make(11) end,
    "bad argument #1 to 'make' (pattern 11 (Implicit Termination) has no step of its own; it is "
      .. "how wf:execute(ctx) ends every case)" },
  { "a graph node that is not a table", function() return P.graph{ start = "a", nodes = { a = 1 } } end,
    "bad argument #1 to 'graph' (node 'a' must be a table { run =, join =, next = }, got number)" },
  { "a graph without a start", function() return P.graph{ nodes = {} } end,
    "bad argument #1 to 'graph' (start (the name of the first node) expected, got nil)" },
  { "a signal to a name", function() return P.signal("name") end,
    "bad argument #1 to 'signal' (trigger (P.transient_trigger or P.persistent_trigger) expected, got string)" },
  { "a negative timer", function() return P.timer(-1) end,
    "bad argument #1 to 'timer' (seconds must be a number >= 0, got -1)" },
  { "a workflow of a number", function() return P.workflow(42) end,
    "bad argument #1 to 'workflow' (step expected, got number)" },
  { "a workflow name that is not a string", function() return P.workflow(P.task("t", f), { name = 5 }) end,
    "bad argument #2 to 'workflow' (name (a non-empty string) expected, got number)" },

  -- the whole definition
  { "a join with no split before it", function() return P.workflow(P.sequence{ f, P.synchronization() }) end,
    "workflow: synchronization (3) at HERE: it does not follow a split; a join closes the split "
      .. "just before it in a sequence (step 2 of sequence (1) at HERE)" },
  { "a join alone", function() return P.workflow(P.synchronization()) end,
    "workflow: synchronization (3) at HERE: a join closes the split just before it in a sequence; "
      .. "it cannot stand alone" },
  { "synchronization after a choice", function()
      return P.workflow(P.sequence{ P.exclusive_choice{ { when = "true", run = f } }, P.synchronization() }) end,
    "workflow: synchronization (3) at HERE: it cannot close exclusive_choice (4): it waits for every "
      .. "branch, and only a parallel split starts them all (after a choice use simple_merge (5) or "
      .. "synchronizing_merge (7))" },
  { "a simple merge after a parallel split", function()
      return P.workflow(P.sequence{ P.parallel_split{ f, g }, P.simple_merge() }) end,
    "workflow: simple_merge (5) at HERE: it cannot close parallel_split (2): it passes on every "
      .. "arrival without waiting, so it closes choices of one branch (after a parallel split use "
      .. "synchronization (3) or multi_merge (8))" },
  { "k > n in a partial join", function()
      return P.workflow(P.sequence{ P.parallel_split{ f, g, h }, P.partial_join(4) }) end,
    "workflow: partial_join (30) at HERE: k = 4 but it joins 3 branches; k must be at most 3" },
  { "a step after unjoined branches", function() return P.workflow(P.sequence{ P.parallel_split{ f, g }, h }) end,
    "workflow: parallel_split (2) at HERE: its branches are not joined, so step 2 of sequence (1) "
      .. "at HERE would never start; put a join after it" },
  { "a branch that ends with unjoined branches", function()
      return P.workflow(P.sequence{ P.parallel_split{ P.parallel_split{ f, g }, h }, P.synchronization() }) end,
    "workflow: parallel_split (2) at HERE: branch 1 of parallel_split (2) at HERE ends with a split "
      .. "whose branches are not joined; put a join after it (only the end of a workflow may leave "
      .. "branches unjoined)" },
  { "a step that contains itself", function()
      local s = P.sequence{ f }
      s.steps[2] = s
      return P.workflow(s) end,
    "workflow: sequence (1) at HERE: it contains itself, so the definition is an endless cycle; "
      .. "repeat with P.while_do / P.repeat_until (21), or draw cycles with P.graph (10)" },
  { "a cycle with no way out", function()
      return P.workflow(P.graph{ start = "a", nodes = { a = { run = f, next = "b" }, b = { run = g, next = "a" } } }) end,
    "workflow: graph (10) at HERE: nodes a, b form a cycle with no way out (no node in it chooses a "
      .. "branch that leaves it); add an exclusive choice" },
  { "a graph edge to nowhere", function()
      return P.workflow(P.graph{ start = "a", nodes = { a = { run = f, next = "x" } } }) end,
    "workflow: graph (10) at HERE: node 'a' goes to 'x', which is not a node" },
  { "a graph node nothing reaches", function()
      return P.workflow(P.graph{ start = "a", nodes = { a = { run = f }, b = { run = g } } }) end,
    "workflow: graph (10) at HERE: node 'b' cannot be reached from start 'a'" },
  { "a graph node that cannot travel", function()
      return P.workflow(P.graph{ start = "a", nodes = { a = { run = stays } } }) end,
    "workflow: graph (10) at HERE: node 'a': run cannot travel to the worker that runs it: it is a userdata" },
  { "a graph without its start", function() return P.workflow(P.graph{ start = "z", nodes = { a = { run = f } } }) end,
    "workflow: graph (10) at HERE: start 'z' is not one of its nodes" },
  { "a structured join in a graph", function()
      return P.workflow(P.graph{ start = "a", nodes = { a = { run = f, next = { "b", "c" } },
        b = { next = "d" }, c = { next = "d" }, d = { join = P.discriminator() } } }) end,
    "workflow: discriminator (9) at HERE: it cannot join node 'd' of a graph: it closes the split "
      .. "just before it in a sequence (in a graph use blocking_discriminator (28), "
      .. "blocking_partial_join (31), local (37) or general (38) synchronizing merges)" },
  { "a 'to' outside a graph", function()
      return P.workflow(P.sequence{ P.exclusive_choice{ { when = "true", to = "x" } }, P.simple_merge() }) end,
    "workflow: exclusive_choice (4) at HERE: branch 1 goes 'to' graph node 'x', but this split is "
      .. "not the 'next' of a P.graph node; give it a 'run' step" },
  { "a local merge with a cycle before it", function()
      return P.workflow(P.graph{ start = "a", nodes = {
        a = { run = f, next = P.multi_choice{ { when = "x", to = "b" }, { when = "y", to = "m" } } },
        b = { run = g, next = P.exclusive_choice{ { when = "again", to = "a" }, otherwise = "m" } },
        m = { join = P.local_synchronizing_merge() } } }) end,
    "workflow: local_synchronizing_merge (37) at HERE: a cycle leads to it, and skip tokens would "
      .. "go round it forever; where branches loop, use general_synchronizing_merge (38)" },
  { "cancelling a step nobody named", function() return P.workflow(P.sequence{ f, P.cancel_task("nope") }) end,
    "workflow: cancel_task (19) at HERE: no step is named 'nope' (cancel_task 'nope' needs one)" },
  { "cancelling a name two steps have", function()
      return P.workflow(P.sequence{ P.task("a", f), P.task("a", g), P.cancel_task("a") }) end,
    "workflow: cancel_task (19) at HERE: 2 steps are named 'a' (at HERE, HERE); cancel_task 'a' needs one" },
  { "cancelling instances of a task", function() return P.workflow(P.sequence{ P.task("a", f), P.cancel_mi("a") }) end,
    "workflow: cancel_mi (26) at HERE: 'a' is a task step, not a multiple-instance step (P.mi)" },
  { "a milestone nobody holds", function() return P.workflow(P.when_milestone("x", f)) end,
    "workflow: when_milestone (18) at HERE: no P.milestone is named 'x'" },
  { "a milestone that comes only after the step it guards", function()
      return P.workflow(P.sequence{ P.when_milestone("m", f), P.milestone("m", g) }) end,
    "workflow: when_milestone (18) at HERE: the milestone 'm' it waits for (milestone (18) at HERE) "
      .. "comes only after it, later in its sequence, so it can never hold when this step is "
      .. "enabled; put the milestone before it, or on a parallel branch" },
  { "a milestone that comes only after the sequence holding the step it guards", function()
      return P.workflow(P.sequence{ P.sequence{ f, P.when_milestone("m", f) }, g,
                                    P.parallel_split{ P.milestone("m", g), h } }) end,
    "workflow: when_milestone (18) at HERE: the milestone 'm' it waits for (milestone (18) at HERE) "
      .. "comes only after it, later in its sequence, so it can never hold when this step is "
      .. "enabled; put the milestone before it, or on a parallel branch" },
  { "a signal nobody waits for", function() return P.workflow(P.signal(P.persistent_trigger("t"), 1)) end,
    "workflow: signal (24) at HERE: no step waits for trigger 't' (declare it with "
      .. "P.transient_trigger or P.persistent_trigger and wait for it with P.wait_for)" },
  { "a trigger both transient and persistent", function()
      return P.workflow(P.sequence{ P.wait_for(P.transient_trigger("t")), P.wait_for(P.persistent_trigger("t")) }) end,
    "workflow: wait_for (24) at HERE: trigger 't' is declared transient at HERE and persistent at HERE" },
  { "a call to nothing", function() return P.workflow(P.call("nowhere")) end,
    "workflow: call (22) at HERE: no P.define (and no workflow built with that name) is named 'nowhere'" },
  { "a recursion that never ends", function() return P.workflow(P.define("loop", P.sequence{ f, P.call("loop") })) end,
    "workflow: call (22) at HERE: 'loop' calls itself on every path (no choice or loop between its "
      .. "definition and this call), so it would never end" },
  { "a block defined twice", function() return P.workflow(P.sequence{ P.define("d", f), P.define("d", g) }) end,
    "workflow: define (22) at HERE: 'd' is defined twice (also at HERE)" },
  -- a misspelt field is refused, not ignored: ignored, it would run another workflow
  { "a misspelt field of a multiple instance (jion)", function()
      return P.mi{ count = 3, run = f, jion = P.partial(1) } end,
    "bad argument #1 to 'mi' (unknown field 'jion'; it takes: run, count, items, join, into, dynamic, name)" },
  { "a misspelt otherwise", function() return P.exclusive_choice{ { when = "x > 1", run = f }, otherwize = g } end,
    "bad argument #1 to 'exclusive_choice' (unknown field 'otherwize'; it takes: otherwise, name, and a list)" },
  { "a misspelt field of a branch", function() return P.multi_choice{ { wehn = "x > 1", run = f } } end,
    "bad argument #1 to 'multi_choice' (branch 1: unknown field 'wehn'; it takes: when, run, label, to)" },
  { "a misspelt field of a deferred branch", function()
      return P.deferred_choice{ { on = P.transient_trigger("a"), run = f }, { on = 5, run = g, int = "v" } } end,
    "bad argument #1 to 'deferred_choice' (branch 2: unknown field 'int'; it takes: on, run, label, into, to)" },
  { "a misspelt name of a workflow", function() return P.workflow(f, { nme = "x" }) end,
    "bad argument #2 to 'workflow' (unknown field 'nme'; it takes: name)" },
  { "a misspelt name of a join", function() return P.synchronization{ nmae = "j" } end,
    "bad argument #1 to 'synchronization' (unknown field 'nmae'; it takes: name)" },
  { "a join's options that are not a table", function() return P.simple_merge("j") end,
    "bad argument #1 to 'simple_merge' (table expected, got string)" },
  { "a field of a sequence that is neither a step nor its name", function() return P.sequence{ f, g, labl = "s" } end,
    "bad argument #1 to 'sequence' (unknown field 'labl'; it takes: name, and a list)" },
  { "a misspelt field of a parallel split", function() return P.parallel_split{ f, g, [0] = h } end,
    "bad argument #1 to 'parallel_split' (unknown field [0]; it takes: name, and a list)" },
  { "a misspelt field of a task table", function() return P.task{ name = "t", fn = f } end,
    "bad argument #1 to 'task' (unknown field 'fn'; it takes: name, run)" },
  { "a misspelt option of wait_for", function() return P.wait_for(P.transient_trigger("t"), { inot = "v" }) end,
    "bad argument #2 to 'wait_for' (unknown field 'inot'; it takes: into, name)" },
  { "a misspelt field of a graph node", function()
      return P.graph{ start = "a", nodes = { a = { run = f, nxt = "b" }, b = { run = g } } } end,
    "bad argument #1 to 'graph' (node 'a': unknown field 'nxt'; it takes: run, join, next)" },
  { "a misspelt option of a loop", function() return P.while_do("x < 3", f, { nam = "l" }) end,
    "bad argument #3 to 'while_do' (unknown field 'nam'; it takes: name)" },
  { "a misspelt option of a partial join", function() return P.partial_join(2, { nam = "p" }) end,
    "bad argument #2 to 'partial_join' (unknown field 'nam'; it takes: name)" },
}

describe("refusals", function()
  for _, r in ipairs(refusals) do
    it("refuses " .. r[1], function()
      local ok, err = pcall(r[2])
      assert.is_false(ok, "was accepted")
      assert.equal(r[3], message(err))
    end)
  end

  it("name the user's line, not the library's", function()
    local ok, err = pcall(function()
      local wf = P.workflow(P.sequence{ f, P.synchronization() }) -- the line of this call
      return wf
    end)
    assert.is_false(ok)
    assert.matches("^[^:]*refusals_spec%.lua:%d+: workflow:", err)
  end)
end)

local bad_ctx = {
  { { token = 1 }, "bad argument #1 to 'execute' (ctx.token must be a knhk.token, got number)" },
  { { telemetry = {} }, "bad argument #1 to 'execute' (ctx.telemetry must have an event method, got table)" },
  { { vars = 3 }, "bad argument #1 to 'execute' (ctx.vars must be a table, got number)" },
  { { signals = { x = 1 } }, "bad argument #1 to 'execute' (ctx.signals['x'] must be a knhk.channel, got number)" },
  { 7, "bad argument #1 to 'execute' (table expected, got number)" },
}

describe("execute refuses a bad ctx", function()
  for _, c in ipairs(bad_ctx) do
    it(c[2], function()
      local ok, err = H.run(function()
        return pcall(function() return P.task("t", f):execute(c[1]) end)
      end, 1)
      assert.is_false(ok)
      assert.equal(c[2], message(err))
    end)
  end
end)

-- wf.execute(ctx) with a dot gives ctx as self: refused at the caller's
-- line, not deep in the engine.
describe("a workflow's or a step's method called with a dot", function()
  local wf = P.workflow(P.task("t", f))
  local step = P.task("t", f)
  local cases = {
    { "wf.execute{}", function() return wf.execute({}) end,
      "bad argument #1 to 'execute' (workflow expected, got table)" },
    { "wf.to_dot()", function() return wf.to_dot() end,
      "bad argument #1 to 'to_dot' (workflow expected, got nil)" },
    { "wf.to_mermaid(5)", function() return wf.to_mermaid(5) end,
      "bad argument #1 to 'to_mermaid' (workflow expected, got number)" },
    { "step.execute{}", function() return step.execute({}) end,
      "bad argument #1 to 'execute' (workflow step expected, got table)" },
    { "step.to_dot()", function() return step.to_dot() end,
      "bad argument #1 to 'to_dot' (workflow step expected, got nil)" },
  }
  for _, c in ipairs(cases) do
    it("is refused: " .. c[1], function()
      local ok, err = H.run(function() return pcall(c[2]) end, 1)
      assert.is_false(ok)
      assert.equal(c[3], message(err))
      assert.matches("refusals_spec%.lua:%d+: ", tostring(err))
    end)
  end
end)
