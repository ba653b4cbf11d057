-- knhk.nursery: structured concurrency. No task outlives its nursery; the
-- first failure cancels the rest; every error is reported.
local knhk = require "knhk"
local T = require "knhk.test"

local function run(fn, workers) return knhk.run(fn, { workers = workers or 2 }) end
-- Under the virtual clock: a child that sleeps ends later than one that
-- does not, in no real time, and knhk.now() says exactly when.
local function virtual(fn, workers)
  return knhk.run(fn, { workers = workers or 2, clock = "virtual" })
end
local function pack(...) return { n = select("#", ...), ... } end

describe("knhk.nursery", function()
  it("returns once every child has ended, with the body's results", function()
    local done, now = virtual(function()
      local ended = {}
      local r = knhk.nursery(function(n)
        for i = 1, 5 do n:spawn_local(function() knhk.sleep(i); ended[i] = true end) end
        return "body"
      end)
      assert.equal("body", r)
      return #ended, knhk.now()
    end)
    assert.equal(5, done)
    assert.equal(5, now) -- when the last child ended, not before
  end)

  it("an empty nursery returns at once", function()
    assert.equal(1, run(function() return knhk.nursery(function() return 1 end) end))
  end)

  it("counts and waits for many tasks (1000)", function()
    assert.equal(1000 * 1001 / 2, run(function()
      local total = 0
      knhk.nursery(function(n)
        local hs = {}
        for i = 1, 1000 do hs[i] = n:spawn(function(x) return x end, i) end
        for _, h in ipairs(hs) do total = total + h:join() end
      end)
      return total
    end))
  end)

  it("wait_all gives results in spawn order, whatever order they end in", function()
    local out, ended = virtual(function()
      local ends = knhk.channel(4)
      local out = knhk.nursery(function(n)
        -- the last spawned ends first
        for i = 1, 4 do n:spawn(function(x) knhk.sleep(5 - x); ends:send(x); return x * 10 end, i) end
        return n:wait_all()
      end)
      local ended = {}
      for i = 1, 4 do ended[i] = ends:recv() end
      return out, ended
    end)
    assert.same({ 4, 3, 2, 1 }, ended)
    assert.same({ { 10 }, { 20 }, { 30 }, { 40 } }, out)
  end)

  it("wait_all gives every child's results though the program dropped their handles", function()
    local out = run(function()
      return knhk.nursery(function(n)
        for i = 1, 50 do n:spawn(function(x) return x, -x end, i) end
        for i = 51, 100 do n:spawn_local(function(x) return x, -x end, i) end
        collectgarbage()
        collectgarbage()
        return n:wait_all()
      end)
    end)
    assert.equal(100, #out)
    for i = 1, 100 do assert.same({ i, -i }, out[i]) end
  end)

  it("wait_all counts what the body's own children spawned into it, in spawn order", function()
    local out = run(function()
      return knhk.nursery(function(n)
        n:spawn_local(function()
          n:spawn_local(function() return "grandchild" end)
          return "child"
        end)
        knhk.sleep(0.01)
        n:spawn(function() return "last" end)
        return n:wait_all()
      end)
    end)
    assert.same({ { "child" }, { "grandchild" }, { "last" } }, out)
  end)

  it("wait_all counts children that tasks on other workers spawned into it, live or ended", function()
    -- the spawning task runs on either worker: 100 rounds meet both
    for workers = 1, 4, 3 do
      local wrong = run(function()
        local wrong = {}
        for round = 1, 100 do
          local got = knhk.nursery(function(n)
            n:spawn(function() return 1 end)
            knhk.spawn(function(nn)
              nn:spawn(function() return 2 end)
              nn:spawn(function() knhk.sleep(0.002); return 3 end) -- still live at wait_all
            end, n):join()
            n:spawn_local(function() return 4 end)
            local out = {}
            for i, r in ipairs(n:wait_all()) do out[i] = r[1] end
            return table.concat(out, " ")
          end)
          if got ~= "1 2 3 4" then wrong[#wrong + 1] = round .. ": " .. got end
        end
        return wrong
      end, workers)
      assert.same({}, wrong)
    end
  end)

  it("does not keep the handles its spawns returned: the program's to drop", function()
    local kept = run(function()
      local seen = setmetatable({}, { __mode = "k" })
      return knhk.nursery(function(n)
        for _ = 1, 20 do seen[n:spawn(function() knhk.sleep(60) end)] = true end
        for _ = 1, 20 do seen[n:spawn_local(function() knhk.sleep(60) end)] = true end
        collectgarbage()
        collectgarbage()
        local left = 0
        for _ in pairs(seen) do left = left + 1 end
        n:cancel()
        return left
      end)
    end)
    assert.equal(0, kept)
  end)

  it("join_next gives back the very handle the spawn returned, while the program holds it", function()
    local same, other = run(function()
      return knhk.nursery(function(n)
        local mine = n:spawn(function() return 1 end)
        n:spawn_local(function() knhk.sleep(0.01); return 2 end) -- dropped
        collectgarbage()
        local first, second = n:join_next(), n:join_next()
        return rawequal(first, mine), { second:join() }
      end)
    end)
    assert.is_true(same)
    assert.same({ 2 }, other)
  end)

  it("a failing child cancels its siblings, whose cleanup runs before it raises", function()
    local cleanup, err, now = virtual(function()
      local cleaned = 0
      local ok, e = pcall(knhk.nursery, function(n)
        local sleepers = {}
        for i = 1, 3 do
          sleepers[i] = n:spawn_local(function()
            local ok2, e2 = pcall(knhk.sleep, 60)
            if knhk.is_cancelled(e2) then cleaned = cleaned + 1 end -- cleanup, then let Cancelled go on
            error(e2, 0)
          end)
        end
        n:spawn_local(function()
          T.until_waiting(unpack(sleepers)) -- fails while they sleep
          error("child failed")
        end)
      end)
      assert.is_false(ok)
      return cleaned, e, knhk.now()
    end)
    assert.equal(3, cleanup)
    assert.matches("child failed", tostring(err))
    assert.equal(0, now) -- cancelled: no sleep ran to its end
  end)

  it("several failures come as an error group, first one first", function()
    local err = run(function()
      local ok, e = pcall(knhk.nursery, function(n)
        local second = n:spawn_local(function()
          pcall(knhk.sleep, 60) -- cancelled by the first failure...
          error("second")       -- ...then fails on its own
        end)
        n:spawn_local(function() T.until_waiting(second); error("first") end)
      end)
      return e
    end)
    assert.is_true(knhk.is_error_group(err))
    assert.equal(2, #err.errors)
    assert.matches("first", err.errors[1].message)
    assert.matches("second", err.errors[2].message)
    local text = tostring(err)
    assert.matches("2 errors", text)
    assert.matches("first", text)
    assert.matches("second", text)
  end)

  it("lists a child's failure before the body's error it caused", function()
    local err = run(function()
      local _, e = pcall(knhk.nursery, function(n)
        n:spawn(function() error("1st: child failed", 0) end)
        local _, c = pcall(knhk.sleep, 60) -- cancelled by the child's failure
        assert(knhk.is_cancelled(c))
        error("2nd: body failed during its cleanup", 0)
      end)
      return e
    end)
    assert.is_true(knhk.is_error_group(err))
    assert.equal("1st: child failed", err.errors[1].message)
    assert.equal("2nd: body failed during its cleanup", err.errors[2].message)
  end)

  it("lists the body's error before a failure in the cleanup of a child it cancelled", function()
    local err = run(function()
      local _, e = pcall(knhk.nursery, function(n)
        local child = n:spawn_local(function()
          pcall(knhk.sleep, 60) -- cancelled by the body's failure
          error("2nd: child's cleanup failed", 0)
        end)
        T.until_waiting(child)
        error("1st: body failed", 0)
      end)
      return e
    end)
    assert.equal("1st: body failed", err.errors[1].message)
    assert.equal("2nd: child's cleanup failed", err.errors[2].message)
  end)

  it("orders a task's own error among its children's failures as they happened", function()
    local err = run(function()
      local _, e = pcall(function()
        return knhk.spawn(function()
          knhk.spawn(function() error("1st: child failed", 0) end) -- joined by no one
          knhk.sleep(0.05) -- (the child fails meanwhile)
          error("2nd: the task failed", 0)
        end):join()
      end)
      return e
    end)
    assert.is_true(knhk.is_error_group(err))
    assert.equal("1st: child failed", err.errors[1].message)
    assert.equal("2nd: the task failed", err.errors[2].message)
  end)

  it("a failing body cancels the children and raises the body's error", function()
    local cancelled = run(function()
      local seen = false
      local ok, e = pcall(knhk.nursery, function(n)
        local child = n:spawn_local(function()
          local ok2, e2 = pcall(knhk.sleep, 60)
          seen = knhk.is_cancelled(e2)
          error(e2, 0)
        end)
        T.until_waiting(child) -- the body fails while its child sleeps
        error("body failed")
      end)
      assert.is_false(ok)
      assert.matches("body failed", tostring(e))
      return seen
    end)
    assert.is_true(cancelled)
  end)

  it("raises a caller's mistake in the body as it was raised, at the caller's line, once the children ended", function()
    local here = debug.getinfo(1, "S").short_src
    local err, line, seen = run(function()
      local seen = false
      local line
      local _, e = pcall(knhk.nursery, function(n)
        local child = n:spawn_local(function()
          seen = knhk.is_cancelled(select(2, pcall(knhk.sleep, 60)))
        end)
        T.until_waiting(child)
        line = debug.getinfo(1, "l").currentline + 1
        knhk.sleep(-1)
      end)
      return e, line, seen
    end)
    assert.equal(string.format("%s:%d: bad argument #1 to 'sleep' (number >= 0 expected, got -1)", here, line),
      err) -- a string, as outside a nursery: no TaskError
    assert.is_true(seen)
  end)

  it("n:cancel() ends the children and is not an error", function()
    local r, now = virtual(function()
      return knhk.nursery(function(n)
        local a = n:spawn(function() knhk.sleep(60) end)
        local b = n:spawn_local(function() knhk.sleep(60) end)
        T.until_waiting(a, b)
        n:cancel()
        return "after cancel"
      end), knhk.now()
    end)
    assert.equal("after cancel", r)
    assert.equal(0, now) -- the children ended cancelled, not asleep for 60 s
  end)

  it("supervise: a failure is reported but siblings go on", function()
    local finished, err, now = virtual(function()
      local fin = false
      local ok, e = pcall(knhk.nursery, function(n)
        n:spawn_local(function() error("one bad child") end)
        -- virtual time moves only once the bad child has failed: this one
        -- goes on after the failure
        n:spawn_local(function() knhk.sleep(1); fin = true end)
      end, { supervise = true })
      assert.is_false(ok)
      return fin, e, knhk.now()
    end)
    assert.is_true(finished)
    assert.matches("one bad child", tostring(err))
    assert.equal(1, now)
  end)

  it("supervise: wait_all waits for every child, then raises the first error in spawn order",
    function()
    local finished, err, returned = virtual(function()
      local fin, returned = false, false
      local _, e = pcall(knhk.nursery, function(n)
        n:spawn_local(function() knhk.sleep(2); error("second to fail, first spawned") end)
        n:spawn_local(function() error("first to fail") end)
        n:spawn_local(function() knhk.sleep(5); fin = true end)
        n:wait_all()
        returned = true
      end, { supervise = true })
      return fin, e, returned
    end)
    assert.is_true(finished) -- not cancelled by the body's error while wait_all waited
    assert.is_false(returned)
    assert.matches("second to fail, first spawned", tostring(err))
  end)

  it("nested nurseries work on one worker", function()
    assert.equal(27, run(function()
      local count = 0
      local function tree(depth)
        if depth == 0 then count = count + 1; return end
        knhk.nursery(function(n)
          for _ = 1, 3 do n:spawn_local(tree, depth - 1) end
        end)
      end
      tree(3)
      return count
    end, 1))
  end)

  for _, workers in ipairs { 1, 4 } do
    it("wait_any returns only after the others' cleanup ran (" .. workers .. " workers)", function()
      local log, now = virtual(function()
        local cleaned = knhk.channel(8)
        local winner = knhk.nursery(function(n)
          for i = 1, 3 do
            n:spawn(function(c, k)
              local ok, e = pcall(knhk.sleep, 30)
              knhk.cancel_scope(function() -- cleanup that itself waits
                knhk.sleep(1)
                c:send("cleaned " .. k)
              end, { shield = true })
              if not ok then error(e, 0) end
            end, cleaned, i)
          end
          n:spawn(function() knhk.sleep(1); return "winner" end)
          local w = n:wait_any()
          cleaned:close()
          return w
        end)
        local log = { winner }
        for v in cleaned:values() do log[#log + 1] = v end
        return log, knhk.now()
      end, workers)
      assert.equal("winner", log[1])
      assert.equal(4, #log) -- every loser's cleanup had run before wait_any returned
      assert.equal(2, now) -- the winner at 1, the cleanups' own second after it
    end)
  end

  it("refuses to spawn into a closed nursery", function()
    local err = run(function()
      local kept
      knhk.nursery(function(n) kept = n end)
      local ok, e = pcall(kept.spawn, kept, function() end)
      return e
    end)
    assert.matches("the nursery is closed", tostring(err))
  end)

  it("checks its arguments", function()
    run(function()
      assert.has_error(function() knhk.nursery(1) end,
        "bad argument #1 to 'nursery' (function or callable object expected, got number)")
      assert.has_error(function() knhk.nursery(function() end, 1) end,
        "bad argument #2 to 'nursery' (options table expected, got number)")
    end)
  end)
end)

-- A caller's mistake is raised the same way whichever of knhk's modules
-- finds it: a nursery raises one its body made as it would be raised
-- outside the nursery, a plain error at the body's line, never a TaskError.
describe("knhk.nursery, a mistake its body makes with any of knhk's functions", function()
  local here = debug.getinfo(1, "S").short_src
  local P = require "knhk.patterns"
  local f = function() end
  -- each: what the body does, on one line; what is raised at that line
  -- ("task N": a task's id; HERE: that line, as a workflow's refusal names
  -- the place of a step: file name and line)
  local cases = {
    { function() knhk.exec({}) end,
      "bad argument #1 to 'exec' (argv table with the program first expected, got an empty table)" },
    { function() knhk.exec({ "echo", "a\0b" }) end,
      "bad argument #1 to 'exec' (argv[2]: a string without NUL bytes expected, got one with)" },
    { function() knhk.exec("true", { env = { A = {} } }) end,
      "bad argument #2 to 'exec' (env.A: string expected, got table)" },
    { function() knhk.telemetry.start{ file = "" } end,
      "bad argument #1 to 'start' (field 'file' must be a file name, got an empty string)" },
    { function() knhk.telemetry.counter("1st") end,
      "bad argument #1 to 'counter' (instrument name expected: a letter, then letters, digits, "
        .. "'_', '.', '-' or '/', at most 255 in all; got \"1st\")" },
    { function() knhk.telemetry.histogram("h", { bounds = { 2, 1 } }) end,
      "bad argument #2 to 'histogram' (field 'bounds' must be ascending numbers)" },
    { function() knhk.telemetry.counter("c"):add(-1) end,
      "bad argument #1 to 'add' (a counter only goes up, got -1)" },
    { function() knhk.telemetry.gauge("g"):set(0 / 0) end,
      "bad argument #1 to 'set' (gauge 'g' takes a finite number, got NaN)" },
    { function() knhk.telemetry.counter("c"):add(1, { [1] = "x" }) end,
      "bad argument #2 to 'add' (attribute names must be strings, got number)" },
    { function() knhk.telemetry.span("s", { a = { x = 1 } }, f) end,
      "bad argument #2 to 'span' (attribute 'a' is a table with key 'x', not a list (expected a string, "
        .. "number, boolean or list))" },
    { function() knhk.codec.register_class("c", 1) end,
      "bad argument #2 to 'register_class' (metatable expected, got number)" },
    { function() knhk.clock.advance(1) end,
      "knhk.clock.advance: the runtime's clock is real; run with { clock = \"virtual\" } to move time by hand" },
    { function() T.wrap(f, { clock = "wall" }) end,
      "bad argument #2 to 'wrap' (clock: \"real\" or \"virtual\" expected, got 'wall')" },
    { function() T.explore(f, { workers = 2 }) end,
      "bad argument #2 to 'explore' (workers: seeded schedules run on 1 worker, got 2)" },
    { function() local h = knhk.spawn_local(f); h:join(); T.until_waiting(h) end,
      "knhk.test.until_waiting: task N ended instead of waiting" },
    { function() P.sequence{} end, "bad argument #1 to 'sequence' (a sequence needs at least one step)" },
    { function() P.workflow(P.synchronization()) end,
      "workflow: synchronization (3) at HERE: a join closes the split just before it in a sequence; "
        .. "it cannot stand alone" },
    { function() P.make(99) end, "bad argument #1 to 'make' (unknown pattern id 99 (ids are 1-43))" },
    { function() P.make(13, { run = f }) end,
      "bad argument #2 to 'make' (pattern 13 needs count = a number, got nil)" },
    { function() P.get({}) end, "bad argument #1 to 'get' (pattern id or name expected, got table)" },
    { function() P.task("t", f):execute(7) end, "bad argument #1 to 'execute' (table expected, got number)" },
  }

  it("is raised plain, at the line that made it, as outside a nursery", function()
    run(function()
      for _, case in ipairs(cases) do
        local line = debug.getinfo(case[1], "S").linedefined
        local ok, err = pcall(knhk.nursery, function() case[1]() end)
        assert.is_false(ok)
        assert.equal("string", type(err), case[2])
        local at = here .. ":" .. line
        local step_at = here:match("[^/]*$") .. ":" .. line -- (a step names its file by its name)
        assert.equal(at .. ": " .. case[2]:gsub("HERE", step_at), (err:gsub("task %d+", "task N")))
      end
    end)
  end)
end)

describe("knhk.nursery's waits are checkpoints", function()
  it("wait_any and join_next raise the cancellation of a scope around them", function()
    run(function()
      for _, wait in ipairs { "wait_any", "join_next" } do
        local ok, err = pcall(knhk.fail_after, 0.05, function()
          return knhk.nursery(function(n)
            n:spawn(function() knhk.sleep(60) end)
            return n[wait](n)
          end)
        end)
        assert.is_false(ok, wait)
        assert.is_true(knhk.is_timeout(err), wait .. ": " .. tostring(err))
      end
    end)
  end)

  it("its end is one too: a scope around it cancelled while the children ended unwinds past it", function()
    run(function()
      local after = false
      local scope = knhk.move_on_after(0.05, function()
        knhk.nursery(function(n)
          n:spawn(function() knhk.sleep(60) end)
          n:spawn_local(function() knhk.sleep(60) end)
        end) -- the body returned at once: the nursery waits for its children
        after = true
      end)
      assert.is_false(after) -- the code after the nursery did not run
      assert.is_true(scope.cancelled_caught)
      local ok, err = pcall(knhk.fail_after, 0.05, function()
        knhk.nursery(function(n) n:spawn(function() knhk.sleep(60) end) end)
      end)
      assert.is_false(ok)
      assert.is_true(knhk.is_timeout(err), tostring(err))
      -- its own cancel is not the scope's: the code after it goes on
      local went_on = knhk.nursery(function(n)
        n:spawn(function() knhk.sleep(60) end)
        n:cancel()
        return "on"
      end)
      assert.equal("on", went_on)
    end)
  end)

  it("under the virtual clock, children that can never end are reported as a deadlock", function()
    local ok, err = pcall(knhk.run, function()
      knhk.nursery(function(n) n:spawn(function() knhk.event():wait() end) end)
      return "finished"
    end, { clock = "virtual", workers = 2 })
    assert.is_false(ok)
    assert.matches("deadlock under the virtual clock", tostring(err), 1, true)
  end)

  it("wait_any and race give exactly the winner's results", function()
    run(function()
      assert.equal(1, select("#", knhk.race(function() return 1 end, function() knhk.sleep(60) end)))
      local a, b, c = knhk.nursery(function(n)
        n:spawn(function() return "x", nil, 3 end)
        return n:wait_any()
      end)
      assert.same({ "x", nil, 3 }, { a, b, c })
      assert.equal(3, select("#", knhk.nursery(function(n)
        n:spawn(function() return "x", nil, 3 end)
        return n:wait_any()
      end)))
    end)
  end)
end)

describe("knhk.nursery, when no child completes", function()
  it("wait_any raises exactly the children's failures", function()
    run(function()
      local ok, err = pcall(knhk.nursery, function(n)
        n:spawn(function() error("a") end)
        n:spawn(function() error("b") end)
        return n:wait_any()
      end)
      assert.is_false(ok)
      assert.is_true(knhk.is_error_group(err))
      assert.equal(2, #err.errors)
      assert.no.matches("wait_any", tostring(err))
      local ok2, err2 = pcall(knhk.select, {
        a = function() error("payment declined") end,
        b = function() knhk.sleep(60) end })
      assert.is_false(ok2)
      assert.is_false(knhk.is_error_group(err2))
      assert.matches("payment declined", tostring(err2))
    end)
  end)

  it("wait_any with no child at all says so", function()
    run(function()
      local ok, err = pcall(knhk.nursery, function(n) return n:wait_any() end)
      assert.is_false(ok)
      assert.matches("nursery_spec.lua:%d+: wait_any: no child to wait for", tostring(err))
    end)
  end)
end)

describe("knhk.nursery, made again and again", function()
  it("is open however many nurseries were collected before it", function()
    run(function()
      for i = 1, 60 do
        collectgarbage() -- the handles of the earlier nurseries go
        assert.equal(i, knhk.nursery(function(n)
          n:spawn(function(k) return k end, i)
          n:spawn(function() knhk.sleep(60) end)
          return n:wait_any()
        end))
        local got = knhk.nursery(function(n)
          n:spawn(function(k) return k end, i)
          return n:join_next():join()
        end)
        assert.equal(i, got)
        assert.equal(i, knhk.race(function() return i end, function() knhk.sleep(60) end))
      end
    end)
  end)
end)

describe("knhk.nursery, a child ending on another worker as the owner looks", function()
  -- The child may end between the owner's look at the ended children and
  -- its look at how many still run: it is then in the first, not the
  -- second. The window is two loads wide: before the fix about 1 round in
  -- 10 000 on 2 workers missed (a stress case; the TSan run widens it).
  it("is given by join_next, every round", function()
    local missed = 0
    run(function()
      for i = 1, 30000 do
        local got = knhk.nursery(function(n)
          n:spawn(function(k) return k end, i)
          local h = n:join_next()
          return h and h:join()
        end)
        if got ~= i then missed = missed + 1 end
      end
    end, 2)
    assert.equal(0, missed)
  end)

  it("is the winner of wait_any, every round", function()
    local missed = 0
    run(function()
      for i = 1, 30000 do
        local ok, got = pcall(knhk.nursery, function(n)
          n:spawn(function(k) return k end, i)
          return n:wait_any()
        end)
        if not ok or got ~= i then missed = missed + 1 end
      end
    end, 2)
    assert.equal(0, missed)
  end)
end)

describe("knhk.nursery, after wait_any", function()
  -- wait_any cancels the nursery, whose scope holds the body: the rest of
  -- the body runs cancelled (see README).
  it("the body's next checkpoint raises Cancelled, caught by the nursery, which returns nothing", function()
    local out = virtual(function()
      return knhk.fail_after(10, function()
        local after = false
        local res = pack(knhk.nursery(function(n)
          n:spawn(function() return "first" end)
          n:spawn(function() knhk.sleep(60) end)
          local w = n:wait_any()
          assert.equal("first", w)
          knhk.sleep(1) -- raises: the nursery is cancelled
          after = true
          return "never"
        end))
        return { n = res.n, after = after, now = knhk.now(),
                 caller_cancelled = knhk.move_on_after(1, knhk.checkpoint).cancelled_caught }
      end)
    end)
    assert.equal(0, out.n) -- no results, and not the Cancelled as a result
    assert.is_false(out.after)
    assert.equal(0, out.now) -- the sleep raised at once
    assert.is_false(out.caller_cancelled) -- the cancellation stayed inside the nursery
  end)

  it("a pcall in the body sees Cancelled; code without a checkpoint runs and returns", function()
    local out = run(function()
      return knhk.fail_after(10, function()
        local seen = {}
        local r, x = knhk.nursery(function(n)
          n:spawn(function() return "first" end)
          local w = n:wait_any()
          local ok, e = pcall(knhk.checkpoint)
          seen.checkpoint_cancelled = not ok and knhk.is_cancelled(e)
          local late = n:spawn(function() knhk.checkpoint() return "late" end)
          local ok2, e2 = pcall(late.join, late)
          seen.late_cancelled = not ok2 and knhk.is_cancelled(e2)
          return w, 1 + 1
        end)
        seen.r, seen.x = r, x
        return seen
      end)
    end)
    assert.is_true(out.checkpoint_cancelled)
    assert.is_true(out.late_cancelled) -- a child spawned afterwards starts cancelled
    assert.equal("first", out.r)
    assert.equal(2, out.x)
  end)
end)

describe("knhk.nursery that lives long", function()
  -- a server's: it spawns without end and never asks for results
  it("does not keep the records of children that ended well", function()
    local K = require "knhk.ffi"
    local function in_use() return tonumber(K.C.klua_arena_in_use()) end
    local grew, first = run(function()
      return knhk.nursery(function(n)
        local function round(kind)
          local hs = {}
          for i = 1, 2000 do
            hs[i] = n[kind](n, function(x)
              knhk.sleep(0)
              if x % 3 == 0 then return x end -- a number
              if x % 3 == 1 then return end -- nothing
              return x % 2 == 0 -- a boolean
            end, i)
          end
          for i = 1, #hs do hs[i]:join() end
          collectgarbage()
          return in_use()
        end
        local base = round("spawn_local")
        for _ = 1, 9 do round("spawn") round("spawn_local") end
        return in_use() - base, base
      end)
    end, 1) -- (one worker: when children end, and so the peak, is the same each run)
    assert.is_true(first > 0)
    -- The records of a round's children go at the owner's next look at
    -- its lists, in a later round: the pool's peak settles at about two
    -- rounds' records (~500 bytes each). Before, every round's 2000
    -- records stayed: ~17 MB more after these 18 rounds.
    assert.is_true(grew < 2 * 2000 * 500, grew .. " bytes of task records more after 36000 more children")
  end)

  it("lets go of a burst's records once every child ended and the owner spawns or waits again", function()
    local K = require "knhk.ffi"
    local function in_use() return tonumber(K.C.klua_arena_in_use()) end
    local grew = run(function()
      return knhk.nursery(function(n)
        local function burst()
          for _ = 1, 5000 do n:spawn_local(function() knhk.sleep(0) end) end
          knhk.sleep(0.01)
          while n:join_next() do end -- every child taken
          collectgarbage()
          return in_use()
        end
        local base = burst()
        burst()
        return burst() - base
      end)
    end, 1)
    -- before: a burst's records stayed until the spawns after it doubled
    -- what was held, and the next burst needed as many again
    assert.is_true(grew <= 0, grew .. " bytes of task records more after two more bursts")
  end)

  it("still gives every child to wait_all and join_next, results and ids as they were", function()
    local out = run(function()
      return knhk.nursery(function(n)
        local ids, want = {}, {}
        for i = 1, 3000 do
          local kinds = { function() return end, function() return nil end, function() return i * 0.5 end,
                          function() return true end, function() return false end,
                          function() return "s" .. i end, function() return i, i end }
          local k = i % #kinds + 1
          local h = n:spawn_local(function() knhk.sleep(0) return kinds[k]() end)
          ids[i] = h:id()
          want[i] = { kinds[k]() }
          want[i].n = select("#", kinds[k]())
          h = nil
          if i % 500 == 0 then collectgarbage() end
        end
        knhk.sleep(0.01)
        local all = n:wait_all()
        local seen, taken = {}, 0
        while true do
          local h = n:join_next()
          if not h then break end
          taken = taken + 1
          seen[h:id()] = { n = select("#", h:join()), h:join() }
        end
        return { ids = ids, want = want, all = all, seen = seen, taken = taken }
      end)
    end)
    assert.equal(3000, #out.all)
    assert.equal(3000, out.taken)
    for i = 1, 3000 do
      assert.same({ unpack(out.want[i], 1, out.want[i].n) }, out.all[i])
      local s = out.seen[out.ids[i]]
      assert.is_table(s, "join_next did not give child " .. i)
      assert.equal(out.want[i].n, s.n)
      assert.same({ unpack(out.want[i], 1, out.want[i].n) }, { unpack(s, 1, s.n) })
    end
  end)

  it("join_next gives back the handle the program still holds, after its child gave up its record", function()
    local same = run(function()
      return knhk.nursery(function(n)
        local keep = {}
        for i = 1, 300 do keep[i] = n:spawn_local(function() return i end) end
        knhk.sleep(0.01)
        for i = 1, 300 do n:spawn_local(function() end) end -- the owner looks at its lists
        local byid = {}
        for i = 1, 300 do byid[keep[i]:id()] = keep[i] end
        local ok = 0
        while true do
          local h = n:join_next()
          if not h then break end
          if byid[h:id()] then ok = ok + (rawequal(byid[h:id()], h) and 1 or 0) end
        end
        return ok
      end)
    end)
    assert.equal(300, same)
  end)
end)

describe("knhk.nursery, once closed", function()
  it("frees children whose results hold the nursery itself", function()
    -- a child's results that hold the nursery's handle held the nursery,
    -- which held the child: neither went, joined or not
    local ffi = require "ffi"
    local K = require "knhk.ffi"
    local grew = run(function()
      local function round()
        for i = 1, 200 do
          knhk.nursery(function(n)
            n:spawn_local(function() return { n = n } end)
            n:spawn_local(function() return { n = n } end)
            n:join_next()
          end)
          -- collected every 10 nurseries: at most ~20 records wait for
          -- the collector at any time, whenever it would have run, so
          -- every round fits in the records the first one made
          if i % 10 == 0 then collectgarbage() collectgarbage() end
        end
        return tonumber(K.C.klua_arena_in_use())
      end
      local first = round()
      round()
      return round() - first
    end, 1)
    -- Before, each round's 400 children stayed: ~0.2 MB more per round.
    assert.is_true(grew <= 0, grew .. " bytes of task records more after 400 nurseries")
  end)

  -- Each: the refusal of a closed nursery given to a task, at the line of
  -- the call, naming where it was. The first two take the spawn's fast
  -- path (a function that reads no global, arguments that are handles).
  local src = debug.getinfo(1, "S").short_src
  local closed_refusals = {
    { "argument 1", function(n) knhk.spawn(function(x) return x end, n) end },
    { "upvalue 'n' of function at " .. src:gsub("%p", "%%%0") .. ":%d+ of the task function",
      function(n) knhk.spawn(function() return n end) end },
    { "key 'n' of argument 1", function(n) knhk.spawn(function(t) return t end, { n = n }) end },
    { "argument 1", function(n) knhk.spawn(function(x) return tostring(x) end, n) end },
  }
  for _, case in ipairs(closed_refusals) do
    it("is refused when given to a task, with the call's line and its place: " .. case[1], function()
      local line = debug.getinfo(case[2], "S").linedefined
      local ok, err = pcall(run, function()
        local saved
        knhk.nursery(function(n) saved = n end)
        case[2](saved)
      end)
      assert.is_false(ok)
      assert.matches("^" .. src:gsub("%p", "%%%0") .. ":" .. line .. ": spawn: " .. case[1]
        .. " is a nursery that has closed %(it cannot be given to a task%)", tostring(err))
    end)
  end

  it("says so when wait_all is called after it closed", function()
    local ok, err = pcall(run, function()
      local saved
      knhk.nursery(function(n) saved = n; n:spawn(function() return 1 end) end)
      return saved:wait_all()
    end)
    assert.is_false(ok)
    assert.matches("wait_all: the nursery is closed", tostring(err), 1, true)
  end)
end)
