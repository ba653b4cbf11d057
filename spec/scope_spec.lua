-- Cancel scopes: Trio semantics. Cancelled unwinds to the scope that was
-- cancelled and is caught there; checkpoints are level-triggered.
local knhk = require "knhk"
local T = require "knhk.test"

local function run(fn, workers) return knhk.run(fn, { workers = workers or 2 }) end

describe("knhk.cancel_scope", function()
  it("scope:cancel() makes the next checkpoint raise, caught by the scope", function()
    run(function()
      local after = false
      local scope = knhk.cancel_scope(function(s)
        s:cancel()
        knhk.checkpoint()
        after = true
      end)
      assert.is_false(after)
      assert.is_true(scope.cancel_called)
      assert.is_true(scope.cancelled_caught)
    end)
  end)

  it("returns the function's results when it was not cancelled", function()
    run(function()
      local scope, a, b = knhk.cancel_scope(function() return 1, 2 end)
      assert.is_false(scope.cancelled_caught)
      assert.equal(1, a)
      assert.equal(2, b)
    end)
  end)

  it("is level-triggered: a checkpoint after catching Cancelled raises again", function()
    run(function()
      local second = nil
      knhk.cancel_scope(function(s)
        s:cancel()
        local ok, e = pcall(knhk.checkpoint)
        assert.is_true(knhk.is_cancelled(e))
        local ok2, e2 = pcall(knhk.sleep, 0)
        second = knhk.is_cancelled(e2)
      end)
      assert.is_true(second)
    end)
  end)

  it("nested deadlines: the outer, earlier one wins and the outer scope catches", function()
    run(function()
      local inner_scope
      local t0 = knhk.now()
      local outer = knhk.cancel_scope(function()
        inner_scope = knhk.cancel_scope(function() knhk.sleep(10) end, { timeout = 5 })
      end, { timeout = 0.02 })
      assert.is_true(outer.cancelled_caught)
      assert.is_nil(inner_scope) -- the inner never returned: Cancelled went past it
      assert.is_true(knhk.now() - t0 < 4)
    end)
  end)

  it("nested deadlines: an inner, earlier one is caught by the inner scope", function()
    run(function()
      local inner
      local outer = knhk.cancel_scope(function()
        inner = knhk.cancel_scope(function() knhk.sleep(10) end, { timeout = 0.01 })
      end, { timeout = 5 })
      assert.is_true(inner.cancelled_caught)
      assert.is_false(outer.cancelled_caught)
    end)
  end)

  it("shield: cancellation from outside does not reach inside", function()
    run(function()
      local finished = false
      local outer = knhk.move_on_after(0.005, function()
        knhk.cancel_scope(function() knhk.sleep(0.03); finished = true end, { shield = true })
        knhk.checkpoint() -- back outside the shield: the outer cancellation applies
      end)
      assert.is_true(finished)
      assert.is_true(outer.cancelled_caught)
    end)
  end)

  it("cancellation reaches tasks spawned inside the scope", function()
    run(function()
      local saw
      knhk.cancel_scope(function(s)
        knhk.nursery(function(n)
          n:spawn_local(function()
            local ok, e = pcall(knhk.sleep, 60)
            saw = knhk.is_cancelled(e)
            error(e, 0)
          end)
          knhk.sleep(0.005)
          s:cancel()
        end)
      end)
      assert.is_true(saw)
    end)
  end)

  it("checks its arguments", function()
    run(function()
      assert.has_error(function() knhk.cancel_scope(1) end,
        "bad argument #1 to 'cancel_scope' (function or callable object expected, got number)")
      assert.has_error(function() knhk.cancel_scope(function() end, { timeout = "x" }) end,
        "bad argument #2 to 'cancel_scope' (timeout: number expected, got string)")
    end)
  end)

  it("refuses a negative or NaN timeout in knhk.sleep's words, and takes a past deadline", function()
    run(function()
      assert.has_error(function() knhk.cancel_scope(function() end, { timeout = -1 }) end,
        "bad argument #2 to 'cancel_scope' (timeout: number >= 0 expected, got -1)")
      assert.has_error(function() knhk.cancel_scope(function() end, { timeout = 0 / 0 }) end,
        "bad argument #2 to 'cancel_scope' (timeout: number expected, got NaN)")
      -- a deadline is a time on the clock, not a duration: one already past is due
      local past = knhk.cancel_scope(function() knhk.sleep(10) end, { deadline = knhk.now() - 5 })
      assert.is_true(past.cancelled_caught)
    end)
  end)

  it("takes a timeout of 0 (due at once) and math.huge (never), as knhk.sleep takes them", function()
    run(function()
      local now = knhk.cancel_scope(function() knhk.checkpoint() end, { timeout = 0 })
      assert.is_true(now.cancelled_caught)
      local never, r = knhk.cancel_scope(function() knhk.sleep(0.001); return "done" end,
        { timeout = math.huge })
      assert.is_false(never.cancel_called)
      assert.equal("done", r)
    end)
  end)
end)

