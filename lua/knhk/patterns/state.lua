-- knhk.patterns.state: state-based patterns (16-18, 39, 40).
--
--   P.deferred_choice{ {on = source, run = s [, into = "var"]}, ... }
--                                        16  the first source to fire picks the branch
--   P.interleaved_parallel{ P.sequence{ a, b }, c }
--                                        17  each task once, partial order kept, one at a time
--   P.milestone(name, s)                 18  the milestone holds while s runs
--   P.when_milestone(name, s)            18  s starts only while the milestone holds;
--                                            withdrawn once it cannot hold again
--   P.critical_section(name, s [, { lock = knhk.lock() }])
--                                        39  sections of one name never overlap
--   P.interleaved{ a, b, c }             40  each task once, any order, one at a time
--
-- Mutual exclusion (17, 39, 40) holds across workers: the lock is a knhk
-- lock, held by the case while the task runs, wherever it runs. A
-- critical section given its own lock also excludes other cases.
local knhk = require "knhk"
local S = require "knhk.patterns.step"
local engine = require "knhk.patterns.engine"
local triggers = require "knhk.patterns.triggers"

local M = {}
local WITHDRAWN = engine.WITHDRAWN

-- -------------------------------------------------------- deferred choice

local function wait_branch(case, on, i, none_open)
  local v, took = triggers.wait(case, on, none_open)
  return i, v, took
end

local function run_deferred(frame, node, run)
  local case = frame.case
  local branches = node.step.branches
  local hs = {}
  -- A branch whose channel is closed and empty never fires; when every
  -- branch is such a one, none ever will: the step fails, as a lone
  -- P.wait_for on it does, instead of waiting for ever.
  local open = #branches
  local function none_open()
    open = open - 1
    if open == 0 then
      error("deferred_choice: every branch waits for a channel that is closed and empty, so "
        .. "none can ever fire (expected at least one open channel, or one that still holds a "
        .. "message)", 0)
    end
  end
  local i, v = knhk.nursery(function(n)
    for k, br in ipairs(branches) do hs[k] = n:spawn_local(wait_branch, case, br.on, k, none_open) end
    return n:wait_any()
  end)
  -- a branch that lost but had already taken a message gives it back
  for k, h in ipairs(hs) do
    if k ~= i and h:done() then
      local ok, _, lv, took = pcall(h.join, h)
      if ok and took then triggers.give_back(case, branches[k].on, lv) end
    end
  end
  run.choice = i
  local into = branches[i].into
  if into then return { [into] = v } end
end

S.define("deferred_choice", {
  role = "split",
  conditional = true,
  split_node = function(ctx, step, src)
    for _, br in ipairs(step.branches) do
      if S.is_step(br.on) and br.on.kind == "trigger" then triggers.declare(ctx, step, br.on, true) end
    end
    local node = ctx:node(step, { activity = run_deferred, split = { kind = "deferred" },
                                  label = "deferred choice", shape = "split" })
    ctx:link(src, node.id)
    return node
  end,
})

-- P.deferred_choice{ {on = source, run = step [, into = "var"]}, ... }: 16.
function M.deferred_choice(t)
  local F = "deferred_choice"
  if type(t) ~= "table" or S.is_step(t) then S.argerror(F, 1, "table of branches expected, got " .. S.describe(t)) end
  local basic = require "knhk.patterns.basic"
  local branches = {}
  for i = 1, table.maxn(t) do
    local b = t[i]
    if type(b) ~= "table" or S.is_step(b) then
      S.argerror(F, 1, "branch " .. i .. " must be a table { on = source, run = step }, got " .. S.describe(b))
    end
    S.check_fields(b, F, 1, { "on", "run", "label", "into", "to" }, 2, "branch " .. i)
    triggers.check_source(b.on, F, 1, "branch " .. i .. ": 'on'", 2)
    if b.into ~= nil and type(b.into) ~= "string" then
      S.argerror(F, 1, "branch " .. i .. ": into must name a case variable, got " .. S.describe(b.into))
    end
    local body = basic.branch_body(F, b, i, 2)
    body.on, body.into = b.on, b.into
    body.label = b.label or select(2, triggers.source_pattern(b.on))
    branches[i] = body
  end
  if #branches < 2 then S.argerror(F, 1, "a deferred choice needs at least 2 branches") end
  S.check_fields(t, F, 1, { "name" }, 2, nil, true)
  S.check_name(t.name, F, 1, 2, true)
  return S.new("deferred_choice", 16, { branches = branches, name = t.name })
