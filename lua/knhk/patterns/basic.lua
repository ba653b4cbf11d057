-- knhk.patterns.basic: basic control-flow patterns (1-5), and tasks.
--
--   P.task(name, fn)                 a task: fn(vars) runs in a portable task
--   P.sequence{ a, b, ... }          1  one after the other
--   P.parallel_split{ a, b, ... }    2  branches that run concurrently
--   P.synchronization()              3  waits for every branch (AND-join)
--   P.exclusive_choice{ {when = c, run = s}, ..., otherwise = s }
--                                    4  the first branch whose condition holds
--   P.simple_merge()                 5  whichever branch arrives continues
--   P.skip()                         an empty step (an empty branch)
local knhk = require "knhk"
local check = require "knhk.check"
local S = require "knhk.patterns.step"
local engine = require "knhk.patterns.engine"

local M = {}

-- ------------------------------------------------------------------ tasks

local function spawn_and_join(fn, case, step)
  return knhk.nursery(function(n)
    local ok, h = pcall(n.spawn, n, fn, case.vars)
    if not ok then S.raise_spawn_refused(step, h) end
    return h:join()
  end)
end

-- A task: its function runs as a portable task with a snapshot of the case
-- variables taken when it starts; what it returns updates them.
local function run_task(frame, node)
  return engine.with_locks(frame, spawn_and_join, node.fn, frame.case, node.step)
end

S.define("task", {
  role = "task",
  run = run_task,
  make = function(name, fn, level)
    return S.new("task", nil, { name = name or S.function_name(fn), fn = fn })
  end,
  compile = function(ctx, step, src)
    local node = ctx:node(step, { activity = run_task, fn = step.fn, shape = "task" })
    ctx:link(src, node.id)
    return node.id
  end,
})

-- P.task(name, fn), P.task(fn) or P.task{ name = , run = }; fn may be a
-- callable object (then P.task(obj) is not the table form).
function M.task(a, b)
  local name, fn = a, b
  if check.callable(a) then name, fn = nil, a
  elseif type(a) == "table" and not S.is_step(a) then
    S.check_fields(a, "task", 1, { "name", "run" }, 2)
    name, fn = a.name, a.run
  end
  S.check_name(name, "task", 1, 2, true)
  if not check.callable(fn) then
    S.argerror("task", type(a) == "table" and 1 or 2, "function or callable object expected for "
      .. "the task, got " .. S.describe(fn))
  end
  S.check_travels(fn, "task", type(a) == "table" and 1 or 2, "the task function", 2)
  return S.kinds.task.make(name, fn, 2)
end

-- P.skip(): does nothing (an empty branch of a choice).
S.define("skip", {
  role = "node",
  compile = function(ctx, step, src)
    local node = ctx:node(step, { label = "skip", shape = "point" })
    ctx:link(src, node.id)
    return node.id
  end,
})

function M.skip() return S.new("skip", nil, {}) end

-- -------------------------------------------------------------- sequence

S.define("sequence", {
  role = "node",
  compile = function(ctx, step, src) return ctx:chain(step.steps, src, step) end,
})

-- P.sequence{ a, b, ... [, name = ] }: 1. Functions become tasks.
function M.sequence(t)
  if type(t) ~= "table" or S.is_step(t) then
    S.argerror("sequence", 1, "table of steps expected, got " .. S.describe(t))
  end
  if #t == 0 then S.argerror("sequence", 1, "a sequence needs at least one step") end
  S.check_fields(t, "sequence", 1, { "name" }, 2, nil, true)
  local steps = {}
  for i = 1, table.maxn(t) do
    if t[i] == nil then S.argerror("sequence", 1, "step " .. i .. " is nil") end
    steps[i] = S.as_step(t[i], "sequence", 1, "step " .. i, 2)
  end
  S.check_name(t.name, "sequence", 1, 2, true)
  return S.new("sequence", 1, { steps = steps, name = t.name })
end

-- --------------------------------------------------------------- splits

-- Branch entries of choices: { when = cond, run = step, label = } (or
-- `to = "node"` inside P.graph); `otherwise` adds a last branch taken when
-- no condition holds.
local BRANCH_FIELDS = { "when", "run", "label", "to" }
function M.choice_branches(fname, t, level, allow_otherwise)
  level = level + 1
  if type(t) ~= "table" or S.is_step(t) then
    S.argerror(fname, 1, "table of branches expected, got " .. S.describe(t), level)
  end
  S.check_fields(t, fname, 1, allow_otherwise and { "otherwise", "name" } or { "name" }, level, nil, true)
  local branches = {}
  for i = 1, table.maxn(t) do
    local b = t[i]
    if type(b) ~= "table" or S.is_step(b) then
      S.argerror(fname, 1, "branch " .. i .. " must be a table { when = condition, run = step }, got "
        .. S.describe(b), level)
    end
    S.check_fields(b, fname, 1, BRANCH_FIELDS, level, "branch " .. i)
    local when, label = S.as_condition(b.when, fname, 1, "branch " .. i .. ": 'when'", level)
    branches[i] = M.branch_body(fname, b, i, level)
    branches[i].when, branches[i].label = when, b.label or label or ("branch " .. i)
  end
  if t.otherwise ~= nil then
    if not allow_otherwise then S.argerror(fname, 1, "'otherwise' is not allowed here", level) end
    local i = #branches + 1
    branches[i] = M.branch_body(fname, { run = t.otherwise, to = type(t.otherwise) == "string"
      and t.otherwise or nil }, i, level)
    branches[i].label = "otherwise"
  end
  if #branches == 0 then S.argerror(fname, 1, "no branches", level) end
  return branches
