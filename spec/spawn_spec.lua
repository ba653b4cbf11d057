-- knhk.spawn / knhk.spawn_local and task handles: what a task sees, where
-- it runs, and what comes back.
local knhk = require "knhk"
local two_workers = require "two_workers"
local T = require "knhk.test"

local function run(fn, workers) return knhk.run(fn, { workers = workers or 2 }) end

-- Runs the same check on one worker (nothing moves) and on four (tasks are
-- stolen): snapshot semantics must not depend on where a task ran.
local function on_one_and_many(name, fn)
  it(name .. " (1 worker)", function() run(fn, 1) end)
  it(name .. " (4 workers)", function() run(fn, 4) end)
end

describe("knhk.spawn snapshots", function()
  on_one_and_many("copies arguments: the caller's later writes are not seen", function()
    local t, written = { n = 1 }, knhk.event()
    -- the task reads only after the caller's write
    local h = knhk.spawn(function(x, w) w:wait(); return x.n end, t, written)
    t.n = 2
    written:set()
    assert.equal(1, h:join())
  end)

  on_one_and_many("copies upvalues and the globals the function reads", function()
    local base = 10
    snapshot_global = 5
    local h = knhk.spawn(function(x) return x + base + snapshot_global end, 1)
    base, snapshot_global = 100, 500
    assert.equal(16, h:join())
  end)

  on_one_and_many("keeps cycles and shared references inside a table", function()
    local shared = { "s" }
    local t = { a = shared, b = shared }
    t.self = t
    local same, cyc = knhk.spawn(function(x) return x.a == x.b, x.self == x end, t):join()
    assert.is_true(same)
    assert.is_true(cyc)
  end)

  on_one_and_many("carries nested functions with their own snapshot", function()
    local k = 3
    local function mul(x) return x * k end
    local h = knhk.spawn(function(f, x) return f(x) end, mul, 7)
    assert.equal(21, h:join())
  end)

  on_one_and_many("carries recursive local functions", function()
    local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
    assert.equal(6765, knhk.spawn(fib, 20):join())
  end)

  on_one_and_many("writes a task makes stay its own", function()
    local t = { n = 0 }
    knhk.spawn(function() t.n = 99; written_global = 1 end):join()
    assert.equal(0, t.n)
    assert.is_nil(written_global)
  end)

  on_one_and_many("carries modules by require name", function()
    local cjson = require "cjson"
    local enc = cjson.encode
    local a, b = knhk.spawn(function() return cjson.encode({ 1 }), enc({ 2 }) end):join()
    assert.equal("[1]", a)
    assert.equal("[2]", b)
  end)

  on_one_and_many("carries the standard library by name", function()
    assert.equal("07", knhk.spawn(function() return string.format("%02d", 7) end):join())
  end)

  on_one_and_many("returns every result value, nils included", function()
    local a, b, c, d = knhk.spawn(function() return 1, nil, "x", nil end):join()
    assert.equal(1, a)
    assert.is_nil(b)
    assert.equal("x", c)
    assert.is_nil(d)
  end)

  on_one_and_many("carries plain values exactly, whether they fit the task's record or not", function()
    -- the record holds 32 bytes of them: lengths on both sides of that,
    -- in upvalues, arguments and results, for knhk.spawn and spawn_local
    -- (in _G's environment, as a program's code is: the spawn's fast path)
    for len = 0, 40, 3 do
      local s, flag = string.rep("u", len), len % 2 == 0
      local f = setfenv(function(x, y, z) return s, x, y, z, flag end, _G)
      for _, spawn in ipairs { knhk.spawn, knhk.spawn_local } do
        local a, b, c, d, e = spawn(f, len + 0.5, string.rep("a", len), nil):join()
        assert.equal(s, a)
        assert.equal(len + 0.5, b)
        assert.equal(string.rep("a", len), c)
        assert.is_nil(d)
        assert.equal(flag, e)
      end
    end
  end)

  on_one_and_many("runs many closures of one function independently", function()
    local hs, go = {}, knhk.event()
    -- all 200 suspended at once, then resumed together
    for i = 1, 200 do hs[i] = knhk.spawn(function(g) g:wait(); return i end, go) end
    go:set()
    for i = 1, 200 do assert.equal(i, hs[i]:join()) end
  end)

  it("runs tasks on other workers when there are several", function()
    local a, b = run(function()
      return two_workers(function() return knhk.current().worker end)
    end, 2)
    assert.are_not.equal(a[1], b[1])
  end)
end)

describe("knhk.spawn refusals", function()
  local function refusal(fn)
    local ok, err = pcall(run, fn, 1)
    assert.is_false(ok)
    return tostring(err)
  end

  it("names the argument that cannot travel", function()
    local msg = refusal(function()
      knhk.spawn(function() end, 1, io.stdout)
    end)
    assert.matches("spawn: argument 2 is a userdata", msg, 1, true)
  end)

  it("names the upvalue and the function's place", function()
    local msg = refusal(function()
      local conn = io.stdout
      knhk.spawn(function() return conn end)
    end)
    assert.matches("spawn: upvalue 'conn' of function at [^:]*spawn_spec.lua:%d+ of the task function is a userdata", msg)
  end)

  it("names the key path inside a table", function()
    local msg = refusal(function()
      knhk.spawn(function() end, { cfg = { co = coroutine.create(print) } })
    end)
    assert.matches("spawn: key 'co' of key 'cfg' of argument 1 is a thread", msg, 1, true)
  end)

  it("names a key by its kind when its value is only an address (a table as a key)", function()
    local msg = refusal(function()
      knhk.spawn(function() end, { [{ [true] = { [2.5] = coroutine.create(print) } }] = 1 })
    end)
    assert.matches("spawn: key 2.5 of key true of a table key of argument 1 is a thread", msg, 1, true)
    assert.is_nil(msg:find("table: 0x", 1, true))
  end)

  it("refuses tables with metatables it does not know", function()
    local msg = refusal(function()
      knhk.spawn(function() end, setmetatable({}, {}))
    end)
    assert.matches("metatable knhk does not know", msg, 1, true)
  end)

  it("refuses a non-function with Lua's own wording", function()
    local msg = refusal(function() knhk.spawn(42) end)
    assert.matches("bad argument #1 to 'spawn' (function or callable object expected, got number)", msg, 1, true)
  end)
end)

describe("knhk.spawn_local", function()
  it("shares memory with its spawner and stays on its worker", function()
    local shared, worker = { n = 0 }, nil
    run(function()
      local me = knhk.current().worker
      local hs = {}
      for i = 1, 10 do
        hs[i] = knhk.spawn_local(function() shared.n = shared.n + 1; return knhk.current().worker end)
      end
      for i = 1, 10 do assert.equal(me, hs[i]:join()) end
      worker = me
    end, 4)
    assert.equal(10, shared.n)
    assert.equal(0, worker)
  end)

  it("can yield and resume on its worker", function()
    local log = {}
    run(function()
      local fast_done = knhk.event()
      knhk.nursery(function(n)
        local slow = n:spawn_local(function()
          log[#log + 1] = "slow starts"
          fast_done:wait() -- yields; resumed once the other has run
          log[#log + 1] = "slow"
        end)
        n:spawn_local(function()
          T.until_waiting(slow)
          log[#log + 1] = "fast"
          fast_done:set()
        end)
      end)
    end, 2)
    assert.same({ "slow starts", "fast", "slow" }, log)
  end)

  -- A run of spawns of one function anchors it once (the runtime keeps
  -- count of the starts pending); another function spawned meanwhile gets
  -- its own anchor. Every task must still run its own function.
  it("runs each task's own function when spawns of several interleave", function()
    local order = { "f", "f", "g", "f", "g", "g", "h", "f", "f", "h", "g" }
    run(function()
      local fns = {
        f = function(i) return "f" .. i end,
        g = function(i) return "g" .. i end,
        h = function(i) return "h" .. i end,
      }
      for _ = 1, 3 do -- the runs end and begin again as the batches drain
        local hs = {}
        for i, name in ipairs(order) do hs[i] = knhk.spawn_local(fns[name], i) end
        for i, name in ipairs(order) do assert.equal(name .. i, hs[i]:join()) end
      end
    end, 2)
  end)

  it("runs the right function when a finalizer spawns amid a loop of spawns", function()
    run(function()
      local from_gc = {}
      local g = function(i) return "g" .. i end
      local f = function(i) return "f" .. i end
      local hs = {}
      for i = 1, 3000 do
        local p = newproxy(true)
        getmetatable(p).__gc = function() from_gc[#from_gc + 1] = knhk.spawn_local(g, i) end
        hs[i] = knhk.spawn_local(f, i)
        if i % 500 == 0 then collectgarbage("step", 50) end
      end
      collectgarbage()
      for i = 1, #hs do assert.equal("f" .. i, hs[i]:join()) end
      assert.is_true(#from_gc > 0, "no finalizer ran")
      for _, h in ipairs(from_gc) do assert.matches("^g%d+$", h:join()) end
    end, 1)
  end)

  for _, kind in ipairs { "spawn_local", "spawn" } do
    it("lets go of the function once its spawned tasks ran (" .. kind .. ")", function()
      local seen = setmetatable({}, { __mode = "k" })
      run(function()
        do
          local big = {}
          local f = function(i) return #big + i end
          seen[f] = true
          local hs = {}
          for i = 1, 100 do hs[i] = knhk[kind](f, i) end
          for i = 1, 100 do assert.equal(i, hs[i]:join()) end
        end
        collectgarbage()
        collectgarbage()
        assert.is_nil(next(seen), "the runtime still holds the spawned function")
      end, 1)
    end)
  end

  it("lets go of the function of a spawn refused (a closed nursery)", function()
    local seen = setmetatable({}, { __mode = "k" })
    run(function()
      local kept
      knhk.nursery(function(n) kept = n end)
      do
        local f = function() end
        seen[f] = true
        local ok, err = pcall(kept.spawn_local, kept, f)
        assert.is_false(ok)
        assert.matches("the nursery is closed", tostring(err))
        -- a spawn of the same function right after: the count started again
        assert.is_nil(knhk.spawn_local(f):join())
      end
      collectgarbage()
      collectgarbage()
      assert.is_nil(next(seen), "the runtime still holds the refused function")
    end, 1)
  end)
end)

describe("a task that waits from its own function", function()
  -- LuaJIT gives a coroutine a first stack of 376 bytes and doubles it
  -- (to 816) when a call of a C function finds too little of it free. A
  -- task that sleeps, or waits for an event, a permit, a token or a
  -- channel, right from its function keeps that first stack: a million
  -- sleeping tasks would otherwise cost ~440 MB more. Measured with the
  -- collector stopped (it would shrink grown stacks again), over enough
  -- tasks that LuaJIT compiles the path (its traces once made the stacks
  -- grow).
  local N = 3000
  local waits = { -- name = { the task's function, what it waits on }
    sleep = { function(started) started:release(); knhk.sleep(60) end },
    event = { function(started, ev) started:release(); ev:wait() end, knhk.event },
    permit = { function(started, sem) started:release(); sem:acquire() end,
      function() return knhk.semaphore(0) end },
    token = { function(started, tok) started:release(); tok:wait() end, knhk.token },
    channel = { function(started, ch) started:release(); ch:recv() end,
      function() return knhk.channel(0) end },
  }
  for name, case in pairs(waits) do
    it("keeps its coroutine's first stack: " .. name, function()
      local body, make = case[1], case[2]
      local per_task = run(function()
        local started, on = knhk.semaphore(0), make and make()
        return knhk.nursery(function(n)
          collectgarbage()
          collectgarbage("stop")
          local before = collectgarbage("count")
          for _ = 1, N do n:spawn_local(body, started, on) end
          for _ = 1, N do started:acquire() end
          local per = (collectgarbage("count") - before) * 1024 / N
          collectgarbage("restart")
          n:cancel()
          return per
        end)
      end, 1)
      -- a coroutine with its first stack is ~490 bytes, its handle and
      -- spawn ~90; with a grown stack the sum is ~1000
      assert.is_true(per_task < 750, string.format("%.0f bytes per waiting task", per_task))
    end)
  end
end)

describe("tasks one after another on a worker", function()
  it("a task's thread environment (setfenv(0, ...)) does not reach the next task", function()
    run(function()
      for _, spawn in ipairs { knhk.spawn_local, knhk.spawn } do
        spawn(loadstring("setfenv(0, { leaked = true })")):join()
        -- the next task reuses the coroutine: chunks it loads see the globals
        local h = spawn(loadstring("return loadstring('return leaked')()"))
        assert.is_nil(h:join())
      end
    end, 1)
  end)
end)

describe("task handles", function()
  it("join re-raises the task's error with its traceback", function()
    run(function()
      local h = knhk.spawn(function() local x; return x.y end)
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      assert.is_true(knhk.is_task_error(err))
      assert.matches("attempt to index", err.message)
      assert.matches("spawn_spec.lua", err.traceback)
    end)
  end)

  it("a task's traceback shows the program's frames, and no address of the runtime's", function()
    run(function()
      for _, spawn in ipairs { knhk.spawn, knhk.spawn_local } do
        local h = spawn(loadstring("error('boom')", "=boom"))
        local ok, err = pcall(h.join, h)
        assert.is_false(ok)
        assert.matches("boom:1:", err.traceback)
        assert.not_matches("0x%x+", err.traceback)
        assert.not_matches("builtin#", err.traceback)
        assert.not_matches("xpcall", err.traceback)
      end
    end)
  end)

  it("a joined failure is handled: the spawner does not raise it again", function()
    assert.equal("fine", run(function()
      local h = knhk.spawn(function() error("seen") end)
      pcall(h.join, h)
      return "fine"
    end))
  end)

  it("a failure nobody joined is raised when the spawner ends", function()
    local ok, err = pcall(run, function() knhk.spawn(function() error("unseen") end) end)
    assert.is_false(ok)
    assert.matches("unseen", tostring(err))
  end)

  it("a failure nobody joined is raised even among thousands that were joined", function()
    -- the joined ones are let go as more fail (below); the unjoined one stays
    local ok, err = pcall(run, function()
      for i = 1, 5000 do
        local h = knhk.spawn(function(k) error("failed " .. k) end, i)
        if i ~= 2500 then pcall(h.join, h) end
      end
    end)
    assert.is_false(ok)
    assert.matches("failed 2500", tostring(err))
    assert.not_matches("failed 2499", tostring(err))
  end)

  it("a failure that was joined is let go, not kept until its spawner ends", function()
    -- a sanitizer holds freed memory (quarantine, shadow): RSS says nothing there
    if (os.getenv("LD_PRELOAD") or ""):find("lib[at]san") then return end
    local function rss_kb()
      for line in io.lines("/proc/self/status") do
        local kb = line:match("^VmRSS:%s+(%d+)")
        if kb then return tonumber(kb) end
      end
    end
    local grew = run(function()
      local function fail_and_join(n)
        for _ = 1, n do
          local h = knhk.spawn(function() error("x") end)
          pcall(h.join, h)
        end
        collectgarbage()
        collectgarbage()
      end
      fail_and_join(10000) -- pools and heaps at their working size
      local before = rss_kb()
      fail_and_join(60000) -- each kept was ~640 bytes: 38 MB
      return rss_kb() - before
    end)
    assert.is_true(grew < 12 * 1024, ("RSS grew %d KB over 60000 joined failures"):format(grew))
  end)

  on_one_and_many("a task that fails cancels what it spawned, then ends with its error", function()
    local ev = knhk.event()
    local waiter
    local h = knhk.spawn(function(e)
      waiter = knhk.spawn_local(function() e:wait() end)
      knhk.spawn(function(e2) e2:wait() end, e)
      error("parent failed")
    end, ev)
    -- bounded: were the children left waiting, this would time out
    local ok, err = pcall(knhk.fail_after, 10, h.join, h)
    assert.is_false(ok)
    assert.is_false(knhk.is_timeout(err), "the failed task waited for its children")
    assert.matches("parent failed", tostring(err))
    assert.is_false(ev:is_set())
  end)

  it("knhk.run raises the root's error while a child it spawned waits", function()
    local ok, err = pcall(run, function()
      knhk.spawn(function(e) e:wait() end, knhk.event())
      error("root failed")
    end)
    assert.is_false(ok)
    assert.matches("root failed", tostring(err))
  end)

  it("done tells whether it ended; cancel ends it as cancelled", function()
    run(function()
      local h = knhk.spawn(function() knhk.sleep(60) end)
      assert.is_false(h:done())
      h:cancel()
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      assert.matches("was cancelled", err.message)
      assert.is_true(h:done())
    end)
  end)

  it("travel to other tasks, which can join them", function()
    assert.equal(12, run(function()
      local a = knhk.spawn(function() return 5 end)
      return knhk.spawn(function(h) return h:join() + 7 end, a):join()
    end))
  end)

  it("wake every joiner once when their scopes are cancelled as the task ends, and they go on to join others", function()
    -- The task ends on worker 1 while worker 0 runs its joiners, woken by
    -- their scopes' cancellation: each goes on and queues its wait on
    -- another task as the end still wakes the first list. Under
    -- ThreadSanitizer (this spec runs there) a waker that read a joiner's
    -- list node after letting go of the list's lock was a race; a wake-up
    -- lost either way hangs a round, which fail_after turns into an error.
    local rounds, joiners = 50, 64
    local total = knhk.run(function()
      return knhk.fail_after(120, function()
        local sum = 0
        for _ = 1, rounds do
          local started, go = knhk.event(), knhk.event()
          local target = knhk.spawn(function(s, g)
            s:set()
            while not g:is_set() do end -- holds worker 1 until the joiners wait
            return 1
          end, started, go)
          -- this worker stays busy until the task started: on the other one
          local deadline = os.clock() + 20
          while not started:is_set() do
            if os.clock() > deadline then error("no other worker ran the task", 0) end
          end
          local scopes, later, js, release = {}, {}, {}, knhk.event()
          for j = 1, joiners do
            later[j] = knhk.spawn_local(function() release:wait() return 1 end)
            js[j] = knhk.spawn_local(function()
              knhk.cancel_scope(function(scope)
                scopes[j] = scope
                target:join()
              end)
              return later[j]:join()
            end)
          end
          knhk.sleep(0) -- the joiners queue on the task
          -- their wake-ups queued here first, then the task ends there: both at once
          for j = 1, joiners do scopes[j]:cancel() end
          go:set()
          knhk.sleep(0.001) -- the joiners go on to wait for the others
          release:set()
          for j = 1, joiners do sum = sum + js[j]:join() end
          assert.equal(1, target:join())
        end
        return sum
      end)
    end, { workers = 2 })
    assert.equal(rounds * joiners, total)
  end)
end)

-- A join of a task that ended well with small plain results keeps them in
-- the handle and lets go of the task's record (it goes back to its pool
-- warm): the handle must go on behaving as the same handle.
describe("a handle after its task was joined", function()
  local kinds = { "spawn", "spawn_local" }
  for _, kind in ipairs(kinds) do
    it("joins again to the same results (" .. kind .. ")", function()
      run(function()
        local h = knhk[kind](function() return 1, nil, -0.0, true, "ok" end)
        local a, b, c, d, e = h:join()
        assert.same({ 1, nil, -0.0, true, "ok" }, { a, b, c, d, e })
        local n = select("#", h:join())
        assert.equal(5, n)
        local _, _, z = h:join()
        assert.equal(math.huge, 1 / -z) -- still -0.0
        assert.equal("ok", select(5, h:join()))
      end)
    end)

    it("joins again to the same single result, whatever it is (" .. kind .. ")", function()
      run(function()
        local nan_bits = knhk[kind](function() return 0 / 0 end)
        local v = nan_bits:join()
        assert.is_true(v ~= v)
        v = nan_bits:join()
        assert.is_true(v ~= v)
        for _, want in ipairs { -0.0, 2 ^ 53 + 2, -1.5, true, false } do
          local h = knhk[kind](function() return want end)
          assert.equal(want, h:join())
          local again = h:join()
          assert.equal(want, again)
          if want == 0 then assert.equal(-math.huge, 1 / again) end
        end
        local none = knhk[kind](function() end)
        assert.equal(0, select("#", none:join()))
        assert.equal(0, select("#", none:join()))
        local one_nil = knhk[kind](function() return nil end)
        assert.equal(1, select("#", one_nil:join()))
        assert.equal(1, select("#", one_nil:join()))
      end)
    end)

    it("gives every result, nils counted, whether the join waited or not (" .. kind .. ")", function()
      run(function()
        for _, wait in ipairs { false, true } do
          local function task(...)
            if wait then knhk.sleep(0.002) end
            return ...
          end
          for _, args in ipairs { { n = 0 }, { n = 1 }, { 7, n = 1 }, { n = 2 }, { nil, 8, n = 2 },
                                  { 1, 2, nil, n = 3 } } do
            local h = knhk[kind](task, unpack(args, 1, args.n))
            local got = { n = select("#", h:join()), h:join() }
            assert.same(args, got)
          end
        end
      end)
    end)

    it("keeps its id, and is done; cancel does nothing (" .. kind .. ")", function()
      run(function()
        local h = knhk[kind](function() return 42 end)
        local id, text = h:id(), tostring(h)
        assert.equal(42, h:join())
        assert.equal(id, h:id())
        assert.equal(text, tostring(h))
        assert.is_true(knhk.is_task(h))
        assert.is_true(h:done())
        h:cancel()
        assert.equal(42, h:join())
      end)
    end)
  end

  it("needs no finalizer once it kept the result; one again when it travels", function()
    run(function()
      local h = knhk.spawn(function() return 3 end)
      assert.is_function(debug.getmetatable(h).__gc)
      h:join()
      -- the record went back: the collector has nothing to release
      assert.is_nil(debug.getmetatable(h).__gc)
      assert.equal(4, knhk.spawn(function(x) return x:join() + 1 end, h):join())
      -- sent, it holds a record again, which its collection releases
      assert.is_function(debug.getmetatable(h).__gc)
      assert.equal(3, h:join())
      local bad = pcall(knhk.Task.join, setmetatable({}, debug.getmetatable(h)))
      assert.is_false(bad)
    end)
  end)

  it("travels to other tasks whatever it kept", function()
    assert.same({ 0, 1, 1, 1, 1 }, run(function()
      local hs = {
        knhk.spawn(function() end), knhk.spawn(function() return nil end),
        knhk.spawn(function() return false end), knhk.spawn(function() return true end),
        knhk.spawn(function() return 2.5 end),
      }
      for _, h in ipairs(hs) do h:join() end
      local counts = {}
      for i, h in ipairs(hs) do
        counts[i] = knhk.spawn(function(x) return select("#", x:join()) end, h):join()
      end
      assert.equal(2.5, knhk.spawn(function(x) return x:join() end, hs[5]):join())
      assert.is_false(knhk.spawn(function(x) return x:join() end, hs[3]):join())
      assert.is_true(knhk.spawn(function(x) return x:join() end, hs[4]):join())
      return counts
    end))
  end)

  it("travels to other tasks as an argument, an upvalue and in a table", function()
    assert.same({ 8, 9, 10, 11 }, run(function()
      local h = knhk.spawn(function() return 7 end)
      assert.equal(7, h:join())
      local as_arg = knhk.spawn(function(x) return x:join() + 1 end, h)
      local as_upvalue = knhk.spawn(function() return h:join() + 2 end)
      local in_table = knhk.spawn(function(t) return t.h:join() + 3 end, { h = h })
      local local_arg = knhk.spawn_local(function(x) return x:join() + 4 end, h)
      return { as_arg:join(), as_upvalue:join(), in_table:join(), local_arg:join() }
    end))
  end)

  it("travels through a channel and keeps its id there", function()
    run(function()
      local h = knhk.spawn(function() return "sent" end)
      h:join()
      local ch = knhk.channel(1)
      local other = knhk.spawn(function(c)
        local got = c:recv()
        return got:join(), got:id()
      end, ch)
      ch:send(h)
      local v, id = other:join()
      assert.equal("sent", v)
      assert.equal(h:id(), id)
    end)
  end)

  it("keeps results it cannot hold in the task's record", function()
    run(function()
      local long = string.rep("x", 100)
      local h = knhk.spawn(function() return long, { 1, 2 } end)
      local s, t = h:join()
      assert.equal(long, s)
      assert.same({ 1, 2 }, t)
      local s2, t2 = h:join()
      assert.equal(long, s2)
      assert.same({ 1, 2 }, t2)
      -- a handle among the results: every join gets it, working
      local handle_result = knhk.spawn(function() return knhk.channel(1) end)
      local c1 = handle_result:join()
      assert.equal(c1, handle_result:join())
      c1:send("still open")
      assert.equal("still open", handle_result:join():recv())
      local in_table = knhk.spawn(function() return { ch = knhk.channel(1) } end)
      local c2 = in_table:join().ch
      assert.equal(c2, in_table:join().ch)
      c2:send("here")
      assert.equal("here", in_table:join().ch:recv())
    end)
  end)

  it("belongs to its knhk.run still once that run ended", function()
    local h = run(function()
      local h = knhk.spawn(function() return 1 end)
      h:join()
      return h
    end)
    run(function()
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      assert.matches("belongs to a knhk.run that has ended", tostring(err))
    end)
  end)

  it("a joined task's failure still raises at every join", function()
    run(function()
      local h = knhk.spawn(function() error("boom") end)
      assert.is_false(pcall(h.join, h))
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      assert.matches("boom", tostring(err.message or err))
    end)
  end)
end)

-- knhk.tasks() (and the REPL's :tasks, a stall's report, knhk.test's
-- leftovers) lists a task from its spawn: queued, on no worker yet, until
-- it starts.
describe("knhk.tasks", function()
  it("lists a task from its spawn, queued until it starts, then where it waits", function()
    run(function()
      local go = knhk.event()
      local h = knhk.spawn(function(e) e:wait() end, go)
      local local_h = knhk.spawn_local(function(e) e:wait() end, go)
      local function row(id)
        for _, r in ipairs(knhk.tasks()) do
          if r.id == id then return r end
        end
      end
      for _, id in ipairs { h:id(), local_h:id() } do
        local r = assert(row(id), "a task just spawned is listed")
        assert.same({ "queued", -1 }, { r.state, r.worker })
      end
      T.until_waiting(h, local_h)
      assert.equal("waiting", row(h:id()).state)
      assert.equal(0, row(local_h:id()).worker)
      go:set()
      h:join()
      local_h:join()
      assert.is_nil(row(h:id()))
      assert.is_nil(row(local_h:id()))
    end, 1)
  end)

  -- A worker takes a task, then starts it: its first run records the
  -- worker (a worker's first task opens its VM in between). A listing
  -- taken in that moment must not show it running on no worker. Each
  -- round is a fresh runtime, whose other workers open their VMs while
  -- the lister, on worker 0, lists.
  it("never lists a task running or waiting on no worker, while many tasks start", function()
    local odd = {}
    for _ = 1, 20 do
      knhk.run(function()
        local stop = knhk.event()
        local lister = knhk.spawn_local(function(ev)
          local seen = {}
          while not ev:is_set() do
            for _, r in ipairs(knhk.tasks()) do
              if r.state ~= "queued" and r.worker < 0 then
                seen[#seen + 1] = string.format("task %d (%s) %s on worker -1", r.id, r.where, r.state)
              end
            end
            knhk.sleep(0)
          end
          return seen
        end, stop)
        knhk.nursery(function(n)
          for i = 1, 100 do n:spawn(function(x) if x % 3 == 0 then knhk.sleep(0) end return x end, i) end
        end)
        stop:set()
        for _, s in ipairs(lister:join()) do odd[#odd + 1] = s end
      end, { workers = 3 })
    end
    assert.same({}, odd)
  end)
end)

-- A snapshot refused after it had taken references to handles (a channel,
-- an event, a token, a task or a nursery before the value it refuses) is
-- never made, so nothing owns those references: the refusal gives them
-- back. Kept, they kept their objects for ever (the run of this spec
-- under AddressSanitizer reported them as leaked; a workflow's dynamic
-- instances hit it, their state table holding channels and an event).
describe("a spawn refused after its snapshot took handles", function()
  it("gives their references back, and the handles go on working", function()
    local answers = knhk.run(function()
      local ch, ev, tok = knhk.channel(1), knhk.event(), knhk.token()
      local h = knhk.spawn(function() return 1 end)
      for _ = 1, 3 do
        local ok, err = pcall(knhk.spawn, function() end, ch, ev, tok, h, io.stdout)
        assert.is_false(ok)
        assert.matches("spawn: argument 5 is a userdata", tostring(err), 1, true)
      end
      knhk.nursery(function(n)
        local ok, err = pcall(n.spawn, n, function() end, n, io.stdout)
        assert.is_false(ok)
        assert.matches("spawn: argument 2 is a userdata", tostring(err), 1, true)
      end)
      ch:send(7)
      ev:set()
      tok:cancel()
      return { ch:recv(), ev:is_set(), tok:is_cancelled(), h:join() }
    end, { workers = 2 })
    assert.same({ 7, true, true, 1 }, answers)
  end)
end)
