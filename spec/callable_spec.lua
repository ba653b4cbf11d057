-- Callable objects: a table or userdata whose metatable's __call is a
-- function is taken wherever a task function or a body is, as Lua's own
-- pcall takes it. A portable task's object travels as any table argument
-- does: its class must be registered with knhk.codec.
local knhk = require "knhk"
local two_workers = require "two_workers"
local Adder = require "fixtures.adder" -- __call(self, a, b) -> base + a + b, "added"

local here = debug.getinfo(1, "S").short_src

local function run(fn, workers) return knhk.run(fn, { workers = workers or 2 }) end

local function adder(base) return setmetatable({ base = base }, Adder) end

-- A userdata called as a function: it can only run in the VM it was made in.
local function doubler()
  local u = newproxy(true)
  getmetatable(u).__call = function(_, x) return 2 * x, "doubled" end
  return u
end

-- A callable object whose class knhk.codec does not know.
local function unregistered() return setmetatable({}, { __call = function() return 1 end }) end

-- fn, written on one line, must raise `expected` at that line, as a
-- plain argument error (a string: no TaskError, no traceback).
local function assert_refused(expected, fn)
  local line = debug.getinfo(fn, "S").linedefined
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected a refusal")
  assert.equal(here .. ":" .. line .. ": " .. expected, err)
end

describe("knhk.spawn_local and n:spawn_local", function()
  it("call a callable table with the arguments, and give back its results", function()
    run(function()
      assert.same({ 103, "added" }, { knhk.spawn_local(adder(100), 1, 2):join() })
      knhk.nursery(function(n)
        assert.same({ 12, "added" }, { n:spawn_local(adder(10), 2):join() })
      end)
    end)
  end)

  it("call a callable userdata", function()
    run(function()
      assert.same({ 42, "doubled" }, { knhk.spawn_local(doubler(), 21):join() })
      knhk.nursery(function(n) assert.same({ 8, "doubled" }, { n:spawn_local(doubler(), 4):join() }) end)
    end)
  end)

  it("share the object with the spawner, as a function's upvalues are", function()
    run(function()
      local counter = setmetatable({ n = 0 }, { __call = function(self) self.n = self.n + 1 end })
      knhk.spawn_local(counter):join()
      knhk.spawn_local(counter):join()
      assert.equal(2, counter.n)
    end)
  end)

  it("name the task by what it is and where its __call is", function()
    run(function()
      local release = knhk.event()
      local call = function() release:wait() end
      local h = knhk.spawn_local(setmetatable({}, { __call = call }))
      local where
      for _, row in ipairs(knhk.tasks()) do
        if row.id == h:id() then where = row.where end
      end
      release:set()
      h:join()
      assert.equal(string.format("callable table (__call function at %s:%d)", here,
        debug.getinfo(call, "S").linedefined), where)
    end)
  end)

  it("refuse a table without __call at the caller's line", function()
    run(function()
      assert_refused("bad argument #1 to 'spawn_local' (function or callable object expected, got table)",
        function() knhk.spawn_local(setmetatable({}, { __index = {} })) end)
      knhk.nursery(function(n)
        assert_refused("bad argument #1 to 'spawn_local' (function or callable object expected, got table)",
          function() n:spawn_local({}) end)
      end)
    end)
  end)
end)

