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

-- fn, written on one line, must raise `expected` at that line.
local function assert_refused(expected, fn)
  local line = debug.getinfo(fn, "S").linedefined
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected a refusal")
  assert.equal(here .. ":" .. line .. ": " .. expected, tostring(err):match("^[^\n]*"))
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
