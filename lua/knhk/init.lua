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
-- $KNHK_LIB names knhk/core.so when package.cpath does not find it.
do
  local lib = os.getenv "KNHK_LIB"
  if lib and lib ~= "" and not package.loaded["knhk.core"] and not package.preload["knhk.core"]
      and not package.searchpath("knhk.core", package.cpath) then
    local open, err = package.loadlib(lib, "luaopen_knhk_core")
    if not open then error("knhk: cannot load $KNHK_LIB (" .. lib .. "): " .. tostring(err), 2) end
    package.preload["knhk.core"] = open
  end
end
local core = require "knhk.core"
local R = require "knhk.runtime"
local codec = require "knhk.codec"
local errors = require "knhk.errors"
local check = require "knhk.check"

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

-- The CPUs online, counted from the kernel's list of them ("0-3,6" is 5),
-- or nil if it cannot be read. The same CPUs /proc/cpuinfo has a
-- "processor" entry for, at a fifth of the cost (~10 us, where the kernel
-- writes out /proc/cpuinfo in full, every flag of every CPU, in ~45).
local function online_cpus()
  local f = io.open "/sys/devices/system/cpu/online"
  if not f then return nil end
  local list = f:read "*l"
  f:close()
  local n = 0
  for range in (list or ""):gmatch "[^,]+" do
    local first, last = range:match "^%s*(%d+)%-(%d+)%s*$"
    if first then
      n = n + tonumber(last) - tonumber(first) + 1
    elseif range:match "^%s*%d+%s*$" then
      n = n + 1
    else
      return nil
    end
  end
  return n > 0 and n or nil
end

-- The workers a runtime gets by default: KNHK_WORKERS, else every CPU.
-- Returns n, or nil and a message naming the bad setting.
function knhk.default_workers()
  local env = os.getenv "KNHK_WORKERS"
  if env and env ~= "" then
    local n = check.count_text(env, 1, 256)
    if not n then
      return nil, "KNHK_WORKERS must be a whole number in 1..256, got '" .. env .. "'"
    end
    return n
  end
  local online = online_cpus()
  if online then return online end
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
-- (once per run: not worth a trace, which costs more to compile than the
-- loop takes to interpret)
jit.off(knhk.default_workers)

-- knhk.run(main [, opts], ...) -> main's results. The calling thread
-- becomes worker 0 and runs `main` as the root task; opts.workers (default:
-- KNHK_WORKERS or the number of CPUs) workers run tasks. opts.signals: the
-- first SIGINT/SIGTERM cancels everything (cleanup runs; tasks that have
-- not reached a checkpoint are named on stderr), a second one ends the
-- process; knhk.signal_received() says which came. opts.name: what
-- reports (:tasks, that of a SIGINT) call the root task. opts.seed: a
-- reproducible schedule: one worker runs the ready tasks in an order drawn
-- from the seed (the same seed, the same interleaving; see knhk.test).
-- opts.clock: "real" (default) or "virtual" (knhk.clock: time starts at 0
-- and jumps to the next timer as soon as every task waits).
function knhk.run(main, opts, ...)
  if R.running() then
    R.raise("knhk.run: already running (knhk.run cannot be nested): this code runs in a task of "
      .. "a run already (knhk-lua runs a script, its -e statements and the REPL's lines as one), "
      .. "so call the function directly, main(...) for knhk.run(main, ...), or spawn it as a task "
      .. "(knhk.spawn, or in a knhk.nursery)")
  end
  check.arg("callable", main, 1, "run")
  opts = check.opts(opts, 2, "run", 2, { "workers", "signals", "name", "seed", "clock" })
  local workers = check.field("whole", opts, "workers", 2, "run", 2, 1, 256)
  local seed = check.field("whole", opts, "seed", 2, "run", 2, 0, 2 ^ 53)
  if seed ~= nil and workers ~= nil and workers ~= 1 then
    check.error("bad argument #2 to 'run' (seed: a seeded schedule runs on 1 worker, got workers = "
      .. workers .. ")", 2)
  end
  if seed ~= nil then workers = 1 end
  if workers == nil then
    local err
    workers, err = knhk.default_workers()
    if not workers then error("knhk.run: " .. err, 2) end
  end
  local name = check.field("string", opts, "name", 2, "run")
  local clock = 0
  if opts.clock ~= nil then
    clock = require("knhk.clock").KINDS[opts.clock]
    if not clock then
      check.error(string.format("bad argument #2 to 'run' (clock: \"real\" or \"virtual\" expected, got %s)",
        type(opts.clock) == "string" and ("'" .. opts.clock .. "'") or type(opts.clock)), 2)
    end
  end
  -- (a refusal in the root task that finds no frame of the program in the
  -- root's coroutine names this call: check.lua's below_the_stack)
  return R.run(main, { workers = workers, signals = opts.signals and true or false, name = name,
                       seed = seed, clock = clock, place = check.caller_place() }, ...)
