-- The runtime's clock: real by default; virtual on request, where time
-- starts at 0, stands still while any task can run, and jumps to the next
-- timer as soon as every task waits. Every assertion here is on virtual
-- time (knhk.now()), never on wall time.
local knhk = require "knhk"
local P = require "knhk.patterns"

local HOUR = 3600

local function virtual(fn, workers)
  return knhk.run(fn, { clock = "virtual", workers = workers or 2 })
end

local waiting = require "waiting" -- tasks parked in a wait now

describe("knhk.run's clock option", function()
  it("is real by default", function()
    knhk.run(function()
      assert.equal("real", knhk.clock.kind())
      assert.is_true(knhk.now() > 0)
    end, { workers = 1 })
  end)

  it("takes \"virtual\", which starts at 0", function()
    virtual(function()
      assert.equal("virtual", knhk.clock.kind())
      assert.equal(0, knhk.now())
    end)
  end)

  it("refuses a clock it does not know, naming it", function()
    assert.has_error(function() knhk.run(function() end, { clock = "fast" }) end,
      "bad argument #2 to 'run' (clock: \"real\" or \"virtual\" expected, got 'fast')")
    assert.has_error(function() knhk.run(function() end, { clock = 1 }) end,
      "bad argument #2 to 'run' (clock: \"real\" or \"virtual\" expected, got number)")
  end)
end)