describe("knhk.move_on_after and knhk.fail_after", function()
  it("a deadline already past is seen by the first checkpoint, not by a later wait", function()
    for _, clock in ipairs { "real", "virtual" } do
      knhk.run(function()
        local steps = 0
        local ok, err = pcall(knhk.fail_after, 0, function()
          knhk.checkpoint()
          steps = steps + 1
          return "finished"
        end)
        assert.is_false(ok, clock)
        assert.is_true(knhk.is_timeout(err), clock)
        local s = knhk.move_on_after(0, function() knhk.sleep(0); steps = steps + 1 end)
        assert.is_true(s.cancelled_caught, clock)
        s = knhk.cancel_scope(function()
          for _ = 1, 3 do knhk.checkpoint(); steps = steps + 1 end
        end, { deadline = knhk.now() - 1 })
        assert.is_true(s.cancelled_caught, clock)
        assert.equal(0, steps, clock)
      end, { workers = 2, clock = clock })
    end
  end)

  it("move_on_after stops the work and moves on", function()
    run(function()
      local scope, r = knhk.move_on_after(0.01, function() knhk.sleep(10); return "never" end)
      assert.is_true(scope.cancelled_caught)
      assert.is_nil(r)
    end)
  end)

  it("says cancel_called once its deadline has passed, as once cancel() was called", function()
    run(function()
      local timed = knhk.move_on_after(0.01, function() knhk.sleep(10) end)
      assert.is_true(timed.cancel_called)
      local by_timeout = knhk.cancel_scope(function() knhk.sleep(10) end, { timeout = 0.01 })
      assert.is_true(by_timeout.cancel_called)
      local in_time = knhk.move_on_after(10, function() end)
      assert.is_false(in_time.cancel_called)
      assert.is_false(in_time.cancelled_caught)
      -- an outer scope's deadline is not this one's
      local inner
      local outer = knhk.move_on_after(0.01, function()
        knhk.cancel_scope(function(sc) inner = sc; knhk.sleep(10) end)
      end)
      assert.is_true(outer.cancel_called and outer.cancelled_caught)
      assert.is_false(inner.cancel_called)
    end)
  end)

  it("refuse a negative or NaN duration as knhk.sleep does, at the caller's line", function()
    run(function()
      local function refusal(f, ...)
        local ok, err = pcall(f, ...)
        assert.is_false(ok)
        return err
      end
      local line = debug.getinfo(1, "l").currentline + 1
      local errs = { refusal(function() knhk.move_on_after(-1, function() end) end),
                     refusal(function() knhk.fail_after(-1, function() end) end),
                     refusal(function() knhk.sleep(-1) end),
                     refusal(function() knhk.move_on_after(0 / 0, function() end) end),
                     refusal(function() knhk.fail_after(0 / 0, function() end) end),
                     refusal(function() knhk.sleep(0 / 0) end) }
      local here = debug.getinfo(1, "S").short_src
      for i, f in ipairs { "move_on_after", "fail_after", "sleep" } do
        assert.equal(string.format("%s:%d: bad argument #1 to '%s' (number >= 0 expected, got -1)",
          here, line + i - 1, f), errs[i])
        assert.equal(string.format("%s:%d: bad argument #1 to '%s' (number expected, got NaN)",
          here, line + i + 2, f), errs[i + 3])
      end
    end)
  end)

  it("take 0 (due at once) and math.huge (never), as knhk.sleep takes them", function()
    run(function()
      assert.is_true(knhk.move_on_after(0, knhk.checkpoint).cancelled_caught)
      assert.is_true(knhk.is_timeout(select(2, pcall(knhk.fail_after, 0, knhk.checkpoint))))
      local scope, r = knhk.move_on_after(math.huge, function() knhk.sleep(0.001); return "done" end)
      assert.same({ false, "done" }, { scope.cancel_called, r })
      assert.equal("done", knhk.fail_after(math.huge, function() knhk.sleep(0.001); return "done" end))
    end)
  end)

  it("move_on_after passes results through when in time", function()
    run(function()
      local scope, r = knhk.move_on_after(5, function(x) return x end, "in time")
      assert.is_false(scope.cancelled_caught)
      assert.equal("in time", r)
    end)
  end)

  it("fail_after raises a TimeoutError that is told apart from other errors", function()
    run(function()
      local ok, e = pcall(knhk.fail_after, 0.01, knhk.sleep, 10)
      assert.is_false(ok)
      assert.is_true(knhk.is_timeout(e))
      assert.is_false(knhk.is_cancelled(e))
      assert.matches("timed out after 0.01 s", tostring(e))
    end)
  end)

  it("fail_after returns the results when in time", function()
    run(function()
      assert.equal(7, knhk.fail_after(5, function() return 7 end))
    end)
  end)

  it("fail_after lets other errors through unchanged", function()
    run(function()
      local ok, e = pcall(knhk.fail_after, 5, function() error("own error", 0) end)
      assert.is_false(ok)
      assert.equal("own error", e)
    end)
  end)
end)