end

-- The first SIGINT/SIGTERM received by a knhk.run with opts.signals, or nil.
function knhk.signal_received()
  local K = require "knhk.ffi"
  local s = K.C.klua_signals_received()
  return s ~= 0 and s or nil
end

-- ----------------------------------------------------------------- tasks
-- knhk.spawn(fn, ...) -> handle: a portable task. A snapshot of fn (its
-- upvalues and the globals it reads) and of the arguments is taken now;
-- the task runs on any worker and shares nothing else with the caller.
-- knhk.spawn_local(fn, ...) -> handle: a coroutine on this worker's VM,
-- sharing its memory (no snapshot); it never moves to another worker.
-- Both, Task and is_task: knhk.task's (loaded at their first read, below).

-- knhk.current() -> { id, worker } of the running task, or nil.
function knhk.current()
  local id, worker = core.current()
  if not id then return nil end
  return { id = id, worker = worker }
end

-- knhk.tasks() -> the live tasks: { { id, parent, state, worker, age, where, kind [, wait] }, ... }
-- (kind "local" or "portable"; wait, what it waits for, only for a task of
-- the caller's own worker, which holds still while the caller reads it);
-- `ended = true` marks one whose outcome is out but whose worker has not retired it yet
function knhk.tasks()
  local rows = core.tasks()
  local now = core.now()
  for _, r in ipairs(rows) do
    r.age = now and math.max(0, (now - r.started_ns) / 1e9) or 0 -- a coarse spawn time
    r.started_ns = nil
  end
  table.sort(rows, function(a, b) return a.id < b.id end)
  return rows
end

-- --------------------------------------------------- time, scopes, tokens
-- knhk.now (seconds on the runtime's clock: knhk.clock), sleep,
-- checkpoint, cancel_scope, move_on_after, fail_after, token, Token and
-- is_token: knhk.scope's (loaded at their first read, below)

-- ------------------------------------------------------------ nurseries
-- knhk.nursery, Nursery and is_nursery: knhk.nursery's (likewise)

-- ---------------------------------------------- channels, synchronisation
-- knhk.channel, recv_any, semaphore, lock, event, their classes and
-- is_channel, is_event, is_semaphore, is_lock: knhk.sync's (likewise)

-- ------------------------------------------------- map, race, select, exec
-- knhk.map, race, select: knhk.steps's (loaded at their first read)
-- knhk.exec(cmd [, opts]): a child process as a step (lua/knhk/exec.lua)
-- knhk.telemetry: OpenTelemetry spans and metrics (lua/knhk/telemetry.lua)

-- The fields above whose modules load at the first read of one of them:
-- a script (or a worker's VM) that uses none of them does not pay for
-- loading them (exec and telemetry load the FFI's cdef; together ~0.15 ms
-- of a knhk-lua start; task, scope and nursery ~0.07 ms). A field holds,
-- from its first read on, what it would have held from the start.
-- field -> { module, its field (nil: the module itself) }
local on_first_read = {
  spawn = { "knhk.task", "spawn" }, spawn_local = { "knhk.task", "spawn_local" },
  Task = { "knhk.task", "Task" }, is_task = { "knhk.task", "is_task" },
  now = { "knhk.scope", "now" }, sleep = { "knhk.scope", "sleep" },
  checkpoint = { "knhk.scope", "checkpoint" }, cancel_scope = { "knhk.scope", "cancel_scope" },
  move_on_after = { "knhk.scope", "move_on_after" }, fail_after = { "knhk.scope", "fail_after" },
  token = { "knhk.scope", "token" }, Token = { "knhk.scope", "Token" },
  is_token = { "knhk.scope", "is_token" },
  nursery = { "knhk.nursery", "nursery" }, Nursery = { "knhk.nursery", "Nursery" },
  is_nursery = { "knhk.nursery", "is_nursery" },
  channel = { "knhk.sync", "channel" }, recv_any = { "knhk.sync", "recv_any" },
  semaphore = { "knhk.sync", "semaphore" },
  lock = { "knhk.sync", "lock" }, event = { "knhk.sync", "event" },
  Channel = { "knhk.sync", "Channel" }, Semaphore = { "knhk.sync", "Semaphore" },
  Lock = { "knhk.sync", "Lock" }, Event = { "knhk.sync", "Event" },
  is_channel = { "knhk.sync", "is_channel" }, is_event = { "knhk.sync", "is_event" },
  is_semaphore = { "knhk.sync", "is_semaphore" }, is_lock = { "knhk.sync", "is_lock" },
  map = { "knhk.steps", "map" }, race = { "knhk.steps", "race" },
  select = { "knhk.steps", "select" },
  exec = { "knhk.exec", "exec" },
  clock = { "knhk.clock" },
  telemetry = { "knhk.telemetry" },
}
-- A VM can receive a handle (a task, a nursery, a token, a channel, ...)
-- before it loaded the module of its kind: as an argument, an upvalue, a
-- result or a message. Until then the kind's metatables load the module at
-- their first use (it puts in their methods, which they then use), and the
-- codec loads it to send or receive such a handle.
-- { module, the codec's name of the kind, the kind's name in messages,
--   its metatables (core.metatables() names) }
local HANDLE_KINDS = {
  { "knhk.task", "task", "task handle", { "task", "task_detached" } },
  { "knhk.nursery", "nursery", "nursery", { "nursery" } },
  { "knhk.scope", "token", "token", { "token" } },
  { "knhk.sync", "channel", "channel", { "channel" } },
  { "knhk.sync", "semaphore", "semaphore", { "semaphore" } },
  { "knhk.sync", "lock", "lock", { "lock" } },
  { "knhk.sync", "event", "event", { "event" } },
}
local mts = core.metatables()
for _, kind in ipairs(HANDLE_KINDS) do
  local module, name, said, of_kind = kind[1], kind[2], kind[3], kind[4]
  if not package.loaded[module] then
    for _, which in ipairs(of_kind) do
      local mt = mts[which]
      codec.handle_module(name, module, mt)
      check.name_kind(mt, said)
      mt.__index = function(v, k)
        require(module)
        return mt.__index[k]
      end
      mt.__tostring = function(v)
        require(module)
        return mt.__tostring(v)
      end
      if name == "channel" then
        mt.__len = function(v)
          require(module)
          return mt.__len(v)
        end
      end
    end
  end
end
setmetatable(knhk, { __index = function(t, k)
  local where = on_first_read[k]
  if not where then return nil end
  local m = require(where[1])
  local v = m
  if where[2] then v = m[where[2]] end
  rawset(t, k, v)
  return v
end })

-- ---------------------------------------------------------------- stats

-- knhk.stats() -> { workers, spawned, completed, failed, cancelled, stolen,
-- steal_attempts, parks, live, per_worker = { {...}, ... } }
function knhk.stats()
  if not R.running() then R.raise("knhk.stats: no runtime is running (call it inside knhk.run)") end
  return R.stats()
end

-- knhk.last_stats() -> the counters of the last knhk.run, as knhk.stats()
-- gives them, read once every task of it had ended (nil before any run).
function knhk.last_stats() return R.last_stats end

return knhk
