-- The knhk-lua command: options, exit codes and messages, signals, REPL.
local pty = require "pty"

local KNHK_LUA = assert(os.getenv "KNHK_LUA", "KNHK_LUA must name the knhk-lua binary")
local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p " .. TMP)

local function write(name, text)
  local path = TMP .. "/" .. name
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

local function slurp(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read "*a"
  f:close()
  return s
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Runs knhk-lua with args (a string of shell words) and env (shell words
-- NAME=value put before the command); returns code, stdout, stderr.
local function run(args, stdin, env)
  local cmd = (env and env .. " " or "") .. q(KNHK_LUA) .. " " .. args .. " >" .. TMP .. "/out 2>"
    .. TMP .. "/err"
  if stdin then cmd = cmd .. " <" .. write("stdin", stdin) else cmd = cmd .. " </dev/null" end
  os.execute(cmd .. "; echo $? >" .. TMP .. "/rc")
  return tonumber(slurp(TMP .. "/rc")), slurp(TMP .. "/out"), slurp(TMP .. "/err")
end

describe("knhk-lua", function()
  it("runs a workflow: spawn and sleep at top level, args in arg and ...", function()
    local script = write("wf.lua", [[
      local h = knhk.spawn(function(x) return x * 2 end, 21)
      knhk.sleep(0.001)
      print(h:join(), arg[0]:match("wf.lua$") ~= nil, arg[1], arg[2], select("#", ...))
    ]])
    local code, out, err = run(q(script) .. " one two")
    assert.equal(0, code, err)
    assert.equal("42\ttrue\tone\ttwo\t2\n", out)
    assert.equal("", err)
  end)

  it("--help shows usage and examples; -v the version", function()
    local code, out = run("--help")
    assert.equal(0, code)
    assert.matches("usage: knhk%-lua %[options%] %[script %[args%.%.%.%]%]", out)
    assert.matches("examples:", out)
    local code2, out2 = run("-v")
    assert.equal(0, code2)
    assert.matches("^knhk %d+%.%d+%.%d+", out2)
  end)

  it("-e and -l run in order, inside the runtime", function()
    local code, out = run("-l cjson -e " .. q("knhk.sleep(0) print(cjson.encode({knhk.now() > 0}))"))
    assert.equal(0, code)
    assert.equal("[true]\n", out)
  end)

  -- (a module of the script's that uses the global `knhk`, as the script
  -- does: each of the two tasks calls it, and they can only both finish on
  -- two different workers)
  local SPEC_DIR = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$")
  local function global_knhk_module()
    write("uses_global_knhk.lua", [[
      local M = {}
      function M.where() return knhk.current().worker, knhk.now() >= 0 end
      return M
    ]])
    return "package.path = " .. string.format("%q", TMP .. "/?.lua;" .. SPEC_DIR .. "?.lua;")
      .. " .. package.path\n"
  end

  it("gives a script's modules the global knhk on every worker, as in the script", function()
    local script = write("global_knhk.lua", global_knhk_module() .. [[
      local mod = require "uses_global_knhk"
      local a, b = require("two_workers")(function()
        return knhk.current().worker, pcall(mod.where)
      end)
      for _, r in ipairs { a, b } do print(r[1], r[2], r[3], r[4]) end
    ]])
    local code, out, err = run("-w 2 " .. q(script))
    assert.equal(0, code, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    table.sort(lines)
    assert.same({ "0\ttrue\t0\ttrue", "1\ttrue\t1\ttrue" }, lines)
  end)

  it("gives the global knhk to every worker under -e too", function()
    local code, out, err = run("-w 2 -e " .. q(global_knhk_module() .. [[
      local mod = require "uses_global_knhk"
      local a, b = require("two_workers")(function() return pcall(mod.where) end)
      print(a[1], b[1], a[2] + b[2])
    ]]))
    assert.equal(0, code, err)
    assert.equal("true\ttrue\t1\n", out)
  end)

  it("- runs stdin as the script", function()
    local code, out = run("- x", "print('stdin', ...)")
    assert.equal(0, code)
    assert.equal("stdin\tx\n", out)
  end)

  it("a failing workflow: exit 1, file:line: message and the traceback", function()
    local script = write("bad.lua", "local function f() error('it broke') end\nf()\n")
    local code, out, err = run(q(script))
    assert.equal(1, code)
    assert.matches("^knhk%-lua: [^\n]*bad%.lua:1: it broke\n", err)
    assert.matches("stack traceback:", err)
    assert.matches("bad%.lua:2", err)
    assert.not_matches("knhk/runtime%.lua", err) -- not the runtime's own frames
  end)

  -- each: a call the runtime refuses, and its message
  local refused = {
    { "knhk.spawn(42)", "bad argument #1 to 'spawn' (function or callable object expected, got number)" },
    { "knhk.nursery(42)", "bad argument #1 to 'nursery' (function or callable object expected, got number)" },
    { "knhk.channel(1).send(42)", "bad argument #1 to 'send' (channel expected, got number)" },
  }

  it("an argument error names the script's line, as under plain luajit's knhk.run", function()
    for _, case in ipairs(refused) do
      local script = write("refused.lua", "local x = 1\n" .. case[1] .. "\n")
      local code, _, err = run(q(script))
      assert.equal(1, code)
      assert.equal("knhk-lua: " .. script .. ":2: " .. case[2], err:match("^[^\n]*"))
    end
  end)

  -- The script's frame went in the tail call, and knhk-lua called it:
  -- the line of the tail call is named, as plain luajit's knhk.run names
  -- the line that called it, and nothing of knhk's is named.
  it("an argument error below a tail call at the script's top names the script's line", function()
    for _, case in ipairs(refused) do
      local script = write("refused.lua", "local x = 1\nreturn " .. case[1] .. "\n")
      local code, _, err = run(q(script))
      assert.equal(1, code)
      assert.equal("knhk-lua: " .. script .. ":2: " .. case[2], err:match("^[^\n]*"))
      code, _, err = run("-e " .. q("return " .. case[1]))
      assert.equal(1, code)
      assert.equal("knhk-lua: (command line):1: " .. case[2], err:match("^[^\n]*"))
    end
  end)

  it("an argument error below one of several tail calls at the script's top names the script", function()
    local script = write("refused.lua", "if ... then return knhk.spawn(1) end\nreturn knhk.spawn(42)\n")
    local code, _, err = run(q(script))
    assert.equal(1, code)
    assert.equal("knhk-lua: " .. script .. ": " .. refused[1][2], err:match("^[^\n]*"))
  end)

  it("the place of a script's tail call is not named below a REPL line after it", function()
    local script = write("first.lua", "local x = 1\nreturn print('ran')\n")
    local code, out, err = run("-i " .. q(script), "return knhk.spawn(42)\n")
    assert.equal(0, code)
    assert.matches("^ran\n", out)
    assert.matches("\n" .. refused[1][2]:gsub("%p", "%%%0") .. "\n", "\n" .. err)
    assert.not_matches("first%.lua", err)
  end)

  it("every error of an error group is shown", function()
    local script = write("group.lua", [[
      knhk.nursery(function(n)
        local asleep = knhk.event()
        -- fails once the other is on its way to sleep, which is cancelled then
        n:spawn(function(e) e:wait(); error("first") end, asleep)
        n:spawn(function(e) e:set(); pcall(knhk.sleep, 5); error("second") end, asleep)
      end)
    ]])
    local code, _, err = run(q(script))
    assert.equal(1, code)
    assert.matches("2 errors", err)
    assert.matches("first", err)
    assert.matches("second", err)
  end)

  it("usage errors: exit 2 and one line with a hint", function()
    for _, args in ipairs { "--nope", "-w", "-w 0 x.lua", "-e" } do
      local code, out, err = run(args)
      assert.equal(2, code, args)
      assert.equal(1, select(2, err:gsub("\n", "")), err)
      assert.matches("try 'knhk%-lua %-%-help'", err)
    end
  end)

  it("takes -w N, -wN, --workers N and --workers=N alike", function()
    for _, opt in ipairs({ "-w 3", "-w3", "--workers 3", "--workers=3" }) do
      local code, out = run(opt .. " -e " .. q("print(knhk.stats().workers)"))
      assert.equal(0, code)
      assert.equal("3\n", out)
    end
    for _, bad in ipairs { "many", "1e1", "0x2" } do
      local code, _, err = run("--workers=" .. bad .. " -e " .. q("print('ran')"))
      assert.equal(2, code, bad)
      assert.matches("workers must be a whole number in 1..256, got '" .. bad .. "'", err, 1, true)
    end
    local code, _, err = run("-w0 -e " .. q("print('ran')"))
    assert.equal(2, code)
    assert.matches("workers must be a whole number in 1..256, got '0'", err, 1, true)
  end)

  it("--clock virtual runs the script on a virtual clock; a bad kind is a usage error", function()
    local code, out = run("--clock virtual -e " .. q("knhk.sleep(72 * 3600); print(knhk.clock.kind(), knhk.now())"))
    assert.equal(0, code)
    assert.equal("virtual\t259200\n", out)
    local code2, out2 = run("--clock=real -e " .. q("print(knhk.clock.kind())"))
    assert.equal(0, code2)
    assert.equal("real\n", out2)
    local code3, _, err3 = run("--clock slow -e " .. q("print('ran')"))
    assert.equal(2, code3)
    assert.equal("knhk-lua: --clock takes real or virtual, got 'slow' (try 'knhk-lua --help')\n", err3)
  end)

  it("KNHK_WORKERS that is not a whole number in 1..256: exit 2 and one line, as -w", function()
    -- written as a person writes a count: "1e1" or "0x2" are not ten and two
    for _, value in ipairs { "abc", "0", "100000", "1.5", "1e1", "0x2", "2x" } do
      local code, out, err = run("-e " .. q("print('ran')"), nil, "KNHK_WORKERS=" .. value)
      assert.equal(2, code, value)
      assert.equal("", out)
      assert.equal("knhk-lua: KNHK_WORKERS must be a whole number in 1..256, got '" .. value
        .. "' (try 'knhk-lua --help')\n", err)
    end
    -- a good value is used; -w wins over it
    local code, out = run("-e " .. q("print(knhk.stats().workers)"), nil, "KNHK_WORKERS=3")
    assert.equal(0, code)
    assert.equal("3\n", out)
    local code2, out2 = run("-w 2 -e " .. q("print(knhk.stats().workers)"), nil, "KNHK_WORKERS=abc")
    assert.equal(0, code2)
    assert.equal("2\n", out2)
  end)

  it("-e with a syntax error: exit 1 and the error alone, after the -e before it ran", function()
    local code, out, err = run("-e " .. q("print('first')") .. " -e " .. q("x = = 1") .. " -e "
      .. q("print('never')"))
    assert.equal(1, code)
    assert.equal("first\n", out)
    assert.equal("knhk-lua: (command line):1: unexpected symbol near '='\n", err)
  end)

  it("knhk.run called inside the run: an error naming the line that called it", function()
    for _, where in ipairs { "", "knhk.spawn(function() ", "knhk.spawn_local(function() " } do
      local close = where == "" and "" or " end):join()"
      local code, _, err = run("-e " .. q(where .. "knhk.run(function() end)" .. close))
      assert.equal(1, code)
      assert.matches("^knhk%-lua: %(command line%):1: knhk%.run: already running", err)
      assert.not_matches("cli%.lua", err)
    end
  end)

  it("knhk.run called in a script: the error says the script runs in a run already, and what to do",
    function()
      local script = write("nested_run.lua", "local function main() print('main') end\nknhk.run(main)\n")
      local code, out, err = run(q(script))
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("nested_run%.lua:2: knhk%.run: already running", err)
      assert.matches("knhk-lua runs a script", err, 1, true)
      assert.matches("call the function directly", err, 1, true)
    end)

  it("-l with a module that cannot be loaded: exit 1 and only the module's error", function()
    local code, out, err = run("-l knhk_no_such_module -e " .. q("print('ran')"))
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("^knhk%-lua: module 'knhk_no_such_module' not found:\n", err)
    assert.not_matches("cli%.lua", err)
    assert.not_matches("stack traceback", err)
    write("knhk_broken_mod.lua", "local x = 1\nerror('broken at load')\n")
    local code2, _, err2 = run("-l knhk_broken_mod -e " .. q("print('ran')"), nil,
      "LUA_PATH=" .. q(TMP .. "/?.lua;;"))
    assert.equal(1, code2)
    assert.equal("knhk-lua: " .. TMP .. "/knhk_broken_mod.lua:2: broken at load\n", err2)
  end)

  it("an error raised with a huge table: one line, what was left out counted", function()
    local script = write("raise_big.lua", "local t = {} for i = 1, 100000 do t[i] = i end t.code = 7 error(t)\n")
    local code, _, err = run(q(script))
    assert.equal(1, code)
    local first = err:match("^[^\n]*")
    assert.matches("^knhk%-lua: error raised with a table value: { 1, 2, 3,", first)
    assert.matches(", 39, %.%.%. %(99961 more%), code = 7 }$", first)
  end)

  it("an error raised with a table, nil or boolean: the value shown readably, and the traceback",
    function()
    local cases = {
      { "{ 1, 'two', x = 3 }", "error raised with a table value: { 1, \"two\", x = 3 }" },
      { "nil", "error raised with no value (nil)" },
      { "false", "error raised with a boolean value: false" },
    }
    for i, c in ipairs(cases) do
      local script = write("raise" .. i .. ".lua", "local function f()\n  error(" .. c[1]
        .. ")\nend\nf()\n")
      local code, _, err = run(q(script))
      assert.equal(1, code, c[1])
      assert.equal("knhk-lua: " .. c[2], err:match("^[^\n]*"), c[1])
      assert.matches("\nstack traceback:\n", err)
      assert.matches("raise" .. i .. "%.lua:2: in function 'f'", err)
      assert.matches("raise" .. i .. "%.lua:4", err)
    end
    -- an error object that has a message keeps it
    local script = write("raise_obj.lua", "error(setmetatable({}, { __tostring = function() "
      .. "return 'my error' end }))\n")
    local code, _, err = run(q(script))
    assert.equal(1, code)
    assert.matches("^knhk%-lua: my error\n", err)
  end)

  it("an error object whose __tostring raises: what it raised, and the traceback", function()
    -- (reporting it raised again: the script's error became "error in error
    -- handling", and a task's was called a stack overflow)
    local script = write("raise_bad_tostring.lua", "local function f()\n  error(setmetatable({}, "
      .. "{ __tostring = function() error('tostring exploded', 0) end }))\nend\n"
      .. "knhk.spawn(f):join()\n")
    local code, _, err = run(q(script))
    assert.equal(1, code)
    -- (a portable task's: its value, of a class knhk does not know, stayed in its VM)
    assert.equal("knhk-lua: (a table value whose __tostring failed: tostring exploded) [the error "
      .. "value was not carried to the joiner: it is a table with a metatable knhk does not know "
      .. "(register its metatable with knhk.codec.register_class)]", err:match("^[^\n]*"))
    assert.matches("raise_bad_tostring%.lua:2: in function", err)
    assert.not_matches("error in error handling", err, 1, true)
    assert.not_matches("stack overflow", err, 1, true)
    local root = write("raise_bad_tostring_root.lua", "error(setmetatable({}, "
      .. "{ __tostring = function() error('tostring exploded', 0) end }))\n")
    local code2, _, err2 = run(q(root))
    assert.equal(1, code2)
    assert.equal("knhk-lua: (a table value whose __tostring failed: tostring exploded)",
      err2:match("^[^\n]*"))
  end)

  it("a missing script or a syntax error: exit 1 and one clear line", function()
    local code, _, err = run(q(TMP .. "/missing.lua"))
    assert.equal(1, code)
    assert.matches("^knhk%-lua: cannot open [^\n]*missing%.lua[^\n]*\n$", err)
    local bad = write("syntax.lua", "x = = 1\n")
    local code2, _, err2 = run(q(bad))
    assert.equal(1, code2)
    assert.matches("^knhk%-lua: [^\n]*syntax%.lua:1: [^\n]*\n$", err2)
  end)

  it("--stats prints the counters at exit, once every task (the root too) has ended", function()
    local code, _, err = run("--stats -e " .. q("knhk.spawn(function() end):join()"))
    assert.equal(0, code)
    -- the root task and the one it spawned: both ended, nothing live
    assert.matches("tasks: 2 spawned, 2 completed, 0 failed, 0 cancelled, 0 live", err, 1, true)
  end)

  it("closes the Lua state at exit, as luajit does: files left open are flushed, finalizers run",
    function()
      -- one file written by the root task (the main VM), one by a task on
      -- any worker; neither is closed, and the __gc of a live table runs
      local a, b, c = TMP .. "/left-open-a", TMP .. "/left-open-b", TMP .. "/gc-ran"
      for _, f in ipairs { a, b, c } do os.remove(f) end
      local code, _, err = run("-e " .. q(string.format([[
        OPEN = io.open(%q, "w"); OPEN:write("root")
        knhk.spawn(function(path) KEEP = io.open(path, "w"); KEEP:write("task") end, %q):join()
        ANCHOR = newproxy(true)
        getmetatable(ANCHOR).__gc = function() io.open(%q, "w"):write("gc") end
      ]], a, b, c)))
      assert.equal(0, code, err)
      assert.equal("root", slurp(a))
      assert.equal("task", slurp(b))
      assert.equal("gc", slurp(c))
      -- the same when the script fails: exit 1, and still flushed
      os.remove(a)
      code = run("-e " .. q(string.format([[OPEN = io.open(%q, "w"); OPEN:write("x"); error("boom")]], a)))
      assert.equal(1, code)
      assert.equal("x", slurp(a))
    end)

  -- The signal specs run in real time: a real signal reaches a real process
  -- asleep (knhk.sleep(30) stands for "until the signal comes").
  local function signalled(sig, expect_code, word)
    local ready = TMP .. "/ready" .. sig
    os.remove(ready)
    local script = write("sig.lua", string.format([[
      local ok, err = pcall(function()
        io.open(%q, "w"):close()
        knhk.sleep(30)
      end)
      io.stderr:write("cleanup ran: ", tostring(err), "\n")
      error(err, 0)
    ]], ready))
    local p = pty.spawn({ KNHK_LUA, script })
    finally(function() p:kill() end)
    for _ = 1, 200 do -- wait for the workflow to be running
      if io.open(ready) then break end
      p:pump(20)
    end
    p:signal(sig)
    local code = p:wait(10)
    assert.equal(expect_code, code)
    assert.matches("cleanup ran: Cancelled %(signal%)", p.all)
    assert.matches("knhk%-lua: " .. word, p.all)
  end

  it("SIGINT cancels the workflow, cleanup runs, exit 130", function()
    signalled(2, 130, "interrupted")
  end)

  it("SIGTERM does the same with 143", function()
    signalled(15, 143, "terminated")
  end)

  it("a signal that comes as the script's first line runs is caught: cleanup runs (20 runs)", function()
    -- the handlers are in place before any task code runs, though nothing
    -- waits for the reactor's thread any more
    local script = write("selfsig.lua", [[
      local ffi = require "ffi"
      ffi.cdef "int kill(int pid, int sig); int getpid(void);"
      local ok, err = pcall(function()
        ffi.C.kill(ffi.C.getpid(), tonumber(arg[1]))
        knhk.sleep(30)
      end)
      io.stderr:write("cleanup ran: ", tostring(err), "\n")
      error(err, 0)
    ]])
    for run_no = 1, 20 do
      local sig = run_no % 2 == 0 and 2 or 15
      local code, _, err = run(q(script) .. " " .. sig)
      assert.equal(sig == 2 and 130 or 143, code, "run " .. run_no .. ": " .. err)
      assert.matches("cleanup ran: Cancelled %(signal%)", err)
    end
  end)

  it("SIGINT to a script asleep in knhk.sleep names no task: it is at a checkpoint (30 runs)", function()
    -- the script says when its root task is asleep (a watcher sees it
    -- waiting), so every run signals a task parked in its sleep
    local script = write("asleep.lua", [[
      knhk.spawn_local(function()
        while true do
          for _, t in ipairs(knhk.tasks()) do
            if t.parent == nil and t.state == "waiting" then print("asleep"); return end
          end
          knhk.checkpoint()
        end
      end)
      knhk.sleep(10)
    ]])
    for run = 1, 30 do
      local p = pty.spawn({ KNHK_LUA, script })
      finally(function() p:kill() end)
      p:expect("asleep", 10)
      p:signal(2)
      local code = p:wait(10)
      assert.equal(130, code, "run " .. run .. ": " .. p.all)
      assert.not_matches("checkpoint", p.all, nil, "run " .. run)
      assert.matches("knhk%-lua: interrupted", p.all)
    end
  end)

  it("SIGINT names the tasks that have not reached a checkpoint; a second one ends it", function()
    local ready = TMP .. "/ready-busy"
    os.remove(ready)
    local script = write("busy.lua", string.format([[
      local h = knhk.spawn(function(path)
        io.open(path, "w"):close()
        local x = 0
        while true do x = x + 1 end -- never a checkpoint
      end, %q)
      knhk.sleep(30)
    ]], ready))
    local p = pty.spawn({ KNHK_LUA, "-w", "2", script })
    finally(function() p:kill() end)
    for _ = 1, 200 do -- wait for the busy task to be running
      if io.open(ready) then break end
      p:pump(20)
    end
    p:signal(2)
    p:expect("Ctrl%-C again to end the process at once", 10)
    assert.matches("task %d+ %(function at [^)]*busy%.lua:1%), running on worker %d", p.all)
    p:signal(2)
    assert.equal(130, p:wait(10))
  end)

  it("--telemetry FILE records the run, and writes it out after SIGINT too", function()
    local ready, rec = TMP .. "/ready-tel", TMP .. "/run.jsonl"
    os.remove(ready)
    local script = write("tel.lua", string.format([[
      knhk.telemetry.span("waiting", { ["why"] = "a signal" }, function()
        io.open(%q, "w"):close()
        knhk.sleep(30)
      end)
    ]], ready))
    local p = pty.spawn({ KNHK_LUA, "--telemetry", rec, script })
    finally(function() p:kill() end)
    for _ = 1, 200 do
      if io.open(ready) then break end
      p:pump(20)
    end
    p:signal(2)
    assert.equal(130, p:wait(10))
    local text = slurp(rec)
    assert.matches('"name":"waiting"', text)
    assert.matches('"name":"knhk.concurrency.nursery.spawn"', text)
    assert.matches('\n{"resourceMetrics":%[', text) -- the metrics at exit
    assert.matches('"name":"knhk.concurrency.executor.tasks.completed"', text)
  end)

  describe("a script that ends with os.exit", function()
    local function spans_named(text, name)
      local n = 0
      for _ in text:gmatch('"name":"' .. name:gsub("%.", "%%.") .. '"') do n = n + 1 end
      return n
    end

    it("still has its telemetry written, with and without os.exit's close argument", function()
      for _, call in ipairs { "os.exit(0)", "os.exit(3, true)", "os.exit(true)" } do
        local rec = TMP .. "/exit.jsonl"
        os.remove(rec)
        local code, _, err = run("--telemetry " .. rec .. " -e " .. q(
          "knhk.telemetry.span('before.exit', nil, function() end) knhk.telemetry.counter('n'):add(1) " .. call))
        assert.equal(call:match("3") and 3 or 0, code, err)
        local text = slurp(rec)
        assert.equal(1, spans_named(text, "before.exit"), call)
        assert.matches('\n{"resourceMetrics":%[', text) -- the metrics at exit, with n in them
        assert.equal(1, spans_named(text, "n"), call)
      end
    end)

    it("still has its telemetry written when a task on another worker calls it", function()
      local rec = TMP .. "/exit-task.jsonl"
      os.remove(rec)
      -- two tasks that only finish on two different workers: the one on
      -- worker 1 (a VM of its own) exits once the other has recorded its
      -- span too and is sleeping.
      -- (An exit amid the run leaves what the live tasks hold allocated,
      -- as exit() does: under AddressSanitizer, not a leak to report.)
      local code, _, err = run("-w 2 --telemetry " .. rec .. " -e " .. q([[
        require "two_workers"(function(spanned)
          knhk.telemetry.span("in.task", nil, function() end)
          if knhk.current().worker == 1 then
            spanned:wait()
            os.exit(4)
          end
          spanned:set()
          knhk.sleep(10)
        end, knhk.event())]]), nil, 'ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"')
      assert.equal(4, code, err)
      assert.equal(2, spans_named(slurp(rec), "in.task"))
    end)

    it("prints --stats first, with the tasks still running as live", function()
      local code, _, err = run("--stats -w 1 -e " .. q("knhk.spawn(function() end):join() os.exit(5)"))
      assert.equal(5, code)
      assert.matches("tasks: 2 spawned, 1 completed, 0 failed, 0 cancelled, 1 live", err, 1, true)
    end)

    local function reports(err)
      local n = 0
      for _ in err:gmatch("knhk%-lua: %d+ workers; tasks: ") do n = n + 1 end
      return n
    end
    -- (an exit amid the run leaves what the live tasks hold allocated, as
    -- exit() does: under AddressSanitizer, not a leak to report)
    local NO_LEAKS = 'ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"'

    it("prints --stats once when a portable task calls it on another worker's VM", function()
      -- the task on worker 1 exits once the other is sleeping on worker 0
      local code, out, err = run("--stats -w 2 -e " .. q([[
        require "two_workers"(function(sleeping)
          if knhk.current().worker == 1 then
            sleeping:wait()
            print("exits on worker " .. knhk.current().worker)
            os.exit(6)
          end
          sleeping:set()
          knhk.sleep(10)
        end, knhk.event())]]), nil, NO_LEAKS)
      assert.equal(6, code, err)
      assert.equal("exits on worker 1\n", out)
      assert.equal(1, reports(err), err)
      -- the root and the two tasks, none ended
      assert.matches("knhk-lua: 2 workers; tasks: 3 spawned, 0 completed, 0 failed, 0 cancelled, 3 live",
        err, 1, true)
    end)

    it("prints --stats once when tasks on two workers call it at once, with one's status", function()
      local code, _, err = run("--stats -w 2 -e " .. q([[
        require "two_workers"(function() os.exit(10 + knhk.current().worker) end)]]), nil, NO_LEAKS)
      assert.is_true(code == 10 or code == 11, err)
      assert.equal(1, reports(err), err)
    end)

    it("without --stats, exits once with one's status when tasks on two workers call it at once", function()
      -- (exit() is not thread-safe: two run side by side could crash, hang,
      -- or end with a status half-way between; a race, so several runs)
      for _ = 1, 5 do
        local code, out, err = run("-w 2 -e " .. q([[
          require "two_workers"(function() io.write("x") io.flush() os.exit(10 + knhk.current().worker, true) end)]]),
          nil, NO_LEAKS)
        assert.is_true(code == 10 or code == 11, err)
        assert.matches("^xx?$", out)
        assert.equal("", err)
      end
    end)

    -- exit() flushes stdout without its lock: a task on another worker whose
    -- flush of stdout was under way had its buffer written twice (the case
    -- above printed "xxx" once in a few thousand runs). Here the flush waits
    -- for a reader that drains the pipe only after a second, so the exit
    -- comes amid it every time.
    it("ends a write to stdout under way on another worker once, never writing it twice", function()
      local script = write("exit_amid_write.lua", [[
        local roles, ready = knhk.channel(2), knhk.event()
        roles:send("write") roles:send("exit")
        require "two_workers"(function(roles, ready)
          if roles:recv() == "write" then
            io.write(string.rep("a", 65536)) io.flush() -- a pipe's capacity: it is full
            io.write("y") ready:set() io.flush()        -- waits for the reader
          else
            ready:wait() knhk.sleep(0.3) os.exit(7)
          end
        end, roles, ready)]])
      os.execute("{ " .. NO_LEAKS .. " " .. q(KNHK_LUA) .. " -w 2 " .. q(script) .. " 2>" .. TMP .. "/err"
        .. " </dev/null; echo $? >" .. TMP .. "/rc; } | { sleep 1; cat; } >" .. TMP .. "/out")
      local err = slurp(TMP .. "/err")
      assert.equal(7, tonumber(slurp(TMP .. "/rc")), err)
      assert.equal("", err)
      local out = slurp(TMP .. "/out")
      assert.equal(65537, #out)
      assert.equal(string.rep("a", 65536) .. "y", out)
    end)

    it("with --stats, still refuses a status os.exit would refuse, at the caller's line", function()
      local code, out, err = run("--stats -w 2 -e " .. q([[
        require "two_workers"(function()
          if knhk.current().worker == 1 then
            print(select(2, pcall(function() os.exit("seven") end)))
            os.exit(false)
          end
          knhk.sleep(10)
        end)]]), nil, NO_LEAKS)
      assert.equal(1, code, err)
      assert.matches("^%(command line%):3: bad argument #1 to 'exit' %(number expected, got string%)\n$", out)
      assert.equal(1, reports(err), err)
    end)
  end)

  it("--telemetry needs a file it can write: exit 1 and one line, as for a missing script", function()
    local code, out, err = run("--telemetry /nonexistent/dir/x.jsonl -e 'print(1)'")
    assert.equal(1, code)
    assert.equal("", out) -- nothing ran
    assert.equal("knhk-lua: --telemetry: cannot open /nonexistent/dir/x.jsonl: no such file or directory\n", err)
  end)

  it("--telemetry without a file name is a usage error", function()
    local code, _, err = run("--telemetry")
    assert.equal(2, code)
    assert.matches("option '%-%-telemetry' needs an argument", err)
    for _, args in ipairs { "--telemetry '' -e 'print(1)'", "--telemetry= -e 'print(1)'" } do
      local code2, out2, err2 = run(args)
      assert.equal(2, code2, args)
      assert.equal("", out2, args)
      assert.equal("knhk-lua: --telemetry takes a file name, got '' (try 'knhk-lua --help')\n", err2, args)
    end
  end)

  -- knhk-lua loads its modules precompiled (lua/src/klua_modules.c): what a
  -- module's functions say of themselves is what parsing its file gives.
  it("knhk's modules say their file and lines as when parsed from it", function()
    local code, out, err = run([[-e 'for _, name in ipairs { "knhk", "knhk.runtime", "knhk.cli",
        "knhk.patterns.engine" } do
      local m = require(name)
      for _, k in ipairs { "run", "main", "await", "workflow" } do
        if type(m[k]) == "function" then
          local i = debug.getinfo(m[k], "S")
          print(name, k, i.source, i.linedefined, package.searchpath(name, package.path))
        end
      end
    end']])
    assert.equal(0, code, err)
    local n = 0
    for name, k, source, line, file in out:gmatch("(%S+)\t(%S+)\t(%S+)\t(%d+)\t(%S+)\n") do
      n = n + 1
      assert.equal("@" .. file, source)
      local parsed = assert(loadfile(file))()
      if name == "knhk.patterns.engine" or name == "knhk.cli" or name == "knhk" then
        -- (modules whose loading has no side effects outside them)
        assert.equal(debug.getinfo(parsed[k], "S").linedefined, tonumber(line))
      end
    end
    assert.is_true(n >= 3, out)
  end)

  it("worker VMs, which load knhk's modules precompiled too, agree with the main VM", function()
    -- a function of a precompiled module travels to a worker by its
    -- prototype (string.dump of what the bytecode made), and a task on
    -- another worker sees the modules at the same file and lines
    local code, out, err = run([[-w 2 -e 'local two = require "two_workers"
      local function where()
        local i = debug.getinfo(require("knhk").run, "S")
        return i.source, i.linedefined, knhk.current().worker
      end
      local a, b = two(where)
      local i = debug.getinfo(knhk.run, "S")
      print(a[1] == i.source, b[1] == i.source, a[2] == i.linedefined, a[3] ~= b[3])
      print(knhk.spawn(require("knhk.errors").message, "boom"):join())']])
    assert.equal(0, code, err)
    assert.equal("true\ttrue\ttrue\ttrue\nboom\n", out)
  end)

  it("a knhk module edited, or found elsewhere on package.path, is loaded from its file", function()
    os.execute("mkdir -p " .. TMP .. "/mods/knhk")
    write("mods/knhk/steps.lua", "return { edited = ... }\n")
    -- (knhk.map is read first: knhk loads knhk.steps at that first read)
    local code, out, err = run("-e " .. q(string.format([[
      local map = knhk.map
      package.path = %q .. "/mods/?.lua;" .. package.path
      package.loaded["knhk.steps"] = nil
      print(require("knhk.steps").edited)
      print(knhk.map({ 1, 2 }, function(x) return x + 1 end)[2], knhk.map == map)]], TMP)))
    assert.equal(0, code, err)
    assert.equal("knhk.steps\n3\ttrue\n", out)
  end)

  -- The loader takes a file whose size and modification time are those the
  -- build saw for the one compiled; any edit changes the time.
  -- knhk.core is linked into knhk-lua: no knhk/core.so is opened, not even
  -- one that $KNHK_LIB or package.cpath names (its state would be a second
  -- runtime's), and the FFI binds the program's own functions.
  it("has knhk.core linked in, and never opens knhk/core.so", function()
    local lib = assert(package.searchpath("knhk.core", package.cpath))
    local code, out, err = run([[-w 2 -e '
      local core = require "knhk.core"
      assert(package.searchpath("knhk.core", package.cpath)) -- (the build tree has one)
      print(core.global, require("knhk.ffi").C == require("ffi").C)
      print(knhk.spawn(function() return 6 * 7 end):join(), knhk.telemetry.names.span.CONCURRENCY_NURSERY)
      local maps = io.open("/proc/self/maps"):read("*a")
      print(maps:find("core.so", 1, true) == nil)']], nil, "KNHK_LIB=" .. q(lib))
    assert.equal(0, code, err)
    assert.equal("true\ttrue\n42\tknhk.concurrency.nursery\ntrue\n", out)
  end)

  -- knhk loads knhk.sync at the first read of knhk.channel (and the rest of
  -- its fields); a VM that receives a channel first loads it then.
  it("a channel reaching a VM that never read knhk.channel works there as anywhere", function()
    local code, out, err = run([[-w 2 -e '
      local loaded_before = package.loaded["knhk.sync"] ~= nil
      local ch = knhk.spawn(function()
        local c = knhk.channel(2)
        c:send("a")
        return c
      end):join()
      print(loaded_before, #ch, tostring(ch), ch:recv(), knhk.is_channel(ch))
      local ev = knhk.spawn(function() local e = knhk.event(); e:set(); return e end):join()
      print(tostring(ev), ev:is_set())']])
    assert.equal(0, code, err)
    assert.equal("false\t1\tknhk.channel\ta\ttrue\nknhk.event (set)\ttrue\n", out)
  end)

  it("a module edited to the same size is loaded from its file; a copy that keeps its time as the original", function()
    local original = assert(package.searchpath("knhk.steps", package.path))
    os.execute("mkdir -p " .. TMP .. "/same/knhk " .. TMP .. "/kept/knhk")
    os.execute("cp -p " .. q(original) .. " " .. q(TMP .. "/kept/knhk/steps.lua"))
    local size = #assert(io.open(original, "rb")):read("*a")
    local edited = "return { edited = ... }\n"
    write("same/knhk/steps.lua", edited .. ("-"):rep(size - #edited - 1) .. "\n")
    local function steps_from(dir)
      return run("-e " .. q(string.format([[
        package.path = %q .. "/?.lua;" .. package.path
        package.loaded["knhk.steps"] = nil
        local m = require("knhk.steps")
        print(m.edited, debug.getinfo(m.map or print, "S").source)]], TMP .. "/" .. dir)))
    end
    local code, out, err = steps_from("same")
    assert.equal(0, code, err)
    assert.equal("knhk.steps\t=[C]\n", out)
    code, out, err = steps_from("kept")
    assert.equal(0, code, err)
    assert.equal("nil\t@" .. TMP .. "/kept/knhk/steps.lua\n", out)
  end)

  it("the registry's names load as the file they are read from says, edited or not", function()
    -- knhk.telemetry reads telemetry_names.lua next to core.so through
    -- the loader's loadfile, which has that file precompiled
    os.execute("mkdir -p " .. TMP .. "/names")
    write("names/telemetry_names.lua", "return { edited = true, where = debug.getinfo(1, 'S').source }\n")
    local code, out, err = run("-e " .. q(string.format([[
      local names = knhk.telemetry.names
      local i = debug.getinfo(debug.getmetatable(names.span).__index, "S")
      print(i.source == "@" .. package.searchpath("knhk.core", package.cpath):gsub("core%%.so$", "telemetry_names.lua"))
      print(names.span.CONCURRENCY_NURSERY, pcall(function() return names.span.NOPE end))
      local load = debug.getregistry()["knhk.loadfile"]
      local t = load(%q)()
      print(t.edited, t.where)
      print(load(%q))]], TMP .. "/names/telemetry_names.lua", TMP .. "/names/missing.lua")))
    assert.equal(0, code, err)
    local lines = {}
    for l in out:gmatch("[^\n]*") do if l ~= "" then lines[#lines + 1] = l end end
    assert.equal("true", lines[1])
    assert.matches("^knhk%.concurrency%.nursery\tfalse\t.*no span 'NOPE'", lines[2])
    assert.equal("true\t@" .. TMP .. "/names/telemetry_names.lua", lines[3])
    local _, missing = loadfile(TMP .. "/names/missing.lua")
    assert.equal("nil\t" .. missing, lines[4])
  end)
end)

describe("knhk-lua running a nursery under an eager collector", function()
  -- Here rather than in nursery_spec: in a process of its own (busted's
  -- heap would make this collector take a minute), and a spec that starts
  -- processes does not run under ThreadSanitizer (the knhk-lua of the
  -- ASan build checks its memory).
  it("keeps every child for wait_all when a finalizer spawns into it in the middle of a spawn", function()
    local dir = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$")
    local code, out, err = run(q(dir .. "fixtures/finalizer_spawns.lua"))
    assert.equal(0, code, err)
    local spawned, results, by_finalizers = out:match("^(%d+)\t(%d+)\t(%d+)\n$")
    assert(spawned, "no counts from the fixture: " .. out .. err)
    assert.is_true(tonumber(by_finalizers) > 0)
    assert.equal(spawned, results)
  end)

  it("gives every result from wait_all while finalizers spawn into the nursery and move its list", function()
    local dir = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$")
    local code, out, err = run(q(dir .. "fixtures/finalizer_spawns_in_wait_all.lua"))
    assert.equal(0, code, err) -- (it read a moved list's old memory: a crash)
    local before, results, by_finalizers = out:match("^(%d+)\t(%d+)\t(%d+)\n$")
    assert(before, "no counts from the fixture: " .. out .. err)
    assert.is_true(tonumber(by_finalizers) > 0)
    assert.is_true(tonumber(results) >= tonumber(before))
  end)
end)

describe("the knhk-lua REPL", function()
  -- The terminal echoes what is typed: every expected output below is
  -- built (concatenated) so that it never appears in the input itself.
  it("prompts, echoes expressions, continues chunks, runs tasks, and exits on Ctrl-D", function()
    local p = pty.spawn({ KNHK_LUA, "-w", "2" })
    finally(function() p:kill() end)
    -- types a line once the REPL prompts again after the previous one's
    -- output, and line editing is on (see pty.lua: wait_raw)
    local function line(text, output)
      p:wait_raw()
      p:send(text .. "\n")
      if output then p:expect(output) end
      p:expect("> ")
    end
    p:expect(", 2 workers; :help")
    p:expect("> ")
    line("20+22", "\n42\r?\n")
    line("=6*7, 'a'..'b'", "\n42\tab\r?\n") -- "=expr", as lua 5.1's REPL takes it
    line("error('bo' .. 'om')", "stdin:1: boom.-stdin:1: in main chunk") -- where, and how it got there
    line("return 1, 'tw'..'o', {3, x = 4}", "1\ttwo\t{ 3, x = 4 }")
    line("return 'n'..'il follows', nil", "nil follows\tnil") -- trailing nils echo too
    p:wait_raw()
    p:send("local function f()\n")
    p:expect(">> ")
    line("return 40 + 3 end print(f())", "\n43\r?\n")
    line("knhk.sleep(0.01) print('sl'..'ept')", "\nslept\r?\n")
    -- a background task keeps running between prompts
    line("bg = knhk.spawn(function() knhk.sleep(0.05); return 'bg '..'done' end)")
    line(":tasks", "task%s+parent%s+state.-function at stdin:1\r?\n") -- a typed chunk is "stdin"
    line("print(bg:join())", "\nbg done\r?\n")
    line(":stats", "tasks: %d+ spawned")
    line(":help", "Ctrl%-C cancels")
    -- Ctrl-C cancels the running line, not the REPL
    p:wait_raw()
    p:send("print('run'..'ning') knhk.sleep(30) print('not cancelled')\n")
    p:expect("\nrunning\r?\n")
    p:signal(2)
    p:expect("%(cancelled%)")
    p:expect("> ")
    line("print('still '..'here')", "\nstill here\r?\n")
    -- Ctrl-D: background tasks are cancelled and waited for; exit 0
    line("knhk.spawn(function() local ok, e = pcall(knhk.sleep, 60) print('bg '..'cleanup') error(e, 0) end)")
    p:wait_raw()
    p:send("\4")
    assert.equal(0, p:wait(10))
    assert.matches("\nbg cleanup", p.all)
    assert.not_matches("\nnot cancelled", p.all)
  end)
  it("continues a chunk the input stopped too early in, and reports one with too much (a surplus end)",
    function()
      local p = pty.spawn({ KNHK_LUA, "-w", "1" })
      finally(function() p:kill() end)
      local function typed(text) p:wait_raw() p:send(text .. "\n") end
      p:expect("> ")
      -- a surplus `end`: Lua's "'<eof>' expected near 'end'" is a syntax
      -- error, not a chunk to continue (only "near '<eof>'" is, as in lua.c)
      typed("for i = 1, 2 do print(i) end end")
      p:expect("stdin:1: '<eof>' expected near 'end'\r?\n> ")
      typed("print('fr'..'esh')") -- nothing was left pending
      p:expect("\nfresh\r?\n> ")
      -- what stops too early continues: a for loop, a long string, a long
      -- comment, an expression
      for _, chunk in ipairs {
        { "for i = 1, 2 do", "print(i * 10) end", "\n10\r?\n20\r?\n> " },
        { "s = [[one", "two]] print(#s .. ' chars')", "\n7 chars\r?\n> " },
        { "--[[ a long", "comment ]] print('after '..'comment')", "\nafter comment\r?\n> " },
        { "x = 40 +", "2 print('x ' .. x)", "\nx 42\r?\n> " },
      } do
        typed(chunk[1])
        p:expect(">> ")
        typed(chunk[2])
        p:expect(chunk[3])
      end
      -- an error inside a continued chunk ends it too
      typed("if true then")
      p:expect(">> ")
      typed("print(1) end end")
      p:expect("stdin:2: '<eof>' expected near 'end'\r?\n> ")
      p:wait_raw()
      p:send("\4")
      assert.equal(0, p:wait(10))
    end)

  for _, workers in ipairs { "1", "4" } do
    it("Ctrl-C at the prompt discards the line being typed, touches no task, and the REPL goes on ("
      .. workers .. " workers)", function()
      local p = pty.spawn({ KNHK_LUA, "-w", workers })
      finally(function() p:kill() end)
      local function line(text, output)
        p:wait_raw()
        p:send(text .. "\n")
        if output then p:expect(output) end
        p:expect("> ")
      end
      -- types Ctrl-C as a person would: the terminal turns it into SIGINT
      local function ctrl_c() p:send("\3") end
      p:expect("> ")
      -- a background task that answers on a channel
      line("req, rep = knhk.channel(), knhk.channel()")
      line("bg = knhk.spawn(function() while true do rep:send(req:recv() * 2) end end)")
      -- at ">": the half-typed line goes, a fresh prompt comes
      p:wait_raw()
      p:send("1 +")
      p:expect("1 %+") -- line editing has it (it echoes what it read)
      ctrl_c()
      p:expect("%^C\r?\n> ")
      line("20 + 22", "\n42\r?\n") -- not 1 + 20 + 22
      -- at ">>": the pending chunk goes too
      p:wait_raw()
      p:send("for i = 1, 2 do\n")
      p:expect(">> ")
      p:wait_raw()
      ctrl_c()
      p:expect("%^C\r?\n> ")
      line("print('after '..'ctrl-c')", "\nafter ctrl%-c\r?\n")
      -- twice at an empty prompt: two fresh prompts, nothing else
      p:wait_raw()
      ctrl_c()
      p:expect("%^C\r?\n> ")
      p:wait_raw()
      ctrl_c()
      p:expect("%^C\r?\n> ")
      -- the background task was not cancelled: it still answers
      line("req:send(50) print(rep:recv(), bg:done())", "\n100\tfalse\r?\n")
      -- Ctrl-C while a line runs still cancels that line only
      p:wait_raw()
      p:send("print('run'..'ning') knhk.sleep(30) print('not cancelled')\n")
      p:expect("\nrunning\r?\n")
      ctrl_c()
      p:expect("%(cancelled%)")
      p:expect("> ")
      line("req:send(2) print(rep:recv() + 1)", "\n5\r?\n")
      p:wait_raw()
      p:send("\4")
      assert.equal(0, p:wait(10))
      assert.not_matches("\n43\r?\n", p.all)
      assert.not_matches("\nnot cancelled", p.all)
    end)
  end

  it("--clock virtual: time stands still while the prompt waits; a line that waits moves it", function()
    local p = pty.spawn({ KNHK_LUA, "--clock", "virtual", "-w", "2" })
    finally(function() p:kill() end)
    local function line(text, output)
      p:wait_raw()
      p:send(text .. "\n")
      if output then p:expect(output) end
      p:expect("> ")
    end
    p:expect("> ")
    -- every task waits from here on: without the prompt holding the
    -- clock, it would jump to this timer at once
    line("bg = knhk.spawn(function() knhk.sleep(60) print('wo'..'ke at', knhk.now()) end)")
    line("print('n'..'ow', knhk.now(), bg:done())", "\nnow\t0\tfalse\r?\n")
    line("knhk.sleep(90) print('sl'..'ept to', knhk.now())", "\nslept to\t90\r?\n")
    assert.matches("\nwoke at\t60\r?\n", p.all)
    line("print('do'..'ne', bg:done())", "\ndone\ttrue\r?\n")
    -- a line that can never be woken is cancelled, saying why; the REPL goes on
    line("knhk.event():wait()", "%(cancelled: deadlock under the virtual clock")
    line("print('st'..'ill', knhk.now())", "\nstill\t90\r?\n")
    -- even in a shielded scope, which the line's cancellation cannot reach
    line("knhk.cancel_scope(function() knhk.event():wait() end, { shield = true }) print('pa'..'ssed')",
      "\npassed\r?\n%(cancelled: deadlock under the virtual clock")
    line("print('st'..'ill', knhk.now())", "\nstill\t90\r?\n")
    p:wait_raw()
    p:send("\4")
    assert.equal(0, p:wait(10))
  end)

  it("keeps what is typed beyond ASCII (a UTF-8 terminal)", function()
    local p = pty.spawn({ KNHK_LUA, "-w", "1" }, { LANG = "C.UTF-8", LC_ALL = "C.UTF-8" })
    finally(function() p:kill() end)
    p:expect(", 1 worker; :help") -- one worker, one word
    p:expect("> ")
    p:wait_raw()
    p:send("print(#'h\u{e9}llo', 'caf\u{e9}' .. '!')\n")
    p:expect("\n6\tcaf\u{e9}!\r?\n")
    p:wait_raw()
    p:send("\4")
    assert.equal(0, p:wait(10))
  end)

  it("SIGTERM at the prompt ends the REPL after cleanup: exit 143", function()
    local p = pty.spawn({ KNHK_LUA, "-w", "2" })
    finally(function() p:kill() end)
    p:expect("> ")
    p:wait_raw()
    p:send("knhk.spawn(function() local ok, e = pcall(knhk.sleep, 60) print('bg '..'cleanup') error(e, 0) end)\n")
    p:expect("> ")
    p:wait_raw()
    p:signal(15)
    assert.equal(143, p:wait(10))
    assert.matches("bg cleanup", p.all) -- (typed as 'bg '..'cleanup')
    assert.matches("knhk%-lua: terminated", p.all)
  end)
end)
