-- knhk: workflows as Lua scripts, run on every core.
--
--   local knhk = require "knhk"
--   knhk.run(function()
--     local h = knhk.spawn(function(x) return x * 2 end, 21)   -- any worker
--     print(h:join())                                          --> 42
--   end, { workers = 4 })
--
-- See README.md ("Lua API") for every function. A caller's mistake raises
-- error(msg, 2) in the style of Lua's own "bad argument #n to 'f' (...)";
-- an operation that can fail at run time returns nil, message, code.
local K = require "knhk.ffi"
local R = require "knhk.runtime"
local codec = require "knhk.codec"
local errors = require "knhk.errors"
local check = require "knhk.check"

local ffi, C = K.ffi, K.C
local type, select, error = type, select, error

local knhk = {
  _VERSION = "knhk 0.1.0",
  Cancelled = errors.Cancelled,
  TimeoutError = errors.TimeoutError,
  TaskError = errors.TaskError,
  ErrorGroup = errors.ErrorGroup,
  is_cancelled = errors.is_cancelled,
  is_timeout = errors.is_timeout,
  is_task_error = errors.is_task_error,
  is_error_group = errors.is_group,
  codec = codec,
}

-- knhk's own error objects travel between VMs as themselves.
codec.register_class("knhk.Cancelled", errors.Cancelled)
codec.register_class("knhk.TimeoutError", errors.TimeoutError)
codec.register_class("knhk.TaskError", errors.TaskError)
codec.register_class("knhk.ErrorGroup", errors.ErrorGroup)

-- The workers a runtime gets by default: KNHK_WORKERS, else every CPU.
-- Returns n, or nil and a message naming the bad setting.
function knhk.default_workers()
  local env = os.getenv "KNHK_WORKERS"
  if env and env ~= "" then
    local n = tonumber(env)
    if not n or n < 1 or n % 1 ~= 0 or n > 256 then
      return nil, "KNHK_WORKERS must be a whole number in 1..256, got '" .. env .. "'"
    end
    return n
  end
  local f = io.open "/proc/cpuinfo"
  local cpus = 0
  if f then
    for line in f:lines() do
      if line:match "^processor%s*:" then cpus = cpus + 1 end
    end
    f:close()
  end
  return cpus > 0 and cpus or 1
end

-- knhk.run(main [, opts], ...) -> main's results. The calling thread
-- becomes worker 0 and runs `main` as the root task; opts.workers (default:
-- KNHK_WORKERS or the number of CPUs) workers run tasks. opts.signals: the
-- first SIGINT/SIGTERM cancels everything (cleanup runs; tasks that have
-- not reached a checkpoint are named on stderr), a second one ends the
-- process; knhk.signal_received() says which came. opts.name: what
-- reports (:tasks, that of a SIGINT) call the root task.
function knhk.run(main, opts, ...)
  check.arg("func", main, 1, "run")
  opts = check.opts(opts, 2, "run")
  local workers = check.field("whole", opts, "workers", 2, "run", 2, 1, 256)
  if workers == nil then
    local err
    workers, err = knhk.default_workers()
    if not workers then error("knhk.run: " .. err, 2) end
  end
  local name = check.field("string", opts, "name", 2, "run")
  return R.run(main, workers, opts.signals and true or false, name, ...)
end

-- The first SIGINT/SIGTERM received by a knhk.run with opts.signals, or nil.
function knhk.signal_received()
  local s = C.klua_signals_received()
  return s ~= 0 and s or nil
end

-- ----------------------------------------------------------------- tasks

-- knhk.spawn(fn, ...) -> handle. A portable task: a snapshot of fn (its
-- upvalues and the globals it reads) and of the arguments is taken now; the
-- task runs on any worker and shares nothing else with the caller.
function knhk.spawn(fn, ...)
  check.arg("func", fn, 1, "spawn")
  local t = R.in_task("knhk.spawn", 2)
  return R.spawn_into(R.task_nursery(t), 2, fn, ...)
end

-- knhk.spawn_local(fn, ...) -> handle. A coroutine on this worker's VM,
-- sharing its memory (no snapshot); never moves to another worker.
function knhk.spawn_local(fn, ...)
  check.arg("func", fn, 1, "spawn_local")
  local t = R.in_task("knhk.spawn_local", 2)
  return R.spawn_local_into(R.task_nursery(t), 2, fn, ...)
