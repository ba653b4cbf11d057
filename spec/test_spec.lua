-- knhk.test: wrapping a spec's body in a runtime, seeded schedules,
-- exploring seeds, and the workflow assertions.
local knhk = require "knhk"
local T = require "knhk.test"
local ffi = require "ffi"
local on_two_workers = require "two_workers"

ffi.cdef [[
int setenv(const char *name, const char *value, int overwrite);
int unsetenv(const char *name);
]]

-- The line of the caller, so a message can be checked for it.
local function here() return debug.getinfo(2, "l").currentline end

-- The message an assertion failed with (busted raises it in a table).
local function failed_with(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "the assertion did not fail")
  return type(err) == "table" and err.message or err
end

-- Runs a wrapped body as busted would, and returns its failure (nil if
-- it passed).
local function failure_of(fn, opts)
  local ok, err = pcall(T.wrap(fn, opts))
  if ok then return nil end
  return type(err) == "table" and err.message or err
end

describe("knhk.test inside a runtime", function()
  it("refuses to run a body from inside knhk.run, saying why", function()
    local ok, err = pcall(knhk.run, function()
      return T.wrap(function() end)()
    end, { workers = 1 })
    assert.is_false(ok)
    assert.matches("knhk.test.wrap: its function must be called outside knhk.run", tostring(err), 1, true)
    ok, err = pcall(knhk.run, function()
      return T.explore(function() end, { runs = 2 })()
    end, { workers = 1 })
    assert.is_false(ok)
    assert.matches("knhk.test.explore: its function must be called outside knhk.run", tostring(err), 1, true)
  end)
end)

