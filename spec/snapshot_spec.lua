-- What a portable task's snapshot keeps of the spawner's code: the task
-- must behave as the function would have behaved in the spawner, on any
-- worker. Each case runs on one worker (nothing moves) and on four.
local knhk = require "knhk"
local two_workers = require "two_workers"
local T = require "knhk.test"

local function on_one_and_many(name, fn)
  it(name .. " (1 worker)", function() knhk.run(fn, { workers = 1 }) end)
  it(name .. " (4 workers)", function() knhk.run(fn, { workers = 4 }) end)
end

local function spawn_error(fn)
  local ok, err = pcall(knhk.spawn, fn)
  assert.is_false(ok, "spawn should have been refused")
  return tostring(err)
end

describe("a snapshot keeps upvalue identity", function()
  on_one_and_many("closures that share an upvalue still share it in the task", function()
    local n = 0
    local function inc() n = n + 1 end
    local function get() return n end
    assert.equal(2, knhk.spawn(function() inc(); inc(); return get() end):join())
    assert.equal(0, n) -- the spawner's own copy is untouched
  end)

  on_one_and_many("an upvalue shared by a function and an argument is shared too", function()
    local box = 10
    local function bump() box = box + 1 end
    local function read() return box end
    assert.equal(12, knhk.spawn(function(f) bump(); f(); return read() end, bump):join())
  end)

  on_one_and_many("closures of one factory keep separate upvalues", function()
    local function counter()
      local c = 0
      return function() c = c + 1; return c end
    end
    local a, b = counter(), counter()
    local ra, rb = knhk.spawn(function() a(); a(); return a(), b() end):join()
    assert.equal(3, ra)
    assert.equal(1, rb)
  end)
end)

describe("a snapshot keeps a function's environment", function()
  on_one_and_many("a sandboxed function (setfenv) keeps its sandbox", function()
    local f = setfenv(function() return x, print end, { x = 42 })
    local x, p = knhk.spawn(f):join()
    assert.equal(42, x)
    assert.is_nil(p) -- the sandbox has no print: the worker's globals do not leak in
  end)

  on_one_and_many("a sandbox with a metatable gains nothing it does not offer", function()
    local offered = { y = 5 }
    local f = setfenv(function() return y, os, print, string end,
      setmetatable({}, { __index = offered }))
    local y, os_, print_, string_ = knhk.spawn(f):join()
    assert.equal(5, y)
    assert.is_nil(os_)
    assert.is_nil(print_)
    assert.is_nil(string_)
    local g = setfenv(function() return io end,
      setmetatable({}, { __index = function(_, k) return k == "z" and 1 or nil end }))
    assert.is_nil(knhk.spawn(g):join())
  end)

  on_one_and_many("writes to a sandbox stay in the task's copy", function()
    local env = { hits = 0 }
    local f = setfenv(function() hits = hits + 1; return hits end, env)
    assert.equal(1, knhk.spawn(f):join())
    assert.equal(0, env.hits)
  end)
end)

