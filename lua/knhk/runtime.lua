-- knhk.runtime: the per-VM half of the Lua layer. Each worker's VM loads
-- it; the C side runs each task in a coroutine of that VM, resumed from the
-- worker's loop (lua/src/klua_task.c), and settles its end with `settle`
-- when it cannot record it alone. It never schedules: a wait arms its
-- wake-ups in C and yields; C decides who runs next.
--
-- Everything that waits goes through `await`, the one wait loop: a C
-- "try" either completes or arms the task's wake-ups and suspends the task
-- from C; woken, the task tries again (lua/src/klua_core.c has the
-- statuses).
local core = require "knhk.core"
local codec = require "knhk.codec"
local errors = require "knhk.errors"
local check = require "knhk.check"

local select, type, error, xpcall, unpack = select, type, error, xpcall, unpack
local co_yield = coroutine.yield

local M = {}

-- knhk.telemetry, loaded at its first use while telemetry is on (it loads
-- the FFI's cdef and the registry's names, which a run that records no
-- telemetry never needs): a scope's end asks tel_enabled() first. A task's
-- failure and a wait for children are recorded by core.tel_task_error,
-- core.tel_wait_begin and core.tel_wait_end, which do nothing while it is
-- off.
local tel_module
local function telemetry()
  tel_module = tel_module or require "knhk.telemetry"
  return tel_module
end
local tel_enabled = core.tel_enabled
M.telemetry, M.tel_enabled = telemetry, tel_enabled

local DONE, WAIT, CLOSED, CANCELLED, BLOB, MESSAGE, SLOW, REASON, NOT_HANDLE = 0, 1, 2, 3, 4, 5, 6, 7, 8
M.DONE, M.WAIT, M.CLOSED, M.CANCELLED, M.BLOB, M.MESSAGE, M.SLOW, M.REASON, M.NOT_HANDLE =
  DONE, WAIT, CLOSED, CANCELLED, BLOB, MESSAGE, SLOW, REASON, NOT_HANDLE
M.DONE0, M.DONE1 = 9, 10 -- join_try only: DONE with no result, with one (knhk/task.lua)
local OK, ERROR, CANCELLED_OUTCOME = 0, 1, 2 -- how a task ended
M.OK, M.ERROR, M.CANCELLED_OUTCOME = OK, ERROR, CANCELLED_OUTCOME

local MARK_WAIT = core.wait_mark()
M.MARK_WAIT = MARK_WAIT

local function pack(...) return { n = select("#", ...), ... } end
M.pack = pack

-- ------------------------------------------------------------ raising

-- error(msg) at the user's line, outside knhk's own modules.
M.raise = check.raise

local function raise_cancelled(reason) error(errors.cancelled(reason), 0) end
M.raise_cancelled = raise_cancelled

-- ------------------------------------------------------------- waiting