end

-- Task handles: h:join(), h:cancel(), h:done().
knhk.Task = R.Handle

-- knhk.sleep(seconds): a checkpoint that waits.
function knhk.sleep(seconds)
  check.arg("number", seconds, 1, "sleep")
  if seconds < 0 then seconds = 0 end
  R.sleep(seconds)
end

-- knhk.now() -> seconds on the runtime's monotonic clock.
function knhk.now() return R.now() end

-- knhk.checkpoint(): raises Cancelled if the current scope is cancelled,
-- and lets other tasks run.
function knhk.checkpoint() R.checkpoint() end

-- knhk.tasks() -> the live tasks: { { id, parent, state, worker, age }, ... }
function knhk.tasks() return R.live_tasks() end

-- knhk.current() -> a description of the running task, or nil.
function knhk.current()
  local t = R.current
  if not t then return nil end
  return { id = tonumber(C.klua_task_id(t.ptr)), worker = C.klua_worker_index(R.rt()) }
end

-- --------------------------------------------------------------- scopes

-- knhk.cancel_scope(fn [, opts]) -> scope, fn's results. Runs fn(scope) in
-- a cancel scope: opts.deadline (knhk.now() time), opts.timeout (seconds
-- from now), opts.shield (outer cancellation does not reach inside).
-- scope:cancel(), scope.cancel_called, scope.cancelled_caught.
function knhk.cancel_scope(fn, opts)
  check.arg("func", fn, 1, "cancel_scope")
  opts = check.opts(opts, 2, "cancel_scope")
  check.field("number", opts, "deadline", 2, "cancel_scope")
  check.field("number", opts, "timeout", 2, "cancel_scope")
  local t = R.in_task("knhk.cancel_scope", 2)
  local o = { shield = opts.shield and true or false }
  if opts.deadline ~= nil then o.deadline = opts.deadline end
  if opts.timeout ~= nil then
    local d = R.now() + math.max(0, opts.timeout)
    o.deadline = o.deadline and math.min(o.deadline, d) or d
  end
  return R.scope(t, o, fn)
end

-- knhk.move_on_after(seconds, fn, ...) -> scope, results: fn is cancelled
-- after `seconds` and the program moves on (scope.cancelled_caught).
function knhk.move_on_after(seconds, fn, ...)
  check.arg("number", seconds, 1, "move_on_after")
  check.arg("func", fn, 2, "move_on_after")
  local t = R.in_task("knhk.move_on_after", 2)
  local args = { n = select("#", ...), ... }
  return R.scope(t, { deadline = R.now() + math.max(0, seconds) }, function()
    return fn(unpack(args, 1, args.n))
  end)
end

-- knhk.fail_after(seconds, fn, ...) -> results; raises a TimeoutError
-- (knhk.is_timeout) if fn did not finish in time.
function knhk.fail_after(seconds, fn, ...)
  check.arg("number", seconds, 1, "fail_after")
  check.arg("func", fn, 2, "fail_after")
  local t = R.in_task("knhk.fail_after", 2)
  local args = { n = select("#", ...), ... }
  local res = { R.scope(t, { deadline = R.now() + math.max(0, seconds) }, function()
    return fn(unpack(args, 1, args.n))
  end) }
  local scope = res[1]
  if scope.cancelled_caught and scope.reason == K.CANCEL_DEADLINE then
    error(errors.timeout(seconds, "knhk.fail_after"), 2)
  end
  return unpack(res, 2, table.maxn(res))
end

-- ------------------------------------------------------------ nurseries

local Nursery = R.Nursery

function Nursery:spawn(fn, ...)
  if self.n == nil then error("spawn: the nursery is closed", 2) end
  return R.spawn_into(self, 2, fn, ...)
end

function Nursery:spawn_local(fn, ...)
  if self.n == nil then error("spawn_local: the nursery is closed", 2) end
  return R.spawn_local_into(self, 2, fn, ...)
end