describe("knhk.test.wrap", function()
  it("runs the body as the root task of a fresh runtime, with the options given", function()
    local seen
    T.wrap(function(...)
      seen = { task = knhk.current(), workers = knhk.stats().workers, args = select("#", ...) }
    end, { workers = 3 })()
    assert.equal(0, seen.task.worker)
    assert.equal(3, seen.workers)
    assert.has_error(function() knhk.stats() end) -- torn down: no runtime is left
  end)

  it("passes when the body returns and every task it started has ended", function()
    assert.is_nil(failure_of(function()
      local h = knhk.spawn(function(x) return x + 1 end, 1)
      assert.equal(2, h:join())
      knhk.nursery(function(n) n:spawn(knhk.checkpoint) end)
    end, { workers = 2 }))
  end)

  it("fails the test with the body's error and the traceback of where it was raised", function()
    local line
    local err = failure_of(function()
      line = here(); error("the payment step broke")
    end)
    -- it starts with the body's place, where busted shows the failure
    assert.matches("^[^\n]*test_spec%.lua:%d+: the test body failed with .*test_spec%.lua:%d+: "
      .. "the payment step broke", err)
    assert.matches("stack traceback:", err)
    assert.matches("test_spec%.lua:" .. line .. ":", err:match("stack traceback:.*"))
  end)

  it("fails with every member of an error group, each with its own traceback", function()
    local l1, l2
    local err = failure_of(function()
      knhk.nursery(function(n)
        n:spawn_local(function() l1 = here(); error("reserve stock failed") end)
        n:spawn_local(function() l2 = here(); error("charge card failed") end)
      end)
    end, { workers = 1 })
    assert.matches("an error group of 2 errors:", err)
    assert.matches("%[1%] ", err)
    assert.matches("%[2%] ", err)
    assert.matches("reserve stock failed\n%s*stack traceback:\n.-test_spec%.lua:" .. l1 .. ":", err)
    assert.matches("charge card failed\n%s*stack traceback:\n.-test_spec%.lua:" .. l2 .. ":", err)
  end)

  it("shows an error raised with a table value", function()
    local err = failure_of(function() error({ code = 7 }) end)
    assert.matches("an error raised with a table value: { code = 7 }", err, 1, true)
  end)

  it("fails on a task the body left running, naming it, and cancels it", function()
    local line
    local err = failure_of(function()
      local never = knhk.event()
      line = here(); knhk.spawn(function(ev) ev:wait() end, never)
    end, { workers = 1 })
    -- the run ended although nothing sets the event: the task was cancelled
    assert.matches("the test body returned with 1 task not ended", err, 1, true)
    assert.matches("task %d+ %(function at .*test_spec%.lua:" .. line .. ", spawned by task %d+%): portable, "
      .. "on worker 0, waiting", err)
  end)

  it("names what a leftover task on the body's worker waits for, and whether it is local or portable", function()
    local lines = {}
    local err = failure_of(function()
      local never = knhk.event()
      lines[1] = here(); knhk.spawn(function(ev) ev:wait() end, never)
      lines[2] = here(); knhk.spawn_local(function() knhk.sleep(math.huge) end)
      knhk.checkpoint() -- (both start, and wait)
    end, { workers = 1 })
    assert.matches("returned with 2 tasks not ended", err, 1, true)
    local at = "task %d+ %(function at [^\n]*test_spec%.lua:"
    assert.matches(at .. lines[1] .. ", spawned by task %d+%): portable, on worker 0, waiting for an event "
      .. "to be set\n", err)
    assert.matches(at .. lines[2] .. ", spawned by task %d+%): local, on worker 0, waiting for ever %(a "
      .. "sleep of math.huge%)$", err)
  end)

  it("says of a leftover task on another worker only what holds while it runs", function()
    local line
    local err = failure_of(function()
      -- one task on each worker (each waits, without yielding, until the
      -- other has started), then both wait for ever
      local never, started = knhk.event(), { knhk.event(), knhk.event() }
      local function meet(mine, other, ev)
        mine:set()
        local deadline = os.clock() + 20
        while not other:is_set() and os.clock() < deadline do end
        ev:wait()
      end
      line = here(); knhk.spawn(meet, started[1], started[2], never)
      knhk.spawn(meet, started[2], started[1], never)
      while not (started[1]:is_set() and started[2]:is_set()) do knhk.checkpoint() end
    end, { workers = 2 })
    assert.matches("returned with 2 tasks not ended", err, 1, true)
    -- what the task on worker 1 does is what was seen of it; what it waits
    -- for is not read (it could be ending that wait meanwhile)
    assert.matches("%): portable, on worker 1, seen %a+\n", err .. "\n")
    assert.matches("%): portable, on worker 0, waiting for an event to be set", err)
    assert.is_nil(err:match("on worker 1, seen [^\n]*for"))
  end)

  it("names a leftover task that computes between checkpoints at once, not after it ran on", function()
    local start = os.clock()
    local err = failure_of(function()
      knhk.spawn(function()
        while true do
          local slice = os.clock() + 0.0002
          repeat until os.clock() > slice
          knhk.checkpoint()
        end
      end)
      knhk.checkpoint() -- (it starts)
    end, { workers = 1 })
    assert.is_true(os.clock() - start < 2, "the body's end waited on the task")
    assert.matches("%): portable, on worker 0, ready to run$", err)
  end)

  it("reports a leftover task besides the body's own error", function()
    local err = failure_of(function()
      local never = knhk.event()
      knhk.spawn_local(function() never:wait() end)
      knhk.checkpoint()
      error("gave up")
    end, { workers = 1 })
    assert.matches("the test body failed with .*gave up", err)
    assert.matches("returned with 1 task not ended", err, 1, true)
  end)

  it("refuses a bad body or bad options at the call, in Lua's words", function()
    assert.has_error(function() T.wrap(42) end,
      "bad argument #1 to 'wrap' (function or callable object expected, got number)")
    assert.has_error(function() T.wrap(print, "fast") end,
      "bad argument #2 to 'wrap' (options table expected, got string)")
    assert.has_error(function() T.wrap(print, { workers = 0 }) end,
      "bad argument #2 to 'wrap' (workers: whole number in 1..256 expected, got 0)")
    assert.has_error(function() T.wrap(print, { seed = 1, workers = 4 }) end,
      "bad argument #2 to 'wrap' (seed: a seeded schedule runs on 1 worker, got workers = 4)")
    assert.has_error(function() T.wrap(print, { clock = "virtul" }) end,
      "bad argument #2 to 'wrap' (clock: \"real\" or \"virtual\" expected, got 'virtul')")
  end)
end)

-- busted tells a failed assertion (a Failure) from an error the code did
-- not expect (an Error) by the error object: luassert raises a table with
-- busted's failure metatable. What a wrapped body raised, and how busted
-- would classify it.
local function classified(fn, opts)
  local ok, err = pcall(T.wrap(fn, opts))
  assert.is_false(ok, "the body passed")
  local mt = getmetatable(err)
  local kind = type(mt) == "table" and mt.__type == "failure" and "Failure" or "Error"
  return kind, type(err) == "table" and tostring(err.message) or tostring(err)
