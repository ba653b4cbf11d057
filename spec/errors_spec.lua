-- Errors a caller sees: where they point, and how they name what was wrong.
local knhk = require "knhk"

local function run(fn, workers) return knhk.run(fn, { workers = workers or 2 }) end

-- Calls fn, which must raise; returns the message and the line that
-- called into knhk (the `line` argument is that call's line).
local function raised(fn)
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local here = debug.getinfo(1, "S").short_src

describe("argument errors", function()
  -- each case: the call, on one line, and what the message must say
  local cases = {
    { function() knhk.sleep("x") end, "bad argument #1 to 'sleep' (number expected, got string)" },
    { function() knhk.sleep(0 / 0) end, "bad argument #1 to 'sleep' (number expected, got NaN)" },
    { function() knhk.channel(-1) end, "bad argument #1 to 'channel' (whole number >= 0 expected, got -1)" },
    { function() knhk.channel("3") end, "bad argument #1 to 'channel' (whole number >= 0 expected, got string)" },
    { function() knhk.channel(1.5) end, "bad argument #1 to 'channel' (whole number >= 0 expected, got 1.5)" },
    { function() knhk.semaphore(-2) end, "bad argument #1 to 'semaphore' (whole number >= 0 expected, got -2)" },
    { function() knhk.spawn(42) end, "bad argument #1 to 'spawn' (function expected, got number)" },
    { function() knhk.spawn_local({}) end, "bad argument #1 to 'spawn_local' (function expected, got table)" },
    { function() knhk.nursery(1) end, "bad argument #1 to 'nursery' (function expected, got number)" },
    { function() knhk.nursery(function() end, 5) end, "bad argument #2 to 'nursery' (options table expected, got number)" },
    { function() knhk.cancel_scope("f") end, "bad argument #1 to 'cancel_scope' (function expected, got string)" },
    { function() knhk.cancel_scope(print, { timeout = "1" }) end, "bad argument #2 to 'cancel_scope' (timeout: number expected, got string)" },
    { function() knhk.move_on_after(0 / 0, print) end, "bad argument #1 to 'move_on_after' (number expected, got NaN)" },
    { function() knhk.fail_after(1, nil) end, "bad argument #2 to 'fail_after' (function expected, got nil)" },
    { function() knhk.map(1, print) end, "bad argument #1 to 'map' (table expected, got number)" },
    { function() knhk.map({}, print, { limit = 0 }) end, "bad argument #3 to 'map' (limit: whole number >= 1 expected, got 0)" },
    { function() knhk.token(5) end, "bad argument #1 to 'token' (token expected, got number)" },
    { function() knhk.race(print, 3) end, "bad argument #2 to 'race' (function expected, got number)" },
    { function() knhk.select(7) end, "bad argument #1 to 'select' (table expected, got number)" },
    { function() knhk.exec(5) end, "bad argument #1 to 'exec' (string or argv table expected, got number)" },
    { function() knhk.exec("true", { timeout = 0 / 0 }) end, "bad argument #2 to 'exec' (timeout: number expected, got NaN)" },
  }

  for i, case in ipairs(cases) do
    it("point at the caller and say what was wrong: " .. case[2], function()
      run(function()
        local line = debug.getinfo(case[1], "S").linedefined
        local msg = raised(case[1])
        assert.equal(here .. ":" .. line .. ": " .. case[2], msg)
      end, 1)
    end)
  end

  it("knhk.run's own arguments point at its caller", function()
    local line = debug.getinfo(1, "l").currentline + 1
    local msg = raised(function() knhk.run(print, { workers = 0 }) end)
    assert.equal(here .. ":" .. line .. ": bad argument #2 to 'run' (workers: whole number in 1..256 expected, got 0)", msg)
  end)

  it("a task-only call outside a task points at its caller", function()
    local line = debug.getinfo(1, "l").currentline + 1
    local msg = raised(function() knhk.sleep(1) end)
    assert.equal(here .. ":" .. line .. ": knhk.sleep: must be called inside a knhk task (inside knhk.run)", msg)
  end)
end)

describe("errors from tasks", function()
  it("a stack overflow in a portable task says so, with the task's place", function()
    run(function()
      local function deep(n) return deep(n + 1) + 1 end
      local ok, err = pcall(function() return knhk.spawn(deep, 1):join() end)
      assert.is_false(ok)
      assert.is_true(knhk.is_task_error(err))
      local line = debug.getinfo(deep, "S").linedefined
      assert.matches("stack overflow", err.message, 1, true)
      assert.matches(here .. ":" .. line, tostring(err), 1, true)
      assert.not_matches("error in error handling", tostring(err), 1, true)
    end)
  end)

  it("joining a task that was cancelled raises an error knhk.is_cancelled recognises", function()
    run(function()
      local h = knhk.spawn(function() knhk.sleep(60) end)
      h:cancel()
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      assert.is_true(knhk.is_cancelled(err))
      assert.is_true(knhk.is_task_error(err)) -- the joiner itself was not cancelled
      assert.is_true(knhk.is_cancelled(err.value))
      assert.equal("explicit", err.value.reason)
      assert.matches("was cancelled", tostring(err), 1, true)
    end)
  end)

  it("a cancelled task's joiner learns why it was cancelled", function()
    local reason = run(function()
      local h
      knhk.move_on_after(0.01, function()
        h = knhk.spawn(function() knhk.sleep(60) end) -- cancelled with the scope it was spawned in
        knhk.sleep(60)
      end)
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      return err.value.reason
    end)
    assert.equal("deadline", reason)
  end)

  it("a Cancelled the task changed before ending travels whole to its joiner", function()
    local value = run(function()
      local h = knhk.spawn(function()
        local ok, e = pcall(knhk.sleep, 60)
        assert(not ok and knhk.is_cancelled(e))
        e.note = "seen by the task"
        error(e, 0)
      end)
      h:cancel()
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      return err.value
    end)
    assert.is_true(knhk.is_cancelled(value))
    assert.equal("seen by the task", value.note)
    assert.equal("explicit", value.reason)
  end)

  it("a joined task's cancellation does not cancel the joiner's nursery", function()
    local after = run(function()
      local n_after
      knhk.nursery(function(n)
        local h = n:spawn(function() knhk.sleep(60) end)
        h:cancel()
        local ok, err = pcall(h.join, h)
        assert.is_false(ok)
        assert.is_true(knhk.is_cancelled(err))
        knhk.sleep(0.001) -- a checkpoint: the nursery itself is not cancelled
        n_after = "still running"
      end)
      return n_after
    end)
    assert.equal("still running", after)
  end)
end)

describe("failures in the runtime's own bookkeeping", function()
  -- Runs a script in a fresh luajit, at most `limit` seconds; returns its
  -- output and exit code (124: it had to be killed).
  local function run_script(src, limit)
    local file = os.tmpname()
    local f = assert(io.open(file, "w"))
    f:write(src)
    f:close()
    local p = assert(io.popen(string.format("timeout %d luajit %s 2>&1; echo \"exit=$?\"", limit, file)))
    local out = p:read("*a")
    p:close()
    os.remove(file)
    return out, tonumber(out:match("exit=(%d+)%s*$"))
  end

  it("a __gc that raises while the runtime works (JIT off) fails the run with its message", function()
    local out, code = run_script([[
      local knhk = require "knhk"
      jit.off()
      local ok, err = pcall(knhk.run, function()
        for i = 1, 100 do
          local u = newproxy(true)
          getmetatable(u).__gc = function() error("boom in gc") end
        end
        for i = 1, 1000 do knhk.spawn(function() return { i } end):join() end
        return "done"
      end, { workers = 2 })
      io.stdout:write(tostring(ok), "\t", tostring(err), "\n")
    ]], 60)
    -- It ended by itself, within the minute, and said why: knhk.run
    -- failed with the message, or (when the finalizers ran only after the
    -- run, in the script's own code) the script did.
    assert.not_equal(124, code, out)
    assert.matches("boom in gc", out, 1, true)
    assert.not_matches("^true\t", out)
  end)
end)

