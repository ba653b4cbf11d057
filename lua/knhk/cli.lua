-- knhk.cli: the knhk-lua command (core/cli/knhk-lua.c calls main(argv)).
--
-- Options follow lua/luajit; the script's main chunk runs as the root task
-- of knhk.run, so spawn, sleep and nurseries work at top level. Exit codes:
-- 0 success; 1 the workflow failed; 2 usage error; 130 / 143 after SIGINT /
-- SIGTERM (cleanup ran first; a second signal ends the process at once).
local knhk = require "knhk"
local R = require "knhk.runtime"
local core = require "knhk.core"
local errors = require "knhk.errors"
local check = require "knhk.check"
local getmetatable = debug.getmetatable -- (why: knhk/check.lua)

-- knhk.ffi's cdef is the REPL's only (line input, signals at the prompt):
-- loaded when a REPL may start, not by every run of a script (~0.07 ms).
local ffi, C
local function use_ffi()
  if not C then
    local K = require "knhk.ffi"
    K.need "repl"
    ffi, C = K.ffi, K.C
  end
end
local M = {}

local PROG = "knhk-lua"

local HELP = [==[
usage: knhk-lua [options] [script [args...]]

Runs a Lua workflow on the knhk runtime: the script's main chunk is the root
task, so knhk.spawn, knhk.sleep and nurseries work at top level. With no
script, starts the interactive REPL (or runs stdin if it is not a terminal).

options:
  -e stat          run the Lua statement stat (in the runtime)
  -l mod           require module mod, as global mod
  -i               enter the REPL after running the script
  -v               print the version and exit
  -w, --workers N  run N workers (default: KNHK_WORKERS, else every CPU)
  --clock KIND     run on the real clock (default) or a virtual one
                   (virtual: time jumps to the next timer whenever every task
                   waits, but not while the REPL waits for a line; see
                   knhk.clock)
  --stats          print the executor's counters to stderr at exit
  --telemetry FILE record OpenTelemetry spans and metrics (OTLP/JSON lines)
                   into FILE; metrics every second and at exit
  --graph[=dot]    print the diagram (Mermaid, or Graphviz DOT) of the
                   workflow the script returns or executes, without running it
  -h, --help       print this help and exit
  --               stop handling options
  -                run stdin as the script

examples:
  knhk-lua order.lua                 run a workflow
  knhk-lua -w 4 order.lua in.json    on 4 workers, with arg[1] = "in.json"
  knhk-lua -e 'print(knhk.map({1,2,3}, function(x) return x * x end)[3])'
  knhk-lua                           the REPL (:help lists its commands)

exit codes: 0 success, 1 the workflow failed, 2 usage error,
            130 interrupted (SIGINT), 143 terminated (SIGTERM)
]==]

-- A worker count given as text (-w, KNHK_WORKERS), or nil if it is not one.
local function worker_count(text) return check.count_text(text, 1, 256) end

local function usage_error(msg)
  io.stderr:write(PROG, ": ", msg, " (try '", PROG, " --help')\n")
  return 2
end