describe("knhk.sleep and knhk.now", function()
  it("sleep(0) lets the other tasks of its worker run (a loop of it does not starve them)", function()
    local ran = run(function()
      local flag = false
      knhk.spawn_local(function() flag = true end)
      local t0 = knhk.now()
      while not flag and knhk.now() - t0 < 2 do knhk.sleep(0) end
      return { zero = flag }
    end, 1)
    assert.is_true(ran.zero)
  end)

  it("refuses a negative duration", function()
    run(function()
      local ok, err = pcall(knhk.sleep, -1)
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'sleep' %(number >= 0 expected, got %-1%)", err)
    end)
  end)

  it("sleep(0) is a checkpoint: it raises Cancelled in a cancelled scope", function()
    local caught = run(function()
      return knhk.cancel_scope(function(s) s:cancel(); knhk.sleep(0) end).cancelled_caught
    end)
    assert.is_true(caught)
  end)

  it("sleep waits at least the time asked", function()
    run(function()
      local t0 = knhk.now()
      knhk.sleep(0.02)
      assert.is_true(knhk.now() - t0 >= 0.02)
    end)
  end)

  it("100k tasks sleep at once and all wake", function()
    local n = run(function()
      local woke = 0
      knhk.nursery(function(nur)
        for _ = 1, 100000 do
          nur:spawn_local(function() knhk.sleep(0.05); woke = woke + 1 end)
        end
      end)
      return woke
    end, 1)
    assert.equal(100000, n)
  end)

  it("wakes a sleep only when its time has come, or when it is cancelled", function()
    run(function()
      local ev = knhk.event()
      local h = knhk.spawn_local(function()
        local t0 = knhk.now()
        knhk.sleep(0.05)
        return knhk.now() - t0
      end)
      knhk.sleep(0.01)
      assert.is_false(h:done())
      assert.is_true(h:join() >= 0.05)
      local c = knhk.spawn_local(function() knhk.sleep(3600) end)
      knhk.sleep(0.01)
      c:cancel()
      local ok, err = pcall(c.join, c)
      assert.is_false(ok)
      assert.is_true(knhk.is_cancelled(err.value))
      ev:set()
    end, 1)
  end)

  it("checks its argument", function()
    run(function()
      assert.has_error(function() knhk.sleep("1") end,
        "bad argument #1 to 'sleep' (number expected, got string)")
    end)
  end)
end)

