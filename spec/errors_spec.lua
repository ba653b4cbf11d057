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

-- What a portable task's error message ends with when its value, a table
-- of a class knhk.codec does not know, stayed in the task's VM.
local NOT_CARRIED = " [the error value was not carried to the joiner: it is a table with a "
  .. "metatable knhk does not know (register its metatable with knhk.codec.register_class)]"
local function not_carried(kind) return kind == "spawn" and NOT_CARRIED or "" end

describe("argument errors", function()
  -- each case: the call, on one line, and what the message must say
  local cases = {
    { function() knhk.sleep("x") end, "bad argument #1 to 'sleep' (number expected, got string)" },
    { function() knhk.sleep(0 / 0) end, "bad argument #1 to 'sleep' (number expected, got NaN)" },
    { function() knhk.channel(-1) end, "bad argument #1 to 'channel' (whole number in 0..16777216 expected, got -1)" },
    { function() knhk.channel("3") end, "bad argument #1 to 'channel' (whole number in 0..16777216 expected, got string)" },
    { function() knhk.channel(1.5) end, "bad argument #1 to 'channel' (whole number in 0..16777216 expected, got 1.5)" },
    { function() knhk.semaphore(-2) end, "bad argument #1 to 'semaphore' (whole number >= 0 expected, got -2)" },
    { function() knhk.spawn(42) end, "bad argument #1 to 'spawn' (function or callable object expected, got number)" },
    { function() knhk.spawn_local({}) end, "bad argument #1 to 'spawn_local' (function or callable object expected, got table)" },
    { function() knhk.nursery(1) end, "bad argument #1 to 'nursery' (function or callable object expected, got number)" },
    { function() knhk.nursery(function() end, 5) end, "bad argument #2 to 'nursery' (options table expected, got number)" },
    { function() knhk.cancel_scope("f") end, "bad argument #1 to 'cancel_scope' (function or callable object expected, got string)" },
    { function() knhk.cancel_scope(print, { timeout = "1" }) end, "bad argument #2 to 'cancel_scope' (timeout: number expected, got string)" },
    { function() knhk.move_on_after(0 / 0, print) end, "bad argument #1 to 'move_on_after' (number expected, got NaN)" },
    { function() knhk.fail_after(1, nil) end, "bad argument #2 to 'fail_after' (function or callable object expected, got nil)" },
    { function() knhk.map(1, print) end, "bad argument #1 to 'map' (table expected, got number)" },
    { function() knhk.map({}, print, { limit = 0 }) end, "bad argument #3 to 'map' (limit: whole number >= 1 expected, got 0)" },
    { function() knhk.token(5) end, "bad argument #1 to 'token' (token expected, got number)" },
    { function() knhk.race(print, 3) end, "bad argument #2 to 'race' (function or callable object expected, got number)" },
    { function() knhk.select(7) end, "bad argument #1 to 'select' (table expected, got number)" },
    { function() knhk.exec(5) end, "bad argument #1 to 'exec' (string or argv table expected, got number)" },
    { function() knhk.exec({}) end, "bad argument #1 to 'exec' (argv table with the program first expected, got an empty table)" },
    { function() knhk.exec("true", { timeout = 0 / 0 }) end, "bad argument #2 to 'exec' (timeout: number expected, got NaN)" },
    { function() knhk.sleep(-1) end, "bad argument #1 to 'sleep' (number >= 0 expected, got -1)" },
    { function() knhk.move_on_after(-1, print) end, "bad argument #1 to 'move_on_after' (number >= 0 expected, got -1)" },
    { function() knhk.fail_after(-0.5, print) end, "bad argument #1 to 'fail_after' (number >= 0 expected, got -0.5)" },
    { function() knhk.cancel_scope(print, { timeout = -1 }) end, "bad argument #2 to 'cancel_scope' (timeout: number >= 0 expected, got -1)" },
    { function() knhk.cancel_scope(print, { timout = 1 }) end, "bad argument #2 to 'cancel_scope' (unknown option 'timout'; it takes: timeout, deadline, shield)" },
    { function() knhk.nursery(print, { supervise = "yes" }) end, "bad argument #2 to 'nursery' (supervise: boolean expected, got string)" },
    { function() knhk.nursery(print, { supervize = true }) end, "bad argument #2 to 'nursery' (unknown option 'supervize'; it takes: supervise)" },
    { function() knhk.map({}, print, { limt = 2 }) end, "bad argument #3 to 'map' (unknown option 'limt'; it takes: limit)" },
    { function() knhk.exec("true", { timeuot = 1 }) end, "bad argument #2 to 'exec' (unknown option 'timeuot'; it takes: cwd, env, stdin, timeout)" },
    { function() local h = knhk.spawn_local(print); h.join() end, "bad argument #1 to 'join' (task handle expected, got nil)" },
    { function() local h = knhk.spawn_local(print); h.join(knhk.channel(1)) end, "bad argument #1 to 'join' (task handle expected, got channel)" },
    { function() local h = knhk.spawn(print); h.join({}) end, "bad argument #1 to 'join' (task handle expected, got table)" },
    { function() knhk.telemetry.counter(5) end, "bad argument #1 to 'counter' (string expected, got number)" },
    { function() knhk.telemetry.histogram("h", { bound = {} }) end, "bad argument #2 to 'histogram' (unknown option 'bound'; it takes: unit, bounds)" },
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

  it("a nursery's spawn points at its caller", function()
    run(function()
      knhk.nursery(function(n)
        for _, m in ipairs({ "spawn", "spawn_local" }) do
          local line = debug.getinfo(1, "l").currentline + 1
          local msg = raised(function() n[m](n, 42) end)
          assert.equal(string.format("%s:%d: bad argument #1 to '%s' (function or callable object expected, got number)",
            here, line, m), msg)
        end
      end)
    end)
  end)

  it("knhk.map names the item that cannot travel, at its caller's line, in spawn's words", function()
    run(function()
      for _, opts in ipairs({ {}, { limit = 1 } }) do
        local line = debug.getinfo(1, "l").currentline + 1
        local ok, err = pcall(function() knhk.map({ 1, io.stdout }, tostring, opts) end)
        assert.is_false(ok)
        assert.equal(string.format("%s:%d: map: item 2 of the list is a userdata", here, line), err)
      end
    end)
  end)

  it("a task's result that cannot travel is reported with the task's id and place", function()
    run(function()
      local h = knhk.spawn(function() return 1, coroutine.create(print) end)
      local line = debug.getinfo(1, "l").currentline - 1
      local ok, e = pcall(h.join, h)
      assert.is_false(ok)
      assert.is_true(knhk.is_task_error(e))
      assert.equal(string.format("task %d (function at %s:%d) cannot return its results: "
        .. "return value 2 is a thread", h:id(), here, line), e.message)
    end)
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

  -- An error object whose __tostring raises made the task's error handler
  -- raise in turn: xpcall then said "error in error handling", which was
  -- reported as a stack overflow. What the object's __tostring said is kept.
  for _, kind in ipairs { "spawn", "spawn_local" } do
    it("an error object whose __tostring raises is named with what it raised (" .. kind .. ")", function()
      run(function()
        local h = knhk[kind](function()
          error(setmetatable({}, { __tostring = function() error("tostring exploded", 0) end }))
        end)
        local ok, err = pcall(h.join, h)
        assert.is_false(ok)
        assert.is_true(knhk.is_task_error(err))
        assert.equal("(a table value whose __tostring failed: tostring exploded)" .. not_carried(kind),
          err.message)
        assert.not_matches("stack overflow", tostring(err), 1, true)
        assert.truthy(err.traceback:find(here .. ":", 1, true), err.traceback) -- (a path, not a pattern)
      end)
    end)
  end

  it("a strict error object (its __index raises) is reported by its __tostring", function()
    run(function()
      local strict = { __index = function(_, k) error("no field " .. k, 0) end,
                       __tostring = function() return "MyError" end }
      for _, kind in ipairs { "spawn", "spawn_local" } do
        local h = knhk[kind](function() error(setmetatable({}, strict)) end)
        local ok, err = pcall(h.join, h)
        assert.is_false(ok)
        assert.equal("MyError" .. not_carried(kind), err.message, kind)
        assert.not_matches("stack overflow", tostring(err), 1, true)
      end
    end)
  end)

  it("a span gives back the very error object whose __tostring raises", function()
    run(function()
      local bad = setmetatable({}, { __tostring = function() error("tostring exploded", 0) end })
      local ok, err = pcall(knhk.telemetry.span, "work", nil, function() error(bad) end)
      assert.is_false(ok)
      assert.equal(bad, err)
    end)
  end)

  it("an error object whose __tostring returns no string is named too", function()
    run(function()
      local h = knhk.spawn(function() error(setmetatable({}, { __tostring = function() return 42 end })) end)
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      assert.equal("(a table value whose __tostring failed: it returned a number value)" .. NOT_CARRIED,
        err.message)
    end)
  end)

  it("a table raised without a message is shown in the TaskError's message, as the CLI shows it", function()
    run(function()
      for _, kind in ipairs { "spawn", "spawn_local" } do
        local h = knhk[kind](function() error({ code = 7 }) end)
        local ok, err = pcall(h.join, h)
        assert.is_false(ok)
        assert.equal("error raised with a table value: { code = 7 }", err.message, kind)
        assert.equal(7, err.value.code)
      end
    end)
  end)

  it("nil or false raised is named in the TaskError's message, as the CLI names it", function()
    run(function()
      for _, kind in ipairs { "spawn", "spawn_local" } do
        for _, case in ipairs {
          { nil, "error raised with no value (nil)" },
          { false, "error raised with a boolean value: false" },
        } do
          local h = knhk[kind](function() error(case[1]) end)
          local ok, err = pcall(h.join, h)
          assert.is_false(ok)
          assert.equal(case[2], err.message, kind)
          assert.equal(case[2], tostring(err):match("^[^\n]*"), kind)
          assert.equal(case[1], err.value, kind)
        end
      end
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
    local reason, now = knhk.run(function()
      local h
      knhk.move_on_after(1, function()
        h = knhk.spawn(function() knhk.sleep(60) end) -- cancelled with the scope it was spawned in
        knhk.sleep(60)
      end)
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      return err.value.reason, knhk.now()
    end, { workers = 2, clock = "virtual" })
    assert.equal("deadline", reason)
    assert.equal(1, now) -- at the scope's deadline, not at the end of either sleep
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
        knhk.checkpoint() -- would raise were the nursery itself cancelled
        n_after = "still running"
      end)
      return n_after
    end)
    assert.equal("still running", after)
  end)
end)

describe("an error object raised in a task", function()
  -- a class nobody registered with knhk.codec
  local Unregistered = { __tostring = function(e) return "Unregistered " .. e.status end }
  Unregistered.__index = Unregistered

  local function failing(obj) return function() error(obj) end end

  it("comes back itself from spawn_local, which shares the spawner's memory", function()
    run(function()
      local obj = setmetatable({ status = 503 }, Unregistered)
      local h = knhk.spawn_local(failing(obj))
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      assert.is_true(knhk.is_task_error(err))
      assert.equal(obj, err.value)
      assert.equal(Unregistered, getmetatable(err.value))
      assert.equal("Unregistered 503", err.message)
      local _, again = pcall(h.join, h)
      assert.equal(obj, again.value) -- joined again: the same object
    end)
  end)

  -- A handle that went through a channel is another handle to the same
  -- task: whichever joins first, each gets the object.
  for _, first in ipairs { "the spawner's handle", "the copy" } do
    it("comes back itself to every handle of a spawn_local task, " .. first .. " joining first",
      function()
        run(function()
          local obj = setmetatable({ status = 503 }, Unregistered)
          local h = knhk.spawn_local(failing(obj))
          local ch = knhk.channel(1)
          ch:send(h)
          local copy = ch:recv()
          assert.are_not.equal(h, copy) -- (else this would test nothing)
          local order = first == "the copy" and { copy, h } or { h, copy }
          for _, handle in ipairs(order) do
            local ok, err = pcall(handle.join, handle)
            assert.is_false(ok)
            assert.equal(obj, err.value)
          end
        end)
      end)
  end

  it("comes back itself from a nursery's spawn_local child", function()
    run(function()
      local obj = setmetatable({ status = 503 }, Unregistered)
      local ok, err = pcall(knhk.nursery, function(n) n:spawn_local(failing(obj)) end)
      assert.is_false(ok)
      assert.equal(obj, err.value)
    end)
  end)

  it("comes back itself from a root task that knhk.run raises", function()
    local obj = setmetatable({ status = 503 }, Unregistered)
    local ok, err = pcall(run, failing(obj))
    assert.is_false(ok)
    assert.equal(obj, err.value)
  end)

  it("travels from a portable task when its class is registered with knhk.codec.register_class", function()
    run(function()
      local HttpError = require "fixtures.http_error"
      for _ = 1, 4 do -- on either worker
        local h = knhk.spawn(function() error(setmetatable({ status = 503 }, HttpError)) end)
        local ok, err = pcall(h.join, h)
        assert.is_false(ok)
        assert.equal(HttpError, getmetatable(err.value))
        assert.equal(503, err.value.status)
        assert.equal("HttpError 503", err.message)
      end
    end)
  end)

  it("from a portable task, says it was not carried when its class is not registered", function()
    run(function()
      -- (made in the task: a table of an unknown class cannot be given to one)
      local function fail() error(setmetatable({ status = 503 }, Unregistered)) end
      local ways = {
        function(f) return knhk.spawn(f):join() end,
        function(f) return knhk.nursery(function(n) n:spawn(f) end) end,
      }
      for _, way in ipairs(ways) do
        local ok, err = pcall(way, fail)
        assert.is_false(ok)
        assert.is_nil(err.value)
        assert.equal("Unregistered 503" .. NOT_CARRIED, err.message)
      end
    end)
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


describe("an error raised below a tail call", function()
  -- The task's function went with the tail call: the nearest place left
  -- is the line that defined it (never one inside knhk).
  it("names the line that defined the task's function", function()
    run(function()
      local ch = knhk.channel(1)
      ch:close()
      local fn = function(c) return c:send(1) end -- the task's frame goes
      local line = debug.getinfo(fn, "S").linedefined
      local h = knhk.spawn(fn, ch)
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      assert.equal(here .. ":" .. line .. ": send: the channel is closed", tostring(err):match("^[^\n]*"))
    end)
  end)

  it("names the line of a callable object's __call", function()
    run(function()
      local call = function(self) return knhk.sleep("x") end
      local line = debug.getinfo(call, "S").linedefined
      local obj = setmetatable({}, { __call = call })
      local h = knhk.spawn_local(obj)
      local ok, err = pcall(h.join, h)
      assert.is_false(ok)
      assert.equal(here .. ":" .. line .. ": bad argument #1 to 'sleep' (number expected, got string)",
        tostring(err):match("^[^\n]*"))
    end)
  end)

  it("does so for portable and local tasks, for refusals made in C and in Lua", function()
    run(function()
      for _, spawn in ipairs({ knhk.spawn, knhk.spawn_local }) do
        for _, case in ipairs({
          { function()
              local n = 1
              return knhk.spawn(41 + n)
            end, "bad argument #1 to 'spawn' (function or callable object expected, got number)" },
          { function() return knhk.sleep("x") end,
            "bad argument #1 to 'sleep' (number expected, got string)" },
        }) do
          local line = debug.getinfo(case[1], "S").linedefined
          local h = spawn(case[1])
          local ok, err = pcall(h.join, h)
          assert.is_false(ok)
          assert.equal(here .. ":" .. line .. ": " .. case[2], tostring(err):match("^[^\n]*"))
        end
      end
    end)
  end)
end)

describe("an argument error in a tail call from a block's function", function()
  -- The function's frame went with the tail call: below it is the block's
  -- own protected call, knhk's, so the program's call of the block is named.
  it("names the line that called the block", function()
    run(function()
      local cases = {
        { function() return knhk.move_on_after(1, function() return knhk.sleep("x") end) end,
          "bad argument #1 to 'sleep' (number expected, got string)" },
        { function() return knhk.cancel_scope(function() return knhk.channel(-1) end) end,
          "bad argument #1 to 'channel' (whole number in 0..16777216 expected, got -1)" },
      }
      for _, case in ipairs(cases) do
        local line = debug.getinfo(case[1], "S").linedefined
        local ok, err = pcall(function()
          case[1]() -- (not a tail call: this line is the block's caller)
        end)
        assert.is_false(ok)
        local called_at = debug.getinfo(1, "l").currentline - 3
        assert.equal(here .. ":" .. called_at .. ": " .. case[2], tostring(err))
        assert.is_true(line > 0)
      end
    end)
  end)

  it("keeps Lua's answer, no place, for an API function called through pcall", function()
    run(function()
      local ok, err = pcall(knhk.sleep, "x")
      assert.is_false(ok)
      assert.equal("bad argument #1 to 'sleep' (number expected, got string)", err)
    end)
  end)
end)

-- busted runs this file under plain luajit: knhk.run is called from the
-- program, and its root task's coroutine holds only the root's frames.
describe("an argument error in the root task of knhk.run", function()
  local spawn = "bad argument #1 to 'spawn' (function or callable object expected, got number)"
  local nursery = "bad argument #1 to 'nursery' (function or callable object expected, got number)"
  local send = "bad argument #1 to 'send' (channel expected, got number)"
  local ONE = { workers = 1 }

  -- what pcall(knhk.run, ...) gave: the first line of its error
  local function first_line(ok, err)
    assert.is_false(ok, "expected an error")
    return tostring(err):match("^[^\n]*")
  end

  it("names the line of the call that made it", function()
    -- each case: the root's function, on one line; what it must raise
    for _, case in ipairs({
      { function() knhk.spawn(42) end, spawn },
      { function() knhk.nursery(42) end, nursery },
      { function() knhk.channel(1).send(42) end, send },
    }) do
      local line = debug.getinfo(case[1], "S").linedefined
      assert.equal(here .. ":" .. line .. ": " .. case[2], first_line(pcall(knhk.run, case[1], ONE)))
    end
  end)

  -- The root's function is gone from the coroutine (a tail call), or was
  -- never the program's: the root's stack goes on where the program called
  -- knhk.run, as if the function had been called there.
  it("names the line that called knhk.run when the call was a tail call", function()
    for _, case in ipairs({
      { function() return knhk.spawn(42) end, spawn },
      { function() return knhk.nursery(42) end, nursery },
      { function() return knhk.channel(1).send(42) end, send },
    }) do
      local line = debug.getinfo(1, "l").currentline + 1
      local msg = first_line(pcall(knhk.run, case[1], ONE))
      assert.equal(here .. ":" .. line .. ": " .. case[2], msg)
    end
  end)

  it("names the line that called knhk.run when the root's function is knhk's own", function()
    local line = debug.getinfo(1, "l").currentline + 1
    local msg = first_line(pcall(knhk.run, knhk.spawn, ONE, 42))
    assert.equal(here .. ":" .. line .. ": " .. spawn, msg)
    line = debug.getinfo(1, "l").currentline + 1
    msg = first_line(pcall(knhk.run, knhk.nursery, ONE, 42))
    assert.equal(here .. ":" .. line .. ": " .. nursery, msg)
  end)

  it("names no place below a coroutine of the program's own", function()
    local msg = first_line(pcall(knhk.run, function()
      return coroutine.wrap(function() return knhk.nursery(42) end)()
    end, ONE))
    assert.equal(nursery, msg)
  end)
end)

describe("waiting where a task cannot be suspended", function()
  it("names the problem at the program's line, and leaves nothing armed", function()
    run(function()
      local line = debug.getinfo(1, "l").currentline + 2
      local ok, err = pcall(table.sort, { 3, 2, 1 }, function(a, b)
        knhk.sleep(0.001)
        return a < b
      end)
      assert.is_false(ok)
      assert.matches(":" .. line .. ": knhk: cannot wait here: this wait runs inside a C function",
        err, 1, true)
      -- the sleep's timer was taken back: the task waits normally afterwards
      knhk.sleep(0.001)
      local ch = knhk.channel(0)
      assert.is_false(pcall(string.gsub, "x", "x", function() return ch:recv() end))
      knhk.spawn(function(c) c:send("after") end, ch)
      assert.equal("after", ch:recv())
    end)
  end)

  it("leaves nothing that makes a later cancellation drop a child's error", function()
    local ok, err = pcall(run, function()
      local h = knhk.spawn_local(function()
        pcall(table.sort, { 2, 1 }, function(a, b) knhk.sleep(1); return a < b end)
        knhk.nursery(function(n)
          n:spawn_local(function() pcall(knhk.sleep, 10); error("child cleanup failed") end)
        end)
      end)
      knhk.sleep(0.01)
      h:cancel()
      return h:join()
    end)
    assert.is_false(ok)
    assert.matches("child cleanup failed", tostring(err), 1, true)
  end)

  it("lets knhk.checkpoint there be a cancellation point only: it returns, or raises Cancelled",
    function()
    run(function()
      local t = { 5, 3, 1, 4, 2 }
      local calls = 0
      table.sort(t, function(a, b) knhk.checkpoint(); calls = calls + 1; return a < b end)
      assert.same({ 1, 2, 3, 4, 5 }, t)
      assert.is_true(calls > 0)
      assert.equal("x", (string.gsub("y", "y", function() knhk.sleep(0); return "x" end)))
      -- nothing was left queued: the task waits and checkpoints normally
      knhk.sleep(0.001)
      knhk.checkpoint()
      local caught
      knhk.cancel_scope(function(s)
        s:cancel()
        local ok, err = pcall(table.sort, { 2, 1 }, function(a, b) knhk.checkpoint(); return a < b end)
        caught = not ok and knhk.is_cancelled(err)
      end)
      assert.is_true(caught)
    end)
  end)

  it("says so for every kind of wait, and each then waits normally outside", function()
    run(function()
      local ev, sem, tok = knhk.event(), knhk.semaphore(0), knhk.token()
      local sleeper = knhk.spawn(function() knhk.sleep(0.01); return "joined" end)
      local waits = {
        event = function() ev:wait() end,
        permit = function() sem:acquire() end,
        join = function() sleeper:join() end,
        token = function() tok:wait() end,
      }
      for name, wait in pairs(waits) do
        local ok, err = pcall(table.sort, { 2, 1 }, function(a, b) wait(); return a < b end)
        assert.is_false(ok, name)
        assert.matches("knhk: cannot wait here", tostring(err), 1, true)
      end
      knhk.spawn(function(e, s, t) e:set(); s:release(); t:cancel() end, ev, sem, tok)
      ev:wait()
      sem:acquire()
      tok:wait()
      assert.equal("joined", sleeper:join())
    end)
  end)
end)

describe("methods called with a wrong self", function()
  -- h.join() for h:join(), or a method of one kind called on another: a
  -- clear argument error at the caller's line, never a crash or a hang.
  -- Every method of every class is tried (the classes are walked, so a
  -- method added later is covered too), with selves that are wrong.
  local function call_line(f, self)
    local line = debug.getinfo(1, "l").currentline + 1
    local ok, err = pcall(function() return f(self) end)
    return ok, tostring(err), line
  end

  local function what(v)
    if knhk.is_task(v) then return "task handle" end
    if knhk.is_lock(v) then return "lock" end
    if knhk.is_semaphore(v) then return "semaphore" end
    for _, k in ipairs({ "channel", "event", "token", "nursery" }) do
      if knhk["is_" .. k](v) then return k end
    end
    return type(v)
  end

  it("every method of every kind of handle refuses a self of another kind", function()
    local checked = run(function()
      return knhk.fail_after(20, function()
        local checked = {}
        knhk.nursery(function(n)
          local scope = knhk.cancel_scope(function() end)
          local h = knhk.spawn(function() end)
          h:join()
          local objects = {
            { "task handle", knhk.Task, h, n, { "join", "cancel", "done", "id" } },
            { "nursery", knhk.Nursery, n, h,
              { "spawn", "spawn_local", "cancel", "join_next", "wait_any", "wait_all" } },
            { "channel", knhk.Channel, knhk.channel(1), knhk.token(),
              { "send", "recv", "close", "is_closed", "capacity", "values" } },
            { "semaphore", knhk.Semaphore, knhk.semaphore(1), knhk.event(),
              { "acquire", "release", "permits", "with" } },
            { "lock", knhk.Lock, knhk.lock(), knhk.semaphore(1),
              { "lock", "unlock", "with", "acquire", "release", "permits" } },
            { "event", knhk.Event, knhk.event(), knhk.lock(), { "set", "is_set", "wait" } },
            { "token", knhk.Token, knhk.token(), knhk.channel(0), { "child", "cancel", "is_cancelled", "wait" } },
            { "cancel scope", getmetatable(scope), scope, knhk.token(), { "cancel" } },
            { "counter", getmetatable(knhk.telemetry.counter("c")), knhk.telemetry.counter("c"),
              knhk.event(), { "add" } },
            { "updowncounter", getmetatable(knhk.telemetry.updowncounter("u")), knhk.telemetry.updowncounter("u"),
              knhk.token(), { "add" } },
            { "histogram", getmetatable(knhk.telemetry.histogram("h")), knhk.telemetry.histogram("h"),
              knhk.event(), { "record" } },
            { "gauge", getmetatable(knhk.telemetry.gauge("g")), knhk.telemetry.gauge("g"),
              knhk.channel(1), { "set" } },
          }
          for _, o in ipairs(objects) do
            local kind, class, good, other, documented = o[1], o[2], o[3], o[4], o[5]
            local methods = {}
            for name, f in pairs(class) do
              if type(f) == "function" and not name:match("^__") then
                methods[name] = f
              end
            end
            for _, name in ipairs(documented) do
              assert.is_function(methods[name], kind .. " has a method " .. name)
              assert.is_function(good[name], kind .. " handle reaches " .. name)
            end
            for name, f in pairs(methods) do
              do
                for _, bad in ipairs({ {}, 42, "x", false, other }) do
                  local ok, err, line = call_line(f, bad)
                  assert.is_false(ok, kind .. "." .. name .. " accepted a " .. what(bad))
                  assert.equal(string.format("%s:%d: bad argument #1 to '%s' (%s expected, got %s)",
                    here, line, name, kind, what(bad)), err)
                  checked[#checked + 1] = kind .. "." .. name
                end
                local ok, err, line = call_line(f, nil)
                assert.is_false(ok)
                assert.equal(string.format("%s:%d: bad argument #1 to '%s' (%s expected, got nil)",
                  here, line, name, kind), err)
              end
            end
          end
        end)
        return checked
      end)
    end)
    assert.is_true(#checked >= 5 * 38, "every method was tried")
  end)

  it("a method a handle does not have is named, not called as nil", function()
    run(function()
      local cases = { { knhk.channel(1), "channel", "len" }, { knhk.token(), "token", "set" },
                      { knhk.event(), "event", "send" }, { knhk.lock(), "lock", "acquire_many" },
                      { knhk.semaphore(2), "semaphore", "lock" } }
      for _, c in ipairs(cases) do
        local line = debug.getinfo(1, "l").currentline + 1
        local ok, err = pcall(function() return c[1][c[3]](c[1]) end)
        assert.is_false(ok)
        assert.equal(string.format("%s:%d: %s has no method '%s'", here, line, c[2], c[3]), tostring(err))
      end
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, err = pcall(function() return knhk.spawn(function() end):wait() end)
      assert.is_false(ok)
      assert.equal(here .. ":" .. line .. ": task handle has no method 'wait'", tostring(err))
      knhk.nursery(function(n)
        line = debug.getinfo(1, "l").currentline + 1
        ok, err = pcall(function() return n:spawn_all() end)
        assert.equal(here .. ":" .. line .. ": nursery has no method 'spawn_all'", tostring(err))
      end)
    end)
  end)

  it("with() refuses what is not a function, at the caller's line", function()
    run(function()
      for _, s in ipairs({ knhk.semaphore(1), knhk.lock() }) do
        local line = debug.getinfo(1, "l").currentline + 1
        local ok, err = pcall(function() return s:with(5) end)
        assert.is_false(ok)
        assert.equal(here .. ":" .. line .. ": bad argument #1 to 'with' (function or callable object expected, got number)",
          tostring(err))
        assert.equal(1, s:permits()) -- nothing was taken
      end
    end)
  end)
end)

describe("a raised table, shown in a message", function()
  local errors = require "knhk.errors"
  local function list(n)
    local t = {}
    for i = 1, n do t[i] = i end
    return t
  end

  it("shows a short list and its named fields whole", function()
    assert.equal('{ 1, "two", x = 3 }', errors.show({ 1, "two", x = 3 }))
    assert.equal("{ " .. table.concat(list(40), ", ") .. " }", errors.show(list(40)))
  end)

  it("counts what it leaves out of a long list, and says nothing is left out when nothing is", function()
    local s = errors.show(list(41))
    assert.matches(", 40, %.%.%. %(1 more%) }$", s)
    assert.not_matches("41", s)
  end)

  it("keeps a huge list to one readable line", function()
    local s = errors.show(list(100000))
    assert.is_true(#s < 300, "shown in " .. #s .. " characters")
    assert.matches("... (99960 more) }", s, 1, true)
  end)

  it("keeps the named fields of a long list, which say what the value is", function()
    local t = list(45)
    t.code, t.name = 7, "x"
    local s = errors.show(t)
    assert.matches(', code = 7, name = "x" }$', s)
    assert.matches(", 38, ... (7 more), code", s, 1, true)
  end)

  it("counts the named fields it leaves out", function()
    local t = {}
    for i = 1, 100 do t["k" .. i] = i end
    assert.matches(", %.%.%. %(60 more%) }$", errors.show(t))
  end)
end)

-- A cancel scope, sem:with, lock:with and a span catch an error to clean up
-- and raise it again, unchanged.
describe("an error raised inside one of knhk's blocks", function()
  local blocks = {
    cancel_scope = function(f) return knhk.cancel_scope(f) end,
    move_on_after = function(f) return knhk.move_on_after(5, f) end,
    fail_after = function(f) return knhk.fail_after(5, f) end,
    ["semaphore with"] = function(f) return knhk.semaphore(1):with(f) end,
    ["lock with"] = function(f) return knhk.lock():with(f) end,
    span = function(f) return knhk.telemetry.span("work", nil, f) end,
  }

  for name, block in pairs(blocks) do
    it("gives a pcall around it the very value raised: " .. name, function()
      run(function()
        local value = { code = 7 }
        local ok, err = pcall(block, function() error(value) end)
        assert.is_false(ok)
        assert.equal(value, err)
      end)
    end)

    it("says stack overflow for one in its function, with its place: " .. name, function()
      run(function()
        local function deep(n) return deep(n + 1) + 1 end
        local ok, err = pcall(block, function() deep(1) end)
        assert.is_false(ok)
        assert.matches("stack overflow", tostring(err), 1, true)
        assert.equal(1, tostring(err):find(here .. ":", 1, true), tostring(err))
      end)
    end)
  end
end)