describe("knhk.spawn and n:spawn", function()
  it("call a callable table of a registered class, with its arguments and results", function()
    run(function()
      assert.same({ 103, "added" }, { knhk.spawn(adder(100), 1, 2):join() })
      knhk.nursery(function(n) assert.same({ 12, "added" }, { n:spawn(adder(10), 2):join() }) end)
    end, 1)
  end)

  it("run it on any worker whose VM has the class registered", function()
    run(function()
      two_workers(require, "fixtures.adder") -- every VM loads the class's module
      for i = 1, 8 do assert.same({ i + 1, "added" }, { knhk.spawn(adder(i), 1):join() }) end
    end, 2)
  end)

  it("call a callable module, which travels by name", function()
    run(function()
      local m = require "fixtures.callable_module" -- __call(self, x) -> self.v * x
      for _ = 1, 4 do assert.equal(42, knhk.spawn(m, 6):join()) end
    end, 2)
  end)

  it("copy the object at the spawn, as they copy a table argument", function()
    run(function()
      local obj = adder(1)
      local h = knhk.spawn(obj, 1)
      obj.base = 1000
      assert.equal(2, h:join())
    end, 1)
  end)

  it("say why when the task's VM does not know the object's class", function()
    run(function()
      -- a class only this VM knows; the spawner stays busy, so the other
      -- worker runs the task
      local Local = { __call = function() return "here" end }
      knhk.codec.register_class("callable_spec.local", Local)
      local h = knhk.spawn(setmetatable({}, Local))
      while not h:done() do end
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      assert.equal("knhk: the task's callable object arrived on worker 1 without its __call: its "
        .. "class is not registered in that worker's VM (knhk.codec.register_class must have run "
        .. "there)", err.message)
    end, 2)
  end)

  it("refuse an object that cannot travel, naming it as the task function", function()
    run(function()
      assert_refused("spawn: the task function is a userdata", function() knhk.spawn(doubler(), 1) end)
      assert_refused("spawn: the task function is a table with a metatable knhk does not know "
        .. "(register its metatable with knhk.codec.register_class)",
        function() knhk.spawn(unregistered()) end)
      knhk.nursery(function(n)
        assert_refused("spawn: the task function is a userdata", function() n:spawn(doubler()) end)
      end)
      -- raised by the nursery as the spawn raised it
      assert_refused("spawn: the task function is a userdata",
        function() knhk.nursery(function(n) n:spawn(doubler()) end) end)
      assert_refused("spawn: the task function is a table with a metatable knhk does not know "
        .. "(register its metatable with knhk.codec.register_class)",
        function() knhk.nursery(function(n) n:spawn(unregistered(), 1) end) end)
    end)
  end)

  it("refuse a table without __call at the caller's line", function()
    run(function()
      assert_refused("bad argument #1 to 'spawn' (function or callable object expected, got table)",
        function() knhk.spawn({}, 1) end)
      knhk.nursery(function(n)
        assert_refused("bad argument #1 to 'spawn' (function or callable object expected, got table)",
          function() n:spawn(setmetatable({}, { __call = 42 })) end)
      end)
    end)
  end)
end)

describe("knhk.run", function()
  it("runs a callable object as the root task, with its arguments and results", function()
    assert.same({ 6, "added" }, { knhk.run(adder(1), { workers = 1 }, 2, 3) })
    assert.same({ 10, "doubled" }, { knhk.run(doubler(), { workers = 1 }, 5) })
  end)

  it("refuses a table without __call at the caller's line", function()
    assert_refused("bad argument #1 to 'run' (function or callable object expected, got table)",
      function() knhk.run({}) end)
  end)
end)

describe("knhk.nursery", function()
  it("runs a callable body with the nursery, and returns its results", function()
    run(function()
      local body = setmetatable({}, { __call = function(_, n)
        return knhk.is_nursery(n), n:spawn_local(adder(1), 1):join()
      end })
      assert.same({ true, 2, "added" }, { knhk.nursery(body) })
    end)
  end)

  it("refuses a table without __call at the caller's line", function()
    run(function()
      assert_refused("bad argument #1 to 'nursery' (function or callable object expected, got table)",
        function() knhk.nursery({}) end)
    end)
  end)
end)

describe("knhk.cancel_scope, knhk.move_on_after and knhk.fail_after", function()
  it("run a callable body with its arguments, and return its results", function()
    run(function()
      local scope, v, how = knhk.move_on_after(10, adder(1), 2, 3)
      assert.same({ false, 6, "added" }, { scope.cancelled_caught, v, how })
      assert.same({ 10, "doubled" }, { knhk.fail_after(10, doubler(), 5) })
      local got = setmetatable({}, { __call = function(_, s) return s end })
      local scope2, inner = knhk.cancel_scope(got)
      assert.equal(scope2, inner)
    end)
  end)

  it("are cut short at the deadline, as a function is", function()
    run(function()
      local sleeper = setmetatable({}, { __call = function() knhk.sleep(math.huge) end })
      assert.is_true(knhk.move_on_after(0, sleeper).cancelled_caught)
      local ok, err = pcall(knhk.fail_after, 0, sleeper)
      assert.is_false(ok)
      assert.is_true(knhk.is_timeout(err))
    end)
  end)

  it("refuse a table without __call at the caller's line", function()
    run(function()
      assert_refused("bad argument #2 to 'move_on_after' (function or callable object expected, got table)",
        function() knhk.move_on_after(1, {}) end)
      assert_refused("bad argument #2 to 'fail_after' (function or callable object expected, got table)",
        function() knhk.fail_after(1, {}) end)
      assert_refused("bad argument #1 to 'cancel_scope' (function or callable object expected, got table)",
        function() knhk.cancel_scope({}) end)
    end)
  end)
end)

