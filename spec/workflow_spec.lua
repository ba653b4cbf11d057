-- knhk.map, knhk.race, knhk.select, knhk.exec, and nursery wait_any /
-- join_next: the building blocks of workflow steps.
local knhk = require "knhk"

local function run(fn, workers) return knhk.run(fn, { workers = workers or 2 }) end
-- Under the virtual clock: steps that take time end in a known order, in
-- no real time, and knhk.now() says exactly when.
local function virtual(fn, workers)
  return knhk.run(fn, { workers = workers or 2, clock = "virtual" })
end

-- What a step (map, race, select) raises when several of its tasks failed
-- at once: the first failure as it is raised alone (a TaskError, its value,
-- its message), the others' errors in its .also, and a note in the step's
-- own words (`fname`, `note`), never its nursery's ErrorGroup. `values`:
-- all the failures' values, sorted.
local function assert_first_failure(err, fname, note, values)
  assert.is_false(knhk.is_error_group(err), tostring(err))
  assert.is_true(knhk.is_task_error(err))
  local others = {}
  for _, e in ipairs(err.also) do others[#others + 1] = e.value end
  local all = { err.value, unpack(others) }
  table.sort(all)
  assert.same(values, all)
  assert.equal(err.value .. "\n(" .. fname .. ": " .. note .. table.concat(others, "; ") .. ")", err.message)
  assert.is_nil(tostring(err):find("in a nursery", 1, true))
end

describe("knhk.map", function()
  it("maps on every core and keeps the order, whatever order the items end in", function()
    local out = virtual(function()
      local list = {}
      for i = 1, 100 do list[i] = i end
      return knhk.map(list, function(x) knhk.sleep(x % 3); return x * x end, { limit = 8 })
    end)
    assert.equal(100, #out)
    for i = 1, 100 do assert.equal(i * i, out[i]) end
  end)

  it("runs at most `limit` at once", function()
    local peak, now = virtual(function()
      -- a counter shared by portable tasks: a one-slot channel under a lock
      local cell, lock = knhk.channel(1), knhk.lock()
      cell:send({ now = 0, max = 0 })
      local function bump(d)
        lock:with(function()
          local c = cell:recv()
          c.now = c.now + d
          if c.now > c.max then c.max = c.now end
          cell:send(c)
        end)
      end
      knhk.map({ 1, 2, 3, 4, 5, 6, 7, 8 }, function()
        bump(1)
        knhk.sleep(1)
        bump(-1)
        return true
      end, { limit = 2 })
      return cell:recv().max, knhk.now()
    end, 4)
    -- time moves only once both running items sleep: the peak is reached
    assert.equal(2, peak)
    assert.equal(4, now) -- eight one-second items, two at a time
  end)

  it("the first error cancels the rest and is raised", function()
    local ok, err, now = virtual(function()
      local ok, err = pcall(knhk.map, { 1, 2, 3, 4 }, function(x)
        if x == 2 then error("bad item " .. x) end
        knhk.sleep(5)
        return x
      end)
      return ok, err, knhk.now()
    end)
    assert.is_false(ok)
    assert.matches("bad item 2", tostring(err))
    assert.equal(0, now) -- the others were cancelled, not slept to their end
  end)

  -- on one worker every item runs to its failure before the first failure's
  -- cancellation reaches the others: they fail at once
  it("items that fail at once raise the first failure, the others in .also, in map's words", function()
    local ok, err = run(function()
      return pcall(knhk.map, { "a", "b", "c" }, function(v) error(v, 0) end)
    end, 1)
    assert.is_false(ok)
    assert_first_failure(err, "knhk.map", "2 other items failed at the same time; their errors are in .also: ",
      { "a", "b", "c" })
  end)

  it("reads a list with holes by its n, as table.pack makes it, and gives back n", function()
    local out, plain = run(function()
      local out = knhk.map(table.pack(1, nil, 3), function(x) return x and x * 10 end)
      local plain = knhk.map({ 1, 2 }, function(x) if x == 2 then return 20 end end)
      return out, plain
    end)
    assert.same({ 10, nil, 30, n = 3 }, out)
    -- a list without n: as long as #list, and a nil result leaves a hole
    assert.same({ [2] = 20 }, plain)
    assert.is_nil(plain.n)
  end)

  it("checks its arguments", function()
    run(function()
      assert.has_error(function() knhk.map(1, print) end,
        "bad argument #1 to 'map' (table expected, got number)")
      assert.has_error(function() knhk.map({}, function() end, { limit = 0 }) end,
        "bad argument #3 to 'map' (limit: whole number >= 1 expected, got 0)")
      assert.has_error(function() knhk.map({ 1, n = "2" }, print) end,
        "bad argument #1 to 'map' (n: whole number >= 0 expected, got string)")
    end)
  end)
end)

describe("knhk.race and knhk.select", function()
  it("race returns the first to finish; the losers' cleanup runs before it returns", function()
    local winner, cleaned, now = virtual(function()
      local ev = knhk.event() -- travels to the tasks as a handle
      local w = knhk.race(
        function() knhk.sleep(1); return "fast" end,
        function()
          local ok, err = pcall(knhk.sleep, 10)
          ev:set() -- cleanup, then the Cancelled goes on
          error(err, 0)
        end)
      return w, ev:is_set(), knhk.now()
    end)
    assert.equal("fast", winner)
    assert.is_true(cleaned)
    assert.equal(1, now)
  end)

  it("select names the case that won", function()
    local name, v, now = virtual(function()
      local name, v = knhk.select {
        slow = function() knhk.sleep(10); return "slow" end,
        quick = function() return 42 end,
      }
      return name, v, knhk.now()
    end)
    assert.equal("quick", name)
    assert.equal(42, v)
    assert.equal(0, now)
  end)

  -- On one worker the branches that run after the first failure have not
  -- reached a checkpoint when it cancels them: they run, and fail too.
  it("branches that fail at once raise the first failure, the others in .also, in race's words", function()
    local function fail(v) return function() error(v, 0) end end
    for _, case in ipairs {
      { "knhk.race", "another branch failed at the same time; its error is in .also: ",
        function() return knhk.race(fail "a", fail "b") end, { "a", "b" } },
      { "knhk.select", "another case failed at the same time; its error is in .also: ",
        function() return knhk.select{ a = fail "a", b = fail "b" } end, { "a", "b" } },
      { "knhk.race", "2 other branches failed at the same time; their errors are in .also: ",
        function() return knhk.race(fail "a", fail "b", fail "c") end, { "a", "b", "c" } },
    } do
      local ok, err = run(function() return pcall(case[3]) end, 1)
      assert.is_false(ok)
      assert_first_failure(err, case[1], case[2], case[4])
    end
  end)

  it("checks its arguments", function()
    run(function()
      assert.has_error(function() knhk.race(1) end,
        "bad argument #1 to 'race' (function or callable object expected, got number)")
      assert.has_error(function() knhk.select({ a = 1 }) end,
        "bad argument #1 to 'select' (case 'a' is a number, expected a function or callable object)")
    end)
  end)
end)

describe("nursery wait_any and join_next", function()
  it("wait_any gives the first result and waits for the losers' cleanup", function()
    local r, cleaned, now = virtual(function()
      local cleaned = 0
      local r = knhk.nursery(function(n)
        for _ = 1, 3 do
          n:spawn_local(function()
            local ok, e = pcall(knhk.sleep, 10)
            cleaned = cleaned + 1
            error(e, 0)
          end)
        end
        n:spawn(function() knhk.sleep(1); return "winner" end)
        return n:wait_any()
      end)
      return r, cleaned, knhk.now()
    end)
    assert.equal("winner", r)
    assert.equal(3, cleaned)
    assert.equal(1, now)
  end)

  it("join_next gives children in the order they end", function()
    local order = virtual(function()
      local order = {}
      knhk.nursery(function(n)
        n:spawn(function() knhk.sleep(3); return 3 end)
        n:spawn(function() knhk.sleep(1); return 1 end)
        n:spawn(function() knhk.sleep(2); return 2 end)
        while true do
          local h = n:join_next()
          if not h then break end
          order[#order + 1] = h:join() .. "@" .. knhk.now()
        end
      end)
      return order
    end)
    assert.same({ "1@1", "2@2", "3@3" }, order) -- each as soon as it ended
  end)
end)

describe("knhk.exec", function()
  it("runs a command: status, stdout, stderr", function()
    local r = run(function() return knhk.exec("echo out; echo err >&2; exit 3") end)
    assert.equal(3, r.status)
    assert.equal("out\n", r.stdout)
    assert.equal("err\n", r.stderr)
    assert.is_false(r.ok)
  end)

  it("a command killed by a signal: signal set, status 128 + signal as in a shell, not ok", function()
    local r = run(function() return knhk.exec("echo before; kill -9 $$; echo after") end)
    assert.equal(9, r.signal)
    assert.equal(128 + 9, r.status)
    assert.equal("before\n", r.stdout)
    assert.is_false(r.ok)
    local t = run(function() return knhk.exec({ "sh", "-c", "kill -TERM $$" }) end)
    assert.equal(15, t.signal)
    assert.equal(128 + 15, t.status)
    assert.is_false(t.ok)
    local e = run(function() return knhk.exec("exit 0") end)
    assert.is_nil(e.signal)
    assert.equal(0, e.status)
    assert.is_true(e.ok)
  end)

  it("takes an argv table, stdin, cwd and env", function()
    local r = run(function()
      return knhk.exec({ "sh", "-c", "cat; echo \"$X\"; pwd" },
        { stdin = "in\n", cwd = "/tmp", env = { X = "from env", PATH = os.getenv "PATH" } })
    end)
    assert.is_true(r.ok)
    assert.equal("in\nfrom env\n/tmp\n", r.stdout)
  end)

  it("a command that cannot start returns nil, message, code", function()
    local r, msg, code = run(function() return knhk.exec({ "/nonexistent/knhk-cmd" }) end)
    assert.is_nil(r)
    assert.matches("/nonexistent/knhk%-cmd: no such file", msg)
    assert.equal(-2, code)
  end)

  -- real time here: the subject is a real child process stopped mid-run
  -- (under the virtual clock, time stands still while a command runs)
  it("is killed when its scope is cancelled, and waited for", function()
    local caught, elapsed = run(function()
      local t0 = knhk.now()
      local scope = knhk.move_on_after(0.05, knhk.exec, { "sleep", "30" })
      return scope.cancelled_caught, knhk.now() - t0
    end)
    assert.is_true(caught)
    assert.is_true(elapsed < 5)
  end)

  -- real time: exec's timeout of a real command (virtual time stands still while it runs)
  it("a timeout returns nil, 'timed out'", function()
    local r, msg = run(function() return knhk.exec("sleep 30", { timeout = 0.05 }) end)
    assert.is_nil(r)
    assert.matches("timed out", msg)
  end)

  it("checks its arguments", function()
    run(function()
      assert.has_error(function() knhk.exec(42) end,
        "bad argument #1 to 'exec' (string or argv table expected, got number)")
      assert.has_error(function() knhk.exec("true", { stdin = 1 }) end,
        "bad argument #2 to 'exec' (stdin: string expected, got number)")
    end)
  end)
end)