-- Runs try(a, b) until it has something to say: the one wait loop. A try
-- that must wait arms its wake-up and suspends the task itself (the C
-- side's yield_wait); resumed, its call returns nothing, and the loop
-- looks again. A cancelled scope raises Cancelled here. Returns the
-- status and what came with it.
local function await(try, a, b)
  local st, x, y = try(a, b)
  while st == nil do st, x, y = try(a, b) end
  if st == CANCELLED then raise_cancelled(x) end
  return st, x, y
end
M.await = await

-- waiter(try) -> wait(a): await for a wait that only happens (a sleep, an
-- event, a permit, a token), with try(a) its one look: the wait returns
-- nothing, so that the function that waits can end in `return wait(a)`,
-- a tail call that takes the waiter's frame. Each frame and slot under the
-- yield counts: a task that waits from its own function keeps LuaJIT's
-- first coroutine stack only while the try's C call finds 20 of its 40
-- slots free (yield_wait in klua_core.c), and a trace that reaches the
-- try stitches around the C call, with a continuation frame (3 slots)
-- under it. So try is an upvalue and one argument is passed: the call sits
-- two slots lower than a loop taking (try, a, b) put it, enough for a task
-- function with a few locals. (The loop stays compiled: turning it off
-- blacklisted every program loop that sleeps or takes a lock.)
function M.waiter(try)
  local function wait(a)
    local st, x = try(a)
    while st == nil do st, x = try(a) end
    if st == CANCELLED then raise_cancelled(x) end
  end
  return wait
end

-- A wait whose wake-up someone else arms through the FFI (exec, the
-- REPL's line input): until cond() holds; arm(task) registers the task
-- and returns true if cond already holds. `uncancellable`: not a
-- checkpoint. cond may consume what it finds (the REPL takes its line):
-- once it has returned true it is not called again.
function M.wait(cond, arm, uncancellable)
  while not cond() do
    local st, reason = core.wait_try(uncancellable)
    if st == CANCELLED then raise_cancelled(reason) end
    if not arm(core.current_ptr()) then
      -- what arrived between the look and the arming
      if cond() then break end
      co_yield(MARK_WAIT) -- (wait_try raised if the task cannot be suspended here)
    end
  end
  core.wait_end()
end

-- ------------------------------------------------------------ errors

-- Tracebacks show the program's frames, not knhk's own (its modules, and
-- the pcall/xpcall that run tasks: the xpcall at a task's base, which the
-- C side calls, is named "[builtin#N]: at 0x..." by LuaJIT).
local function user_traceback(level)
  local out = {}
  for line in debug.traceback("", level + 1):gmatch("[^\n]+") do
    if not line:match("knhk/[%w_/]+%.lua:") and not line:match("^%s*%[C%]: in function '[x]?pcall'")
        and not line:match("^%s*%[C%]: at 0x") and not line:match("^%s*%[builtin#%d+%]: at 0x")
        and line ~= "stack traceback:" then
      out[#out + 1] = line
    end
  end
  if #out == 0 then return "" end
  return "stack traceback:\n" .. table.concat(out, "\n")
end
M.user_traceback = user_traceback

-- The error a task's code raised, with its traceback captured where it
-- happened (the value travels to joiners in other VMs).
local function capture(e)
  if errors.is_signal(e) or errors.is_task_error(e) or errors.is_group(e) then return e end
  return errors.task_error(errors.task_message(e), user_traceback(2), e)
end
M.capture = capture

-- A local task's error as it was raised (spawn_local, a nursery's
-- spawn_local child, the root): the task shares its VM with its spawner,
-- so a joiner there gets the error object itself, class and all, rather
-- than the copy that travels to other VMs. Kept by task id until a join or
-- a nursery in this VM takes it, then by each handle that took it (weakly),
-- so that joining a handle again gives the same object; and by id, weakly,
-- for another handle of the same task (one that went through a channel),
-- which finds it while a handle that took it, or the program, holds it.
-- (A local task joined only from other VMs leaves its entry here: handles
-- rarely leave the spawner's VM, and only failed tasks whose error is an
-- object count.)
local kept_errors = {}
local taken_errors = setmetatable({}, { __mode = "k" })
local taken_by_id = setmetatable({}, { __mode = "v" })

local function has_identity(v)
  local t = type(v)
  return t == "table" or t == "userdata" or t == "function" or t == "thread"
end

local function keep_local_error(e)
  if errors.is_group(e) or (errors.is_task_error(e) and has_identity(e.value)) then
    kept_errors[core.current()] = e
  end
end

local function local_error(h, id)
  local e = taken_errors[h]
  if e ~= nil then return e end
  e = kept_errors[id]
  if e ~= nil then
    kept_errors[id] = nil
    taken_by_id[id] = e
  else
    e = taken_by_id[id]
  end
  if e ~= nil then taken_errors[h] = e end
  return e
end

-- The error the task of handle h (in this VM) left, having ended with
-- `outcome`, in a payload the C side gave as (status, payload).
local function task_failure(h, outcome, st, payload)
  local id = core.task_id(h)
  if st == BLOB then
    if outcome ~= CANCELLED_OUTCOME then
      local e = local_error(h, id)
      if e ~= nil then return e end
    end
    local _, e = codec.decode_copies(payload)
    if outcome == CANCELLED_OUTCOME then
      if not errors.is_signal(e) then e = errors.cancelled(nil) end
      return errors.task_error("task " .. id .. " was cancelled", nil, e)
    end
    return e or errors.task_error("task " .. id .. " failed", nil, nil)
  elseif st == MESSAGE then
    return errors.task_error(payload, nil, nil)
  elseif st == REASON then
    return errors.task_error("task " .. id .. " was cancelled", nil, errors.cancelled(payload))
  end
  if outcome == CANCELLED_OUTCOME then
    return errors.task_error("task " .. id .. " was cancelled", nil, errors.cancelled(nil))
  end
  return errors.task_error("task " .. id .. " failed", nil, nil)
end
M.task_failure = task_failure

-- The results of a task that completed (no waiting, not a checkpoint).
function M.results(h)
  -- DONE, results... (inline) or BLOB, outcome, snapshot: exactly the
  -- results, as many as the task returned
  local function values(st, ...)
    if st == DONE then return ... end
    if st == BLOB then return select(2, codec.decode_copies((select(2, ...)))) end
  end
  return values(core.outcome(h))
end

-- ------------------------------------------------- a task's end, settled

-- The errors of the task's children that failed and that nobody joined.
local function failures_of(nursery)
  local out = {}
  for _, h in ipairs(core.failures(nursery)) do
    local st, outcome, payload = core.outcome(h)
    out[#out + 1] = task_failure(h, outcome, st, payload)
  end
  return out
end
M.failures_of = failures_of

-- A stack overflow leaves the error handler no room to run: xpcall then
-- reports "error in error handling". Say what happened, and where.
local function overflow_error()
  return errors.task_error(string.format("stack overflow in task %d (%s)", core.current() or 0,
    core.place()), "", nil)
end

local encode = codec.encode
local function as_result(i) return "return value " .. i end
local function as_error() return "error" end
local function as_it() return "it" end

-- An error that cannot travel to a joiner in another VM (its value is a
-- table of an unregistered class, a userdata, ...): its message and
-- traceback do, and the message says that the value was left behind and
-- why, so that a nil .value is never a silent loss. A group keeps each
-- member that can travel.
local function carried(e)
  if errors.is_group(e) then
    local out = {}
    for i, x in ipairs(e.errors) do out[i] = carried(x) end
    return errors.group(out)
  end
  if pcall(encode, 1, as_error, e) then return e end
  local v = errors.is_task_error(e) and e.value or e
  local good, why = pcall(encode, 1, as_it, v)
  why = good and "it cannot be copied" or (type(why) == "table" and why.message or tostring(why))
  return errors.task_error(errors.message(e) .. " [the error value was not carried to the joiner: "
    .. why .. "]", errors.is_task_error(e) and e.traceback or nil, nil)
end

-- Records a task's end the slow way: its own nursery's children end first
-- (their unjoined failures become its error), and results or errors that
-- are not inline values go through the codec.
local function complete_slow(st, ok, ...)
  local res = pack(ok, ...)
  if not ok and res[2] == "error in error handling" then res[2] = overflow_error() end
  if st == 1 then -- it spawned: a task ends only after what it spawned
    -- a failed task's children are cancelled, as a nursery's are when its
    -- body fails: nothing would ever ask them to end otherwise
    local failed = not ok and not errors.is_signal(res[2])
    -- errors in the order they happened: the children's failures so far,
    -- the task's own, then those of children that ended after it failed
    local errs = failed and failures_of(nil) or {}
    if not ok then core.cancel_children() end
    local span = core.tel_wait_begin(nil)
    await(core.close_try)
    core.tel_wait_end(span)
    if failed then errs[#errs + 1] = res[2] end
    for _, e in ipairs(failures_of(nil)) do errs[#errs + 1] = e end
    core.drop_own()
    if #errs > 0 then
      ok, res = false, { n = 2, false, errors.group(errs) }
    elseif ok and select("#", core.finish(true, unpack(res, 2, res.n))) == 0 then
      return -- recorded
    end
  end
  if ok then
    local good, snap, handles = pcall(encode, res.n - 1, as_result, unpack(res, 2, res.n))
    if good then return core.finish_blob(OK, snap, handles) end
    -- the joiner may be far from the task: say which task could not return
    local msg = string.format("task %d (%s) cannot return its results: %s", core.current() or 0,
      core.place(), type(snap) == "table" and snap.message or tostring(snap))
    return core.finish_blob(ERROR, encode(1, as_error, errors.task_error(msg, nil, nil)))
  end
  local e = res[2]
  if errors.is_signal(e) then return core.finish_blob(CANCELLED_OUTCOME, encode(1, as_error, e)) end
  if tel_enabled() then core.tel_task_error(errors.message(e)) end
  if core.current_local() then keep_local_error(e) end
  local good, snap, handles = pcall(encode, 1, as_error, e)
  if good then return core.finish_blob(ERROR, snap, handles) end
  return core.finish_blob(ERROR, encode(1, as_error, carried(e)))
end

-- What a task's coroutine is resumed with when core.finish could not
-- record how the task ended (task_run, klua_task.c): how to settle it
-- (1: its own nursery has children; 2: the results or the error need the
-- codec), then xpcall's ok and the results or the error. It returns
-- nothing: the coroutine ends empty, which tells task_run it is settled.
local finish_cancelled = core.finish_cancelled
local plain_cancelled_code = errors.plain_cancelled_code
local function settle(st, ok, ...)
  if st == 2 and not ok then -- ended by cancellation: the reason is enough
    local code = plain_cancelled_code((...))
    if code then finish_cancelled(code) return end
  end
  complete_slow(st, ok, ...)
end

-- A task the codec started (its function's globals, tables, ...): decoded
-- inside the task's own protected call, so that a start that cannot be
-- decoded is the task's error; a tail call, so that the function runs
-- where any other task's does.
local function start_blob(snap)
  local vals = pack(codec.decode_start(snap))
  local fn = vals[2]
  -- a callable object is sent as a table of its class, which gets its
  -- metatable (and __call) only in a VM that registered the class
  if type(fn) ~= "function" and not check.callable(fn) then
    error(codec.arrived_without_call("the task's callable object"), 0)
  end
  return fn(unpack(vals, 3, vals.n))
end

-- ------------------------------------------------------------------ VMs

local K -- knhk.ffi, once a runtime exists

-- ------------------------------------------------------------- os.exit

-- os.exit, one at a time, with a report first if a program asked for one
-- (knhk-lua --stats prints the counters). A program names the module
-- whose at_exit() reports (report_at_exit, before knhk.run); each VM of a
-- run, the caller's and every worker's, puts the os.exit below in front of
-- its own as it starts, so that the report comes whichever task calls
-- os.exit, on whichever worker. The first os.exit of the process exits
-- (and reports); one from another thread meanwhile waits for the process
-- to end, and the status is the first one's (lua/src/klua_exit.c: the
-- claim, and why).

-- Names the module (nil: none) for the runs that start from now on.
function M.report_at_exit(module)
  if module ~= nil then check.arg("string", module, 1, "report_at_exit") end
  K = K or require "knhk.ffi"
  if K.C.klua_exit_report_set(module) ~= 0 then error("knhk: out of memory", 2) end
end

-- os.exit(status, close) for `exit`, this VM's own: reports, then exits.
-- Nil for an `exit` the program put in place of the C library's (a
-- spec's stub, which may return or raise) when no report was asked for:
-- that one is left as it is. A claim is for good, and a stub's would
-- leave every later os.exit from another thread waiting for an exit that
-- never comes.
local function exit_reporting(exit, module)
  if module == nil and not (type(exit) == "function" and debug.getinfo(exit, "S").what == "C") then
    return nil
  end
  return function(status, ...)
    -- the status as os.exit reads it, refused here as os.exit would
    -- refuse it: once the exit is claimed, exit must not raise
    if status == nil or status == true then
      status = 0 -- EXIT_SUCCESS
    elseif status == false then
      status = 1 -- EXIT_FAILURE
    else
      local n = tonumber(status)
      if n == nil then check.fail(1, "exit", "number", status) end
      status = n
    end
    if K.C.klua_exit_claim() == 1 and module then
      pcall(function() require(module).at_exit() end) -- a failed report still exits
    end
    return exit(status, ...)
  end
end

-- In the caller's VM, while a run has put an os.exit in front of the
-- caller's: that one, and the caller's, put back when the run ends unless
-- the program has replaced os.exit meanwhile. (A worker's VM ends with
-- its run.)
local run_exit, callers_exit

-- Called once per VM with the runtime, before any task runs in it.
local function init_vm()
  K = K or require "knhk.ffi"
  local ffi, C = K.ffi, K.C
  local rt = ffi.cast("klua_rt_t*", (core.context()))
  M.rt = rt
  codec.init(function(bytes)
    local id = C.klua_proto_register(rt, bytes, #bytes)
    if id == 0 then error("knhk: out of memory registering a function") end
    return id
  end, function(id)
    local len = ffi.new("size_t[1]")
    local p = C.klua_proto_get(rt, id, len)
    if p == nil then error("knhk: unknown function prototype " .. id) end
    return ffi.string(p, len[0])
  end)
  -- Named values (klua_value.c): builtins and modules the codec has met
  -- travel as an id of the runtime's registry, which holds their key.
  -- named_safe: the ids of those a shared closure may hold (codec.named_shareable)
  local named, named_vals, named_safe = setmetatable({}, { __mode = "k" }), {}, {}
  local function remember(v, id, key)
    named[v] = id
    named_vals[id] = v
    named_safe[id] = codec.named_shareable(key) or nil
  end
  codec.on_named = function(v, key)
    if named[v] then return end
    local bytes = "\0" .. key -- never a prototype's dump, which starts "\27LJ"
    local id = C.klua_proto_register(rt, bytes, #bytes)
    if id ~= 0 then remember(v, id, key) end
  end
  local function resolve_name(id)
    local len = ffi.new("size_t[1]")
    local p = C.klua_proto_get(rt, id, len)
    if p == nil or len[0] < 2 or p[0] ~= 0 then error("knhk: unknown named value " .. id) end
    local key = ffi.string(p + 1, len[0] - 1)
    local v = codec.named_value(key)
    remember(v, id, key)
    return v
  end
  local shared_p, shared_c
  codec.share_paths = function()
    local p, c = package.path, package.cpath
    if p ~= shared_p or c ~= shared_c then
      if C.klua_rt_set_paths(rt, p, c) == 0 then shared_p, shared_c = p, c end
    end
  end
  codec.spawner_paths = function()
    return ffi.string(C.klua_rt_path(rt, 0)), ffi.string(C.klua_rt_path(rt, 1))
  end
  -- (with no report too: two tasks that call os.exit at once on two
  -- workers would otherwise run exit() side by side)
  local report = C.klua_exit_report()
  run_exit = exit_reporting(os.exit, report ~= nil and ffi.string(report) or nil)
  if run_exit then
    callers_exit = os.exit
    os.exit = run_exit
  end
  core.register(settle, {
    xpcall = xpcall,
    start = core.start,
    finish = core.finish,
    proto_of = codec.proto_number,
    new_closure = codec.new_closure,
    place_of = codec.place_of,
    capture = capture,
    start_blob = start_blob,
    globals_names = codec.globals_names,
    gnames = {},
    base_mt = codec.BASE_MT,
    base_env = codec.base_env,
    named = named,
    named_vals = named_vals,
    named_safe = named_safe,
    resolve_name = resolve_name,
  })
end

-- Names the module (nil: none) whose setup_vm() each worker VM of the runs
-- that start from now on calls as it opens, before any task runs in it:
-- for what a program puts in its own VM's globals that its modules use
-- (knhk-lua's global `knhk`), so that they find it on every worker. The
-- caller's VM is the program's own: it sets that up itself.
function M.setup_vms(module)
  if module ~= nil then check.arg("string", module, 1, "setup_vms") end
  K = K or require "knhk.ffi"
  if K.C.klua_vm_setup_set(module) ~= 0 then error("knhk: out of memory", 2) end
end

-- Worker VMs: called by the C side after `require "knhk.runtime"`. The
-- whole knhk module is loaded too: it registers the classes and handle
-- kinds that snapshots refer to.
function M.start_worker()
  require "knhk"
  init_vm()
  local setup = K.C.klua_vm_setup()
  if setup ~= nil then require(K.ffi.string(setup)).setup_vm() end
end

-- ------------------------------------------------------------------ run

M.last_stats = nil

local stats_bufs -- what klua_stats fills

-- The executor's counters, summed and per worker (knhk.stats).
function M.stats()
  local ffi, C = K.ffi, K.C
  -- made once per VM: every run's end asks (16 KB for 256 workers)
  stats_bufs = stats_bufs or { ffi.new("klua_counters_t"), ffi.new("uint64_t[1]"),
                               ffi.new("klua_counters_t[?]", 256) }
  local total, live, per = stats_bufs[1], stats_bufs[2], stats_bufs[3]
  local n = C.klua_stats(M.rt, total, live, per, 256)
  local function tab(w)
    return { spawned = tonumber(w.spawned), completed = tonumber(w.completed),
             failed = tonumber(w.failed), cancelled = tonumber(w.cancelled),
             stolen = tonumber(w.stolen), steal_attempts = tonumber(w.steal_attempts),
             parks = tonumber(w.parks), busy_s = tonumber(w.busy_ns) / 1e9 }
  end
  local out = tab(total)
  out.workers = n
  out.live = tonumber(live[0])
  out.per_worker = {}
  for i = 0, n - 1 do out.per_worker[i + 1] = tab(per[i]) end
  return out
end

function M.running() return M.rt ~= nil end

-- Runs main(...) as the root task of a new runtime. cfg: workers,
-- signals, name, seed (a seeded schedule on one worker), clock (0 real,
-- 1 virtual: knhk.clock), all checked; place: the program's call of
-- knhk.run, "file:line: " or "" (check.caller_place). knhk.run has
-- refused a nested run already, at the program's place.
function M.run(main, cfg, ...)
  local name = cfg.name
  -- (with signals, core.new has the reactor install the handlers, and
  -- core.root waits until it has)
  local r = core.new(cfg.workers, cfg.seed, cfg.clock, cfg.signals)
  local args = pack(...)
  local ok, res = pcall(function()
    init_vm()
    local h = core.root(r, function() return main(unpack(args, 1, args.n)) end,
      name or ("main " .. codec.place_of(main)), cfg.place)
    core.enter(r)
    M.last_stats = M.stats() -- every task has ended: the counters are final
    -- A deadlock is the run's failure however the root ended: a root that
    -- caught the Cancelled it raised and returned would otherwise pass a
    -- run (or a spec) that could never have finished.
    local stalled, stuck = core.stalled(r)
    if stalled then
      return pack(false, "knhk.run: deadlock under the virtual clock: every task was waiting, "
        .. "with no timer pending and nothing in flight that could wake one; the run was "
        .. "cancelled" .. (stuck ~= "" and (". Waiting:" .. stuck) or ""))
    end
    local st, outcome, payload = core.outcome(h)
    if st == DONE then return pack(true, select(2, core.outcome(h))) end
    if outcome == OK then
      if st == BLOB then return pack(true, select(2, codec.decode_copies(payload))) end
      return pack(true)
    end
    return pack(false, task_failure(h, outcome, st, payload))
  end)
  M.rt = nil
  if run_exit then
    if os.exit == run_exit then os.exit = callers_exit end
    run_exit, callers_exit = nil, nil
  end
  -- errors of this run's local tasks that no join here took: no handle of
  -- them can be joined any more (task ids are not reused, but the memory is)
  for id in pairs(kept_errors) do kept_errors[id] = nil end
  for id in pairs(taken_by_id) do taken_by_id[id] = nil end
  core.free(r)
  if not ok then error(res, 0) end
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2, res.n)
end

return M