describe("knhk.map", function()
  it("calls a callable object for every item, in order, with or without a limit", function()
    run(function()
      assert.same({ 11, 12, 13 }, knhk.map({ 1, 2, 3 }, adder(10)))
      assert.same({ 11, 12, 13 }, knhk.map({ 1, 2, 3 }, adder(10), { limit = 2 }))
    end, 1)
  end)

  it("refuses an object that cannot travel in spawn's words, naming it as the task function", function()
    run(function()
      assert_refused("map: the task function is a userdata", function() knhk.map({ 1 }, doubler()) end)
      assert_refused("map: the task function is a userdata",
        function() knhk.map({ 1 }, doubler(), { limit = 1 }) end)
      assert_refused("map: the task function is a table with a metatable knhk does not know "
        .. "(register its metatable with knhk.codec.register_class)",
        function() knhk.map({ 1, 2 }, unregistered()) end)
    end)
  end)

  it("refuses a table without __call at the caller's line", function()
    run(function()
      assert_refused("bad argument #2 to 'map' (function or callable object expected, got table)",
        function() knhk.map({ 1 }, {}) end)
    end)
  end)
end)

describe("knhk.race and knhk.select", function()
  it("run callable objects, and give the winner's results", function()
    run(function()
      local never = knhk.event()
      local blocked = setmetatable({ ev = never }, { __call = function(self) self.ev:wait() end })
      -- (an unregistered class cannot travel: registered for this VM only)
      knhk.codec.register_class("callable_spec.blocked", getmetatable(blocked))
      assert.same({ 3, "added" }, { knhk.race(blocked, adder(3)) })
      assert.same({ "b", 5, "added" }, { knhk.select{ a = blocked, b = adder(5) } })
    end, 1)
  end)

  it("refuse an object that cannot travel in spawn's words, naming its place", function()
    run(function()
      assert_refused("race: task function #2 is a userdata", function() knhk.race(print, doubler()) end)
      assert_refused("select: the task function of case 'b' is a userdata",
        function() knhk.select{ b = doubler() } end)
    end)
  end)

  it("refuse a table without __call at the caller's line", function()
    run(function()
      assert_refused("bad argument #2 to 'race' (function or callable object expected, got table)",
        function() knhk.race(print, {}) end)
      assert_refused("bad argument #1 to 'select' (case 'a' is a table, expected a function or callable object)",
        function() knhk.select{ a = {} } end)
    end)
  end)
end)

describe("a semaphore's and a lock's with", function()
  it("run a callable object holding a permit, and give its results", function()
    run(function()
      for _, s in ipairs({ knhk.semaphore(1), knhk.lock() }) do
        assert.same({ 6, "added" }, { s:with(adder(1), 2, 3) })
        assert.equal(1, s:permits())
      end
    end)
  end)
end)

describe("knhk.telemetry.span", function()
  it("runs a callable object, with its arguments and results", function()
    run(function()
      assert.same({ 6, "added" }, { knhk.telemetry.span("callable", nil, adder(1), 2, 3) })
    end)
  end)

  it("refuses a table without __call at the caller's line", function()
    run(function()
      assert_refused("bad argument #3 to 'span' (function or callable object expected, got table)",
        function() knhk.telemetry.span("callable", nil, {}) end)
    end)
  end)
end)

-- ------------------------------------------------------------- patterns

local P = require "knhk.patterns"
local Bump = require "fixtures.bump" -- __call(self, vars, i) -> { [var] = vars[var] + by (+ i) }

local function bump(var, by) return setmetatable({ var = var, by = by }, Bump) end

-- A condition over the case variables, as a callable object (it runs where
-- the case runs: its class need not travel).
local function below(var, limit)
  return setmetatable({ var = var, limit = limit }, {
    __call = function(self, vars) return (vars[self.var] or 0) < self.limit end })
end

