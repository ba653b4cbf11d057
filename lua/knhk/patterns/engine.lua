-- knhk.patterns.engine: runs nets (see knhk.patterns.compile) as cases.
--
-- Where things run. The control of a case (tokens, joins, case variables)
-- lives in the task that called wf:execute, and every node that takes time
-- runs in a runner: a coroutine of that task's VM (spawn_local), so the
-- case's state is plain Lua tables that no other thread touches and that
-- change only between two waits. The work of a task runs in a portable
-- task (knhk.spawn), on any worker, with a snapshot of the case variables.
--
-- Structure. A case is a cancel scope around a nursery of helpers (trigger
-- pumps, the watcher of ctx.token) and the frame of its root net. A frame
-- is one run of a net: a marking (tokens per edge), join states, and a
-- nursery that holds its runners; it ends when its nursery is empty, that
-- is when nothing is left to do (implicit termination, pattern 11). Each
-- runner is a cancel scope of its own, so withdrawing a step is cancelling
-- its scope; cancelling the case is cancelling the case's scope. Nothing
-- outlives execute: every task is in a nursery inside it.
local knhk = require "knhk"
local errors = require "knhk.errors"
local getmetatable = debug.getmetatable -- (why: knhk/check.lua)

local M = {}

-- An activity returns this to say its step is withdrawn (no output).
M.WITHDRAWN = setmetatable({}, { __tostring = function() return "withdrawn" end })

local WITHDRAWN = M.WITHDRAWN
local joins = {}    -- join kind -> try(frame, node) -> nil | "fire" | "skip"
M.joins = joins

local NOOP_TELEMETRY = { event = function() end }
M.NOOP_TELEMETRY = NOOP_TELEMETRY

-- -------------------------------------------------------------- failures