-- "file:line: message" and the traceback of every error, for stderr.
local function describe_error(e, out)
  out = out or {}
  if errors.is_group(e) then
    out[#out + 1] = string.format("%d errors:", #e.errors)
    for i, sub in ipairs(e.errors) do
      out[#out + 1] = string.format("[%d]", i)
      describe_error(sub, out)
    end
  elseif errors.is_task_error(e) then
    out[#out + 1] = errors.readable(e)
    if e.traceback and e.traceback ~= "" then out[#out + 1] = e.traceback end
  else
    out[#out + 1] = errors.tostring(e)
  end
  return out
end
M.describe_error = describe_error

local function print_stats(s)
  s = s or knhk.stats()
  io.stderr:write(string.format(
    "knhk-lua: %d workers; tasks: %d spawned, %d completed, %d failed, %d cancelled, %d live; "
    .. "%d stolen in %d attempts; %d parks\n",
    s.workers, s.spawned, s.completed, s.failed, s.cancelled, s.live, s.stolen,
    s.steal_attempts, s.parks))
  for i, w in ipairs(s.per_worker) do
    io.stderr:write(string.format("  worker %d: %d completed, %.3f s busy\n", i - 1, w.completed,
      w.busy_s))
  end
end

-- --stats at an os.exit, in the VM that called it (knhk.runtime's
-- report_at_exit): the counters as they stand then, the tasks still
-- running counted as live.
function M.at_exit()
  local ok, now = pcall(knhk.stats)
  if ok then print_stats(now) end
end

-- ------------------------------------------------------------- the REPL

local show = errors.show
M.show = show

local REPL_HELP = [[
Lua statements and expressions run in the knhk runtime (expressions echo;
=expr is one too, as in lua 5.1).
A chunk that is not complete continues on the next line (>>).
  :help     this text
  :stats    the executor's counters
  :tasks    the live tasks (id, state, worker, age)
  :quit     leave (so does Ctrl-D: background tasks are cancelled first)
Ctrl-C cancels the line being run, not the REPL; at the prompt it
discards the line being typed.]]

local function print_tasks()
  local list = knhk.tasks()
  if #list == 0 then print("no live tasks") return end
  print(string.format("%-8s %-8s %-10s %-7s %-8s %s", "task", "parent", "state", "worker", "age",
    "function"))
  for _, t in ipairs(list) do
    print(string.format("%-8s %-8s %-10s %-7s %-8s %s", "#" .. t.id,
      t.parent and ("#" .. t.parent) or "-", t.state, t.worker >= 0 and tostring(t.worker) or "-",
      string.format("%.1fs", t.age), t.where))
  end
end

local lines -- klua_lines_t*: line input on a thread of its own
local INTERRUPTED = {} -- read_line's answer to a Ctrl-C at the prompt

-- Waits for a line: the line, false at end of input, or INTERRUPTED.
-- A checkpoint: it raises Cancelled only when the root is cancelled (a
-- signal); Ctrl-C at the prompt interrupts the line input instead.
local function read_line(prompt)
  local out = ffi.new("char*[1]")
  local got
  R.wait(function()
    local status = C.klua_lines_take(lines, out)
    if status == C.KLUA_LINES_NONE then return false end
    if status == C.KLUA_LINES_INTERRUPTED then
      got = INTERRUPTED
    else
      got = out[0] ~= nil and ffi.string(out[0]) or false
      if out[0] ~= nil then C.klua_free(out[0]) end
    end
    return true
  end, function(ptr)
    C.klua_lines_request(lines, prompt, ptr)
    return false
  end)
  return got
end

local function run_line(src)
  -- "=expr" is "return expr", as in lua 5.1's REPL
  src = src:match("^=(.*)$") or src
  -- an expression's values are echoed; through select, not a tail call,
  -- so that error("x") typed as a line keeps its "stdin:1:" and traceback
  local fn, err = loadstring("return select(1, " .. src .. "\n)", "=stdin")
  if not fn then fn, err = loadstring(src, "=stdin") end
  if not fn then return nil, err end
  -- the line runs in a scope that Ctrl-C cancels
  local function pack(...) return { n = select("#", ...), ... } end
  local res
  local scope = knhk.cancel_scope(function()
    C.klua_signals_target(core.scope_token())
    res = pack(xpcall(fn, R.capture)) -- counted: trailing nils are echoed too
  end)
  C.klua_signals_target(nil)
  -- (a deadlock in a shielded scope ends in that scope, which caught its
  -- cancellation: the line may have gone on, but it was cancelled too)
  local stalled = C.klua_rt_take_line_stall(R.rt) ~= 0
  if stalled or scope.cancelled_caught or (res and not res[1] and errors.is_cancelled(res[2])) then
    if stalled then
      print("(cancelled: deadlock under the virtual clock: every task was waiting, with no "
        .. "timer pending and nothing in flight that could wake one)")
    else
      print("(cancelled)")
    end
    return true
  end
  if not res[1] then
    io.stderr:write(table.concat(describe_error(res[2]), "\n"), "\n")
    return true
  end
  if res.n > 1 then
    local out = {}
    for i = 2, res.n do out[#out + 1] = show(res[i]) end
    print(table.concat(out, "\t"))
  end
  return true
end

local function repl()
  use_ffi()
  lines = C.klua_lines_new()
  if lines == nil then error("cannot start line input", 0) end
  C.klua_signals_repl(lines)
  local nw = knhk.stats().workers
  io.write(knhk._VERSION, " on LuaJIT (", jit.version, "), ", nw, nw == 1 and " worker" or " workers",
    "; :help for commands\n")
  local pending = nil
  while true do
    local ok, line = pcall(read_line, pending and ">> " or "> ")
    if not ok then
      -- the root is cancelled (SIGTERM, or Ctrl-C on a line that would not
      -- stop): leave; knhk-lua then exits with 128 + the signal
      if not errors.is_cancelled(line) then error(line, 0) end
      io.write("\n")
      break
    elseif line == INTERRUPTED then -- Ctrl-C at the prompt: a fresh one
      io.write("^C\n")
      pending = nil
    elseif line == false then -- end of input
      io.write("\n")
      break
    else
      local cmd = not pending and line:match("^%s*:(%a+)%s*$")
      if cmd == "quit" or cmd == "q" then break
      elseif cmd == "help" then print(REPL_HELP)
      elseif cmd == "stats" then print_stats()
      elseif cmd == "tasks" then print_tasks()
      elseif cmd then print("unknown command :" .. cmd .. " (:help lists them)")
      else
        local src = pending and (pending .. "\n" .. line) or line
        local okc, err = run_line(src)
        if okc then pending = nil
        -- not complete yet: the input stopped too early ("... near '<eof>'",
        -- as lua.c tells); "'<eof>' expected near 'end'" has one end too many
        elseif err and err:match("near '<eof>'$") then pending = src
        else
          io.stderr:write(err, "\n")
          pending = nil
        end
      end
    end
  end
  C.klua_signals_repl(nil)
  C.klua_lines_free(lines)
  lines = nil
  -- Ctrl-D: background tasks are cancelled, their cleanup waited for
  core.cancel_children()
end

-- Each worker VM of knhk-lua's run (knhk.runtime's setup_vms): the
-- global `knhk` that the script's VM has, so that a module the script
-- requires, which may use it as the script does, works on every worker.
function M.setup_vm() _G.knhk = knhk end

-- The global `knhk` in the script's VM, and in every worker's of the run.
local function global_knhk()
  M.setup_vm()
  R.setup_vms "knhk.cli"
end

-- ------------------------------------------------------------------ main

function M.main(argv)
  local actions, script, script_args, interactive, workers, stats = {}, nil, {}, false, nil, false
  local telemetry_file = nil
  local clock = nil -- "real" or "virtual"
  local graph = nil -- "mermaid" or "dot": draw the script's workflow instead
  local i = 1
  local function need(opt)
    i = i + 1
    if argv[i] == nil then return nil, usage_error("option '" .. opt .. "' needs an argument") end
    return argv[i]
  end
  -- an option's value: "--name=value", or the next argument
  local function valued(a, name)
    local v = a:sub(1, #name + 1) == name .. "=" and a:sub(#name + 2) or nil
    if v then return v end
    return need(a)
  end
  while argv[i] ~= nil do
    local a = argv[i]
    if a == "--" then
      i = i + 1
      script = argv[i]
      break
    elseif a == "-" then
      script = "-"
      break
    elseif a == "-h" or a == "--help" then
      io.write(HELP)
      return 0
    elseif a == "-v" or a == "--version" then
      io.write(knhk._VERSION, " (", jit.version, ")\n")
      return 0
    elseif a == "-i" then
      interactive = true
    elseif a == "--stats" then
      stats = true
    elseif a == "--clock" or a:match("^%-%-clock=") then
      local code
      clock, code = valued(a, "--clock")
      if not clock then return code end
      if clock ~= "real" and clock ~= "virtual" then
        return usage_error("--clock takes real or virtual, got '" .. clock .. "'")
      end
    elseif a == "--telemetry" or a:match("^%-%-telemetry=") then
      local code
      telemetry_file, code = valued(a, "--telemetry")
      if not telemetry_file then return code end
      if telemetry_file == "" then
        return usage_error("--telemetry takes a file name, got ''")
      end
    elseif a == "--graph" or a:match("^%-%-graph=") then
      graph = a:match("^%-%-graph=(.*)$") or "mermaid"
      if graph ~= "mermaid" and graph ~= "dot" then
        return usage_error("--graph takes mermaid or dot, got '" .. graph .. "'")
      end
    elseif a == "-e" or a == "-l" then
      local v, code = need(a)
      if not v then return code end
      actions[#actions + 1] = { a, v }
    elseif a:match("^%-e.") or a:match("^%-l.") then
      actions[#actions + 1] = { a:sub(1, 2), a:sub(3) }
    elseif a == "-w" or a:match("^%-w.") or a == "--workers" or a:match("^%-%-workers=") then
      local v, code = a:match("^%-w(.+)$") -- -w2, as -eCODE
      if not v then v, code = valued(a, "--workers") end
      if not v then return code end
      workers = worker_count(v)
      if not workers then
        return usage_error("workers must be a whole number in 1..256, got '" .. v .. "'")
      end
    elseif a:sub(1, 1) == "-" then
      return usage_error("unknown option '" .. a .. "'")
    else
      script = a
      break
    end
    i = i + 1
  end
  if script then
    for j = i + 1, #argv do script_args[#script_args + 1] = argv[j] end
  end
  if not workers then -- checked here, so that a bad value is a usage error too
    local env = os.getenv "KNHK_WORKERS"
    if env and env ~= "" then
      workers = worker_count(env)
      if not workers then
        return usage_error("KNHK_WORKERS must be a whole number in 1..256, got '" .. env .. "'")
      end
    end
  end

  -- the global `arg`, as lua sets it: the script at 0, options before it
  local garg = {}
  for j = 0, #argv do garg[j - i] = argv[j] end
  _G.arg = garg

  -- load the script first: a missing file or a syntax error is one line
  local chunk
  if script then
    local err
    if script == "-" then
      chunk, err = loadstring(io.stdin:read("*a"), "=stdin")
    else
      chunk, err = loadfile(script)
    end
    if not chunk then
      io.stderr:write(PROG, ": ", err, "\n")
      return 1
    end
  end
  if graph then
    if not chunk then return usage_error("--graph needs a workflow script") end
    global_knhk() -- the script runs as it would without --graph
    return require("knhk.patterns.diagram").cli(chunk, script_args, graph,
      { workers = workers, script = script })
  end
  local no_script_no_e = not script and #actions == 0
  if no_script_no_e then use_ffi() end
  local use_repl = interactive or (no_script_no_e and ffi.C.isatty(0) ~= 0)
  if no_script_no_e and not use_repl then -- stdin is not a terminal: run it
    local err
    chunk, err = loadstring(io.stdin:read("*a"), "=stdin")
    if not chunk then
      io.stderr:write(PROG, ": ", err, "\n")
      return 1
    end
  end
  global_knhk()
  if telemetry_file then
    -- (a file that cannot be opened is not a usage error: exit 1, as for a
    -- script that cannot be read)
    local started, why = knhk.telemetry.start { file = telemetry_file }
    if not started then
      io.stderr:write(PROG, ": --telemetry: ", (why:gsub("^knhk%.telemetry%.start: ", "")), "\n")
      return 1
    end
  end

  if stats then
    -- os.exit ends the process where it is called, before the run ends:
    -- M.at_exit prints the counters first, in whichever VM calls it (the
    -- script's, or a worker's from a portable task). (The telemetry file
    -- needs nothing here: the C library writes it out at exit, whichever
    -- thread exits.)
    R.report_at_exit "knhk.cli"
  end

  -- Runs f, a chunk of the program (an -e, the script), in the root task.
  -- Its frame is the root's only one of the program's: a chunk that ends
  -- in a tail call (`return knhk.map(5, print)`) leaves none to blame for
  -- a refusal below it, so the root's place below is the line of that
  -- call while f runs (as under plain luajit it is the line that called
  -- knhk.run); with several tail calls, which one was made is not known,
  -- and the place is the chunk's file alone.
  local function run_chunk(f, ...)
    local lines, place = knhk.codec.tail_call_lines(f), ""
    if #lines > 0 then
      place = debug.getinfo(f, "S").short_src .. (#lines == 1 and (":" .. lines[1]) or "") .. ": "
    end
    core.set_root_place(place)
    f(...)
    core.set_root_place("")
  end

  -- an -l module or an -e chunk failed to load: its message, shown alone
  -- (as lua shows it: a syntax error has no traceback)
  local load_error
  local ok, err = pcall(knhk.run, function()
    local inner_ok, inner_err = xpcall(function()
      for _, act in ipairs(actions) do
        if act[1] == "-l" then
          local ok_mod, mod = pcall(require, act[2])
          if not ok_mod then
            -- the module's own error, not where this file called require
            load_error = errors.tostring(mod):gsub("^[^\n]-knhk/cli%.lua:%d+: ", "")
            return
          end
          _G[act[2]] = mod
        else
          local f, e = loadstring(act[2], "=(command line)")
          if not f then
            load_error = e
            return
          end
          run_chunk(f)
        end
      end
      if chunk then run_chunk(chunk, unpack(script_args)) end
      if use_repl then repl() end
    end, R.capture)
    if not inner_ok then error(inner_err, 0) end
  end, { workers = workers, signals = true, clock = clock,
         name = script and ("the script " .. (script == "-" and "(stdin)" or script))
           or (use_repl and "the REPL") or "the -e statements" })
  -- once the root task, and every other, has ended
  if stats and knhk.last_stats() then print_stats(knhk.last_stats()) end
  if telemetry_file then knhk.telemetry.stop() end -- after a signal too: cleanup ran

  local sig = knhk.signal_received()
  if sig then
    io.stderr:write(PROG, ": ", sig == 15 and "terminated" or "interrupted", "\n")
    return 128 + sig
  end
  if ok and load_error then
    io.stderr:write(PROG, ": ", load_error, "\n")
    return 1
  end
  if not ok then
    local text = describe_error(err)
    text[1] = PROG .. ": " .. (text[1] or "")
    io.stderr:write(table.concat(text, "\n"), "\n")
    return 1
  end
  return 0
end


return M
