-- Tables of registered classes (knhk.codec.register_class) crossing VMs:
-- the receiving VM gives them the class's metatable, loading the module
-- that registers the class if it has not yet.
local knhk = require "knhk"
local on_two_workers = require "two_workers"

local function run(fn) return knhk.run(fn, { workers = 2 }) end

describe("a registered class", function()
  it("keeps its methods on every worker, though the task never names its module", function()
    run(function()
      local Square = require "fixtures.square"
      -- the task's function knows only its argument: nothing in the
      -- snapshot makes the worker's VM load fixtures.square but the object
      local a, b = on_two_workers(function(sq) return sq:area(), getmetatable(sq) ~= nil end,
        Square.new(3))
      assert.same({ 9, true }, a)
      assert.same({ 9, true }, b)
    end)
  end)

  it("comes back to the joiner with the joiner's metatable", function()
    run(function()
      local Square = require "fixtures.square"
      for _ = 1, 4 do -- on either worker
        local h = knhk.spawn(function(sq) sq.side = sq.side + 1; return sq end, Square.new(4))
        local sq = h:join()
        assert.equal(Square, getmetatable(sq))
        assert.equal(25, sq:area())
      end
    end)
  end)

  it("reaches a task through a channel", function()
    run(function()
      local Square = require "fixtures.square"
      local ch = knhk.channel(1)
      local sender = knhk.spawn_local(function()
        ch:send(Square.new(2)) -- one square for each of the two tasks
        ch:send(Square.new(2))
      end)
      local a, b = on_two_workers(function(c) return c:recv():area() end, ch)
      sender:join()
      assert.same({ 4 }, a)
      assert.same({ 4 }, b)
    end)
  end)

  it("takes the module to load as a third argument, for a class registered elsewhere", function()
    run(function()
      local Mine = {}
      Mine.__index = Mine
      function Mine:area() return self.side * self.side end
      knhk.codec.register_class("spec.square2", Mine, "fixtures.square2")
      local a, b = on_two_workers(function(sq) return sq:area() end, setmetatable({ side = 5 }, Mine))
      assert.same({ 25 }, a)
      assert.same({ 25 }, b)
    end)
  end)

  -- (of the two tasks, the one on the root task's worker runs in the root's
  -- VM, which knows every class the root registered: the other one is
  -- the task in a VM of its own)
  local function elsewhere(a, b)
    local root = knhk.current().worker
    if a[1] ~= root then return a end
    assert.are_not.equal(root, b[1])
    return b
  end

  it("arrives as a plain table where no module registers it", function()
    run(function()
      local Local = {}
      Local.__index = Local
      knhk.codec.register_class("spec.local_only", Local) -- (outside any module)
      local t = elsewhere(on_two_workers(function(t)
        return knhk.current().worker, getmetatable(t) == nil, t.x
      end, setmetatable({ x = 7 }, Local)))
      assert.same({ true, 7 }, { t[2], t[3] })
    end)
  end)

  it("fails the receive, naming class and module, when loading the module does not register it", function()
    run(function()
      rawset(_G, "KNHK_SPEC_REGISTER_FICKLE", true)
      local Fickle = require "fixtures.fickle_class"
      rawset(_G, "KNHK_SPEC_REGISTER_FICKLE", nil)
      local ch = knhk.channel(2)
      ch:send(setmetatable({}, Fickle))
      ch:send(setmetatable({}, Fickle))
      local t = elsewhere(on_two_workers(function(c)
        return knhk.current().worker, pcall(c.recv, c)
      end, ch))
      assert.is_false(t[2])
      assert.matches("class 'fixtures.fickle' arrived from module 'fixtures.fickle_class', "
        .. "which this VM loaded, but loading it did not register the class", tostring(t[3]), 1, true)
    end)
  end)
end)

describe("knhk.codec.register_class", function()
  local register = knhk.codec.register_class
  it("refuses a name that is not a string, at the caller's line", function()
    local ok, err = pcall(function() register(42, {}) end)
    assert.is_false(ok)
    assert.matches("classes_spec.lua:%d+: bad argument #1 to 'register_class' "
      .. "%(class name expected: a string without NUL, got number%)", err)
  end)

  it("refuses a metatable that is not a table", function()
    local ok, err = pcall(function() register("spec.x", "mt") end)
    assert.is_false(ok)
    assert.matches("bad argument #2 to 'register_class' (metatable expected, got string)", err, 1, true)
  end)

  it("refuses a module name that is not a string", function()
    local ok, err = pcall(function() register("spec.x", {}, 7) end)
    assert.is_false(ok)
    assert.matches("bad argument #3 to 'register_class' (module name expected, got number)", err, 1, true)
  end)

  it("refuses a name already registered for another metatable, naming both places", function()
    local A, B = {}, {}
    register("spec.taken", A)
    local first = debug.getinfo(1, "l").currentline - 1
    local ok, err = pcall(function() register("spec.taken", B) end)
    local second = debug.getinfo(1, "l").currentline - 1
    assert.is_false(ok)
    assert.matches("classes_spec.lua:" .. second .. ": bad argument #1 to 'register_class' "
      .. "(class 'spec.taken' is already registered for another metatable, at ", err, 1, true)
    assert.matches("classes_spec.lua:" .. first .. "; ", err, 1, true)
  end)

  it("keeps the first class of a name: its tables travel as that class, not the refused one", function()
    knhk.run(function()
      local A = { __index = { kind = function() return "A" end } }
      local B = { __index = { kind = function() return "B" end } }
      register("spec.first_wins", A)
      pcall(register, "spec.first_wins", B) -- (refused: the spec above)
      local back = knhk.spawn(function(x) return x end, setmetatable({}, A)):join()
      assert.equal(A, getmetatable(back))
      assert.equal("A", back:kind())
    end, { workers = 1 })
  end)

  it("takes the same metatable under the same name again (every VM loads the module)", function()
    local A = {}
    register("spec.again", A)
    register("spec.again", A)
    register("spec.again", A, "fixtures.square")
    knhk.run(function()
      local back = knhk.spawn(function(x) return x end, setmetatable({ v = 1 }, A)):join()
      assert.equal(A, getmetatable(back))
    end, { workers = 1 })
  end)
end)