-- The traceback of the program's frames (a condition, a value function):
-- knhk's own frames and the pcalls that run steps say nothing to its author.
local function user_traceback(level)
  local out = {}
  for line in debug.traceback("", level + 1):gmatch("[^\n]+") do
    if not line:find("knhk/", 1, true) and not line:match("^%s*%[C%]: in function '[x]?pcall'")
        and line ~= "stack traceback:" then
      out[#out + 1] = line
    end
  end
  return "stack traceback:\n" .. table.concat(out, "\n")
end

-- An error value with its traceback (errors from portable tasks already
-- carry theirs, as knhk TaskErrors).
local function capture(e)
  if knhk.is_cancelled(e) or knhk.is_task_error(e) or knhk.is_error_group(e) then return e end
  return { message = errors.message(e), -- (never raises: a handler must not)
           traceback = user_traceback(2), value = e }
end
M.capture = capture

local function message_of(e)
  if knhk.is_error_group(e) then
    local out = {}
    for i, sub in ipairs(e.errors) do out[i] = message_of(sub) end
    return table.concat(out, "; ")
  end
  return errors.readable(e) -- a table raised is shown, not "table: 0x..."
end

local function traceback_of(e)
  if knhk.is_error_group(e) then e = e.errors[1] end
  if type(e) == "table" and e.traceback then return e.traceback end
  return nil
end

local function trace(case, node, event)
  local t = case.trace
  t[#t + 1] = { step = node.name, event = event }
end

local function stop(case)
  if case.stopped then return end
  case.stopped = true
  case.scope:cancel()
end
M.stop = stop

-- The end of a step, for ctx.telemetry: every step.start gets exactly one
-- (a step that completed early has had its end; a failure after that is
-- the case's, not a second end). `err`: the message of a failure.
local function telemetry_end(case, node, outcome, run, err)
  if run then
    if run.reported then return end
    run.reported = true
  end
  case.telemetry:event("knhk.workflow.step.end", { case_id = case.id, step = node.name,
    pattern = node.pattern, outcome = outcome, error = err })
end

-- The case fails at `node` (in `run`, if it had started): everything else
-- is cancelled.
function M.fail(case, node, err, run)
  if case.stopped then return end
  trace(case, node, "failed")
  case.failure = { step = node.name, error = message_of(err), traceback = traceback_of(err) }
  telemetry_end(case, node, "failed", run, case.failure.error)
  stop(case)
end

-- ------------------------------------------------------------------ tokens

local function put(frame, eid, n)
  frame.m[eid] = frame.m[eid] + n
  local to = frame.net.edges[eid].to
  if to then frame.pending[to] = true end
end
M.put = put

local function put_skip(frame, eid)
  local e = frame.net.edges[eid]
  if not e.skips then return end
  frame.s[eid] = frame.s[eid] + 1
  if e.to then frame.pending[e.to] = true end
end

local function has_tokens(frame, node)
  local m, s = frame.m, frame.s
  for _, e in ipairs(node.ins) do
    if m[e] > 0 or s[e] > 0 then return true end
  end
  return false
end

-- Case variables: a task returns a table of updates (or nothing); each key
-- replaces the variable of that name, when the task completes.
function M.apply(case, node, updates)
  if updates == nil then return end
  if type(updates) ~= "table" then
    error("step '" .. node.name .. "' returned a " .. type(updates)
      .. " (expected a table of case variables to update, or nothing)", 0)
  end
  local vars = case.vars
  for k, v in pairs(updates) do vars[k] = v end
end

-- The tokens a node puts on its outputs when it completes. run.choice:
-- the branch a deferred choice took.
local function produce(frame, node, run)
  local split = node.split
  local kind = split.kind
  local outs = node.outs
  if kind == "all" then
    for _, e in ipairs(outs) do put(frame, e, 1) end
  elseif kind == "threads" then
    for _, e in ipairs(outs) do put(frame, e, split.n) end
  else
    local edges, vars = frame.net.edges, frame.case.vars
    local chosen = {}
    if kind == "deferred" then
      chosen[run.choice] = true
    else -- "xor" or "or": conditions in branch order; `otherwise` has none
      local any, fallback = false, nil
      for i, eid in ipairs(outs) do
        local cond = edges[eid].cond
        if cond == nil then
          fallback = i
        elseif (kind == "or" or not any) and cond(vars) then
          chosen[i] = true
          any = true
        end
      end
      if not any then
        if not fallback then
          error(node.name .. ": no branch condition held and there is no otherwise branch", 0)
        end
        chosen[fallback] = true
      end
    end
    for i, eid in ipairs(outs) do
      if chosen[i] then put(frame, eid, 1) else put_skip(frame, eid) end
    end
    if node.pair then -- a structured synchronizing merge waits for these
      local js = frame.js[node.pair]
      js.expect[#js.expect + 1] = chosen
    end
  end
  if node.id == frame.net.exit then frame.reached_end = true end
end

-- Completion: updates applied, tokens out. A step may complete early (an
-- MI step whose partial join is met) and go on running; it completes once.
function M.emit(frame, node, run, updates)
  if run.emitted then return end
  run.emitted = true
  frame.live[node.id] = frame.live[node.id] - 1
  if node.apply ~= false then M.apply(frame.case, node, updates) end
  produce(frame, node, run)
end

-- ------------------------------------------------------------------ runs

local runner

local function register(frame, node, run)
  local id = node.id
  local set = frame.runs[id]
  if not set then
    set = {}
    frame.runs[id] = set
  end
  set[run] = true
  frame.busy[id] = frame.busy[id] + 1
  frame.live[id] = frame.live[id] + 1
  local named = node.step.name
  if named then
    local by = frame.case.named[named]
    if not by then
      by = {}
      frame.case.named[named] = by
    end
    by[run] = frame
  end
end

local function unregister(frame, node, run)
  local id = node.id
  -- the case is moving: what follows this run is not settled yet (see
  -- M.moved; the runner counts it back once it is)
  frame.case.moving = frame.case.moving + 1
  frame.runs[id][run] = nil
  frame.busy[id] = frame.busy[id] - 1
  if not run.emitted then frame.live[id] = frame.live[id] - 1 end
  local named = node.step.name
  if named then frame.case.named[named][run] = nil end
end

-- Withdraws a run: cancels its scope (or stops it before it starts).
function M.cancel_run(run)
  run.cancelled = true
  if run.scope then run.scope:cancel() end
end

-- Starts a node whose join fired.
local function start(frame, node, how)
  local case = frame.case
  if how == "skip" then
    trace(case, node, "skipped")
    for _, e in ipairs(node.outs) do put_skip(frame, e) end
    if node.id == frame.net.exit then frame.reached_end = true end
    return
  end
  if node.activity then
    local run = { node = node }
    register(frame, node, run)
    frame.nursery:spawn_local(runner, frame, node, run)
    return
  end
  -- an instant node: a split, a join, a cancellation
  local ok, err = xpcall(function()
    if node.action then node.action(frame, node) end
    produce(frame, node, nil)
  end, capture)
  if not ok then return M.fail(case, node, err) end
  trace(case, node, "completed")
end

local function try(frame, node)
  if node.exclusive and frame.busy[node.id] > 0 then return nil end
  return joins[node.join.kind](frame, node)
end

-- Fires every node that can fire, until none can. Runs between two waits,
-- so nothing else changes the frame meanwhile. Nodes are tried in id order
-- (definition order), so one input gives one run, on any number of workers.
function M.settle(frame)
  local case = frame.case
  local nodes = frame.net.nodes
  while not case.stopped do
    local list = {}
    for id in pairs(frame.pending) do list[#list + 1] = id end
    if #list == 0 then return end
    table.sort(list)
    frame.pending = {}
    local fired = false
    for _, id in ipairs(list) do
      if case.stopped then return end
      local node = nodes[id]
      local ok, how = xpcall(try, capture, frame, node)
      if not ok then return M.fail(case, node, how) end
      if how then
        fired = true
        start(frame, node, how)
      end
      if has_tokens(frame, node) then frame.pending[id] = true end
    end
    if not fired then return end
  end
end

-- Steps that wait on what the rest of the case can still do (a step
-- guarded by a milestone, which is withdrawn once nothing running can lead
-- to the milestone) look again each time a run has ended and what followed
-- it has settled: case.moved is set then. The first such waiter makes the
-- event; a case without one pays a nil check per run. While case.moving is
-- not 0, some run has ended but what follows it is not started yet (its
-- runner is between two steps of its bookkeeping): nothing can be
-- concluded from the runs then.
function M.moved(case)
  local ev = case.moved
  if ev then
    case.moved = knhk.event()
    ev:set()
  end
end

local function run_node(frame, node, run)
  local case = frame.case
  if run.cancelled then -- withdrawn before it began
    unregister(frame, node, run)
    trace(case, node, "withdrawn")
    telemetry_end(case, node, "withdrawn")
    return M.settle(frame)
  end
  case.telemetry:event("knhk.workflow.step.start", { case_id = case.id, step = node.name,
    pattern = node.pattern })
  local ok, res
  local sok, scope = pcall(knhk.cancel_scope, function(sc)
    run.scope = sc
    ok, res = xpcall(node.activity, capture, frame, node, run)
    if not ok and knhk.is_cancelled(res) then error(res, 0) end
  end)
  run.scope = nil
  if not sok then -- the case (or its caller) is being cancelled: this step with it
    if knhk.is_cancelled(scope) then
      trace(case, node, "cancelled")
      -- (protected: the Cancelled goes on unwinding whatever the handle does)
      pcall(telemetry_end, case, node, "cancelled", run)
    else
      pcall(telemetry_end, case, node, "failed", run, message_of(scope))
    end
    error(scope, 0)
  end
  unregister(frame, node, run)
  if case.stopped then -- it ended as its case was being stopped: what it did is dropped
    if not ok and not knhk.is_cancelled(res) then
      telemetry_end(case, node, "failed", run, message_of(res))
    else
      telemetry_end(case, node, "cancelled", run)
    end
    return
  end
  if scope.cancelled_caught or (ok and res == WITHDRAWN) then
    trace(case, node, "withdrawn")
    telemetry_end(case, node, "withdrawn", run)
    return M.settle(frame)
  end
  if not ok then return M.fail(case, node, res, run) end
  if run.emitted then -- it completed early and has now ended too
    trace(case, node, "ended")
    return M.settle(frame)
  end
  local eok, err = xpcall(M.emit, capture, frame, node, run, res)
  if not eok then return M.fail(case, node, err, run) end
  trace(case, node, "completed")
  telemetry_end(case, node, "completed", run)
  M.settle(frame)
end

runner = function(frame, node, run)
  local case = frame.case
  run_node(frame, node, run) -- (raises when the case is cancelled: then nothing waits any more)
  -- it unregistered the run, and what followed has settled
  case.moving = case.moving - 1
  M.moved(case)
end

-- Completes a running step early (its outputs now, its run goes on): for
-- joins of multiple instances that continue before every instance ended.
function M.complete_early(frame, node, run, updates)
  if run.emitted then return end
  M.emit(frame, node, run, updates)
  trace(frame.case, node, "completed")
  telemetry_end(frame.case, node, "completed", run)
  M.settle(frame)
end

-- Runs fn(...) holding the frame's locks (interleaved routing: one task
-- of the group at a time, on whatever worker it runs).
local function with_locks(locks, i, fn, ...)
  if i > #locks then return fn(...) end
  return locks[i]:with(with_locks, locks, i + 1, fn, ...)
end

function M.with_locks(frame, fn, ...)
  local locks = frame.locks
  if #locks == 0 then return fn(...) end
  return with_locks(locks, 1, fn, ...)
end

-- ---------------------------------------------------------------- frames

local EMPTY = {}

-- Whether a frame was withdrawn: the composite step running it, or one
-- around that, was cancelled.
local function withdrawn(frame)
  while frame do
    if frame.run and frame.run.cancelled then return true end
    frame = frame.parent
  end
  return false
end

-- Runs `net` to its end inside `case`: returns the frame once nothing in
-- it is left to do. parent, run: the frame and run of the composite step
-- that runs it (nil for a case's root). locks: held around every task of
-- the frame (for interleaving); inherited from the parent frame.
function M.run_frame(case, net, parent, run, locks)
  local nedges, nnodes = #net.edges, #net.nodes
  local m, s = {}, {}
  for i = 1, nedges do m[i], s[i] = 0, 0 end
  local busy, live, js = {}, {}, {}
  for i = 1, nnodes do
    busy[i], live[i] = 0, 0
    local j = net.nodes[i].join
    if j.kind == "sync_struct" then js[i] = { expect = {} }
    elseif j.kind == "partial" then js[i] = { seen = {}, nseen = 0, nreal = 0, fired = false } end
  end
  local frame = { case = case, net = net, m = m, s = s, js = js, runs = {}, busy = busy,
                  live = live, pending = {}, parent = parent, run = run, reached_end = false,
                  locks = locks or (parent and parent.locks) or EMPTY }
  case.frames[frame] = true
  local ok, err = pcall(knhk.nursery, function(n)
    frame.nursery = n
    put(frame, net.entry, 1)
    M.settle(frame)
  end)
  case.frames[frame] = nil
  if not ok then error(err, 0) end
  -- tokens left when nothing runs any more: a join that can no longer fire
  if not case.stopped and not withdrawn(frame) then
    for _, node in ipairs(net.nodes) do
      if has_tokens(frame, node) then case.unfinished[#case.unfinished + 1] = node.name end
    end
  end
  return frame
end

-- Whether a frame run by a composite step reached the end of its net (a
-- net whose branches end unjoined reaches its end when it ends at all).
function M.completed(frame)
  return frame.reached_end or frame.net.exit == nil
end

-- ----------------------------------------------------------------- cases

local case_ids = 0

local function copy(v, seen)
  if type(v) ~= "table" or getmetatable(v) ~= nil then return v end
  seen = seen or {}
  if seen[v] then return seen[v] end
  local t = {}
  seen[v] = t
  for k, x in pairs(v) do t[copy(k, seen)] = copy(x, seen) end
  return t
end

local function watch_token(case, token)
  token:wait()
  case.external_cancel = true
  stop(case)
end

-- wf:execute(ctx) -> result. See README.md ("The pattern-executor
-- interface").
function M.execute(wf, ctx)
  local case_id = ctx.case_id
  if case_id == nil then
    case_ids = case_ids + 1
    case_id = "case-" .. case_ids
  end
  local case = {
    id = case_id, wf = wf, vars = copy(ctx.vars or {}), trace = {}, named = {}, frames = {},
    telemetry = require("knhk.telemetry").pattern_handle(ctx.telemetry), signals = ctx.signals or {}, triggers = {},
    milestones = {}, locks = {}, stopped = false, unfinished = {}, moving = 0,
  }
  case.telemetry:event("knhk.workflow.case.start", { case_id = case_id, workflow = wf.name })
  local scope = knhk.cancel_scope(function(sc)
    case.scope = sc
    knhk.nursery(function(helpers)
      case.helpers = helpers
      if ctx.token then helpers:spawn_local(watch_token, case, ctx.token) end
      -- transient triggers fed from outside listen from the start
      require("knhk.patterns.triggers").start(case, wf.triggers)
      M.run_frame(case, wf.net, nil, nil, nil)
      helpers:cancel() -- the case is over: its watchers end
    end)
  end)
  -- the caller's own scope cancelled: the case ended because of it, and
  -- its Cancelled goes on unwinding (a checkpoint raises it)
  if not case.stopped then knhk.checkpoint() end
  local result = { case_id = case_id, vars = case.vars, trace = case.trace }
  if case.failure then
    result.status = "failed"
    result.step, result.error, result.traceback = case.failure.step, case.failure.error,
      case.failure.traceback
  elseif case.cancel_step then
    result.status = "cancelled"
    result.ended_by = case.cancel_step
  elseif case.end_step then
    result.status = "completed"
    result.ended_by = case.end_step
  elseif case.external_cancel or scope.cancelled_caught then
    result.status = "cancelled"
  elseif #case.unfinished > 0 then
    -- nothing runs any more, yet tokens wait at a join that can never fire:
    -- implicit termination (11) excludes a deadlocked case, and the steps
    -- after that join never ran, so this is not "completed"
    result.status = "deadlocked"
    result.unfinished = case.unfinished
  else
    result.status = "completed"
  end
  case.telemetry:event("knhk.workflow.case.end", { case_id = case_id, status = result.status,
    error = result.error })
  return result
end

-- Withdraws the branches of a block (nodes lo..hi of the frame's net) and
-- the tokens waiting at its join: what a cancelling join does once it
-- fired (patterns 29, 32).
function M.cancel_between(frame, lo, hi, join_id)
  for id = lo, hi do
    local set = frame.runs[id]
    if set then
      for run in pairs(set) do M.cancel_run(run) end
    end
  end
  local m, s = frame.m, frame.s
  for _, e in ipairs(frame.net.edges) do
    local to = e.to
    if to and ((to >= lo and to <= hi) or to == join_id) then
      m[e.id], s[e.id] = 0, 0
    end
  end
end

-- Withdraws every run of the step named `name`, in every frame of the
-- case, and the tokens waiting to start it (patterns 19, 25, 26).
-- Returns how many runs were cancelled. `here` is the frame that asks (it
-- is settling already); other frames that lost tokens settle again, as a
-- general synchronizing merge there may now fire.
function M.cancel_named(case, name, here)
  local n = 0
  local by = case.named[name]
  if by then
    for run in pairs(by) do
      M.cancel_run(run)
      n = n + 1
    end
  end
  for frame in pairs(case.frames) do
    local cleared = false
    for _, node in ipairs(frame.net.nodes) do
      if node.step.name == name then
        for _, e in ipairs(node.ins) do
          if frame.m[e] > 0 or frame.s[e] > 0 then
            frame.m[e], frame.s[e] = 0, 0
            cleared = true
          end
        end
      end
    end
    if cleared and frame ~= here then M.settle(frame) end
  end
  return n
end

return M