describe("knhk.patterns with callable objects", function()
  it("run one as a task, a sequence's step and a parallel branch, with the case variables", function()
    local r = run(function()
      return P.sequence{
        P.task("first", bump("n", 1)),
        bump("n", 10),
        P.parallel_split{ bump("x", 1), P.task{ name = "y", run = bump("y", 2) } },
        P.synchronization(),
      }:execute{ vars = { n = 0 } }
    end)
    assert.equal("completed", r.status, r.error)
    assert.same({ n = 11, x = 1, y = 2 }, r.vars)
  end)

  it("run one for each instance of a multiple-instance step, with its number", function()
    local r = run(function()
      return P.mi{ count = 3, run = bump("n", 10), into = "o" }:execute{ vars = { n = 0 } }
    end)
    assert.equal("completed", r.status, r.error)
    assert.same({ { n = 11 }, { n = 12 }, { n = 13 } }, r.vars.o)
  end)

  it("ask one for the number of instances, or their items", function()
    local function of_vars(key) return setmetatable({}, { __call = function(_, vars) return vars[key] end }) end
    local r = run(function()
      return P.sequence{
        P.mi{ count = of_vars("k"), run = bump("n", 0), into = "counted" },
        P.mi{ items = of_vars("list"), run = bump("n", 0), into = "listed" },
      }:execute{ vars = { n = 0, k = 2, list = { "a", "b", "c" } } }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(2, #r.vars.counted)
    assert.equal(3, #r.vars.listed)
  end)

  it("ask one as a choice's condition, a loop's test and a completion condition", function()
    local r = run(function()
      return P.sequence{
        P.exclusive_choice{ { when = below("n", 0), run = bump("wrong", 1) },
                            { when = below("n", 1), run = bump("right", 1) } },
        P.simple_merge(),
        P.while_do(below("n", 3), bump("n", 1)),
        P.mi{ count = 3, dynamic = true, into = "o", run = bump("i", 0),
              join = P.complete_when(setmetatable({}, { __call = function(_, results)
                return #results >= 1 end })) },
      }:execute{ vars = { n = 0 } }
    end, 1)
    assert.equal("completed", r.status, r.error)
    assert.is_nil(r.vars.wrong)
    assert.equal(1, r.vars.right)
    assert.equal(3, r.vars.n)
    assert.equal(1, #r.vars.o) -- the condition held at the first instance
  end)

  it("run one as a critical section, a graph node and a whole workflow", function()
    local r, whole = run(function()
      return P.sequence{
        P.critical_section("ledger", bump("a", 1)),
        P.graph{ start = "g", nodes = { g = { run = bump("b", 2) } } },
      }:execute{}, P.workflow(bump("c", 3)):execute{}
    end)
    assert.equal("completed", r.status, r.error)
    assert.same({ a = 1, b = 2 }, r.vars)
    assert.equal("completed", whole.status, whole.error)
    assert.same({ c = 3 }, whole.vars)
  end)

  it("name a task of one by its __call's place", function()
    local line = debug.getinfo(Bump.__call, "S").linedefined
    assert.equal("bump.lua:" .. line .. " (callable table)", P.task(bump("n", 1)).name)
    assert.equal("bump.lua:" .. line .. " (callable table)", P.sequence{ bump("n", 1) }.steps[1].name)
  end)

  it("refuse one that cannot travel when the step is written, at the caller's line", function()
    local NOT_HERE = "cannot travel to the worker that runs it: it is "
    assert_refused("bad argument #2 to 'task' (the task function " .. NOT_HERE .. "a userdata)",
      function() P.task("double", doubler()) end)
    assert_refused("bad argument #1 to 'sequence' (step 1 " .. NOT_HERE .. "a table with a "
      .. "metatable knhk does not know (register its metatable with knhk.codec.register_class))",
      function() P.sequence{ unregistered() } end)
    assert_refused("bad argument #1 to 'mi' (run " .. NOT_HERE .. "a userdata)",
      function() P.mi{ count = 2, run = doubler() } end)
    assert_refused("bad argument #1 to 'mi' (run " .. NOT_HERE .. "a userdata)",
      function() P.mi{ count = 2, run = doubler(), dynamic = true } end)
  end)

  it("fail the case at the line that wrote the step when what it holds cannot travel", function()
    local obj = bump("n", 1)
    obj.conn = io.stdout
    local line = debug.getinfo(1, "l").currentline + 1
    local wf = P.workflow(P.sequence{ P.task("bump", obj), P.mi{ count = 2, run = obj } })
    local r = run(function() return wf:execute{} end)
    assert.equal("failed", r.status)
    assert.equal("bump", r.step)
    assert.equal(string.format("%s:%d: task 'bump': spawn: key 'conn' of the task function is a userdata",
      here:match("[^/]*$"), line), r.error)
    local at = here:match("[^/]*$"):gsub("%p", "%%%0") .. ":%d+: "
    for _, step in ipairs {
      P.mi{ count = 2, run = obj },
      P.graph{ start = "a", nodes = { a = { run = obj } } },
      P.mi{ count = 2, run = obj, dynamic = true },
    } do
      r = run(function() return step:execute{} end)
      assert.equal("failed", r.status)
      assert.matches("^" .. at .. "[%w ']+: spawn: .*key 'conn' of .* is a userdata$", r.error)
    end
  end)

  it("fail the case saying why when an instance's worker does not know the object's class", function()
    -- a class only this VM knows: an instance this worker runs holds it
    -- (without yielding) until another task has ended, which only the
    -- other worker can run: the other instance, where the object arrives
    -- as a plain table. (Worker 1 may also take both instances before this
    -- worker runs either: then both fail there, each saying the same.)
    local function live()
      local n = 0
      for _, row in ipairs(knhk.tasks()) do
        if not row.ended then n = n + 1 end
      end
      return n
    end
    local Local = { __call = function()
      local deadline, before = os.clock() + 20, live()
      repeat until live() < before or os.clock() > deadline
    end }
    knhk.codec.register_class("callable_spec.local_instances", Local)
    for dynamic, what in pairs { [false] = "the task's callable object",
                                 [true] = "the instances' run (a callable object)" } do
      local r = run(function()
        return P.mi{ count = 2, run = setmetatable({}, Local), dynamic = dynamic }:execute{}
      end)
      assert.equal("failed", r.status)
      local why = "knhk: " .. what .. " arrived on worker 1 without its __call: its class is not "
        .. "registered in that worker's VM (knhk.codec.register_class must have run there)"
      local rest, copies = r.error:gsub(why:gsub("%p", "%%%0"), "")
      assert.is_true(copies == 1 and rest == "" or copies == 2 and rest == "; ", r.error)
    end
  end)

  it("refuse a table without __call at the caller's line, saying what was expected", function()
    local plain = setmetatable({}, { __call = 42 })
    assert_refused("bad argument #2 to 'task' (function or callable object expected for the task, got table)",
      function() P.task("t", plain) end)
    assert_refused("bad argument #1 to 'sequence' (step 1 must be a function, a callable object or a step, got table)",
      function() P.sequence{ plain } end)
    assert_refused("bad argument #1 to 'parallel_split' (branch 1 must be a function, a callable object or a step, got table)",
      function() P.parallel_split{ plain } end)
    assert_refused("bad argument #1 to 'mi' (run must be a function or callable object (each instance runs it as a portable task), got table)",
      function() P.mi{ count = 1, run = plain } end)
    assert_refused("bad argument #1 to 'exclusive_choice' (branch 1: 'when' must be a function, a callable object or a Lua expression string, got table)",
      function() P.exclusive_choice{ { when = plain, run = bump("n", 1) } } end)
    assert_refused("bad argument #1 to 'while_do' (the condition must be a function, a callable object or a Lua expression string, got table)",
      function() P.while_do(plain, bump("n", 1)) end)
    assert_refused("bad argument #1 to 'complete_when' (the completion condition must be a function, a callable object or a Lua expression string, got table)",
      function() P.complete_when(plain) end)
    assert_refused("bad argument #2 to 'critical_section' (the section must be a function, a callable object or a step, got table)",
      function() P.critical_section("ledger", plain) end)
  end)
end)

-- ------------------------------------------------------------ knhk.test

local T = require "knhk.test"

-- A body that remembers how it was called, and in which runtime.
local function recorder()
  return setmetatable({ calls = 0 }, { __call = function(self, ...)
    self.calls = self.calls + 1
    self.args = { ... }
    self.in_task = knhk.current() ~= nil
  end })
end

describe("knhk.test.wrap and knhk.test.explore with a callable object", function()
  it("run it as the root task of a fresh runtime, with the arguments given", function()
    local body = recorder()
    T.wrap(body, { workers = 1 })("x", 2)
    assert.same({ 1, { "x", 2 }, true }, { body.calls, body.args, body.in_task })
    local explored = recorder()
    T.explore(explored, { runs = 3 })()
    assert.same({ 3, true }, { explored.calls, explored.in_task })
  end)

  it("name it by its __call's place when it fails", function()
    local call = function() error("broke", 0) end
    local line = debug.getinfo(call, "S").linedefined
    for _, make in ipairs { T.wrap, T.explore } do
      local ok, err = pcall(make(setmetatable({}, { __call = call }), { seed = 1 }))
      assert.is_false(ok)
      err = type(err) == "table" and err.message or err
      assert.equal(here .. ":" .. line .. ": ", err:sub(1, #here + #tostring(line) + 3))
      assert.matches("broke", err, 1, true)
    end
  end)

  it("refuse a table without __call at the caller's line", function()
    assert_refused("bad argument #1 to 'wrap' (function or callable object expected, got table)",
      function() T.wrap({}) end)
    assert_refused("bad argument #1 to 'explore' (function or callable object expected, got table)",
      function() T.explore(setmetatable({}, { __index = {} })) end)
  end)
end)
