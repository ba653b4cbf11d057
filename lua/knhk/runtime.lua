-- knhk.runtime: the per-VM half of the Lua layer. Each worker's VM loads
-- it; the C side calls its `step` (through the Lua C API) to run a task's
-- coroutine until it ends or waits. It never schedules: waits arm a wake-up
-- in C and yield; C decides who runs next.
--
-- Task record (one per task, in the VM it runs in):
--   ptr     klua_task_t* (C)     co      its coroutine
--   scopes  cancel-scope stack   nursery its own nursery for knhk.spawn
local K = require "knhk.ffi"
local codec = require "knhk.codec"
local errors = require "knhk.errors"
local core = require "knhk.core"
local telemetry = require "knhk.telemetry"

local ffi, C = K.ffi, K.C
local select, type, error, pcall, xpcall = select, type, error, pcall, xpcall
local co_create, co_resume, co_yield, co_status, co_running =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.status, coroutine.running

local M = {}
M.current = nil   -- the task record running now in this VM, or nil

local rt          -- klua_rt_t* of this VM's runtime
local tasks = {}  -- lightuserdata(klua_task_t*) -> task record
local locals = {} -- spawn_local key -> { fn, n, args }
local next_local = 0

-- ------------------------------------------------------------- plumbing

local function pack(...) return { n = select("#", ...), ... } end
local unpack = unpack

function M.rt() return rt end

-- Called once per VM with the runtime (core.context), before any task runs.
local function init_vm()
  local r = core.context()
  rt = ffi.cast("klua_rt_t*", r)
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
end

function M.in_task(where, level)
  local t = M.current
  if t == nil then
    error(where .. ": must be called inside a knhk task (inside knhk.run)", (level or 2) + 1)
  end
  if co_running() ~= t.co then
    error(where .. ": cannot wait from inside a coroutine of your own; call it from the task",
      (level or 2) + 1)
  end
  return t
end

-- ---------------------------------------------------------- cancellation