end

-- The body of branch i: `run` (a step or function), or `to` (a graph node).
function M.branch_body(fname, b, i, level)
  level = level + 1
  if b.to ~= nil then
    if type(b.to) ~= "string" then
      S.argerror(fname, 1, "branch " .. i .. ": 'to' must name a graph node, got " .. S.describe(b.to), level)
    end
    return { to = b.to }
  end
  if b.run == nil then
    S.argerror(fname, 1, "branch " .. i .. " has no 'run' (a function or a step; P.skip() for "
      .. "nothing)", level)
  end
  return { step = S.as_step(b.run, fname, 1, "branch " .. i .. ": 'run'", level) }
end

-- A split node: instant, puts tokens on the branches its kind chooses.
local SPLIT_LABELS = { all = "AND-split", xor = "XOR-split", ["or"] = "OR-split" }

local function split_node(split_kind)
  return function(ctx, step, src)
    local node = ctx:node(step, { split = { kind = split_kind }, label = SPLIT_LABELS[split_kind],
                                  shape = "split" })
    ctx:link(src, node.id)
    return node
  end
end
M.split_node = split_node

S.define("parallel_split", { role = "split", split_node = split_node("all") })

-- P.parallel_split{ a, b, ... }: 2.
function M.parallel_split(t)
  if type(t) ~= "table" or S.is_step(t) then
    S.argerror("parallel_split", 1, "table of branches expected, got " .. S.describe(t))
  end
  S.check_fields(t, "parallel_split", 1, { "name" }, 2, nil, true)
  local branches = {}
  for i = 1, table.maxn(t) do
    if t[i] == nil then S.argerror("parallel_split", 1, "branch " .. i .. " is nil") end
    branches[i] = { step = S.as_step(t[i], "parallel_split", 1, "branch " .. i, 2) }
  end
  if #branches < 1 then S.argerror("parallel_split", 1, "a parallel split needs branches") end
  S.check_name(t.name, "parallel_split", 1, 2, true)
  return S.new("parallel_split", 2, { branches = branches, name = t.name })
end

S.define("exclusive_choice", { role = "split", conditional = true, split_node = split_node("xor") })

-- P.exclusive_choice{ {when = c, run = s}, ..., otherwise = s }: 4.
function M.exclusive_choice(t)
  local branches = M.choice_branches("exclusive_choice", t, 2, true)
  return S.new("exclusive_choice", 4, { branches = branches, name = t.name })
end

-- ----------------------------------------------------------------- joins

-- Each token fires the node once (simple merge, multi-merge, and every
-- node with a single input).
engine.joins.each = function(frame, node)
  local m, s = frame.m, frame.s
  for _, e in ipairs(node.ins) do
    if m[e] > 0 then
      m[e] = m[e] - 1
      return "fire"
    end
  end
  for _, e in ipairs(node.ins) do
    if s[e] > 0 then
      s[e] = s[e] - 1
      return "skip"
    end
  end
end

-- A token (or a skip token) on every input fires the node, taking one from
-- each; tokens beyond one stay for the next firing (the generalised
-- AND-join, 33). `strict` (synchronization, 3): its branches run once
-- each, so a second token on an input is a mistake in the definition.
engine.joins["and"] = function(frame, node)
  local m, s = frame.m, frame.s
  local j = node.join
  local missing = false
  for i, e in ipairs(node.ins) do
    local n = m[e] + s[e]
    if n == 0 then
      missing = true
    elseif n > 1 and j.strict then
      error(node.name .. ": branch " .. i .. " arrived twice before the join fired "
        .. "(synchronization (3) expects each branch once; where a branch can arrive several "
        .. "times, use generalised_and_join (33))", 0)
    end
  end
  if missing then return nil end
  local real = false
  for _, e in ipairs(node.ins) do
    if m[e] > 0 then
      m[e] = m[e] - 1
      real = true
    else
      s[e] = s[e] - 1
    end
  end
  return real and "fire" or "skip"
end

-- A join step: `join` makes the node's join from (ctx, step, n, split);
-- `after` lists the splits it may close (nil: any), with `after_why`.
function M.define_join(kind, spec)
  spec.role = "join"
  spec.label = spec.label or function(step) return step.kind end
  S.define(kind, spec)
end

M.define_join("synchronization", {
  after = { parallel_split = true },
  after_why = "it waits for every branch, and only a parallel split starts them all "
    .. "(after a choice use simple_merge (5) or synchronizing_merge (7))",
  in_graph = true,
  join = function() return { kind = "and", strict = true } end,
  label = function() return "AND-join" end,
})

function M.synchronization(t)
  return S.new("synchronization", 3, { name = S.name_opt(t, "synchronization", 1) })
end

M.define_join("simple_merge", {
  after = { exclusive_choice = true, deferred_choice = true },
  after_why = "it passes on every arrival without waiting, so it closes choices of one "
    .. "branch (after a parallel split use synchronization (3) or multi_merge (8))",
  in_graph = true,
  join = function() return { kind = "each" } end,
  label = function() return "XOR-join" end,
})

function M.simple_merge(t)
  return S.new("simple_merge", 5, { name = S.name_opt(t, "simple_merge", 1) })
end

return M