describe("cancel tokens", function()
  it("child tokens follow their parent; cancelling a child leaves the parent", function()
    run(function()
      local root = knhk.token()
      local a, b = root:child(), root:child()
      a:cancel()
      assert.is_true(a:is_cancelled())
      assert.is_false(root:is_cancelled())
      assert.is_false(b:is_cancelled())
      root:cancel()
      assert.is_true(b:is_cancelled())
    end)
  end)

  it("are usable from tasks on any worker, which wait for them", function()
    local woke = run(function()
      local tok = knhk.token()
      local hs = {}
      knhk.nursery(function(n)
        for i = 1, 8 do hs[i] = n:spawn(function(t) t:wait(); return true end, tok) end
        knhk.sleep(0.01)
        tok:cancel()
      end)
      local count = 0
      for _, h in ipairs(hs) do if h:join() then count = count + 1 end end
      return count
    end, 4)
    assert.equal(8, woke)
  end)

  it("waiting on a token is itself cancellable", function()
    run(function()
      local tok = knhk.token()
      local scope = knhk.move_on_after(0.01, function() tok:wait() end)
      assert.is_true(scope.cancelled_caught)
      assert.is_false(tok:is_cancelled())
    end)
  end)

  it("refuses a parent that is not a token", function()
    run(function()
      assert.has_error(function() knhk.token({}) end,
        "bad argument #1 to 'token' (token expected, got table)")
    end)
  end)
end)

-- A cancelled task that waits is ended without being resumed when nothing
-- between its wait and its start could catch Cancelled; otherwise it is
-- resumed and the error unwinds through the task's own handlers. These
-- cases pin down that the shortcut never skips code the task would run.
describe("cancelling tasks that wait", function()
  -- Runs waits(seen) in a task, cancels it once it waits (or, for a task
  -- that never blocks, once started(seen) holds), and returns `seen`.
  local function cancelled_while(waits, started)
    return run(function()
      local seen = {}
      local h = knhk.spawn_local(function() waits(seen) end)
      if started then
        while not started(seen) do knhk.checkpoint() end
      else
        T.until_waiting(h)
      end
      h:cancel()
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      assert.is_true(knhk.is_cancelled(err))
      return seen
    end)
  end

  it("a pcall around the wait catches the Cancelled", function()
    local seen = cancelled_while(function(seen)
      local ok, e = pcall(knhk.sleep, 60)
      seen.caught = not ok and knhk.is_cancelled(e)
      error(e, 0)
    end)
    assert.is_true(seen.caught)
  end)

  it("a pcall several calls below the wait catches it", function()
    local seen = cancelled_while(function(seen)
      local function deep(n) if n == 0 then return knhk.sleep(60) end deep(n - 1) end
      local ok = pcall(function() deep(10) end)
      seen.caught = not ok
      knhk.checkpoint() -- level-triggered: raises again
      seen.after = true
    end)
    assert.is_true(seen.caught)
    assert.is_nil(seen.after)
  end)

  it("an xpcall handler runs for a join that is cancelled", function()
    local seen = cancelled_while(function(seen)
      local other = knhk.spawn(function() knhk.sleep(60) end)
      xpcall(function() other:join() end, function(e) seen.handled = knhk.is_cancelled(e) end)
      other:cancel()
      knhk.checkpoint() -- the task's scope is still cancelled: it ends here
    end)
    assert.is_true(seen.handled)
  end)

  it("a wait inside a metamethod unwinds through the caller's pcall", function()
    local seen = cancelled_while(function(seen)
      local lazy = setmetatable({}, { __index = function() knhk.sleep(60) end })
      seen.caught = not pcall(function() return lazy.x end)
      knhk.checkpoint()
    end)
    assert.is_true(seen.caught)
  end)

  it("a cancel scope around the wait records that it caught the cancellation", function()
    local seen = cancelled_while(function(seen)
      local sc = knhk.cancel_scope(function(s)
        s:cancel()
        knhk.sleep(60)
      end)
      seen.caught = sc.cancelled_caught
      knhk.sleep(60) -- the task's own cancellation ends it here
    end)
    assert.is_true(seen.caught)
  end)

  it("a task cancelled at a plain checkpoint ends there", function()
    local seen = cancelled_while(function(seen)
      while true do
        seen.turns = (seen.turns or 0) + 1
        knhk.checkpoint()
      end
    end, function(seen) return seen.turns ~= nil end)
    assert.is_true(seen.turns >= 1)
  end)

  it("a cancelled task that spawned ends only after its children did", function()
    local seen = run(function()
      local seen = {}
      local h = knhk.spawn_local(function()
        knhk.spawn_local(function()
          pcall(knhk.sleep, 60)
          seen.child_ended = true
        end)
        knhk.sleep(60)
      end)
      T.until_waiting(h)
      h:cancel()
      pcall(h.join, h)
      seen.at_join = seen.child_ended
      return seen
    end)
    assert.is_true(seen.at_join)
  end)

  it("many tasks asleep in portable and local kinds all end cancelled", function()
    local counts = run(function()
      local kinds = { spawn = 0, spawn_local = 0 }
      knhk.nursery(function(n)
        for i = 1, 2000 do
          n[i % 2 == 0 and "spawn" or "spawn_local"](n, function() knhk.sleep(60) end)
        end
        knhk.sleep(0.02)
        n:cancel()
      end)
      local st = knhk.stats()
      kinds.cancelled = st.cancelled
      return kinds
    end)
    assert.is_true(counts.cancelled >= 2000)
  end)
end)