-- knhk.nursery(fn [, opts]) -> fn's results. Runs fn(n); n:spawn(...)
-- starts children. Returns once every child has ended. The first failing
-- child cancels the others (unless opts.supervise); then the errors are
-- raised: one as is, several as an ErrorGroup. n:cancel() ends the children
-- (not an error).
function knhk.nursery(fn, opts)
  check.arg("func", fn, 1, "nursery")
  opts = check.opts(opts, 2, "nursery")
  local t = R.in_task("knhk.nursery", 2)
  local outer = R.token_of(t)
  local n = R.new_nursery(t, opts.supervise)
  local ntoken = C.knhk_token_retain(C.knhk_nursery_token(n.n))
  -- The body runs in a scope bound to the nursery's token: a failing child
  -- or n:cancel() cancels the body's checkpoints too.
  t.scopes[#t.scopes + 1] = { token = ntoken, nursery = true }
  local res = { n = 0 }
  local function keep(...) res = { n = select("#", ...), ... } end
  local ok, err = xpcall(function() keep(fn(n)) end, R.capture)
  table.remove(t.scopes)
  if not ok and not errors.is_signal(err) then
    C.knhk_nursery_fail(n.n, K.EFAILED) -- a failing body cancels the children
  end
  local errs = R.close_nursery(n)
  C.knhk_token_release(ntoken)
  if not ok and not errors.is_signal(err) then table.insert(errs, 1, err) end
  if #errs > 0 then error(errors.group(errs), 0) end
  -- A Cancelled from the body is this nursery's own (n:cancel, a failing
  -- child) unless the scope around it is cancelled too: then it unwinds on.
  if not ok and C.knhk_token_is_cancelled(outer) ~= 0 then error(err, 0) end
  return unpack(res, 1, res.n)
end

-- n:join_next() -> handle of the next child to end (completion order), or
-- nil when none is left; h:join() then gives its results or error.
function Nursery:join_next()
  if self.n == nil then error("join_next: the nursery is closed", 2) end
  self:owned("join_next")
  return self:next_ended("join_next")
end

-- n:wait_any() -> the results of the first child to complete; the others
-- are cancelled (and waited for when the nursery ends). If a child fails
-- before any completes, the nursery raises that failure.
function Nursery:wait_any()
  if self.n == nil then error("wait_any: the nursery is closed", 2) end
  self:owned("wait_any")
  while true do
    local h = self:next_ended("wait_any")
    if h == nil then
      error(errors.task_error("wait_any: no task completed", nil, nil), 2)
    end
    if C.klua_task_outcome(h.ptr) == K.OK then
      self:cancel()
      -- the others' cleanup runs before wait_any returns
      R.wait_children(self.n)
      return h:join()
    end
    -- a failure cancels the rest (nursery policy); keep waiting for a winner
  end
end

-- n:wait_all() -> { {results...}, ... } in spawn order, for the tasks
-- spawned so far (waits for them; raises the first error).
function Nursery:wait_all()
  self:owned("wait_all")
  local out = {}
  for i, h in ipairs(self.handles) do out[i] = { h:join() } end
  return out
end

-- -------------------------------------------------------------- tokens

local Token = {}
Token.__index = Token
knhk.Token = Token

local function wrap_token(ptr)
  return setmetatable({ ptr = ffi.gc(ptr, C.knhk_token_release) }, Token)
end

codec.register_handle("token", Token, function(tok)
  C.knhk_token_retain(tok.ptr)
  return tonumber(ffi.cast("uintptr_t", tok.ptr))
end, function(n) return wrap_token(ffi.cast("knhk_token_t*", n)) end)

-- knhk.token([parent]) -> a cancel token (a root, or a child of parent).
function knhk.token(parent)
  if parent ~= nil and getmetatable(parent) ~= Token then check.fail(1, "token", "token", parent) end
  local out = ffi.new("knhk_token_t*[1]")
  local rc = C.knhk_token_new(out, parent and parent.ptr or nil)
  if rc ~= 0 then return nil, ffi.string(C.knhk_strerror(rc)), rc end
  return wrap_token(out[0])
end

function Token:child() return knhk.token(self) end
function Token:cancel() C.knhk_token_cancel(self.ptr, K.CANCEL_EXPLICIT) end
function Token:is_cancelled() return C.knhk_token_is_cancelled(self.ptr) ~= 0 end

-- t:wait(): waits (a checkpoint) until the token is cancelled.
function Token:wait()
  local ptr = self.ptr
  R.wait("token:wait", function() return C.knhk_token_is_cancelled(ptr) ~= 0 end, function(me)
    return C.klua_watch_arm(me, ptr) ~= 0
  end)
end

function Token:__tostring()
  return "knhk.token" .. (self:is_cancelled() and " (cancelled)" or "")