end

-- ---------------------------------------------------------- interleaving

-- Every branch runs in a frame of its own; all of them share one lock that
-- each task holds while it runs, so the tasks interleave.
local function run_interleaved(frame, node, run)
  local locks = {}
  for i, l in ipairs(frame.locks) do locks[i] = l end
  locks[#locks + 1] = knhk.lock()
  local frames = {}
  knhk.nursery(function(n)
    for k, sub in ipairs(node.subnets) do
      n:spawn_local(function() frames[k] = engine.run_frame(frame.case, sub, frame, run, locks) end)
    end
  end)
  for k in ipairs(node.subnets) do
    if not (frames[k] and engine.completed(frames[k])) then return WITHDRAWN end
  end
end

S.define("interleaved", {
  role = "node",
  compile = function(ctx, step, src)
    return ctx:composite(step, src, step.branches, { activity = run_interleaved,
      label = step.pattern == 40 and "interleaved" or "interleaved parallel" })
  end,
})

local function interleaved_ctor(fname, pattern)
  return function(t)
    if type(t) ~= "table" or S.is_step(t) then S.argerror(fname, 1, "table of steps expected, got " .. S.describe(t)) end
    local branches = {}
    for i = 1, table.maxn(t) do
      local s = S.as_step(t[i], fname, 1, "entry " .. i, 2)
      if pattern == 40 and s.kind ~= "task" then
        S.argerror(fname, 1, "entry " .. i .. " is a " .. s.kind .. " step; interleaved routing (40) "
          .. "takes tasks (for ordered groups use interleaved_parallel (17))")
      end
      branches[i] = s
    end
    if #branches < 1 then S.argerror(fname, 1, "no entries") end
    S.check_name(t.name, fname, 1, 2, true)
    return S.new("interleaved", pattern, { branches = branches, name = t.name })
  end
end

-- P.interleaved_parallel{ ... }: 17. P.interleaved{ ... }: 40.
M.interleaved_parallel = interleaved_ctor("interleaved_parallel", 17)
M.interleaved = interleaved_ctor("interleaved", 40)

-- ------------------------------------------------------- critical section

local function run_critical(frame, node, run)
  local case = frame.case
  local step = node.step
  local lock = step.lock
  if not lock then
    lock = case.locks[step.section]
    if not lock then
      lock = knhk.lock()
      case.locks[step.section] = lock
    end
  end
  return lock:with(function()
    local f = engine.run_frame(case, node.subnets[1], frame, run)
    if not engine.completed(f) then return WITHDRAWN end
  end)
end

S.define("critical_section", {
  role = "node",
  compile = function(ctx, step, src)
    return ctx:composite(step, src, { step.body }, { activity = run_critical,
      label = "critical section '" .. step.section .. "'", named = false })
  end,
})

-- P.critical_section(name, step [, { lock = knhk.lock() }]): 39.
function M.critical_section(name, body, t)
  S.check_name(name, "critical_section", 1, 2)
  body = S.as_step(body, "critical_section", 2, "the section", 2)
  if t ~= nil and type(t) ~= "table" then S.argerror("critical_section", 3, "table expected, got " .. type(t)) end
  if t then S.check_fields(t, "critical_section", 3, { "lock" }, 2) end
  local lock = t and t.lock
  if lock ~= nil and not knhk.is_lock(lock) then
    S.argerror("critical_section", 3, "lock must be a knhk.lock(), got " .. S.describe(lock))
  end
  return S.new("critical_section", 39, { section = name, body = body, lock = lock })
end

-- -------------------------------------------------------------- milestone

-- A milestone's state in a case: `active`, the runs of its steps that
-- hold it now (it holds while active > 0). Nothing is kept of its past:
-- whether a guarded step may still run is asked of what the case can do
-- from now on (reachable, below), so a milestone left in one round of a
-- loop holds again in the next.
local function milestone_state(case, name)
  local m = case.milestones[name]
  if not m then
    m = { active = 0 }
    case.milestones[name] = m
  end
  return m
end

local function run_milestone(frame, node, run)
  local case = frame.case
  local m = milestone_state(case, node.step.milestone)
  m.active = m.active + 1
  engine.moved(case)
  local ok, f = pcall(engine.run_frame, case, node.subnets[1], frame, run)
  m.active = m.active - 1
  engine.moved(case)
  if not ok then error(f, 0) end
  if not engine.completed(f) then return WITHDRAWN end
end

local NONE = {}

-- Whether milestone `name` can still be reached while the guarded run
-- asking, in `frame`, waits: some run of the case that can go on may lead
-- to it (node.milestones: what a node can lead to, see
-- knhk.patterns.compile). Tokens are not counted: between two waits every
-- token that can move has moved, so those left wait at a join for what a
-- run will bring. A run waiting for a milestone goes on only if its
-- milestone can be reached or holds: a least fixpoint, so guarded steps
-- that wait for each other's milestones are all found stuck.
--
-- The composite steps around the asking run (the loop, graph, region or
-- call whose frame holds it, and those around that one) cannot get past
-- that frame while it waits, since a frame ends only once every run in it
-- has: they count only through the runs inside them, not through what
-- follows their frame (a loop's next round, the steps after the loop). So
-- a loop whose next round would reach the milestone keeps a guarded step
-- on a parallel branch waiting, while one that holds the guarded step in
-- its own round does not: that step ends (withdrawn) before the loop can
-- come round again.
local function reachable(case, name, frame)
  local around = {} -- the runs of the composite steps around the asking one
  local up = frame
  while up do
    if up.run then around[up.run] = true end
    up = up.parent
  end
  local can, waiting = {}, {}
  local function add(node)
    for n in pairs(node.milestones or NONE) do can[n] = true end
  end
  for f in pairs(case.frames) do
    for _, set in pairs(f.runs) do
      for run in pairs(set) do
        if run.awaits then waiting[#waiting + 1] = run
        elseif not around[run] then add(run.node) end
      end
    end
  end
  local grew = true
  while grew and not can[name] do
    grew = false
    for i, run in ipairs(waiting) do
      if run and (can[run.awaits] or milestone_state(case, run.awaits).active > 0) then
        add(run.node)
        waiting[i] = false
        grew = true
      end
    end
  end
  return can[name] == true
end

-- WCP-18: the guarded step is enabled only while the case is in the
-- milestone's state. While the milestone does not hold, the step waits as
-- long as the case can still get there; once it cannot (the milestone's
-- branch was not taken, it was skipped or withdrawn, every run that could
-- lead to it has ended, or it was passed and nothing can come back to it),
-- the step can never be enabled: it is withdrawn, and the case goes on
-- without it.
local function run_when_milestone(frame, node, run)
  local case = frame.case
  local name = node.step.milestone
  local m = milestone_state(case, name)
  if m.active == 0 then
    run.awaits = name
    case.moved = case.moved or knhk.event()
    engine.moved(case) -- this run no longer goes on by itself: other guarded steps look again
    while m.active == 0 do
      if case.moving == 0 and not reachable(case, name, frame) then
        run.awaits = nil
        return WITHDRAWN
      end
      case.moved:wait()
    end
    run.awaits = nil
  end
  local f = engine.run_frame(case, node.subnets[1], frame, run)
  if not engine.completed(f) then return WITHDRAWN end
end

S.define("milestone", {
  role = "node",
  compile = function(ctx, step, src)
    ctx.milestones[step.milestone] = step
    ctx:milestone_defined(step)
    return ctx:composite(step, src, { step.body }, { activity = run_milestone,
      label = "milestone '" .. step.milestone .. "'", named = false })
  end,
})

S.define("when_milestone", {
  role = "node",
  compile = function(ctx, step, src)
    ctx.milestone_uses[step.milestone] = ctx.milestone_uses[step.milestone] or step
    local use = ctx:milestone_guard(step)
    local id = ctx:composite(step, src, { step.body }, { activity = run_when_milestone,
      label = "when milestone '" .. step.milestone .. "'", named = false }, true)
    ctx:milestones_after(use, use.from) -- one inside its own step holds only once it has started
    return id
  end,
})

-- P.milestone(name, step): 18, the state: it holds while `step` runs.
function M.milestone(name, body)
  S.check_name(name, "milestone", 1, 2)
  body = S.as_step(body, "milestone", 2, "the step that holds the milestone", 2)
  return S.new("milestone", 18, { milestone = name, body = body })
end

-- P.when_milestone(name, step): 18, the guarded step: it waits until the
-- milestone holds, runs while it does, and is withdrawn once the
-- milestone can no longer be reached (again: a loop may come back to it).
function M.when_milestone(name, body)
  S.check_name(name, "when_milestone", 1, 2)
  body = S.as_step(body, "when_milestone", 2, "the guarded step", 2)
  return S.new("when_milestone", 18, { milestone = name, body = body })
end

return M