describe("after a scope was cancelled", function()
  -- Each case is bounded by fail_after: a hang fails as a timeout.
  it("a task spawned after a timed-out scope runs and is joined", function()
    local got = run(function()
      return knhk.fail_after(5, function()
        knhk.move_on_after(0.02, function()
          knhk.spawn(function() return "inside" end):join()
          knhk.sleep(60)
        end)
        return knhk.spawn(function() return "after" end):join()
      end)
    end)
    assert.equal("after", got)
  end)

  it("a task spawned inside a scope whose deadline had passed is cancelled, and joins", function()
    local ok, e = run(function()
      return knhk.fail_after(5, function()
        local h
        knhk.cancel_scope(function() h = knhk.spawn(function() return 1 end) end,
          { deadline = knhk.now() - 1 })
        local ok, e = pcall(h.join, h)
        return ok, e
      end)
    end)
    -- a portable task cancelled before it starts ends cancelled; one that
    -- ran first may have completed: either way the join returns
    if ok then assert.equal(1, e) else assert.is_true(knhk.is_cancelled(e)) end
  end)

  it("a task spawned after its scope's deadline passed while busy joins", function()
    local ok, e = run(function()
      return knhk.fail_after(5, function()
        local h
        knhk.cancel_scope(function()
          local t0 = knhk.now()
          while knhk.now() - t0 < 0.01 do end -- busy past the deadline, no checkpoint
          h = knhk.spawn(function() return 1 end)
        end, { timeout = 0.001 })
        return pcall(h.join, h)
      end)
    end)
    if ok then assert.equal(1, e) else assert.is_true(knhk.is_cancelled(e)) end
  end)

  it("a wait inside a global's __index during a spawn's snapshot is cancelled, not swallowed", function()
    local seen = run(function()
      local seen = {}
      local env = setmetatable({}, { __index = function(_, k)
        if k == "cfg" then knhk.sleep(60); return "loaded" end
      end })
      local f = setfenv(function() return cfg end, env) -- luacheck: ignore
      local t0 = knhk.now()
      local scope = knhk.move_on_after(0.02, function()
        seen.handle = knhk.spawn(f)
        seen.after_spawn = true
      end)
      seen.caught = scope.cancelled_caught
      seen.elapsed = knhk.now() - t0
      return seen
    end)
    assert.is_true(seen.caught)
    assert.is_nil(seen.after_spawn) -- the spawn raised Cancelled: no task took a nil cfg
    assert.is_nil(seen.handle)
    assert.is_true(seen.elapsed < 5)
  end)
end)

describe("a cancel scope given to a portable task", function()
  it("is refused, saying it belongs to the task that opened it; spawn_local shares it", function()
    run(function()
      knhk.cancel_scope(function(scope)
        local ok, err = pcall(knhk.spawn, function() scope:cancel() end)
        assert.is_false(ok)
        assert.matches("upvalue 'scope' .* is a cancel scope, which cannot be sent to another worker",
          tostring(err))
        assert.no.matches("register_class", tostring(err), 1, true)
        knhk.spawn_local(function() scope:cancel() end):join()
        knhk.checkpoint()
        error("the scope shared with spawn_local was not cancelled")
      end)
    end)
  end)
end)