describe("a virtual clock", function()
  it("finishes a 72-hour sleep with knhk.now() at exactly 72 hours", function()
    local now = virtual(function()
      knhk.sleep(72 * HOUR)
      return knhk.now()
    end)
    assert.equal(72 * HOUR, now)
  end)

  it("ends move_on_after(72 h) at exactly 72 hours, the scope caught", function()
    local caught, now = virtual(function()
      local scope = knhk.move_on_after(72 * HOUR, function() knhk.sleep(math.huge) end)
      return scope.cancelled_caught, knhk.now()
    end)
    assert.is_true(caught)
    assert.equal(72 * HOUR, now)
  end)

  it("raises fail_after(72 h)'s TimeoutError at exactly 72 hours", function()
    local ok, e, now = virtual(function()
      local ok, e = pcall(knhk.fail_after, 72 * HOUR, function() knhk.sleep(100 * HOUR) end)
      return ok, e, knhk.now()
    end)
    assert.is_false(ok)
    assert.is_true(knhk.is_timeout(e))
    assert.equal(72 * HOUR, now)
  end)

  it("lets a step that ends in time leave its timeout behind: the clock does not go there", function()
    local now = virtual(function()
      knhk.fail_after(72 * HOUR, function() knhk.sleep(1) end)
      knhk.sleep(2)
      return knhk.now()
    end)
    assert.equal(3, now)
  end)

  it("treats a deadline at time 0 as due at once", function()
    local caught, now = virtual(function()
      local scope = knhk.move_on_after(0, function() knhk.sleep(5) end)
      local s2 = knhk.cancel_scope(function() knhk.sleep(5) end, { deadline = 0 })
      return scope.cancelled_caught and s2.cancelled_caught, knhk.now()
    end)
    assert.is_true(caught)
    assert.equal(0, now)
  end)

  it("wakes every sleeper at exactly its own deadline, earliest first", function()
    local got = virtual(function()
      local ch = knhk.channel(8)
      knhk.nursery(function(n)
        for _, d in ipairs { 50, 10, 40, 20, 30 } do
          n:spawn(function()
            knhk.sleep(d)
            ch:send { d = d, at = knhk.now() }
          end)
        end
      end)
      local out = {}
      for i = 1, 5 do out[i] = ch:recv() end
      return out
    end, 4)
    for i, want in ipairs { 10, 20, 30, 40, 50 } do
      assert.same({ d = want, at = want }, got[i])
    end
  end)

  it("never moves while a task is runnable: a sleeper waits for a long busy loop", function()
    local order, moved = virtual(function()
      local ch = knhk.channel(4)
      knhk.nursery(function(n)
        n:spawn(function()
          knhk.sleep(1)
          ch:send "slept"
        end)
        n:spawn(function()
          local moved = false
          for _ = 1, 20000 do
            knhk.checkpoint()
            if knhk.now() ~= 0 then moved = true end
          end
          ch:send(moved and "moved" or "busy done")
        end)
      end)
      local first = ch:recv()
      local second = ch:recv()
      return { first, second }, knhk.now()
    end)
    assert.same({ "busy done", "slept" }, order)
    assert.equal(1, moved)
  end)

  it("drives the patterns' timers: a deferred choice with a 3-day reminder", function()
    local r, now = virtual(function()
      local r = P.sequence{
        P.deferred_choice{
          { on = knhk.channel(1), run = P.task("answered", function() end) },
          { on = P.timer(72 * HOUR), run = P.task("reminded", function() end) },
        },
        P.simple_merge(),
      }:execute()
      return r, knhk.now()
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(72 * HOUR, now)
  end)
end)

describe("a virtual clock that can never move", function()
  it("reports the deadlock instead of hanging, and cancels the run", function()
    local cleaned = false
    local ok, err = pcall(virtual, function()
      local ok_, e = pcall(function() knhk.event():wait() end)
      cleaned = not ok_ and knhk.is_cancelled(e)
      error(e, 0)
    end)
    assert.is_false(ok)
    assert.matches("deadlock under the virtual clock: every task was waiting", tostring(err))
    assert.is_true(cleaned) -- the waiting task saw Cancelled: its cleanup ran
  end)

  it("reports the deadlock even when the root caught the Cancelled and returned", function()
    local caught
    local ok, err = pcall(virtual, function()
      local ok_, e = pcall(function() knhk.event():wait() end)
      caught = not ok_ and knhk.is_cancelled(e)
      return "finished anyway"
    end)
    assert.is_true(caught)
    assert.is_false(ok)
    assert.matches("deadlock under the virtual clock: every task was waiting", tostring(err))
  end)

  it("names the tasks that wait for ever, where they were spawned and by whom", function()
    local ok, err = pcall(virtual, function()
      knhk.nursery(function(n)
        n:spawn(function() knhk.event():wait() end)
        n:spawn_local(function() knhk.semaphore(0):acquire() end)
      end)
    end)
    assert.is_false(ok)
    local text = tostring(err)
    assert.matches("Waiting:\n  task %d+ %(function at [^)]*clock_spec%.lua:%d+, spawned by task %d+%) "
      .. "waiting [^\n]*, on worker %d", text)
    local lines = select(2, text:gsub("\n  task ", ""))
    assert.equal(3, lines) -- the two children and the root, which waits on them
  end)

  it("names the ten newest of many tasks that wait for ever, newest first, and counts the rest", function()
    local ok, err = pcall(virtual, function()
      knhk.nursery(function(n)
        for _ = 1, 14 do n:spawn_local(function() knhk.event():wait() end) end
      end)
    end, 2)
    assert.is_false(ok)
    local text = tostring(err)
    local ids = {}
    for id in text:gmatch("\n  task (%d+) ") do ids[#ids + 1] = tonumber(id) end
    assert.equal(10, #ids)
    for i = 2, #ids do assert.is_true(ids[i - 1] > ids[i], "newest first") end
    -- 15 wait (the 14 children and the root): ten named, five counted
    assert.matches("\n  and 5 more$", text)
  end)

  it("reports a deadlock in a shielded scope too: the shield is cancelled, as nothing else could end it", function()
    for workers = 1, 2 do
      local after
      local ok, err = pcall(virtual, function()
        knhk.move_on_after(1, function()
          pcall(knhk.sleep, 10)
          local scope = knhk.cancel_scope(function() knhk.event():wait() end, { shield = true })
          after = scope.cancelled_caught -- the shielded scope caught its own cancellation
        end)
      end, workers)
      assert.is_false(ok)
      assert.matches("deadlock under the virtual clock", tostring(err), 1, true)
      assert.matches("waiting for an event to be set", tostring(err), 1, true)
      assert.is_true(after)
    end
  end)

  it("says what each task waits for", function()
    local ok, err = pcall(virtual, function()
      local lock, tok = knhk.lock(), knhk.token()
      lock:acquire()
      local chans = { knhk.channel(1), knhk.channel(1) }
      local receiver = knhk.spawn_local(function() knhk.channel(0):recv() end)
      knhk.spawn_local(function() receiver:join() end)
      knhk.spawn_local(function() knhk.channel(0):send(1) end)
      knhk.spawn_local(function() lock:acquire() end)
      knhk.spawn_local(function() knhk.semaphore(0):acquire() end)
      knhk.spawn_local(function() knhk.event():wait() end)
      knhk.spawn_local(function() knhk.recv_any(chans) end)
      knhk.spawn_local(function() tok:wait() end)
      knhk.nursery(function(n) n:spawn_local(function() knhk.event():wait() end) end)
    end)
    assert.is_false(ok)
    local text = tostring(err)
    for _, what in ipairs({
      "waiting to receive on a channel", "waiting to send on a channel", "waiting to join task %d+",
      "waiting for a lock,",
      "waiting for a semaphore's permit", "waiting for an event to be set",
      "waiting to receive on any of several channels", "waiting for a token to be cancelled",
      "waiting for its nursery's children to end",
    }) do
      assert.matches("\n  task %d+ %([^\n]*%) " .. what, text)
    end
    assert.not_matches("waiting on worker", text)
  end)

  it("says a sleep of math.huge waits for ever", function()
    local ok, err = pcall(virtual, function() knhk.sleep(math.huge) end)
    assert.is_false(ok)
    assert.matches("waiting for ever (a sleep of math.huge)", tostring(err), 1, true)
  end)

  it("finds none while a timer is pending, however often it is asked", function()
    for workers = 1, 2 do
      for _ = 1, 50 do
        assert.equal(HOUR, virtual(function()
          knhk.sleep(HOUR)
          return knhk.now()
        end, workers))
      end
    end
  end)

  it("finds none while a task waits on another that sleeps", function()
    assert.equal(2 * HOUR, virtual(function()
      local ch = knhk.channel(0)
      knhk.spawn(function(c) knhk.sleep(2 * HOUR); c:send("late") end, ch)
      assert.equal("late", ch:recv())
      return knhk.now()
    end))
  end)
end)

describe("knhk.clock.advance", function()
  it("fires exactly the timers it made due, in order, before it returns", function()
    local got = virtual(function()
      local ch = knhk.channel(8)
      local fired = {}
      knhk.nursery(function(n)
        for _, d in ipairs { 5, 1, 3, 2 } do
          n:spawn(function()
            knhk.sleep(d)
            ch:send(d)
          end)
        end
        -- until the four sleep (time stands still: this task stays runnable)
        while waiting() < 4 do knhk.checkpoint() end
        knhk.clock.advance(3)
        fired.now = knhk.now()
        -- the woken sleepers are queued already: 1, 2 and 3 arrive without
        -- the clock moving; nothing else does
        for i = 1, 3 do fired[i] = ch:recv() end
        fired.still = knhk.now()
        fired[4] = ch:recv() -- every task waits: the clock jumps to 5
        fired.last = knhk.now()
      end)
      return fired
    end, 1)
    assert.equal(3, got.now)
    assert.same({ 1, 2, 3, 5 }, { got[1], got[2], got[3], got[4] })
    assert.equal(3, got.still)
    assert.equal(5, got.last)
  end)

  it("waits until those timers fired, letting tasks run: those it woke on its worker have run", function()
    local got = virtual(function()
      local woke, spins, never, seen = {}, 0, knhk.event(), nil
      knhk.nursery(function(n)
        for _, d in ipairs { 1, 2, 5 } do
          n:spawn_local(function()
            knhk.sleep(d)
            woke[d] = knhk.now()
            never:wait() -- its next wait, until the nursery is cancelled
          end)
        end
        local spinning = true
        n:spawn_local(function() -- a task that is ready throughout, woken by no timer
          while spinning do spins = spins + 1; knhk.checkpoint() end
        end)
        while waiting() < 3 do knhk.checkpoint() end
        local spins_before = spins
        knhk.clock.advance(3)
        -- (read before this task's next wait)
        seen = { woke[1], woke[2], woke[5], spins > spins_before, knhk.now() }
        spinning = false
        n:cancel()
      end)
      return seen
    end, 1)
    -- the sleepers of 1 and 2 ran, and saw the clock already at 3; the one
    -- of 5 still sleeps; the ready task ran while advance waited
    assert.same({ 3, 3, nil, true, 3 }, { got[1], got[2], got[3], got[4], got[5] })
  end)

  it("is not a cancellation point: in a cancelled scope it moves the clock and returns", function()
    local moved, caught = virtual(function()
      local at
      local scope = knhk.cancel_scope(function(s)
        s:cancel()
        knhk.clock.advance(2)
        at = knhk.now()
        knhk.checkpoint() -- where Cancelled is raised
        at = "after the checkpoint"
      end)
      return at, scope.cancelled_caught
    end, 1)
    assert.equal(2, moved)
    assert.is_true(caught)
  end)

  it("moves the clock by exactly the amount given, fractions included", function()
    local now = virtual(function()
      knhk.clock.advance(1.5)
      knhk.clock.advance(0)
      knhk.clock.advance(72 * HOUR)
      return knhk.now()
    end)
    assert.equal(72 * HOUR + 1.5, now)
  end)

  it("refuses a runtime on the real clock", function()
    knhk.run(function()
      assert.has_error(function() knhk.clock.advance(1) end,
        "knhk.clock.advance: the runtime's clock is real; run with { clock = \"virtual\" } "
        .. "to move time by hand")
    end, { workers = 1 })
  end)

  it("inside a C function that called back into Lua, is refused before the clock moves", function()
    local now, err = virtual(function()
      local ok, e = pcall(table.sort, { 3, 1, 2 }, function(a, b)
        knhk.clock.advance(1)
        return a < b
      end)
      assert.is_false(ok)
      return knhk.now(), e
    end)
    assert.equal(0, now)
    assert.matches("cannot wait here", err, 1, true)
  end)

  it("refuses what is not a number >= 0, in knhk.sleep's words", function()
    virtual(function()
      for _, bad in ipairs { { -1, "number >= 0", "-1" }, { 0 / 0, "number", "NaN" },
                             { "1", "number", "string" }, { nil, "number", "nil" } } do
        local want = "(" .. bad[2] .. " expected, got " .. bad[3] .. ")"
        assert.has_error(function() knhk.clock.advance(bad[1]) end,
          "bad argument #1 to 'advance' " .. want)
        assert.has_error(function() knhk.sleep(bad[1]) end, "bad argument #1 to 'sleep' " .. want)
      end
      -- beyond what the clock can show (nanoseconds in 64 bits)
      for _, big in ipairs { { math.huge, "inf" }, { 1e300, "1e+300" }, { 1.81e10, "18100000000" } } do
        assert.has_error(function() knhk.clock.advance(big[1]) end,
          "bad argument #1 to 'advance' (number that keeps the clock below 570 years expected, got "
            .. big[2] .. ")")
      end
      assert.equal(0, knhk.now())
      knhk.sleep(1) -- and the clock still moves
      assert.equal(1, knhk.now())
    end, 1)
  end)

  it("up to just short of never leaves what waits for never waiting", function()
    local now, caught = virtual(function()
      local never = knhk.spawn_local(function()
        return knhk.move_on_after(math.huge, function() knhk.event():wait() end).cancelled_caught
      end)
      knhk.checkpoint()
      knhk.clock.advance(1.79e10)
      local still = not never:done()
      never:cancel()
      return knhk.now(), still
    end, 1)
    assert.equal(1.79e10, now)
    assert.is_true(caught)
  end)

  it("and knhk.clock.kind refuse to run outside a runtime", function()
    assert.has_error(function() knhk.clock.advance(1) end,
      "knhk.clock.advance: no runtime is running (call it inside knhk.run)")
    assert.has_error(function() knhk.clock.kind() end,
      "knhk.clock.kind: no runtime is running (call it inside knhk.run)")
  end)
end)
