-- knhk.patterns.multiple: multiple instances (patterns 12-15, 34-36).
--
--   P.mi{ run = f, count = n | function(vars), items = "var" | function(vars),
--         join = P.all() | P.detached() | P.partial(k) | P.cancelling_partial(k)
--              | P.complete_when(cond),
--         dynamic = true, into = "var", name = "..." }
--
-- Each instance is a portable task running f(vars, i, item [, mi]) on any
-- worker, with a snapshot of the case variables taken when the step
-- starts. Instances do not update case variables; their results (the
-- first value each returns; nil counts as false) go, as a list in instance
-- order, into the variable `into` when the step completes. The pattern
-- the step expresses follows from its options:
--   join = P.detached()              12  continue at once
--   count = a number                 13  known when written
--   count = function, or items       14  known when the step starts
--   dynamic = true                   15  instances add instances (P.add_instance)
--   join = P.partial(k)              34  continue once k completed
--   join = P.cancelling_partial(k)   35  ... and cancel the others
--   dynamic, join = P.complete_when  36  continue once a condition holds
local knhk = require "knhk"
local check = require "knhk.check"
local T = require "knhk.task"
local S = require "knhk.patterns.step"
local engine = require "knhk.patterns.engine"
local getmetatable = debug.getmetatable -- (why: knhk/check.lua)

local M = {}

-- ------------------------------------------------------------ MI joins

local MIJoin = {}
MIJoin.__index = MIJoin
S.stays_in_its_vm(MIJoin, "a join of multiple instances")

local function mi_join(kind, fields)
  fields.kind = kind
  return setmetatable(fields, MIJoin)
end

-- P.all(): wait for every instance (the default).
function M.all() return mi_join("all", {}) end
-- P.detached(): continue at once; the case still waits for the instances.
function M.detached() return mi_join("detached", {}) end
-- P.partial(k): continue once k instances completed.
function M.partial(k)
  S.check_count(k, "partial", 1, "k", 2, 1)
  return mi_join("partial", { k = k })
end
-- P.cancelling_partial(k): continue once k completed; cancel the others.
function M.cancelling_partial(k)
  S.check_count(k, "cancelling_partial", 1, "k", 2, 1)
  return mi_join("partial", { k = k, cancel = true })
end
-- P.complete_when(cond): asked each time an instance completes; once it
-- holds, the step continues. A function gets (results, vars); a string is
-- an expression over the case variables, as every condition (README rule
-- 6), where `results` is the list of the instances' results so far.
local results_view_mt = {}
results_view_mt.__index = function(view, k) return rawget(view, "\0vars")[k] end
function M.complete_when(cond)
  local fn = S.as_condition(cond, "complete_when", 1, "the completion condition", 2)
  if type(cond) == "string" then
    local over_vars = fn
    fn = function(results, vars)
      return over_vars(setmetatable({ results = results, ["\0vars"] = vars }, results_view_mt))
    end
  end
  return mi_join("when", { cond = fn })
end

-- --------------------------------------------------------------- helpers

-- The instances a step starts: items (a list) or nil, and their number.
local function instances(node, vars)
  local spec = node.step
  local items, count
  if spec.items ~= nil then
    if type(spec.items) == "string" then items = vars[spec.items] else items = spec.items(vars) end
    if type(items) ~= "table" then
      error(node.name .. ": items must be a list, got " .. type(items), 0)
    end
    count = #items
  elseif type(spec.count) == "number" then
    count = spec.count
  else
    count = spec.count(vars)
    if type(count) ~= "number" or count % 1 ~= 0 or count < 0 then
      error(node.name .. ": count must be a whole number >= 0, got " .. S.describe_number(count), 0)
    end
  end
  local k = spec.join.k
  if k and k > count then
    error(node.name .. ": partial(" .. k .. ") needs " .. k .. " instances to complete but "
      .. count .. " start", 0)
  end
  return items, count
end