-- The token a checkpoint looks at: the innermost scope's, else the task's.
function M.token_of(t)
  local s = t.scopes
  local top = s[#s]
  return top and top.token or C.klua_task_token(t.ptr)
end

local function raise_cancelled(t, token)
  error(errors.cancelled(C.knhk_token_reason(token)), 0)
end
M.raise_cancelled = raise_cancelled

-- Waits until cond() holds. arm(ptr) arms the wake-ups (returns true if
-- the condition can be considered met at once). Raises Cancelled when the
-- task's current scope is cancelled (unless `uncancellable`).
function M.wait(where, cond, arm, uncancellable)
  local t = M.in_task(where, 3)
  local ptr = t.ptr
  local token = nil -- no cancellation point when uncancellable
  if not uncancellable then token = M.token_of(t) end
  while true do
    if token ~= nil and C.knhk_token_is_cancelled(token) ~= 0 then raise_cancelled(t, token) end
    if cond() then return end
    if C.klua_wait_begin(ptr, token) ~= 0 then raise_cancelled(t, token) end
    local ready = arm(ptr)
    if not ready and not cond() then co_yield() end
    C.klua_wait_end(ptr)
  end
end

-- A checkpoint: raises if cancelled, and lets other tasks run.
function M.checkpoint()
  local t = M.in_task("knhk.checkpoint", 2)
  local token = M.token_of(t)
  if C.knhk_token_is_cancelled(token) ~= 0 then raise_cancelled(t, token) end
  C.klua_wake(t.ptr, 0) -- queued again right away: others get a turn first
  co_yield()
  if C.knhk_token_is_cancelled(token) ~= 0 then raise_cancelled(t, token) end
end

function M.sleep(seconds)
  M.in_task("knhk.sleep", 3) -- before anything reaches C
  local deadline = C.klua_now(rt) + seconds * 1e9
  M.wait("knhk.sleep", function() return C.klua_now(rt) >= deadline end, function(ptr)
    local rc = C.klua_sleep_arm(ptr, deadline)
    if rc ~= 0 then error("knhk.sleep: " .. ffi.string(C.knhk_strerror(rc)), 0) end
    return false
  end)
end

function M.now()
  if rt == nil then error("knhk.now: no runtime is running (call it inside knhk.run)", 3) end
  return tonumber(C.klua_now(rt)) / 1e9
end

-- Runs fn inside a cancel scope (see knhk.cancel_scope).
local Scope = {}
Scope.__index = Scope
M.Scope = Scope

function Scope:cancel()
  self.cancel_called = true
  if self.token ~= nil then C.knhk_token_cancel(self.token, K.CANCEL_EXPLICIT) end
end

function M.scope(t, opts, fn, ...)
  local parent = M.token_of(t)
  local out = ffi.new("knhk_token_t*[1]")
  local from = parent
  if opts.shield then from = nil end -- a shield's token is a root: outer cancels stop there
  local rc = C.knhk_token_new(out, from)
  if rc ~= 0 then error("knhk: cannot make a cancel scope: " .. ffi.string(C.knhk_strerror(rc)), 3) end
  local token = out[0]
  local scope = setmetatable({ token = token, shield = opts.shield or false, cancel_called = false,
                               cancelled_caught = false, parent = parent }, Scope)
  if opts.deadline then
    scope.deadline = opts.deadline
    C.knhk_token_set_deadline(token, C.klua_reactor(rt), opts.deadline * 1e9)
  end
  if opts.pre_cancelled then scope:cancel() end
  local scopes = t.scopes
  scopes[#scopes + 1] = scope
  local res = pack(pcall(fn, scope, ...))
  scopes[#scopes] = nil
  C.knhk_token_clear_deadline(token)
  local reason = C.knhk_token_reason(token)
  telemetry.scope_drop(token, scope.shield, reason, res, parent)
  scope.token = nil
  C.knhk_token_release(token)
  if res[1] then return scope, unpack(res, 2, res.n) end
  local e = res[2]
  -- Cancelled unwinds to the outermost cancelled scope: this one, unless
  -- the scope around it is cancelled too (then that one catches it).
  if errors.is_signal(e) and reason ~= 0
      and (scope.shield or C.knhk_token_is_cancelled(parent) == 0) then
    scope.cancelled_caught = true
    scope.reason = reason
    return scope
  end
  error(e, 0)
end

-- ------------------------------------------------------- tasks, handles

local Handle = {}
Handle.__index = Handle
M.Handle = Handle

-- A handle owns one reference to the record.
local function make_handle(ptr)
  return setmetatable({ ptr = ffi.gc(ptr, C.klua_task_release), id = tonumber(C.klua_task_id(ptr)) },
    Handle)
end
M.make_handle = make_handle

-- Handles travel: the receiver gets its own reference.
codec.register_handle("task", Handle, function(h)
  C.klua_task_retain(h.ptr)
  return tonumber(ffi.cast("uintptr_t", h.ptr))
end, function(n)
  return make_handle(ffi.cast("klua_task_t*", n))
end)

local result_len = ffi.new("size_t[1]")

-- Only once klua_task_outcome (acquire) said the task ended.
local function decode_result(ptr)
  local p = C.klua_task_result(ptr, result_len)
  if p == nil then return 0 end
  return codec.decode(p, result_len[0])
end

local outcome_of_task = C.klua_task_outcome

function Handle:done() return outcome_of_task(self.ptr) ~= K.RUNNING end

function Handle:cancel()
  C.knhk_token_cancel(C.klua_task_token(self.ptr), K.CANCEL_EXPLICIT)
end

-- Results of the task, once it ended; raises its error.
function Handle:join()
  local ptr = self.ptr
  if outcome_of_task(ptr) == K.RUNNING then
    M.wait("join", function() return outcome_of_task(ptr) ~= K.RUNNING end, function(me)
      return C.klua_join_arm(me, ptr) ~= 0
    end)
  end
  C.klua_task_set_joined(ptr) -- its error, if any, is handled by whoever joined
  return M.outcome_of(ptr)
end

function M.outcome_of(ptr)
  local outcome = outcome_of_task(ptr)
  if outcome == K.OK then
    return select(2, decode_result(ptr))
  elseif outcome == K.CANCELLED then
    local _, sig = decode_result(ptr)
    if not errors.is_signal(sig) then sig = errors.cancelled(nil) end
    local e = errors.task_error("task " .. tonumber(C.klua_task_id(ptr)) .. " was cancelled", nil, sig)
    error(e, 0)
  end
  local _, e = decode_result(ptr)
  error(e or errors.task_error("task " .. tonumber(C.klua_task_id(ptr)) .. " failed", nil, nil), 0)
end

function Handle:__tostring() return "knhk.task#" .. self.id end

-- The error a task's code raised, with its traceback captured where it
-- happened (the value travels to joiners in other VMs).
-- Tracebacks show the program's frames, not knhk's own (its modules, and
-- the pcall/xpcall that run tasks).
local function user_traceback(level)
  local out = {}
  for line in debug.traceback("", level + 1):gmatch("[^\n]+") do
    if not line:match("knhk/[%w_]+%.lua:") and not line:match("^%s*%[C%]: in function '[x]?pcall'")
        and not line:match("^%s*%[C%]: at 0x") and line ~= "stack traceback:" then
      out[#out + 1] = line
    end
  end
  if #out == 0 then return "" end
  return "stack traceback:\n" .. table.concat(out, "\n")
end
M.user_traceback = user_traceback

local function capture(e)
  if errors.is_signal(e) or errors.is_task_error(e) or errors.is_group(e) then return e end
  local msg = errors.message(e)
  return errors.task_error(msg, user_traceback(2), e)
end
M.capture = capture

local function encode_places(what)
  return function(i) return what .. " " .. i end
end

-- Encodes the outcome of a task: results, or its error (an error value
-- that cannot travel is replaced by its message).
local function encode_outcome(ok, res, extra)
  if ok then
    local s, snap = pcall(codec.encode, res.n - 1, encode_places("return value"), unpack(res, 2, res.n))
    if s then return K.OK, snap end
    local msg = "task result: " .. (type(snap) == "table" and snap.message or tostring(snap))
    return K.ERROR, codec.encode(1, encode_places("error"), errors.task_error(msg, nil, nil))
  end
  local e = res[2]
  if errors.is_signal(e) then
    return K.CANCELLED, codec.encode(1, encode_places("error"), e)
  end
  local s, snap = pcall(codec.encode, 1, encode_places("error"), e)
  if s then return K.ERROR, snap end
  if type(e) == "table" then e.value = nil end
  return K.ERROR, codec.encode(1, encode_places("error"), errors.task_error(errors.message(e),
    type(e) == "table" and e.traceback or nil, nil))
end

-- ----------------------------------------------------------- nurseries

local Nursery = {}
Nursery.__index = Nursery
M.Nursery = Nursery

local spawn_err = ffi.new("int[1]")

-- A nursery object: the task that opened it owns it (only it waits on it
-- and closes it); a copy that travelled to another task (a handle) can
-- spawn into it and cancel it while it is open.
local function nursery_object(kn, owner, supervise)
  return setmetatable({ kn = ffi.gc(kn, C.klua_nursery_release), n = kn.n, task = owner,
                        handles = {}, by_id = {}, supervise = supervise or false }, Nursery)
end

function M.new_nursery(t, supervise)
  local kn = C.klua_nursery_new(rt, M.token_of(t), supervise and 1 or 0, spawn_err)
  if kn == nil then
    error("knhk: cannot make a nursery: " .. ffi.string(C.knhk_strerror(spawn_err[0])), 3)
  end
  return nursery_object(kn, t, supervise)
end

-- Nursery handles travel: the receiver shares the nursery.
codec.register_handle("nursery", Nursery, function(n)
  if n.n == nil then error("a nursery that has closed cannot be given to a task", 0) end
  C.klua_nursery_retain(n.kn)
  return tonumber(ffi.cast("uintptr_t", n.kn))
end, function(v)
  return nursery_object(ffi.cast("klua_nursery_t*", v), nil, nil)
end)

-- Places of task functions, interned in C once per runtime: task records
-- point at them, for :tasks and the report of a SIGINT.
local wheres = {}
local function where_of(place)
  local w = wheres[place]
  if w == nil then
    w = C.klua_where(rt, place)
    wheres[place] = w
  end
  return w
end

function Nursery:spawn_snapshot(kind, worker, snap, place)
  local err = spawn_err
  local cur = M.current
  local ptr = C.klua_spawn(rt, self.n, kind, worker, snap, #snap,
    cur and C.klua_task_id(cur.ptr) or 0, where_of(place), err)
  if ptr == nil then
    if err[0] == K.ECLOSED then error("spawn: the nursery is closed", 3) end
    error("spawn: " .. ffi.string(C.knhk_strerror(err[0])), 3)
  end
  local h = make_handle(ptr)
  if self.task ~= nil then -- the owner keeps its children's handles (wait_all)
    self.handles[#self.handles + 1] = h
    self.by_id[h.id] = h
  end
  return h
end

-- Only the task that opened a nursery waits on it.
function Nursery:owned(where)
  if self.task == nil or self.task ~= M.current then
    error(where .. ": only the task that opened the nursery can wait on it", 3)
  end
end

-- The live tasks of this runtime: { id, parent, state, worker, age }.
local STATES = { [0] = "queued", "running", "waiting" }
function M.live_tasks()
  if rt == nil then return {} end
  local rows = ffi.new("klua_task_row_t[?]", 1024)
  local n = C.klua_tasks_list(rt, rows, 1024)
  local now = tonumber(C.klua_now(rt))
  local out = {}
  for i = 0, n - 1 do
    local r = rows[i]
    out[#out + 1] = { id = tonumber(r.id), parent = r.parent ~= 0 and tonumber(r.parent) or nil,
                      state = STATES[r.state], worker = r.worker, where = ffi.string(r.where),
                      age = (now - tonumber(r.started_ns)) / 1e9 }
  end
  table.sort(out, function(a, b) return a.id < b.id end)
  return out
end

local function spawn_places(i)
  return i == 1 and "the task function" or ("argument " .. (i - 1))
end

function M.spawn_into(nursery, level, fn, ...)
  if type(fn) ~= "function" then
    error(string.format("bad argument #1 to 'spawn' (function expected, got %s)", type(fn)), level + 1)
  end
  local ok, snap = pcall(codec.encode, select("#", ...) + 1, spawn_places, fn, ...)
  if not ok then
    if type(snap) == "table" and snap.knhk_refused then error("spawn: " .. snap.message, level + 1) end
    error(snap, 0)
  end
  return nursery:spawn_snapshot(K.PORTABLE, -1, snap, codec.place_of(fn))
end

function M.spawn_local_into(nursery, level, fn, ...)
  if type(fn) ~= "function" then
    error(string.format("bad argument #1 to 'spawn_local' (function expected, got %s)", type(fn)),
      level + 1)
  end
  next_local = next_local + 1
  local key = tostring(next_local)
  locals[key] = { fn = fn, args = pack(...) }
  local ok, h = pcall(nursery.spawn_snapshot, nursery, K.LOCAL, C.klua_worker_index(rt), key,
    codec.place_of(fn))
  if not ok then
    locals[key] = nil
    error(h, 0)
  end
  return h
end

function Nursery:cancel() C.knhk_nursery_cancel(self.n) end

-- The next child to have ended (completion order), waiting if none has yet;
-- nil when none is live and all were taken. Not cancellable by the
-- nursery's own cancellation (the children end anyway).
-- A child taken out of the nursery's ended list, as a handle: the one the
-- owner already has, or (spawned by a task the nursery travelled to) a new one.
local function ended_handle(nursery, ptr)
  local h = make_handle(ptr) -- takes over the nursery's reference
  return nursery.by_id[h.id] or h
end

function Nursery:next_ended(where)
  local n = self.n
  local found
  local function take()
    local ptr = C.klua_nursery_next_ended(n)
    if ptr ~= nil then
      found = ended_handle(self, ptr)
      self.popped = self.popped or {}
      self.popped[#self.popped + 1] = found
      return true
    end
    return C.knhk_nursery_live(n) == 0
  end
  M.wait(where, take, function(ptr)
    local seen = C.knhk_nursery_ends(n)
    if take() then return true end
    return C.knhk_nursery_notify(n, C.klua_task_etask(ptr), seen) == K.EALREADY
  end, true)
  return found
end

-- Waits (not cancellable: the children are being cancelled anyway) until
-- every child has ended.
local function wait_children(n)
  if C.knhk_nursery_live(n) == 0 then return end
  M.wait("nursery", function() return C.knhk_nursery_live(n) == 0 end, function(ptr)
    local seen = C.knhk_nursery_ends(n)
    if C.knhk_nursery_live(n) == 0 then return true end
    local rc = C.knhk_nursery_notify(n, C.klua_task_etask(ptr), seen)
    return rc == K.EALREADY
  end, true)
end
M.wait_children = wait_children

-- Closes a nursery: waits for its children, frees it, and returns the
-- errors of the children that failed, in the order they ended, except
-- those already handled through h:join().
function M.close_nursery(nursery)
  local n = nursery.n
  local tel = telemetry.wait_begin(n)
  -- closed in one step with finding no child live: a child may still
  -- spawn into it until then (its own sibling, say)
  repeat wait_children(n) until C.knhk_nursery_close_if_idle(n) == 0
  telemetry.wait_end(tel)
  local errs = {}
  local function collect(h)
    if outcome_of_task(h.ptr) == K.ERROR and C.klua_task_joined(h.ptr) == 0 then
      local _, e = decode_result(h.ptr)
      errs[#errs + 1] = e
    end
  end
  for _, h in ipairs(nursery.popped or {}) do collect(h) end -- seen by wait_any / join_next
  while true do
    local ptr = C.klua_nursery_next_ended(n)
    if ptr == nil then break end
    collect(ended_handle(nursery, ptr))
  end
  nursery.n = nil
  C.klua_nursery_release(ffi.gc(nursery.kn, nil))
  nursery.kn = nil
  return errs
end

-- The nursery that knhk.spawn uses in this task (made on first use). It
-- supervises: a failing task does not cancel the others; failures nobody
-- joined are raised when the task that spawned them ends.
function M.task_nursery(t)
  local n = t.nursery
  if not n then
    n = M.new_nursery(t, true)
    t.nursery = n
  end
  return n
end

-- -------------------------------------------------------------- stepping

local TASK_PENDING = K.TASK_PENDING
local status_of = { [K.OK] = 0, [K.ERROR] = K.EFAILED, [K.CANCELLED] = K.ECANCELED }

-- A stack overflow leaves the error handler no room to run: xpcall then
-- reports "error in error handling". Say what happened, and where.
local function overflow_error(t, fn)
  local info = debug.getinfo(fn, "S")
  return errors.task_error(string.format("stack overflow in task %d (function at %s:%d)",
    tonumber(C.klua_task_id(t.ptr)), info.short_src, info.linedefined), "", nil)
end

local function body(t, fn, args)
  local res = pack(xpcall(fn, capture, unpack(args, 1, args.n)))
  if not res[1] and res[2] == "error in error handling" then res[2] = overflow_error(t, fn) end
  -- the task ends only after everything it spawned
  local errs = t.nursery and M.close_nursery(t.nursery) or {}
  t.nursery = nil
  local ok = res[1]
  if not ok and not errors.is_signal(res[2]) then table.insert(errs, 1, res[2]) end
  if #errs > 0 then
    ok, res = false, { n = 2, false, errors.group(errs) }
    telemetry.task_error(errs[1])
  end
  local outcome, snap = encode_outcome(ok, res)
  t.status = status_of[outcome]
  C.klua_task_finish(t.ptr, outcome, snap, #snap)
  if t.on_finish then t.on_finish(outcome) end
end

local function start_task(ptr)
  local fn, args
  local start = C.klua_task_start(ptr, result_len)
  if C.klua_task_kind(ptr) == K.LOCAL then
    local key = ffi.string(start, result_len[0])
    local l = locals[key]
    locals[key] = nil
    fn, args = l.fn, l.args
  else
    local vals = pack(codec.decode(start, result_len[0]))
    fn = vals[2]
    args = { n = vals[1] - 1, unpack(vals, 3, vals.n) }
  end
  local t = { ptr = ptr, scopes = {}, nursery = nil }
  t.co = co_create(body)
  t.fn, t.args = fn, args
  return t
end

-- The runtime's own bookkeeping failed while it ran task `lud` (a __gc
-- metamethod that raised in the middle of it, say): the task fails with
-- that message, and whoever waits for it (for the root task: the run)
-- hears of it. Nothing is left waiting.
local function fail_task(lud, t, why)
  local ptr = t and t.ptr or ffi.cast("klua_task_t*", lud)
  if outcome_of_task(ptr) == K.RUNNING then
    local msg = "knhk: task " .. tonumber(C.klua_task_id(ptr)) .. " failed in the runtime's own bookkeeping: "
      .. errors.message(why)
    local ok, snap = pcall(codec.encode, 1, encode_places("error"), errors.task_error(msg, nil, nil))
    if ok then C.klua_task_finish(ptr, K.ERROR, snap, #snap)
    else C.klua_task_finish(ptr, K.ERROR, nil, 0) end
  end
  if t and t.on_finish then
    t.on_finish(K.ERROR)
    t.on_finish = nil
  end
  tasks[lud] = nil
  return K.EFAILED
end

local function step_task(lud)
  local t = tasks[lud]
  local first = false
  if t == nil then
    local ptr = ffi.cast("klua_task_t*", lud)
    local ok, started = pcall(start_task, ptr)
    if not ok then -- its snapshot could not be materialised here
      local msg = "task " .. tonumber(C.klua_task_id(ptr)) .. " could not start: " .. tostring(started)
      local snap = codec.encode(1, encode_places("error"), errors.task_error(msg, nil, nil))
      C.klua_task_finish(ptr, K.ERROR, snap, #snap)
      return K.EFAILED
    end
    t = started
    tasks[lud] = t
    first = true
  end
  local prev = M.current
  M.current = t
  local ok, err
  if first then
    ok, err = co_resume(t.co, t, t.fn, t.args)
    t.fn, t.args = nil, nil
  else
    ok, err = co_resume(t.co)
  end
  M.current = prev
  if co_status(t.co) == "dead" then
    -- user errors are caught in body: this one is the runtime's
    if not ok then return fail_task(lud, t, err) end
    tasks[lud] = nil
    return t.status
  end
  return TASK_PENDING
end

local function step(lud)
  local ok, status = pcall(step_task, lud)
  if ok then return status end
  -- Reporting allocates, and may meet another raising finalizer: each runs
  -- only once, so trying again gets through.
  for _ = 1, 1000 do
    local reported, st = pcall(fail_task, lud, tasks[lud], status)
    if reported then return st end
  end
  return K.EFAILED
end

-- Worker VMs: called by the C side after `require "knhk.runtime"`. The
-- whole knhk module is loaded too: it registers the classes and handle
-- kinds that snapshots refer to.
function M.start_worker()
  require "knhk"
  init_vm()
  core.register(step)
end

-- ------------------------------------------------------------------ run

-- The executor's counters, summed and per worker (knhk.stats).
function M.stats()
  local s = ffi.new("knhk_executor_stats_t")
  local per = ffi.new("knhk_worker_stats_t[?]", 256)
  local n = C.knhk_executor_stats(C.klua_executor(rt), s, per, 256)
  local function tab(w)
    return { spawned = tonumber(w.spawned), completed = tonumber(w.completed),
             failed = tonumber(w.failed), cancelled = tonumber(w.cancelled),
             stolen = tonumber(w.stolen), steal_attempts = tonumber(w.steal_attempts),
             parks = tonumber(w.parks), busy_s = tonumber(w.busy_ns) / 1e9 }
  end
  local out = tab(s.total)
  out.workers = n
  out.live = tonumber(s.live)
  out.per_worker = {}
  for i = 0, n - 1 do out.per_worker[i + 1] = tab(per[i]) end
  return out
end

function M.run(main, workers, signals, name, ...)
  if rt ~= nil then error("knhk.run: already running (knhk.run cannot be nested)", 3) end
  local r = core.new(workers)
  local ok, res = pcall(function(...)
    init_vm()
    core.register(step)
    if signals then
      local rc = C.klua_signals_start(rt)
      if rc ~= 0 then error("knhk.run: cannot watch signals: " .. ffi.string(C.knhk_strerror(rc)), 0) end
    end
    local kn = C.klua_nursery_new(rt, C.klua_root_token(rt), 0, spawn_err)
    if kn == nil then error("knhk.run: " .. ffi.string(C.knhk_strerror(spawn_err[0])), 0) end
    local root = nursery_object(kn, false, false)
    next_local = next_local + 1
    local key = tostring(next_local)
    locals[key] = {
      fn = function(...)
        M.current.on_finish = function() C.knhk_executor_stop(C.klua_executor(rt), 0) end
        return main(...)
      end,
      args = pack(...),
    }
    local h = root:spawn_snapshot(K.LOCAL, 0, key, name or ("main " .. codec.place_of(main)))
    core.enter(r)
    M.last_stats = M.stats() -- every task has ended: the counters are final
    local ended = C.klua_nursery_next_ended(root.n) -- the root task: its nursery's reference
    if ended ~= nil then C.klua_task_release(ended) end
    local res = pack(pcall(M.outcome_of, h.ptr))
    C.klua_nursery_release(ffi.gc(root.kn, nil))
    return res
  end, ...)
  rt = nil
  tasks, locals, wheres = {}, {}, {}
  core.free(r)
  if not ok then error(res, 0) end
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2, res.n)
end

return M