describe("globals a task reads", function()
  on_one_and_many("give the same answer through _G, rawget and getfenv on every worker", function()
    snapshot_spec_g = "spawner's"
    local h = knhk.spawn(function()
      return _G.snapshot_spec_g, rawget(_G, "snapshot_spec_g"), getfenv(1).snapshot_spec_g,
        snapshot_spec_g
    end)
    local a, b, c, d = h:join()
    snapshot_spec_g = nil
    -- named in the code: copied at spawn; reached only dynamically: the
    -- name is copied too, since the code names it once
    assert.equal("spawner's", d)
    assert.equal(d, a)
    assert.equal(d, b)
    assert.equal(d, c)
  end)

  on_one_and_many("a global read through _G with a constant name is copied as one named plainly", function()
    snapshot_spec_config = { url = "https://example" }
    local a, b, c = knhk.spawn(function()
      local function nested() return _G["snapshot_spec_config"].url end
      return _G.snapshot_spec_config and _G.snapshot_spec_config.url, nested(),
        rawget(_G, "snapshot_spec_config") ~= nil
    end):join()
    snapshot_spec_config = nil
    assert.equal("https://example", a)
    assert.equal("https://example", b)
    assert.is_true(c) -- one of the globals the code names
  end)

  on_one_and_many("a global reached only by a computed name reads nil on every worker", function()
    snapshot_spec_hidden = "spawner's"
    local name = "snapshot_spec" .. "_hidden"
    local v = knhk.spawn(function(k) return _G[k] end, name):join()
    snapshot_spec_hidden = nil
    assert.is_nil(v)
  end)

  on_one_and_many("the standard library is reached through _G whatever the code names", function()
    local up, tab, raw = knhk.spawn(function()
      return _G.string.upper("x"), getfenv(1).table ~= nil, rawget(_G, "table")
    end):join()
    assert.equal("X", up)
    assert.is_true(tab)
    -- rawget sees only the globals the code names: the standard library is
    -- under them (the environment's __index), the same on every worker
    assert.is_nil(raw)
  end)

  on_one_and_many("a strict _G does not refuse a global read in a branch never taken", function()
    local mt = getmetatable(_G)
    setmetatable(_G, { __index = function(_, k) error("undeclared global '" .. k .. "'", 2) end })
    local ok, h = pcall(knhk.spawn, function(x)
      if x then return never_declared_anywhere end
      return "fine"
    end, false)
    setmetatable(_G, mt)
    assert.is_true(ok, tostring(h))
    assert.equal("fine", h:join())
  end)

  on_one_and_many("a global that does not exist travels as nil", function()
    assert.is_nil(knhk.spawn(function() return no_such_global_here end):join())
  end)
end)

-- Code whose environment is the VM's globals (setfenv(fn, _G): a spec's
-- own functions run in busted's environment) takes the spawn's fast path
-- when every global it reads is a plain value, a builtin or a module.
describe("globals on the fast path", function()
  on_one_and_many("are read at spawn: a later change is not seen, an earlier one is", function()
    _G.snapshot_fast_g = 1
    local f = setfenv(function(x) return snapshot_fast_g + x end, _G)
    local a = knhk.spawn(f, 10)
    _G.snapshot_fast_g = 2
    local b = knhk.spawn(f, 10)
    _G.snapshot_fast_g = nil
    assert.equal(11, a:join())
    assert.equal(12, b:join())
  end)

  on_one_and_many("builtins and modules arrive as this VM's own", function()
    local f = setfenv(function(x)
      return string.format("%03d", x), type(knhk_spec_mod), tostring(math.huge),
        require("knhk.errors") == package.loaded["knhk.errors"]
    end, _G)
    _G.knhk_spec_mod = require "knhk.errors"
    for i = 1, 50 do -- the first spawns teach the fast path the names
      local s, t, h, same = knhk.spawn(f, i):join()
      assert.equal(string.format("%03d", i), s)
      assert.equal("table", t)
      assert.equal("inf", h)
      assert.is_true(same)
    end
    _G.knhk_spec_mod = nil
  end)

  on_one_and_many("a global function that calls itself by its global name", function()
    _G.snapshot_fast_fib = setfenv(function(n)
      if n < 2 then return n end
      return snapshot_fast_fib(n - 1) + snapshot_fast_fib(n - 2)
    end, _G)
    local hs = {}
    for i = 1, 20 do hs[i] = knhk.spawn(snapshot_fast_fib, 15) end
    for i = 1, 20 do assert.equal(610, hs[i]:join()) end
    _G.snapshot_fast_fib = nil
  end)

  on_one_and_many("each task writes its own globals, even two of one function on one worker", function()
    local ev = knhk.event()
    local f = setfenv(function(v, e)
      snapshot_fast_w = v
      e:wait()
      return snapshot_fast_w
    end, _G)
    local hs = {}
    for i = 1, 8 do hs[i] = knhk.spawn(f, i, ev) end
    T.until_waiting(unpack(hs)) -- every one has written before any reads back
    ev:set()
    for i = 1, 8 do assert.equal(i, hs[i]:join()) end
    assert.is_nil(rawget(_G, "snapshot_fast_w")) -- the spawner's globals are untouched
  end)

  on_one_and_many("a task's writes to globals it never reads stay its own", function()
    local f = setfenv(function() snapshot_fast_leak = 1 end, _G)
    for _ = 1, 8 do knhk.spawn(f):join() end
    assert.is_nil(rawget(_G, "snapshot_fast_leak"))
    _G.snapshot_fast_x = 1
    local g = setfenv(function() snapshot_fast_x = 2; return snapshot_fast_x end, _G)
    for _ = 1, 8 do assert.equal(2, knhk.spawn(g):join()) end
    assert.equal(1, _G.snapshot_fast_x)
    _G.snapshot_fast_x = nil
  end)

  on_one_and_many("a table global still travels whole, by the codec", function()
    _G.snapshot_fast_t = { a = { b = 7 } }
    local f = setfenv(function() snapshot_fast_t.a.b = 8; return snapshot_fast_t.a.b end, _G)
    assert.equal(8, knhk.spawn(f):join())
    assert.equal(7, _G.snapshot_fast_t.a.b)
    _G.snapshot_fast_t = nil
  end)

  on_one_and_many("a function made in a task, reading globals, spawns again", function()
    _G.snapshot_fast_n = 5
    local outer = setfenv(function()
      local inner = function(x) return snapshot_fast_n * x, type(print) end
      return knhk.spawn(inner, 3):join()
    end, _G)
    local v, t = knhk.spawn(outer):join()
    _G.snapshot_fast_n = nil
    assert.equal(15, v)
    assert.equal("function", t)
  end)
end)

describe("modules in a snapshot", function()
  it("a module only in package.loaded is refused at the spawn, by name", function()
    knhk.run(function()
      package.loaded["spec.fake.inline"] = { answer = function() return 42 end }
      local m = package.loaded["spec.fake.inline"]
      local msg = spawn_error(function() return m.answer() end)
      package.loaded["spec.fake.inline"] = nil
      assert.matches("upvalue 'm' .* is the module 'spec.fake.inline', which require cannot load", msg)
    end, { workers = 2 })
  end)

  -- A local alias of knhk's API (local nursery = knhk.nursery) is common
  -- style: the task gets its own VM's function, not a copy of the
  -- module's state.
  it("knhk's own functions, as upvalues, travel by name and work there", function() knhk.run(function()
    local nursery, move_on_after, map, sleep = knhk.nursery, knhk.move_on_after, knhk.map, knhk.sleep
    local a, b = two_workers(function()
      local got = nursery(function(n)
        local h = n:spawn(function(x) sleep(0) return x * 2 end, 21)
        return h:join()
      end)
      local _, late = move_on_after(0, function() sleep(1) return "late" end)
      return got, late, map({ 1, 2 }, function(x) return x + 1 end)[2]
    end)
    assert.same({ 42, nil, 3 }, { a[1], a[2], a[3] })
    assert.same({ 42, nil, 3 }, { b[1], b[2], b[3] })
  end, { workers = 2 }) end)

  on_one_and_many("a module require can load travels by name", function()
    local cjson = require "cjson"
    assert.equal("[1]", knhk.spawn(function() return cjson.encode({ 1 }) end):join())
  end)

  it("a module found through a package.path the spawner changed during the run (4 workers)", function()
    knhk.run(function()
      -- a path pattern of its own (no directory to make: no fork here,
      -- which ThreadSanitizer's runtime would not survive)
      local stem = os.tmpname()
      local file = stem .. "_knhk_spec_pathmod.lua"
      local f = assert(io.open(file, "w"))
      f:write("return { v = 2 }\n")
      f:close()
      local saved = package.path
      package.path = stem .. "_?.lua;" .. package.path
      local m = require "knhk_spec_pathmod"
      -- one of the two runs in another worker's VM, made with the run's
      -- first paths
      local a, b = two_workers(function() return m.v, knhk.current().worker end)
      local va, wa, vb, wb = a[1], a[2], b[1], b[2]
      package.path = saved
      package.loaded.knhk_spec_pathmod = nil
      os.remove(file)
      os.remove(stem)
      assert.equal(2, va)
      assert.equal(2, vb)
      assert.are_not.equal(wa, wb)
    end, { workers = 4 })
  end)

  on_one_and_many("a module whose table has a metatable travels by name too (busted's assert)", function()
    -- in a spec, the global `assert` is luassert's module table, which has
    -- a metatable; a task uses its own VM's
    local h = knhk.spawn(function(x)
      assert(x == 1, "x is 1")
      assert.equal(1, x)
      return type(assert)
    end, 1)
    assert.equal("table", h:join())
    -- one loaded after every index made so far
    local m = require "fixtures.callable_module"
    assert.equal(42, knhk.spawn(function(x) return m(x) end, 6):join())
  end)
end)

describe("numbers in a snapshot", function()
  on_one_and_many("-0.0, NaN, infinities and large integers survive", function()
    local nz, nan, inf, big = knhk.spawn(function(a, b, c, d) return a, b, c, d end,
      -0.0, 0 / 0, -math.huge, 2 ^ 53):join()
    assert.equal(-math.huge, 1 / nz)
    assert.is_true(nan ~= nan)
    assert.equal(-math.huge, inf)
    assert.equal(2 ^ 53, big)
  end)

  on_one_and_many("-0.0 survives as an upvalue, a table value and a result", function()
    local z = -0.0
    local a, b = knhk.spawn(function(t) return z, t[1] end, { -0.0 }):join()
    assert.equal(-math.huge, 1 / a)
    assert.equal(-math.huge, 1 / b)
  end)
end)

describe("prototypes", function()
  -- two factories whose closures compile to the same bytecode
  local function factory_a(conn) return function() return conn end end
  local function factory_b(logfile) return function() return logfile end end

  it("a refusal names the upvalue of the function being spawned", function()
    knhk.run(function()
      local ok = pcall(knhk.spawn, factory_a(1))
      assert.is_true(ok)
      local msg = spawn_error(factory_b(io.stdout))
      assert.matches("upvalue 'logfile'", msg, 1, true)
    end, { workers = 1 })
  end)

  it("a task's error reports its own function's line", function()
    knhk.run(function()
      local function fa() return function() error("from a") end end
      local function fb() return function() error("from b") end end
      pcall(function() knhk.spawn(fa()):join() end)
      local ok, err = pcall(function() knhk.spawn(fb()):join() end)
      assert.is_false(ok)
      local line = debug.getinfo(fb, "S").linedefined
      assert.matches("snapshot_spec.lua:" .. line .. ": from b", tostring(err), 1, true)
    end, { workers = 1 })
  end)
end)

describe("deep tables", function()
  local function walk(t)
    local n = 0
    while t.next do t, n = t.next, n + 1 end
    return n, t.leaf
  end

  on_one_and_many("a table nested 4000 levels deep travels, or is refused with its place and depth", function()
    local deep = {}
    local cur = deep
    for _ = 1, 4000 do
      cur.next = {}
      cur = cur.next
    end
    cur.leaf = "bottom"
    local ok, n, leaf = pcall(function() return knhk.spawn(walk, deep):join() end)
    if ok then
      assert.equal(4000, n)
      assert.equal("bottom", leaf)
    else
      local msg = tostring(n)
      assert.matches("spawn: ", msg, 1, true)
      assert.matches("argument 1", msg, 1, true)
      assert.matches("nested deeper than %d+ levels", msg)
      assert.not_matches("stack overflow", msg, 1, true)
    end
  end)
end)

describe("the nesting limit", function()
  local function levels(n)
    local t = {}
    local cur = t
    for _ = 2, n do
      cur.x = {}
      cur = cur.x
    end
    cur.leaf = n
    return t
  end
  local function depth_of(t)
    local n = 1
    while t.x do t, n = t.x, n + 1 end
    return n, t.leaf
  end

  it("takes a table nested exactly as deep as the limit, and refuses one level more", function()
    local ok1, n, leaf, ok2, err = knhk.run(function()
      local ok1, n, leaf = pcall(function() return knhk.spawn(depth_of, levels(1000)):join() end)
      local ok2, err = pcall(knhk.spawn, depth_of, levels(1001))
      return ok1, n, leaf, ok2, err
    end, { workers = 2 })
    assert.is_true(ok1, tostring(n))
    assert.equal(1000, n)
    assert.equal(1000, leaf)
    assert.is_false(ok2)
    assert.matches("nested deeper than 1000 levels", tostring(err), 1, true)
  end)
end)

describe("encoding is re-entrant", function()
  -- An environment whose __index collects garbage: finalizers then run in
  -- the middle of the spawn's encoding, and each of them spawns too.
  local function gc_env()
    return setmetatable({}, { __index = function(_, k)
      for _ = 1, 20 do
        local u = newproxy(true)
        getmetatable(u).__gc = function() pcall(knhk.spawn, function() return "from gc" end, {}) end
      end
      collectgarbage()
      collectgarbage()
      if k == "marker" then return "outer" end
      return _G[k]
    end })
  end

  on_one_and_many("a __gc that spawns during a spawn does not corrupt it", function()
    for round = 1, 10 do
      local f = setfenv(function(t, r) return marker, #t, t[3][2], r end, gc_env())
      local big = {}
      for i = 1, 50 do big[i] = { i, tostring(i) } end
      local m, len, s, r = knhk.spawn(f, big, round):join()
      assert.same({ "outer", 50, "3", round }, { m, len, s, r })
    end
  end)

  on_one_and_many("a __gc that spawns disturbs neither the spawn it interrupts nor other tasks", function()
    -- Finalizers run wherever the collector steps: inside a task's spawns
    -- and joins (their spawn is that task's child), between tasks (no
    -- task is running: refused, see README), or in a task settling after
    -- it waited for its own children (refused: it is ending). Either way
    -- nothing else is touched, and what was spawned returns its own values.
    local from_gc, refused, wrong = {}, {}, 0
    for r = 1, 30 do
      for i = 1, 50 do
        local tag = r * 1000 + i
        getmetatable(newproxy(true)).__gc = function()
          local ok, h = pcall(knhk.spawn, function(k, s) return k, s end, tag, "s" .. tag)
          if ok then from_gc[#from_gc + 1] = { tag, h } else refused[#refused + 1] = tostring(h) end
        end
      end
      local t = {}
      for i = 1, 3000 do t[i] = { i, "x" } end
      local n, rr = knhk.spawn(function(x, v) return #x, v end, t, r):join()
      if n ~= 3000 or rr ~= r then wrong = wrong + 1 end
    end
    collectgarbage()
    collectgarbage()
    assert.equal(0, wrong)
    assert.equal(30 * 50, #from_gc + #refused) -- every finalizer ran once
    for _, msg in ipairs(refused) do
      assert.is_true(msg:find("knhk.spawn: must be called inside a knhk task", 1, true) ~= nil
        or msg:find("spawn: the task is ending: its own children were already waited for", 1, true) ~= nil,
        msg)
    end
    for _, p in ipairs(from_gc) do
      local k, s = p[2]:join()
      assert.equal(p[1], k)
      assert.equal("s" .. p[1], s)
    end
  end)

  on_one_and_many("an environment __index that waits during a spawn is harmless", function()
    local other_done = knhk.event()
    local env = setmetatable({}, { __index = function(_, k)
      other_done:wait() -- another spawn runs meanwhile, to its end
      return k == "lookup_me" and "found" or _G[k]
    end })
    local f = setfenv(function() return lookup_me end, env)
    local other
    knhk.nursery(function(n)
      n:spawn_local(function()
        other = knhk.spawn(function(v) return v end, "other"):join()
        other_done:set()
      end)
      assert.equal("found", knhk.spawn(f):join())
    end)
    assert.equal("other", other)
  end)
end)

-- A helper a task calls (an upvalue of the task's function) whose copies
-- cannot differ in behaviour is one closure per VM, so that the traces
-- LuaJIT records for it serve every task (lua/knhk/codec.lua, "Shared
-- closures"); any helper whose copies could differ stays a copy per task.
describe("helpers shared between tasks", function()
  local function same_on_one_worker(fn, n)
    local seen = {}
    knhk.run(function()
      for _ = 1, n or 8 do seen[knhk.spawn(fn):join()] = true end
    end, { workers = 1 })
    local k = 0
    for _ in pairs(seen) do k = k + 1 end
    return k
  end

  it("a recursive helper with no state is one closure in a VM, and computes the same", function()
    local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
    assert.equal(1, same_on_one_worker(function() return tostring(fib) end))
    knhk.run(function()
      for _ = 1, 3 do assert.equal(6765, knhk.spawn(function() return fib(20) end):join()) end
    end, { workers = 2 })
  end)

  -- helper() counts from 0 in state of its own: a closure per task, and
  -- each task's count starts again
  local function stays_a_copy_per_task(helper)
    assert.equal(8, same_on_one_worker(function() return tostring(helper) end))
    knhk.run(function()
      for _ = 1, 3 do assert.equal(1, knhk.spawn(function() return helper() end):join()) end
    end, { workers = 1 })
  end

  it("a helper whose upvalue is assigned stays a copy per task", function()
    local count = 0
    stays_a_copy_per_task(function() count = count + 1 return count end)
  end)

  it("a helper over a table stays a copy per task (the table is the task's own)", function()
    local t = { n = 0 }
    stays_a_copy_per_task(function() t.n = t.n + 1 return t.n end)
  end)

  it("two closures stay two, even of one content", function()
    local function make(k) return function() return k end end
    local gets = { make(0), make(1), make(1) }
    local seen = {}
    knhk.run(function()
      for i = 1, 9 do
        local get = gets[(i - 1) % 3 + 1]
        local v, name = knhk.spawn(function() return get(), tostring(get) end):join()
        assert.equal(get(), v)
        seen[name] = true
      end
      -- and in one task, as in the spawner
      local a, b = gets[2], gets[3]
      assert.same({ false, 2 }, { knhk.spawn(function()
        local reg = {}
        reg[a], reg[b] = "a", "b"
        local n = 0
        for _ in pairs(reg) do n = n + 1 end
        return a == b, n
      end):join() })
    end, { workers = 1 })
    local k = 0
    for _ in pairs(seen) do k = k + 1 end
    assert.equal(3, k)
  end)

  it("a helper reading a global sees the value of its own spawn", function()
    knhk.run(function()
      LIMIT_FOR_SPEC = 3
      local function limit() return LIMIT_FOR_SPEC end
      local a = knhk.spawn(function() return limit() end):join()
      LIMIT_FOR_SPEC = 4
      local b = knhk.spawn(function() return limit() end):join()
      LIMIT_FOR_SPEC = nil
      assert.same({ 3, 4 }, { a, b })
    end, { workers = 1 })
  end)

  it("a helper reading a global the task writes sees the task's write", function()
    knhk.run(function()
      local function limit() return LIMIT_FOR_SPEC end
      for i = 1, 3 do
        assert.equal(i, knhk.spawn(function(k) LIMIT_FOR_SPEC = k return limit() end, i):join())
      end
      assert.is_nil(LIMIT_FOR_SPEC)
    end, { workers = 1 })
  end)

  it("a helper that writes a global stays a copy per task", function()
    local function mark(v) LAST_FOR_SPEC = v return tostring(mark) end
    knhk.run(function()
      local names = {}
      for i = 1, 4 do names[knhk.spawn(function() return mark(i) end):join()] = true end
      local k = 0
      for _ in pairs(names) do k = k + 1 end
      assert.equal(4, k)
      assert.is_nil(LAST_FOR_SPEC)
    end, { workers = 1 })
  end)
end)

-- The same for a task's own function on the fast path (klua_core.c,
-- "Closures of a task's own function shared by content"). The functions
-- are made by loadstring: a spec's own functions have busted's environment,
-- which only the codec sends.
describe("a task's own function shared between its tasks", function()
  local core = require "knhk.core"
  local function fast(source) return assert(loadstring(source))() end

  -- How many closures ran 6 spawns of fn(i) on one worker, alive at once
  -- (each waits for the last; a task that has ended gives its closure to
  -- the next one). Each spawn is on the fast path (after a first one,
  -- which meets the builtins) unless `any_path`. fn(i, wait) -> name, ...
  local function distinct(fn, check, any_path)
    local seen, k = {}, 0
    knhk.run(function()
      local set, go = knhk.event(), knhk.event()
      set:set()
      knhk.spawn(fn, 0, set):join()
      local hs = {}
      for i = 1, 6 do
        local h = any_path and knhk.spawn(fn, i, go) or core.spawn(fn, i, go)
        assert.is_not.equal("number", type(h), "the spawn went to the codec")
        hs[i] = h
      end
      T.until_waiting(unpack(hs))
      go:set()
      for i = 1, 6 do
        local name, a, b = hs[i]:join()
        if check then check(i, a, b) end
        if not seen[name] then seen[name], k = true, k + 1 end
      end
    end, { workers = 1 })
    return k
  end

  it("is one closure in a VM when its copies cannot differ", function()
    local me = fast "local function me(x, go) go:wait() return tostring(me), x end return me"
    assert.equal(1, distinct(me, function(i, x) assert.equal(i, x) end))
  end)

  it("one per value of its upvalues and of the globals it reads", function()
    local make = fast [[return function(k)
      local function me(_, go) if go then go:wait() end return tostring(me), k, math.floor(2.5) end
      return me
    end]]
    local a, b = make(0), make(1)
    assert.equal(1, distinct(a, function(_, k, two) assert.same({ 0, 2 }, { k, two }) end))
    local names = {}
    knhk.run(function()
      for _ = 1, 3 do
        names[(knhk.spawn(a):join())] = true
        names[(knhk.spawn(b):join())] = true
      end
    end, { workers = 1 })
    local k = 0
    for _ in pairs(names) do k = k + 1 end
    assert.is_true(k >= 2)
    assert.is_true(k <= 4) -- the first of each may come through the codec
  end)

  it("is a copy per task when it writes a global", function()
    local me = fast [[local function me(_, go)
      COUNT_FOR_SPEC = (COUNT_FOR_SPEC or 0) + 1
      go:wait()
      return tostring(me), COUNT_FOR_SPEC
    end return me]]
    assert.equal(6, distinct(me, function(_, count) assert.equal(1, count) end))
    assert.is_nil(rawget(_G, "COUNT_FOR_SPEC"))
  end)

  it("is a copy per task when it reaches its environment (_G, getfenv)", function()
    local me = fast "local function me(_, go) go:wait() return tostring(me), _G ~= nil end return me"
    local me2 = fast [[local function me2(_, go) go:wait() return tostring(me2), getfenv(1) ~= nil end
      return me2]]
    assert.equal(6, distinct(me, nil, true)) -- (_G itself travels by the codec)
    assert.equal(6, distinct(me2))
  end)

  it("is a copy per task when an upvalue of it is assigned", function()
    local me = fast [[local n = 0
      local function me(_, go) n = n + 1 go:wait() return tostring(me), n end
      return me]]
    assert.equal(6, distinct(me, function(_, count) assert.equal(1, count) end))
  end)
end)

-- LuaJIT compiles an upvalue that is never assigned as a constant of the
-- closure its trace was recorded with: a closure the runtime gave to one
-- task and then another, re-armed with other upvalues, ran the first
-- one's values once its loop was compiled.
describe("upvalues under the JIT compiler", function()
  it("each task of a hot loop over an upvalue sees its own value", function()
    local make = assert(loadstring([[return function(k, tag)
      return function() local s = 0 for _ = 1, 3000 do s = s + k end WRITTEN_FOR_SPEC = s return s, #tag end
    end]]))()
    local long = string.rep("x", 300)
    knhk.run(function()
      for i = 1, 8 do
        -- a function that writes a global (never shared), then one whose
        -- upvalue is a long string (shared only by content it cannot key)
        assert.equal(3000 * i, (knhk.spawn(make(i, "t")):join()))
        assert.equal(3000 * i, (knhk.spawn(make(i, long)):join()))
      end
    end, { workers = 1 })
    assert.is_nil(rawget(_G, "WRITTEN_FOR_SPEC"))
  end)
end)

-- Found by an adversarial review of the shared closures: code that reaches
-- a function's environment or upvalues (getfenv, setfenv, debug, _G,
-- rawset on them, module, a module that reaches its caller's) must not
-- change what another task sees. Each case is a chunk (loadstring: the
-- globals environment, so the fast path is taken where it can be) run on
-- one worker, where shared closures would be one object.
describe("shared closures keep tasks apart", function()
  local cases = {
    { "a builtin held as an upvalue (getfenv)", "t1 orig orig", [[
      X = "orig"
      local getfenv = getfenv
      local function f(set) if set then rawset(getfenv(1), "X", set) end return X end
      knhk.spawn(f, false):join()
      return knhk.spawn(f, "t1"):join(), knhk.spawn(f, false):join(), knhk.spawn(f, false):join()]] },
    { "setfenv on a helper by the task", "hacked orig", [[
      X = "orig"
      local function helper() return X end
      local function task(mode) if mode then setfenv(helper, { X = "hacked" }) end return helper() end
      return knhk.spawn(task, true):join(), knhk.spawn(task, false):join()]] },
    { "a global written through _G, rawset and getfenv", "new new new new new new orig", [[
      X = "orig"
      local function helper() return X end
      local a, b = knhk.spawn(function(v) _G.X = v return helper(), X end, "new"):join()
      local c, d = knhk.spawn(function(v) rawset(_G, "X", v) return helper(), X end, "new"):join()
      local e, f = knhk.spawn(function(v) getfenv(1).X = v return helper(), X end, "new"):join()
      return a, b, c, d, e, f, X]] },
    { "a callback that reaches its caller's environment", "hacked orig", [[
      X = "orig"
      local function f(cb) cb() return X end
      return knhk.spawn(f, function() rawset(getfenv(2), "X", "hacked") end):join(),
        knhk.spawn(f, function() end):join()]] },
    { "debug held as an upvalue", "1 99 1", [[
      local dbg = require "debug"
      local k = 1
      local function f(set)
        if set then dbg.setupvalue(dbg.getinfo(1, "f").func, 2, set) end
        return k
      end
      return knhk.spawn(f, false):join(), knhk.spawn(f, 99):join(), knhk.spawn(f, false):join()]] },
    { "require 'debug' in the task", "orig t2 orig", [[
      X = "orig"
      local function f(set) if set then require("debug").getfenv(f).X = set end return X end
      return knhk.spawn(f, false):join(), knhk.spawn(f, "t2"):join(), knhk.spawn(f, false):join()]] },
    { "a module that writes its caller's environment", "orig t2 orig", [[
      local declare = require "declare_for_spec"
      X = "orig"
      local function f(v) if v then declare.set("X", v) end return X end
      return knhk.spawn(f, false):join(), knhk.spawn(f, "t2"):join(), knhk.spawn(f, false):join()]] },
    { "setfenv on a helper the spawner got back", "sandbox orig", [[
      X = "orig"
      local function helper() return X end
      local h = knhk.spawn(function() return helper end):join()
      setfenv(h, { X = "sandbox" })
      return h(), knhk.spawn(function() return helper() end):join()]] },
    { "debug.setupvalue on a helper the spawner got back", "42 1 1", [[
      local k = 1
      local function helper() return k end
      local h = knhk.spawn(function() return helper end):join()
      debug.setupvalue(h, 1, 42)
      return h(), helper(), knhk.spawn(function() return helper() end):join()]] },
    { "debug.setupvalue on a helper by the task", "5 1", [[
      local k = 1
      local function helper() return k end
      local function task(v) if v then debug.setupvalue(helper, 1, v) end return helper() end
      return knhk.spawn(task, 5):join(), knhk.spawn(task):join()]] },
    -- (a second review)
    { "setfenv reached through loadstring", "orig t2 orig", [[
      X = "orig"
      local function helper() return X end
      local function task(v)
        if v then loadstring("local h, v = ... setfenv(h, { X = v })")(helper, v) end
        return helper()
      end
      return knhk.spawn(task, false):join(), knhk.spawn(task, "t2"):join(), knhk.spawn(task, false):join()]] },
    { "setfenv reached through require('_G')", "orig t2 orig", [[
      X = "orig"
      local function helper() return X end
      local function task(v) if v then require("_G").setfenv(helper, { X = v }) end return helper() end
      return knhk.spawn(task, false):join(), knhk.spawn(task, "t2"):join(), knhk.spawn(task, false):join()]] },
    { "a module required in the task writes its caller's globals", "orig orig t3 orig orig", [[
      X = "orig"
      local function task(v) if v then require("declare_for_spec").set("X", v) end return X end
      local out = {}
      for _, v in ipairs { false, false, "t3", false, false } do out[#out + 1] = knhk.spawn(task, v):join() end
      return unpack(out)]] },
    { "a helper reads what a module wrote into its task's globals", "t1 t1 t2 t2 orig orig", [[
      local declare = require "declare_for_spec"
      X = "orig"
      local function helper() return X end
      local function task(v) if v then declare.set("X", v) end return helper(), X end
      local a, b = knhk.spawn(task, "t1"):join()
      local c, d = knhk.spawn(task, "t2"):join()
      local e, f = knhk.spawn(task, false):join()
      return a, b, c, d, e, f]] },
    { "a function received by channel is each receiver's own", "orig hacked orig 1 99 1", [[
      X = "orig"
      local k = 1
      local function helper() return X end
      local function getk() return k end
      local ch = knhk.channel(8)
      for _ = 1, 3 do ch:send(helper) end
      for _ = 1, 3 do ch:send(getk) end
      local r1 = knhk.spawn(function() return ch:recv()() end):join()
      local r2 = knhk.spawn(function() local f = ch:recv() setfenv(f, { X = "hacked" }) return f() end):join()
      local r3 = knhk.spawn(function() return ch:recv()() end):join()
      local r4 = knhk.spawn(function() return ch:recv()() end):join()
      local r5 = knhk.spawn(function() local f = ch:recv() debug.setupvalue(f, 1, 99) return f() end):join()
      local r6 = knhk.spawn(function() return ch:recv()() end):join()
      return r1, r2, r3, r4, r5, r6]] },
  }
  -- a module that writes its caller's globals (in package.preload: this
  -- spec makes no file, it runs where forking is not allowed)
  setup(function()
    package.preload.declare_for_spec = function()
      return { set = function(name, v) rawset(getfenv(2), name, v) end }
    end
  end)
  teardown(function()
    package.preload.declare_for_spec, package.loaded.declare_for_spec = nil, nil
  end)
  for _, case in ipairs(cases) do
    it(case[1], function()
      local chunk = assert(loadstring("local knhk = require 'knhk' return function() " .. case[3] .. " end"))()
      local ok, out = pcall(knhk.run, function()
        local res = { chunk() }
        for i = 1, #res do res[i] = tostring(res[i]) end
        return table.concat(res, " ")
      end, { workers = 1 })
      rawset(_G, "X", nil)
      assert.is_true(ok, tostring(out))
      assert.equal(case[2], out)
    end)
  end
end)