end

describe("a failed assertion in a task, under knhk.test", function()
  -- each: a body whose task fails an assertion on line `line` (known
  -- here: a portable task's writes to an upvalue stay its own)
  local line = here() + 1
  local function fails() assert.equal(3, 2) end

  local ways = {
    ["the body itself"] = function() fails() end,
    ["a spawn_local task"] = function() knhk.spawn_local(fails):join() end,
    ["a nursery's spawn_local child"] = function()
      knhk.nursery(function(n) n:spawn_local(fails) end)
    end,
    ["a portable task"] = function() knhk.spawn(fails):join() end,
    ["a nursery's child"] = function() knhk.nursery(function(n) n:spawn(fails) end) end,
    ["knhk.map"] = function() knhk.map({ 1 }, fails) end,
  }
  for name, body in pairs(ways) do
    it("in " .. name .. " is reported as a Failure, at the assertion's line", function()
      local kind, msg = classified(body, { workers = 2 })
      assert.equal("Failure", kind, msg)
      assert.matches("test_spec%.lua:" .. line .. ": Expected objects to be equal", msg)
    end)
  end

  -- luassert is loaded afresh in another worker's VM, where busted does not
  -- run: there too its failed assertion is a Failure
  for worker = 0, 1 do
    it("in a portable task on worker " .. worker .. " is reported as a Failure", function()
      -- (two tasks that can only both finish on two workers: a task left
      -- to land on worker 1 by chance often did not, on a busy machine)
      local kind, msg = classified(function()
        on_two_workers(function(w)
          if knhk.current().worker == w then assert.is_true(false) end
        end, worker)
        error("no task ran on worker " .. worker)
      end, { workers = 2 })
      assert.equal("Failure", kind, msg)
      assert.matches("Expected objects to be the same", msg, 1, true)
    end)
  end

  it("stays an Error when a task's error is not an assertion", function()
    local kind = classified(function() knhk.spawn(function() error("broke") end):join() end,
      { workers = 2 })
    assert.equal("Error", kind)
  end)
end)

-- ------------------------------------------------------------ schedules

-- Four tasks run three steps each; step(id, n, out) records a step in the
-- channel out: the order of the records is the interleaving.
local function recorded(step)
  local ch = knhk.channel(64)
  knhk.nursery(function(n)
    for i = 1, 4 do
      n:spawn(function(id, out, each)
        for k = 1, 3 do each(id, k, out) end
      end, i, ch, step)
    end
  end)
  ch:close()
  local events = {}
  for e in ch:values() do events[#events + 1] = e end
  return table.concat(events, " ")
end

-- Each step recorded, then the others may run.
local function interleaving()
  return recorded(function(id, k, out)
    out:send(id .. "." .. k)
    knhk.checkpoint()
  end)
end

describe("seeded schedules", function()
  it("run on one worker", function()
    local workers
    T.wrap(function() workers = knhk.stats().workers end, { seed = 5 })()
    assert.equal(1, workers)
    assert.equal(1, knhk.run(function() return knhk.stats().workers end, { seed = 5 }))
  end)

  it("give the same interleaving for the same seed", function()
    for seed = 1, 10 do
      local first = knhk.run(interleaving, { seed = seed })
      assert.equal(12, select(2, first:gsub("%S+", "")))
      assert.equal(first, knhk.run(interleaving, { seed = seed }))
      local wrapped
      T.wrap(function() wrapped = interleaving() end, { seed = seed })()
      assert.equal(first, wrapped)
    end
  end)

  it("give different interleavings for different seeds", function()
    local seen, distinct = {}, 0
    for seed = 1, 10 do
      local trace = knhk.run(interleaving, { seed = seed })
      if not seen[trace] then distinct = distinct + 1 end
      seen[trace] = true
    end
    assert.is_true(distinct >= 8, "only " .. distinct .. " distinct interleavings in 10 seeds")
  end)

  -- Four tasks wake from sleeps that end at the same virtual instants and
  -- record each step with the time it saw: timer wake-ups are part of
  -- the interleaving, and under the virtual clock reproducible too.
  local function timed_interleaving()
    return recorded(function(id, k, out)
      knhk.sleep(k == 2 and 1 or 0.5)
      out:send(id .. "." .. k .. "@" .. knhk.now())
    end)
  end

  -- Timers that fire at one virtual instant wake their tasks one by one:
  -- the seeded worker gathers them only once the whole jump has arrived
  -- (knhk_executor_batch_begin/end around it), so they are one choice.
  it("give the same event list for the same seed under the virtual clock, timer wake-ups included", function()
    local seen, distinct = {}, 0
    for seed = 1, 10 do
      local opts = { seed = seed, clock = "virtual" }
      local first = knhk.run(timed_interleaving, opts)
      assert.equal(12, select(2, first:gsub("%S+", "")))
      for _, t in ipairs { "0.5", "1.5", "2" } do
        assert.equal(4, select(2, first:gsub("@" .. t:gsub("%.", "%%.") .. "%f[%s%z]", "")), first)
      end
      for _ = 1, 3 do assert.equal(first, knhk.run(timed_interleaving, opts)) end
      if not seen[first] then distinct = distinct + 1 end
      seen[first] = true
    end
    -- the seed picks among tasks a timer woke at one instant, too
    assert.is_true(distinct >= 5, "only " .. distinct .. " distinct event lists in 10 seeds")
  end)

  it("follow KNHK_SEED when it is set, whatever the body's own seed", function()
    local expected = knhk.run(interleaving, { seed = 42 })
    ffi.C.setenv("KNHK_SEED", "42", 1)
    local got
    local ok, err = pcall(T.wrap(function() got = interleaving() end, { seed = 7 }))
    ffi.C.setenv("KNHK_SEED", "not a seed", 1)
    local ok2, err2 = pcall(T.wrap(function() end))
    ffi.C.unsetenv("KNHK_SEED")
    assert.is_true(ok, tostring(err))
    assert.equal(expected, got)
    assert.is_false(ok2)
    assert.matches("KNHK_SEED must be a whole number in 0..2^53, got 'not a seed'", err2, 1, true)
  end)

  it("refuse a seed with several workers, or a seed that is not a whole number", function()
    assert.has_error(function() knhk.run(print, { seed = 1, workers = 2 }) end,
      "bad argument #2 to 'run' (seed: a seeded schedule runs on 1 worker, got workers = 2)")
    assert.has_error(function() knhk.run(print, { seed = 1.5 }) end,
      "bad argument #2 to 'run' (seed: whole number in 0..9007199254740992 expected, got 1.5)")
  end)
end)

-- ------------------------------------------------------------- explore

-- Two withdrawals of 60 from 100. The first checks the balance, then
-- takes the money after a checkpoint; the second gets to its withdrawal
-- after three steps of other work. If it lands between the first one's
-- check and update, the account is overdrawn: an ordering bug that only
-- some interleavings show (about one seed in ten).
local function withdrawals(lock)
  local account = { balance = 100 }
  local function guarded(fn) if lock then lock:with(fn) else fn() end end
  knhk.nursery(function(n)
    n:spawn_local(function()
      guarded(function()
        if account.balance >= 60 then
          knhk.checkpoint()
          account.balance = account.balance - 60
        end
      end)
    end)
    n:spawn_local(function()
      for _ = 1, 3 do knhk.checkpoint() end
      guarded(function()
        if account.balance >= 60 then account.balance = account.balance - 60 end
      end)
    end)
  end)
  if account.balance < 0 then error("overdrawn: balance " .. account.balance) end
end
local function racy_withdrawals() withdrawals(nil) end
-- The same, with each check and its update under one lock: no seed fails.
local function locked_withdrawals() withdrawals(knhk.lock()) end

describe("knhk.test.explore", function()
  it("finds a planted ordering bug within 100 seeds and names the first seed that fails", function()
    local ok, err = pcall(T.explore(racy_withdrawals, { runs = 100 }))
    assert.is_false(ok)
    err = type(err) == "table" and err.message or err
    local seed = tonumber(err:match(
      "^[^\n]*test_spec%.lua:%d+: knhk%.test%.explore: seed (%d+) failed %(run %d+ of 100%)"))
    assert.is_number(seed, err)
    assert.matches("overdrawn: balance %-%d+", err)
    assert.matches("\nreplay: [^\n]+$", err)
    -- it is the first: every seed before it passes, and it fails again alone
    for s = 1, seed - 1 do assert.is_nil(failure_of(racy_withdrawals, { seed = s })) end
    assert.matches("overdrawn", failure_of(racy_withdrawals, { seed = seed }))
  end)

  it("starts from opts.seed and counts its runs from there", function()
    local _, err = pcall(T.explore(racy_withdrawals))
    err = type(err) == "table" and err.message or err
    local bad = tonumber(err:match("seed (%d+) failed"))
    assert.is_true(bad > 1, "the planted bug should need a few seeds, found at " .. bad)
    assert.has_no_error(T.explore(racy_withdrawals, { runs = bad - 1, seed = 1 }))
    local ok, err2 = pcall(T.explore(racy_withdrawals, { runs = 5, seed = bad }))
    assert.is_false(ok)
    err2 = type(err2) == "table" and err2.message or err2
    assert.matches("test_spec%.lua:%d+: knhk%.test%.explore: seed " .. bad .. " failed %(run 1 of 5%)", err2)
  end)

  it("passes when every seed passes", function()
    assert.has_no_error(T.explore(locked_withdrawals, { runs = 100 }))
  end)

  it("refuses workers other than 1 and a bad count of runs", function()
    assert.has_error(function() T.explore(print, { workers = 2 }) end,
      "bad argument #2 to 'explore' (workers: seeded schedules run on 1 worker, got 2)")
    assert.has_error(function() T.explore(print, { runs = 0 }) end,
      "bad argument #2 to 'explore' (runs: whole number >= 1 expected, got 0)")
  end)
end)

-- -------------------------------------------------------- until_waiting

describe("knhk.test.until_waiting", function()
  it("returns once every task given is blocked in a wait", T.wrap(function()
    local ch, gate = knhk.channel(0), knhk.event()
    local sender = knhk.spawn(function(c) c:send("parcel") end, ch)
    local waiter = knhk.spawn(function(e) e:wait(); return "opened" end, gate)
    T.until_waiting(sender, waiter)
    local states = {}
    for _, r in ipairs(knhk.tasks()) do states[r.id] = r.state end
    assert.equal("waiting", states[sender:id()])
    assert.equal("waiting", states[waiter:id()])
    assert.equal("parcel", ch:recv())
    gate:set()
    assert.equal("opened", waiter:join())
    sender:join()
  end, { workers = 2 }))

  it("raises if a task ends instead of waiting, and refuses what is not a task", T.wrap(function()
    local h = knhk.spawn(function() return 1 end)
    h:join()
    assert.has_error(function() T.until_waiting(h) end,
      "knhk.test.until_waiting: task " .. h:id() .. " ended instead of waiting")
    assert.has_error(function() T.until_waiting(h, "x") end,
      "bad argument #2 to 'until_waiting' (task expected, got string)")
  end))
end)

-- ----------------------------------------------------------- assertions

describe("assert.cancelled", function()
  it("passes for a task that was cancelled, and gives back its error", T.wrap(function()
    local h = knhk.spawn(function() knhk.sleep(math.huge) end)
    h:cancel()
    local e = assert.cancelled(h)
    assert.is_true(knhk.is_cancelled(e))
  end, { workers = 2 }))

  it("passes for a function that a cancelled scope stopped at a checkpoint", T.wrap(function()
    local scope = knhk.cancel_scope(function(scope)
      scope:cancel()
      local e = assert.cancelled(function() knhk.sleep(math.huge) end)
      assert.is_true(knhk.is_cancelled(e))
    end)
    assert.is_false(scope.cancelled_caught) -- the assertion caught it
  end))

  it("fails, saying what happened, for a function that returned or failed otherwise", T.wrap(function()
    assert.matches("Expected the function to be cancelled, but it returned normally$",
      failed_with(assert.cancelled, function() return 1 end))
    assert.matches("Expected the function to be cancelled, but it failed with .*card declined",
      failed_with(assert.cancelled, function() error("card declined") end))
    local h = knhk.spawn(function() return "shipped" end)
    assert.matches("Expected the task to be cancelled, but it completed$",
      failed_with(assert.cancelled, h))
  end))

  it("negated, passes for a function that returned and fails for a cancelled task", T.wrap(function()
    assert.is_not.cancelled(function() return 1 end)
    local h = knhk.spawn_local(function() knhk.sleep(math.huge) end)
    h:cancel()
    assert.matches("Expected the task not to be cancelled, but it was: Cancelled",
      failed_with(function() assert.is_not.cancelled(h) end), 1, true)
  end))

  it("refuses what is neither a function nor a task", T.wrap(function()
    assert.has_error(function() assert.cancelled(7) end,
      "bad argument #1 to 'cancelled' (function, callable object or task expected, got 7)")
  end))
end)

describe("assert.error_group", function()
  local function two_failures()
    knhk.nursery(function(n)
      n:spawn(function() error("stock") end)
      n:spawn(function() error("card") end)
    end)
  end

  it("passes for an error group of n errors and gives it back", T.wrap(function()
    local g = assert.error_group(two_failures, 2)
    assert.equal(2, #g.errors)
    assert.error_group(two_failures)
  end, { workers = 2 }))

  it("fails for another count, a single error, or no error", T.wrap(function()
    local err = failed_with(assert.error_group, two_failures, 3)
    assert.matches("Expected an error group of 3 errors, but got an error group of 2 errors:", err,
      1, true)
    -- each member, with its traceback
    assert.matches("%] [^\n]*: stock\n%s*stack traceback:", err)
    assert.matches("%] [^\n]*: card\n%s*stack traceback:", err)
    assert.matches("Expected an error group, but the function failed with a single error:\n.*only one",
      failed_with(assert.error_group, function() error("only one") end))
    assert.matches("Expected an error group of 2 errors, but the function returned normally$",
      failed_with(assert.error_group, function() end, 2))
  end, { workers = 2 }))

  it("negated, passes without a group and fails with one", T.wrap(function()
    assert.is_not.error_group(function() end)
    assert.matches("Expected no error group, but got an error group of 2 errors",
      failed_with(function() assert.is_not.error_group(two_failures) end), 1, true)
  end, { workers = 2 }))
end)

describe("assert.completes_within", function()
  it("passes for a function that returns in time, and gives back its results", T.wrap(function()
    local a, b = assert.completes_within(60, function()
      knhk.sleep(0.001)
      return "packed", 2
    end)
    assert.equal("packed", a)
    assert.equal(2, b)
  end))

  it("fails for a function still running at the deadline, which ends it there", T.wrap(function()
    local err = failed_with(assert.completes_within, 0.02, function() knhk.event():wait() end)
    assert.matches("Expected the function to complete within 0.02 s %(%a+ time%), but it was still "
      .. "running at the deadline, where it was cancelled", err)
  end))

  it("negated, passes for a function that would not end in time", T.wrap(function()
    assert.is_not.completes_within(0.02, function() knhk.event():wait() end)
    assert.matches("Expected the function not to complete within 60 s",
      failed_with(function() assert.is_not.completes_within(60, function() end) end), 1, true)
  end))

  it("refuses bad arguments and use outside a task", function()
    assert.has_error(function() assert.completes_within("soon", print) end,
      "bad argument #1 to 'completes_within' (number >= 0 expected, got string)")
    assert.has_error(function() assert.completes_within(1, print) end,
      "completes_within: must run inside a knhk task (inside knhk.test.wrap or knhk.run)")
    -- a __call that is not a function is not callable, as knhk.spawn says
    local not_callable = setmetatable({}, { __call = 42 })
    assert.has_error(function() assert.completes_within(1, not_callable) end,
      "bad argument #2 to 'completes_within' (function or callable object expected, got table)")
    assert.has_error(function() assert.error_group(not_callable) end,
      "bad argument #1 to 'error_group' (function or callable object expected, got table)")
    assert.has_error(function() assert.cancelled(not_callable) end,
      "bad argument #1 to 'cancelled' (function, callable object or task expected, got table)")
    -- at the spec's line, not inside luassert
    local ok, err = pcall(function() assert.error_group(42) end)
    assert.is_false(ok)
    assert.matches("^[^\n]*test_spec%.lua:%d+: bad argument #1 to 'error_group'", err)
  end)

  it("measures virtual time under the virtual clock", T.wrap(function()
    local t0 = knhk.now()
    assert.completes_within(72 * 3600, function() knhk.sleep(71 * 3600) end)
    assert.equal(71 * 3600, knhk.now() - t0)
    local err = failed_with(assert.completes_within, 72 * 3600, function() knhk.sleep(73 * 3600) end)
    assert.matches("within 259200 s (virtual time), but it was still running at the deadline", err,
      1, true)
    assert.equal(71 * 3600 + 72 * 3600, knhk.now() - t0)
  end, { clock = "virtual" }))
end)