end

-- ---------------------------------------------- channels, synchronisation

local sync = require "knhk.sync"
knhk.channel = sync.channel
knhk.semaphore = sync.semaphore
knhk.lock = sync.lock
knhk.event = sync.event
knhk.Channel, knhk.Semaphore, knhk.Lock, knhk.Event = sync.Channel, sync.Semaphore, sync.Lock,
  sync.Event

-- What a value is, for code that accepts several kinds of handle.
knhk.is_channel = sync.is_channel
function knhk.is_event(v) return getmetatable(v) == sync.Event end
function knhk.is_semaphore(v) local mt = getmetatable(v) return mt == sync.Semaphore or mt == sync.Lock end
function knhk.is_token(v) return getmetatable(v) == Token end
function knhk.is_task(v) return getmetatable(v) == R.Handle end
function knhk.is_nursery(v) return getmetatable(v) == R.Nursery end

-- ------------------------------------------------- map, race, select, exec

-- knhk.map(list, fn [, opts]) -> { fn(list[1]), ... } in order, computed by
-- portable tasks on every core, at most opts.limit at once. The first
-- error cancels the rest and is raised.
function knhk.map(list, fn, opts)
  check.arg("table", list, 1, "map")
  check.arg("func", fn, 2, "map")
  opts = check.opts(opts, 3, "map")
  local limit = check.field("whole", opts, "limit", 3, "map", 2, 1)
  R.in_task("knhk.map", 2)
  local n = #list
  local results = {}
  knhk.nursery(function(nur)
    local sem = limit and knhk.semaphore(limit)
    local hs = {}
    for i = 1, n do
      if sem then sem:acquire() end
      hs[i] = nur:spawn(function(f, v, s)
        local rr = require "knhk.runtime"
        local ok, r = xpcall(f, rr.capture, v)
        if s then s:release() end
        if not ok then error(r, 0) end
        return r
      end, fn, list[i], sem)
    end
    for i = 1, n do results[i] = hs[i]:join() end
  end)
  return results
end

-- knhk.race(f1, f2, ...) -> the results of the first to finish; the others
-- are cancelled and waited for before it returns.
function knhk.race(...)
  local fns = { n = select("#", ...), ... }
  if fns.n == 0 then error("bad argument #1 to 'race' (function expected, got no value)", 2) end
  for i = 1, fns.n do
    check.arg("func", fns[i], i, "race")
  end
  R.in_task("knhk.race", 2)
  return knhk.nursery(function(n)
    for i = 1, fns.n do n:spawn(fns[i]) end
    return n:wait_any()
  end)
end

-- knhk.select{ name = fn, ... } -> name, results of the first to finish;
-- the others are cancelled and waited for.
function knhk.select(cases)
  check.arg("table", cases, 1, "select")
  local names, fns = {}, {}
  for k, f in pairs(cases) do
    if type(f) ~= "function" then
      error("bad argument #1 to 'select' (case '" .. tostring(k) .. "' is a " .. type(f)
        .. ", expected a function)", 2)
    end
    names[#names + 1], fns[#fns + 1] = k, f
  end
  if #fns == 0 then error("bad argument #1 to 'select' (no cases)", 2) end
  R.in_task("knhk.select", 2)
  return knhk.nursery(function(n)
    for i, f in ipairs(fns) do
      local name = names[i]
      n:spawn(function(g, nm) return nm, g() end, f, name)
    end
    return n:wait_any()
  end)
end

-- knhk.exec(cmd [, opts]): a child process as a step (lua/knhk/exec.lua)
knhk.exec = require("knhk.exec").exec

-- knhk.telemetry: OpenTelemetry spans and metrics (lua/knhk/telemetry.lua)
knhk.telemetry = require "knhk.telemetry"

-- ---------------------------------------------------------------- stats

-- knhk.stats() -> { workers, spawned, completed, failed, cancelled, stolen,
-- steal_attempts, parks, live, per_worker = { {...}, ... } }
function knhk.stats()
  local rt = R.rt()
  if rt == nil then error("knhk.stats: no runtime is running (call it inside knhk.run)", 2) end
  return R.stats()
end

-- knhk.last_stats() -> the counters of the last knhk.run, as knhk.stats()
-- gives them, read once every task of it had ended (nil before any run).
function knhk.last_stats() return R.last_stats end

return knhk
