-- knhk.task: spawning tasks, and what a task handle does (h:join(),
-- h:cancel(), h:done()). A handle is a userdata the C side made; it owns a
-- reference to the task's record, and travels to other tasks.
local core = require "knhk.core"
local codec = require "knhk.codec"
local errors = require "knhk.errors"
local check = require "knhk.check"
local R = require "knhk.runtime"
local getmetatable = debug.getmetatable -- (why: knhk/check.lua)

local select = select
local DONE, CANCELLED, SLOW, NOT_HANDLE = R.DONE, R.CANCELLED, R.SLOW, R.NOT_HANDLE
local DONE0, DONE1 = R.DONE0, R.DONE1

local M = {}

local mts = core.metatables()
local Task = check.no_missing_methods({}, "task handle")
M.Task = Task
-- A task handle has one of two metatables: task_mt while it holds its
-- task's record, detached_mt (the same, without a finalizer) once a join
-- kept the result in the handle and let the record go: the collector then
-- has no finalizer to call for it (the C side swaps them).
local task_mt, detached_mt = mts.task, mts.task_detached
local tasks_only = { [task_mt] = true, [detached_mt] = true }
local bad_self = check.bad_self
local function export(h) return select(2, core.export(h)) end
local function import(n, copy) return core.import(1, n, copy) end
for mt in pairs(tasks_only) do
  mt.__index = Task
  check.name_kind(mt, "task handle")
  mt.__tostring = function(h) return "knhk.task#" .. string.format("%d", core.task_id(h)) end
  codec.register_handle("task", mt, export, import)
end

function M.is_task(v) return tasks_only[getmetatable(v)] == true end

-- ------------------------------------------------------------- spawning

local function spawn_places(i)
  return i == 1 and "the task function" or ("argument " .. (i - 1))
end

-- A start the inline form cannot hold (globals, tables, ...): the codec's.
-- A refusal is raised as "<what>: <place> is a ...", places named by
-- places(i) (1: the function, then its arguments).
local function spawn_blob_as(nursery, what, places, fn, ...)
  local ok, snap, handles = pcall(codec.encode, select("#", ...) + 1, places, fn, ...)
  if not ok then
    if type(snap) == "table" and snap.knhk_refused then R.raise(what .. ": " .. snap.message) end
    error(snap, 0)
  end
  return core.spawn_blob(nursery, snap, codec.place_of(fn), handles)
end

local function spawn_blob(nursery, fn, ...) return spawn_blob_as(nursery, "spawn", spawn_places, fn, ...) end
M.spawn_blob = spawn_blob

local core_spawn, core_nursery_spawn = core.spawn, core.nursery_spawn

-- knhk.spawn(fn, ...) -> handle
function M.spawn(fn, ...)
  local h = core_spawn(fn, ...)
  if h == SLOW then return spawn_blob(nil, fn, ...) end
  return h
end

-- n:spawn(fn, ...) -> handle
function M.spawn_into(nursery, fn, ...)
  local h = core_nursery_spawn(nursery, fn, ...)
  if h == SLOW then return spawn_blob(nursery, fn, ...) end
  return h
end

-- n:spawn made by a step on its caller's behalf (knhk.map): a refusal
-- names the step and the caller's places, not spawn's arguments.
function M.spawn_into_as(nursery, what, places, fn, ...)
  local h = core_nursery_spawn(nursery, fn, ...)
  if h == SLOW then return spawn_blob_as(nursery, what, places, fn, ...) end
  return h
end

M.spawn_local = core.spawn_local

-- --------------------------------------------------------------- joining

local core_join_try, core_outcome = core.join_try, core.outcome

local join_slow

-- h:join() -> the task's results, once it ended; raises its error (a
-- TaskError; for a task that was cancelled, one whose .value is its
-- Cancelled). A checkpoint while it waits.
function Task:join()
  -- One result or none, the commonest ends, are returned without a vararg
  -- call (which costs a join more than the C call): join_try says DONE1,
  -- DONE0; DONE, alone, when there are more.
  local st, a, b = core_join_try(self) -- (which checks self)
  if st == DONE1 then return a end
  if st == DONE0 then return end
  return join_slow(self, st, a, b)
end

join_slow = function(h, st, a, b)
  -- the join waited (join_try suspended the task): look again
  if st == nil then return Task.join(h) end
  -- more than one result (join_try said DONE alone): all of them, from the
  -- record (the join is made: checkpoint passed, nothing to wait for)
  if st == DONE then return select(2, core_outcome(h)) end
  if st == CANCELLED then R.raise_cancelled(a) end
  if st == NOT_HANDLE then bad_self("join", "task handle", h) end
  -- it ended otherwise than with inline results
  if st == R.BLOB and a == R.OK then return select(2, codec.decode_copies(b)) end
  if a == R.OK then return end
  error(R.task_failure(h, a, st, b), 0)
end

-- h:cancel(): cancels the task alone (its scopes and its children too).
Task.cancel = check.self_method(tasks_only, "task handle", "cancel", core.task_cancel)

-- h:done() -> whether the task has ended.
Task.done = check.self_method(tasks_only, "task handle", "done", core.task_done)

-- h:id() -> the task's id, as knhk.tasks() and knhk.current() give it.
Task.id = check.self_method(tasks_only, "task handle", "id", core.task_id)

return M
