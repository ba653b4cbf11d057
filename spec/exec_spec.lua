-- knhk.exec: no process outlives its step, and a command that cannot start
-- says why. (The basics, status, output, stdin, env, are in workflow_spec.)
local knhk = require "knhk"

local TMP = os.tmpname()
os.remove(TMP)
assert(os.execute("mkdir -p " .. TMP) == 0)

-- A process counts as running until it is a zombie (an orphan's zombie is
-- left for init to reap, which a container's PID 1 may do late, or never).
local function running(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read "*a"
  f:close()
  local state = stat:match "%) (%a)"
  return state ~= nil and state ~= "Z" and state ~= "X"
end

local fifos = 0
local function fifo()
  fifos = fifos + 1
  local path = TMP .. "/pid" .. fifos
  assert(os.execute("mkfifo " .. path) == 0)
  return path
end

-- Runs `script` (its %s: a FIFO's path; it writes a pid there) with
-- knhk.exec in a scope, and cancels the scope once the pid has been read.
-- Returns the pid, whether the scope caught the cancel, and the seconds from
-- the cancel to exec's end.
local function cancel_after_pid(script)
  local path = fifo()
  local pid, t_cancel
  local scope = knhk.cancel_scope(function(scope)
    knhk.spawn_local(function()
      -- opening blocks this worker until the command opens the FIFO: it
      -- has started the process by then (exec waits on the reactor)
      local f = assert(io.open(path))
      pid = tonumber(f:read "*l")
      f:close()
      t_cancel = knhk.now()
      scope:cancel()
    end)
    knhk.exec(string.format(script, path))
  end)
  return pid, scope.cancelled_caught, knhk.now() - t_cancel
end

for _, workers in ipairs { 1, 4 } do
  local function run(fn) return knhk.run(fn, { workers = workers }) end

  describe("knhk.exec on " .. workers .. " worker(s)", function()
    it("a cancelled step's grandchild is stopped with it, and exec returns at once", function()
      local pid, caught, took = run(function()
        return cancel_after_pid "sleep 30 & echo $! >%s; wait"
      end)
      assert.is_true(caught)
      assert.is_true(took < 10, "took " .. took .. " s")
      assert.is_false(running(pid))
    end)

    it("h:cancel() on a task waiting in exec stops its command, and the join says cancelled",
      function()
      for _, spawn in ipairs { "spawn", "spawn_local" } do
        local pid, ok, err, took = run(function()
          -- (a file, not a FIFO: opening one would block the worker the
          -- command's task may be waiting to start on)
          fifos = fifos + 1
          local path = TMP .. "/pid" .. fifos
          local h = knhk[spawn](function(p)
            return knhk.exec(string.format("sleep 30 & echo $! >%s.w; mv %s.w %s; wait", p, p, p))
          end, path)
          local f
          for _ = 1, 1000 do -- (10 s at most)
            f = io.open(path)
            if f then break end
            knhk.sleep(0.01)
          end
          local pid = tonumber(assert(f, "the command never started"):read "*l")
          f:close()
          local t0 = knhk.now()
          h:cancel()
          local ok, err = pcall(h.join, h)
          return pid, ok, err, knhk.now() - t0
        end)
        assert.is_false(ok, spawn)
        assert.is_true(knhk.is_cancelled(err.value), spawn .. ": " .. tostring(err))
        assert.is_true(took < 10, spawn .. " took " .. took .. " s")
        assert.is_false(running(pid), spawn)
      end
    end)

    it("a cancelled step leaves no orphan when its output is redirected", function()
      local pid, caught, took = run(function()
        return cancel_after_pid "sleep 30 >/dev/null 2>&1 & echo $! >%s; wait"
      end)
      assert.is_true(caught)
      assert.is_true(took < 10, "took " .. took .. " s")
      assert.is_false(running(pid))
    end)

    it("move_on_after and { timeout = } return at once, though sh waits for a child", function()
      local caught, r, msg, took1, took2 = run(function()
        local t0 = knhk.now()
        local scope = knhk.move_on_after(0.2, knhk.exec, "sleep 30; true")
        local t1 = knhk.now()
        local res, m = knhk.exec("sleep 30; true", { timeout = 0.2 })
        return scope.cancelled_caught, res, m, t1 - t0, knhk.now() - t1
      end)
      assert.is_true(caught)
      assert.is_true(took1 < 10, "took " .. took1 .. " s")
      assert.is_nil(r)
      assert.equal("timed out after 0.2 s", msg)
      assert.is_true(took2 < 10, "took " .. took2 .. " s")
    end)

    it("a command that ignores SIGTERM is killed once the 1 s grace has passed", function()
      local r, msg, took = run(function()
        local t0 = knhk.now()
        local res, m = knhk.exec("trap '' TERM; sleep 30; true", { timeout = 0.1 })
        return res, m, knhk.now() - t0
      end)
      assert.is_nil(r)
      assert.matches("timed out", msg)
      assert.is_true(took >= 1.1 - 0.01, "took " .. took .. " s") -- timeout + grace
      assert.is_true(took < 10, "took " .. took .. " s")
    end)

    it("a background job does not outlive the command that started it", function()
      local pidfile = TMP .. "/bg" .. workers
      local r, took = run(function()
        local t0 = knhk.now()
        local res = knhk.exec("sleep 30 & echo $! >" .. pidfile .. "; echo started")
        return res, knhk.now() - t0
      end)
      assert.is_true(r.ok)
      assert.equal("started\n", r.stdout)
      assert.is_true(took < 10, "took " .. took .. " s")
      local f = assert(io.open(pidfile))
      local pid = tonumber(f:read "*l")
      f:close()
      assert.is_false(running(pid))
    end)

    it("a missing or unusable cwd is named, with its path", function()
      local r1, m1, c1, r2, m2 = run(function()
        local a, b, c = knhk.exec("pwd", { cwd = "/no/such" })
        local d, e = knhk.exec({ "pwd" }, { cwd = "/dev/null" })
        return a, b, c, d, e
      end)
      assert.is_nil(r1)
      assert.equal("exec: cwd '/no/such' does not exist", m1)
      assert.equal(-2, c1)
      assert.is_nil(r2)
      assert.equal("exec: cwd '/dev/null' is not a directory", m2)
    end)

    it("a program that is not executable says so, not 'unknown error'", function()
      local path = TMP .. "/not_executable.sh"
      local f = assert(io.open(path, "w"))
      f:write("echo hi\n")
      f:close()
      local r, m, c = run(function() return knhk.exec({ path }) end)
      assert.is_nil(r)
      assert.equal(path .. ": permission denied", m)
      assert.equal(-13, c)
    end)

    it("a command that leaves its stdin unread ends well, and so does the program", function()
      -- (the write to its stdin raised SIGPIPE, which ended knhk-lua)
      local script = TMP .. "/unread_stdin.lua"
      local f = assert(io.open(script, "w"))
      f:write([[
        local r, m = knhk.exec("true", { stdin = string.rep("x", 1000000) })
        print(r and r.status, m)
        print("still here")]])
      f:close()
      local p = assert(io.popen(os.getenv("KNHK_LUA") .. " -w " .. workers .. " " .. script
        .. " 2>&1; echo rc=$?"))
      local out = p:read "*a"
      p:close()
      assert.equal("0\tnil\nstill here\nrc=0\n", out)
    end)
  end)
end

describe("knhk.exec refuses what a process could not be given", function()
  local here = debug.getinfo(1, "S").short_src
  local function refusal(fn)
    local line = debug.getinfo(fn, "S").linedefined
    local ok, err = pcall(knhk.run, function()
      local ok2, e = pcall(fn)
      assert(not ok2, "exec was not refused")
      return e
    end, { workers = 1 })
    assert.is_true(ok, tostring(err))
    assert.equal(here .. ":" .. line .. ": ", err:sub(1, #here + #tostring(line) + 3))
    return err:sub(#here + #tostring(line) + 4)
  end

  it("an env value that is not a string or a number, naming its key", function()
    assert.equal("bad argument #2 to 'exec' (env.A: string expected, got table)",
      refusal(function() knhk.exec("true", { env = { A = {} } }) end))
  end)

  it("an env name that is not a string, or holds '='", function()
    assert.equal("bad argument #2 to 'exec' (env: a name that is a non-empty string without '=' or "
      .. "NUL expected, got number)", refusal(function() knhk.exec("true", { env = { "x" } }) end))
    assert.equal("bad argument #2 to 'exec' (env: a name that is a non-empty string without '=' or "
      .. "NUL expected, got \"A=B\")", refusal(function() knhk.exec("true", { env = { ["A=B"] = "1" } }) end))
  end)

  it("a NUL byte in an env value or an argument, which would cut it", function()
    assert.equal("bad argument #2 to 'exec' (env.A: string expected, got a string with a NUL byte)",
      refusal(function() knhk.exec("true", { env = { A = "a\0b" } }) end))
    assert.equal("bad argument #1 to 'exec' (argv[2]: a string without NUL bytes expected, got one with)",
      refusal(function() knhk.exec({ "echo", "a\0b" }) end))
  end)

  it("a NUL byte in a command string or a cwd, which would run another command or elsewhere", function()
    assert.equal("bad argument #1 to 'exec' (a command without NUL bytes expected, got one with)",
      refusal(function() knhk.exec("echo first\0; echo second") end))
    assert.equal("bad argument #2 to 'exec' (cwd: a path without NUL bytes expected, got one with)",
      refusal(function() knhk.exec({ "pwd" }, { cwd = "/tmp\0/etc" }) end))
  end)

  it("a negative timeout", function()
    assert.equal("bad argument #2 to 'exec' (timeout: number >= 0 expected, got -1)",
      refusal(function() knhk.exec({ "true" }, { timeout = -1 }) end))
  end)
end)
