-- knhk.run: the root task, its results, its errors, and its options.
local knhk = require "knhk"

describe("knhk.run", function()
  it("runs main as the root task on worker 0 and returns its results", function()
    local a, b, w = knhk.run(function(x, y) return x + 1, y, knhk.current().worker end,
      { workers = 2 }, 41, "two")
    assert.equal(42, a)
    assert.equal("two", b)
    assert.equal(0, w)
  end)

  it("raises the root task's error with its message and traceback", function()
    local ok, err = pcall(knhk.run, function() error("broken root") end, { workers = 1 })
    assert.is_false(ok)
    assert.is_true(knhk.is_task_error(err))
    assert.matches("broken root", err.message)
    assert.matches("run_spec.lua", err.traceback)
  end)

  it("keeps the error value the root raised", function()
    local ok, err = pcall(knhk.run, function() error({ code = 7 }) end, { workers = 1 })
    assert.is_false(ok)
    assert.same({ code = 7 }, err.value)
  end)

  it("runs on every CPU by default: as many workers as /proc/cpuinfo lists processors", function()
    local f = assert(io.open "/proc/cpuinfo")
    local cpus = 0
    for line in f:lines() do
      if line:match "^processor%s*:" then cpus = cpus + 1 end
    end
    f:close()
    local saved = os.getenv "KNHK_WORKERS"
    assert.is_true(saved == nil or saved == "", "the spec runs with KNHK_WORKERS unset")
    assert.equal(math.max(cpus, 1), knhk.default_workers())
  end)

  it("can run again after a run ended", function()
    for i = 1, 3 do assert.equal(i, knhk.run(function() return i end, { workers = 2 })) end
  end)

  it("runs again in the memory an earlier run's task records had, and they start clean", function()
    -- A run's records are kept for the next run of the process (2 MB
    -- chunks): a big run, a small one that leaves most of a reused chunk
    -- untouched, then a big one again, with results that would show a
    -- record that kept something of its last run (and a run's end that
    -- freed a payload twice would abort).
    local function run(n, salt)
      return knhk.run(function()
        local hs = {}
        for i = 1, n do
          local spawn = i % 2 == 0 and knhk.spawn or knhk.spawn_local
          hs[i] = spawn(function(x, s) return x, s .. string.rep("x", x % 300) end, i, salt)
        end
        for i = 1, n do
          local x, s = hs[i]:join()
          assert(x == i and s == salt .. string.rep("x", i % 300), "task " .. i .. " of run " .. salt)
        end
        return knhk.stats().spawned
      end, { workers = 2 })
    end
    assert.equal(20001, run(20000, "a"))
    assert.equal(11, run(10, "b"))
    assert.equal(30001, run(30000, "c"))
  end)

  it("counts the record memory of live runtimes (malloc does not see it), none once they end",
    function()
      local K = require "knhk.ffi"
      local function in_use() return tonumber(K.C.klua_arena_in_use()) end
      assert.equal(0, in_use())
      local small, big = knhk.run(function()
        local small = in_use()
        local hs = {}
        for i = 1, 2000 do hs[i] = knhk.spawn_local(knhk.sleep, 0.001) end
        local big = in_use()
        for i = 1, 2000 do hs[i]:join() end
        return small, big
      end, { workers = 1 })
      assert.is_true(small > 0)
      assert.is_true(big - small >= 2000 * 256, "2000 waiting tasks: " .. (big - small) .. " bytes")
      assert.equal(0, in_use())
    end)

  it("refuses bad arguments with the caller's line", function()
    assert.has_error(function() knhk.run("nope") end,
      "bad argument #1 to 'run' (function or callable object expected, got string)")
    assert.has_error(function() knhk.run(function() end, 3) end,
      "bad argument #2 to 'run' (options table expected, got number)")
    assert.has_error(function() knhk.run(function() end, { workers = 0 }) end,
      "bad argument #2 to 'run' (workers: whole number in 1..256 expected, got 0)")
    assert.has_error(function() knhk.run(function() end, { workers = 1.5 }) end,
      "bad argument #2 to 'run' (workers: whole number in 1..256 expected, got 1.5)")
  end)

  it("defines no global knhk in any worker's VM: a plain program has none to give", function()
    local on_two_workers = require "two_workers"
    local a, b = knhk.run(function()
      local mod = require "fixtures.sees_global_knhk"
      return on_two_workers(function() return mod.seen() end)
    end, { workers = 2 })
    local seen = { [a[1]] = a[2], [b[1]] = b[2] }
    assert.same({ [0] = false, [1] = false }, seen)
  end)

  it("cannot be nested", function()
    local ok, err = pcall(knhk.run, function()
      return knhk.run(function() end)
    end, { workers = 1 })
    assert.is_false(ok)
    assert.matches("cannot be nested", tostring(err))
  end)

  it("says where task-only calls were made from outside a runtime", function()
    assert.has_error(function() knhk.sleep(0) end,
      "knhk.sleep: must be called inside a knhk task (inside knhk.run)")
    assert.has_error(function() knhk.spawn(print) end,
      "knhk.spawn: must be called inside a knhk task (inside knhk.run)")
    assert.has_error(function() knhk.stats() end,
      "knhk.stats: no runtime is running (call it inside knhk.run)")
  end)

  it("reports executor counters that reconcile", function()
    local s = knhk.run(function()
      local hs = {}
      for i = 1, 50 do hs[i] = knhk.spawn(function() return 1 end) end
      for _, h in ipairs(hs) do h:join() end
      return knhk.stats()
    end, { workers = 2 })
    assert.equal(2, s.workers)
    assert.equal(2, #s.per_worker)
    assert.is_true(s.spawned >= 51)
    assert.equal(s.spawned, s.completed + s.failed + s.cancelled + s.live)
  end)
end)
