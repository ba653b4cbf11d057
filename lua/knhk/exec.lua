-- knhk.exec: a child process as a workflow step (knhk.exec in README.md).
--
-- The process runs on the reactor (core/src/process.c) in a process group of
-- its own; the calling task waits for it without blocking its worker.
-- Cancelling the calling scope stops the whole group (SIGTERM, then SIGKILL
-- after one second) and exec still waits for it: no process outlives its
-- step, not even what the command started in the background.
local K = require "knhk.ffi"
K.need "exec"
local R = require "knhk.runtime"
local core = require "knhk.core"
local check = require "knhk.check"

local ffi, C = K.ffi, K.C
local type = type

local M = {}

-- What a working directory that cannot be entered is, by error code.
local cwd_problem = {
  [K.ENOENT] = "does not exist",
  [-20] = "is not a directory",       -- ENOTDIR
  [-13] = "cannot be entered (permission denied)", -- EACCES
}

-- nil, message, code for a process that could not start.
local function start_error(p, argv, cwd)
  local code = p.error
  if p.error_at == C.KLUA_EXEC_AT_CWD then
    return nil, string.format("exec: cwd '%s' %s", cwd,
      cwd_problem[code] or ffi.string(C.knhk_strerror(code))), code
  end
  return nil, argv[1] .. ": " .. ffi.string(C.knhk_strerror(code)), code
end

-- opts.env: names are strings, values strings (or numbers), without NUL bytes
-- (a C string would end there) and a name without '=': anything else would
-- reach the process as tostring's "table: 0x...", or cut.
local function env_string(v)
  return (type(v) == "string" or type(v) == "number") and not tostring(v):find("\0", 1, true)
end
local function check_env(env)
  for k, v in pairs(env) do
    if type(k) ~= "string" or k == "" or k:find("[=%z]") then
      check.error(string.format("bad argument #2 to 'exec' (env: a name that is a non-empty string "
        .. "without '=' or NUL expected, got %s)", type(k) == "string" and string.format("%q", k) or type(k)), 3)
    end
    if not env_string(v) then
      check.error(string.format("bad argument #2 to 'exec' (env.%s: string expected, got %s)", k,
        type(v) == "string" and "a string with a NUL byte" or type(v)), 3)
    end
  end
end

-- knhk.exec(cmd [, opts]) -> { status, stdout, stderr, signal, ok } or
-- nil, message, code when the command cannot be started. cmd is a string
-- (run by /bin/sh -c) or an argv table. opts: stdin (string), cwd, env
-- (table name -> value, replaces the environment), timeout (seconds; the
-- process is stopped and exec returns nil, "timed out ..."). Cancelling the
-- calling scope stops the process; exec still waits for it to end.
function M.exec(cmd, opts)
  local argv
  if type(cmd) == "string" then
    -- a C string ends at a NUL: the shell would run only the part before it
    if cmd:find("\0", 1, true) then
      check.error("bad argument #1 to 'exec' (a command without NUL bytes expected, got one with)", 2)
    end
    argv = { "/bin/sh", "-c", cmd }
  elseif type(cmd) == "table" and #cmd >= 1 then
    argv = {}
    for i, a in ipairs(cmd) do
      if type(a) ~= "string" and type(a) ~= "number" then
        check.error("bad argument #1 to 'exec' (argv[" .. i .. "]: string expected, got " .. type(a) .. ")", 2)
      end
      -- a C string ends at a NUL: the program would get a cut argument
      if type(a) == "string" and a:find("\0", 1, true) then
        check.error("bad argument #1 to 'exec' (argv[" .. i .. "]: a string without NUL bytes expected, "
          .. "got one with)", 2)
      end
      argv[i] = tostring(a)
    end
  elseif type(cmd) == "table" then
    check.error("bad argument #1 to 'exec' (argv table with the program first expected, got an empty table)", 2)
  else
    check.fail(1, "exec", "string or argv table", cmd)
  end
  opts = check.opts(opts, 2, "exec", 2, { "cwd", "env", "stdin", "timeout" })
  check.field("string", opts, "stdin", 2, "exec")
  check.field("string", opts, "cwd", 2, "exec")
  check.field("table", opts, "env", 2, "exec")
  local timeout = check.field("number", opts, "timeout", 2, "exec")
  check.field("nonnegative", opts, "timeout", 2, "exec") -- (a number by now: its range)
  if opts.cwd and opts.cwd:find("\0", 1, true) then
    check.error("bad argument #2 to 'exec' (cwd: a path without NUL bytes expected, got one with)", 2)
  end
  if opts.env ~= nil then check_env(opts.env) end
  if not core.current() then R.raise("knhk.exec: must be called inside a knhk task (inside knhk.run)") end
  local cargv = ffi.new("const char*[?]", #argv + 1, argv)
  local cenv, envc, env_strings = nil, 0, nil -- env_strings keeps cenv's strings alive
  if opts.env ~= nil then
    local list = {}
    for k, v in pairs(opts.env) do list[#list + 1] = tostring(k) .. "=" .. tostring(v) end
    envc = #list
    cenv = ffi.new("const char*[?]", envc + 1, list)
    env_strings = list
  end
  local function run_it()
    local err = ffi.new("int[1]")
    local e = C.klua_exec_start(core.current_ptr(), cargv, #argv, cenv, envc, opts.cwd, opts.stdin,
      opts.stdin and #opts.stdin or 0, core.scope_token(true), err)
    if e == nil then return nil, ffi.string(C.knhk_strerror(err[0])), err[0] end
    e = ffi.gc(e, C.klua_exec_free)
    -- uncancellable wait: a cancel stops the process group, which ends soon
    R.wait(function() return C.klua_exec_done(e) ~= 0 end, function() return false end, true)
    local p = ffi.new("klua_exec_result_t")
    C.klua_exec_result(e, p)
    if p.error ~= 0 then return start_error(p, argv, opts.cwd) end
    if p.cancelled ~= 0 then
      local reason = core.cancelled()
      if reason then R.raise_cancelled(reason) end
    end
    local signal = tonumber(p.term_signal)
    -- killed by a signal: no exit status; status says so as a shell's $?
    -- does (128 + the signal), never 0
    local status = signal ~= 0 and 128 + signal or tonumber(p.exit_status)
    return {
      status = status,
      signal = signal ~= 0 and signal or nil,
      stdout = p.out ~= nil and ffi.string(p.out, p.out_len) or "",
      stderr = p.err ~= nil and ffi.string(p.err, p.err_len) or "",
      ok = status == 0 and signal == 0,
    }
  end
  local r, m, c
  if timeout then
    local scope
    scope, r, m, c = require("knhk.scope").in_scope(core.now() + math.max(0, timeout) * 1e9,
      false, function() return run_it() end)
    if scope.cancelled_caught then
      r, m, c = nil, "timed out after " .. timeout .. " s", K.ETIMEDOUT
    end
  else
    r, m, c = run_it()
  end
  local _ = env_strings
  return r, m, c
end

return M