-- The results of the instances that completed, in instance order.
local function collect(res, got, n)
  local out = {}
  for i = 1, n do
    if got[i] then
      local r = res[i]
      if r == nil then r = false end
      out[#out + 1] = r
    end
  end
  return out
end

local function updates(node, res, got, n)
  local into = node.step.into
  if into then return { [into] = collect(res, got, n) } end
  return nil
end

-- A knhk handle says how its task ended only by joining it: the join of a
-- cancelled task raises a TaskError that says so in its message.
local function was_cancelled(e)
  return knhk.is_task_error(e) and type(e.message) == "string"
    and e.message:match("^task %d+ was cancelled$") ~= nil
end

-- The results of an instance: true, value; or false when it was cancelled
-- (raises if it failed).
local function join_instance(h)
  local ok, r = pcall(h.join, h)
  if ok then return true, r end
  if was_cancelled(r) then return false end
  error(r, 0)
end

-- Joins hs[1..n] in order into res/got: one pcall for the run of joins
-- that succeed (a pcall per join costs as much as the rest of the layer);
-- a cancelled instance is skipped, a failed one raises.
local function join_all(hs, n, res, got)
  local i = 1
  local function from_i()
    while i <= n do
      res[i] = hs[i]:join()
      got[i] = true
      i = i + 1
    end
  end
  while i <= n do
    local ok, err = pcall(from_i)
    if not ok then
      if not was_cancelled(err) then error(err, 0) end
      i = i + 1
    end
  end
end

-- --------------------------------------------------- 12, 13, 14, 34, 35

-- Spawns the instances of a static step into n, their handles into hs
-- (protected by the caller: a refusal names the step).
local function spawn_static(n, hs, fn, vars, items, count)
  -- (no trailing nil when there are no items: one value less to snapshot,
  -- measurable at 10k instances)
  if items then
    for i = 1, count do hs[i] = n:spawn(fn, vars, i, items[i]) end
  else
    for i = 1, count do hs[i] = n:spawn(fn, vars, i) end
  end
end

local function run_static(frame, node, run)
  local spec = node.step
  local vars = frame.case.vars
  local items, count = instances(node, vars)
  local fn, join = spec.run, spec.join
  local hs, res, got = {}, {}, {}
  if run.forced then return updates(node, res, got, count) end
  knhk.nursery(function(n)
    run.instances = n
    local ok, err = pcall(spawn_static, n, hs, fn, vars, items, count)
    if not ok then S.raise_spawn_refused(node.step, err) end
    if join.kind == "detached" then -- 12: the case goes on; failures still fail it
      engine.complete_early(frame, node, run, nil)
      join_all(hs, count, {}, {})
    elseif join.kind == "all" then
      join_all(hs, count, res, got)
    else -- partial: in the order instances complete
      local pos = {}
      for i = 1, count do pos[hs[i]] = i end
      local done = 0
      while true do
        local h = n:join_next()
        if not h then break end
        local i = pos[h]
        if run.stopping then
          got[i], res[i] = pcall(h.join, h) -- after a cancel, a failure is just an end
        else
          got[i], res[i] = join_instance(h)
        end
        if got[i] then done = done + 1 end
        if done == join.k and not run.emitted then
          engine.complete_early(frame, node, run, updates(node, res, got, count))
          if join.cancel then -- 35: the rest are withdrawn
            run.stopping = true
            n:cancel()
          end
        end
      end
    end
  end)
  if run.forced then -- complete_mi (27): the instances that completed count
    for i, h in ipairs(hs) do
      if not got[i] and h:done() then got[i], res[i] = pcall(h.join, h) end
    end
  end
  if run.emitted then return nil end
  return updates(node, res, got, count)
end

-- ------------------------------------------------------------- 15, 36

-- The body of each instance of a dynamic step (a portable task): it gets
-- `mi`, which travels with it (nursery, channels, event), and reports its
-- result to the step on mi.results.
local function dynamic_instance(mi, i, item)
  local run = mi.run
  -- a callable object travels as a table of its class, which gets its
  -- metatable (and __call) only in a VM that registered the class, as the
  -- task function of a static step does
  if not check.callable(run) then
    error(knhk.codec.arrived_without_call("the instances' run (a callable object)"), 0)
  end
  local r = run(mi.vars, i, item, mi)
  mi.results:send({ i, r })
end

-- What the spawn of an added instance cannot carry, named as the caller
-- gave it: "add_instance: the item is a userdata" (dynamic_instance's
-- arguments are mi, the index and the item).
local function added_places(k) return k == 4 and "the item" or "the instance's task" end

-- P.add_instance(mi, item) -> the new instance's index, or nil, message
-- once the step takes no more (its completion condition held). Called from
-- an instance of a dynamic step (its 4th argument is `mi`), on any worker.
function M.add_instance(mi, item)
  if type(mi) ~= "table" or mi.counter == nil or mi.nursery == nil then
    S.argerror("add_instance", 1, "the mi argument of a dynamic instance expected, got "
      .. S.describe(mi))
  end
  -- mi.counter holds the next index; whoever holds it may add (a lock that
  -- also numbers the instances, and orders adding against closing)
  local nxt = mi.counter:recv()
  if mi.closed:is_set() then
    mi.counter:send(nxt)
    return nil, "no more instances can be added: the step's completion condition held"
  end
  local ok, err = pcall(T.spawn_into_as, mi.nursery, "add_instance", added_places, dynamic_instance, mi,
    nxt, item)
  mi.counter:send(ok and nxt + 1 or nxt)
  -- as it was raised: a refusal names the caller's line already
  if not ok then error(err, 0) end
  return nxt
end

local function run_dynamic(frame, node, run)
  local spec = node.step
  local vars = frame.case.vars
  local items, count = instances(node, vars)
  local res, got, top = {}, {}, count
  if run.forced then return updates(node, res, got, top) end
  local results, counter, closed = knhk.channel(256), knhk.channel(1), knhk.event()
  local cond = spec.join.kind == "when" and spec.join.cond
  knhk.nursery(function(g)
    g:spawn_local(function()
      knhk.nursery(function(n)
        run.instances = n
        local mi = { nursery = n, results = results, counter = counter, closed = closed,
                     run = spec.run, vars = vars }
        local ok, err = pcall(function()
          for i = 1, count do n:spawn(dynamic_instance, mi, i, items and items[i]) end
        end)
        if not ok then S.raise_spawn_refused(node.step, err) end
        counter:send(count + 1)
      end)
      results:close()
    end)
    while true do
      local msg, ok = results:recv()
      if not ok then break end
      local i = msg[1]
      res[i], got[i] = msg[2], true
      if i > top then top = i end
      if cond and not run.emitted and cond(collect(res, got, top), vars) then
        -- 36: no instance may be added from now on
        local c = counter:recv()
        closed:set()
        counter:send(c)
        engine.complete_early(frame, node, run, updates(node, res, got, top))
      end
    end
  end)
  if run.emitted then return nil end
  return updates(node, res, got, top)
end

-- ------------------------------------------------------------------ P.mi

S.define("mi", {
  role = "node",
  compile = function(ctx, step, src)
    local partial = step.join.kind == "partial" or step.join.kind == "when"
    local impl = step.dynamic and run_dynamic or run_static
    local node = ctx:node(step, {
      -- inside interleaved routing the whole step is one of its tasks
      activity = function(frame, n, run) return engine.with_locks(frame, impl, frame, n, run) end,
      exclusive = partial, -- a partial join resets only once every instance ended
      shape = "mi",
    })
    ctx:link(src, node.id)
    return node.id
  end,
})

local function pattern_of(spec)
  local j = spec.join.kind
  if j == "detached" then return 12 end
  if spec.dynamic then return j == "when" and 36 or 15 end
  if j == "partial" then return spec.join.cancel and 35 or 34 end
  if type(spec.count) == "number" and spec.items == nil then return 13 end
  return 14
end

function M.mi(t)
  local F = "mi"
  if type(t) ~= "table" or S.is_step(t) then S.argerror(F, 1, "table expected, got " .. S.describe(t)) end
  S.check_fields(t, F, 1, { "run", "count", "items", "join", "into", "dynamic", "name" }, 2)
  if not check.callable(t.run) then
    S.argerror(F, 1, "run must be a function or callable object (each instance runs it as a "
      .. "portable task), got " .. S.describe(t.run))
  end
  S.check_travels(t.run, F, 1, "run", 2)
  S.check_name(t.name, F, 1, 2, true)
  if t.count ~= nil and t.items ~= nil then S.argerror(F, 1, "give count or items, not both") end
  if t.count == nil and t.items == nil then
    S.argerror(F, 1, "count (a number or a function of the case variables) or items expected")
  end
  if t.count ~= nil and not check.callable(t.count) then S.check_count(t.count, F, 1, "count", 2) end
  if t.items ~= nil and type(t.items) ~= "string" and not check.callable(t.items) then
    S.argerror(F, 1, "items must name a case variable or be a function or callable object, got "
      .. S.describe(t.items))
  end
  if t.into ~= nil and (type(t.into) ~= "string" or t.into == "") then
    S.argerror(F, 1, "into must name a case variable, got " .. S.describe(t.into))
  end
  local join = t.join or M.all()
  if getmetatable(join) ~= MIJoin then
    S.argerror(F, 1, "join must be P.all(), P.detached(), P.partial(k), P.cancelling_partial(k) "
      .. "or P.complete_when(cond), got " .. S.describe(join))
  end
  if join.k and type(t.count) == "number" and join.k > t.count then
    S.argerror(F, 1, "partial join needs " .. join.k .. " of " .. t.count
      .. " instances to complete; k must be at most count")
  end
  if join.kind == "when" and not t.dynamic then
    S.argerror(F, 1, "complete_when is the dynamic partial join (36): add dynamic = true, or use "
      .. "P.partial(k) (34)")
  end
  if join.kind == "detached" and t.into ~= nil then -- o would stay empty: refuse rather than mislead
    S.argerror(F, 1, "into = '" .. t.into .. "' would never be filled: with join = P.detached() the "
      .. "step completes at once, before any instance has a result; drop into, or wait for the "
      .. "instances with P.all() or P.partial(k)")
  end
  if join.kind == "detached" and t.dynamic then
    S.argerror(F, 1, "dynamic instances are waited for (15); P.detached() does not wait")
  end
  local spec = { name = t.name, run = t.run, count = t.count, items = t.items, join = join,
                 dynamic = t.dynamic and true or false, into = t.into }
  return S.new("mi", pattern_of(spec), spec)
end

M.MIJoin = MIJoin
return M
