-- knhk.patterns.iteration: iteration (10, 21, 22).
--
--   P.while_do(cond, s)         21  tests cond, then runs s, while it holds
--   P.repeat_until(s, cond)     21  runs s, then tests cond, until it holds
--   P.define(name, s)           22  a block that can call itself...
--   P.call(name)                22  ...by name (also the name of a workflow)
--   P.graph{ start = "a", nodes = {
--     a = { run = f, next = "b" },                   -- one successor
--     b = { run = g, next = { "c", "d" } },          -- all of them (AND)
--     c = { run = h, next = P.exclusive_choice{ {when = c1, to = "a"}, {to = "e"} } },
--     d = { join = P.synchronization(), ... },       -- how inputs join
--   } }                         10  arbitrary cycles: a graph of named steps
--
-- A graph node's `run` is a step or a function (nil: it only routes); its
-- `join` any join that stands alone (default: each arrival continues);
-- `next` a node name, a list of names, or an exclusive, multi or deferred
-- choice whose branches go `to` node names; no `next`: its thread ends.
-- A graph is one step: it ends when nothing in it is left to do.
local knhk = require "knhk"
local check = require "knhk.check"
local S = require "knhk.patterns.step"
local engine = require "knhk.patterns.engine"

local M = {}
local WITHDRAWN = engine.WITHDRAWN

-- ----------------------------------------------------------------- loops

local function run_loop(frame, node, run)
  local step, case = node.step, frame.case
  local body = node.subnets[1]
  while true do
    if step.test_first and not step.cond(case.vars) then return end
    knhk.checkpoint() -- a loop of instant steps still lets others run, and is cancellable
    local f = engine.run_frame(case, body, frame, run)
    if not engine.completed(f) then return WITHDRAWN end
    if not step.test_first and step.cond(case.vars) then return end
  end
end

S.define("loop", {
  role = "node",
  compile = function(ctx, step, src)
    return ctx:composite(step, src, { step.body }, { activity = run_loop,
      label = (step.test_first and "while " or "repeat until ") .. step.label }, step.test_first)
  end,
})

-- P.while_do(cond, step): 21, tested before each round.
function M.while_do(cond, body, t)
  local fn, label = S.as_condition(cond, "while_do", 1, "the condition", 2)
  body = S.as_step(body, "while_do", 2, "the body", 2)
  return S.new("loop", 21, { cond = fn, label = label or "condition", body = body,
                             test_first = true, name = S.name_opt(t, "while_do", 3) }, 2)
end

-- P.repeat_until(step, cond): 21, tested after each round.
function M.repeat_until(body, cond, t)
  body = S.as_step(body, "repeat_until", 1, "the body", 2)
  local fn, label = S.as_condition(cond, "repeat_until", 2, "the condition", 2)
  return S.new("loop", 21, { cond = fn, label = label or "condition", body = body,
                             test_first = false, name = S.name_opt(t, "repeat_until", 3) }, 2)
end

-- ------------------------------------------------------------- recursion

local function run_call(frame, node, run)
  local def = node.defs[node.target]
  local f = engine.run_frame(frame.case, def.net, frame, run)
  if not engine.completed(f) then return WITHDRAWN end
end

S.define("define", {
  role = "node",
  compile = function(ctx, step, src)
    local name = step.def
    if ctx.defs[name] then
      ctx:refuse(step, "'" .. name .. "' is defined twice (also at " .. ctx.defs[name].step.where .. ")")
    end
    local def = { step = step }
    ctx.defs[name] = def
    ctx.defining[name] = ctx.conditional
    local node = ctx:node(step, { activity = run_call, defs = ctx.defs, target = name,
                                  label = "define '" .. name .. "'", shape = "composite",
                                  named = false })
    ctx.define_depth = ctx.define_depth + 1 -- (its milestones run wherever it is called)
    node.subnets = { ctx:subnet(step.body, node) }
    ctx.define_depth = ctx.define_depth - 1
    def.net = node.subnets[1]
    ctx.defining[name] = nil
    ctx:link(src, node.id)
    return node.id
  end,
})

S.define("call", {
  role = "node",
  compile = function(ctx, step, src)
    local name = step.target
    local depth = ctx.defining[name]
    if depth ~= nil and depth == ctx.conditional then
      ctx:refuse(step, "'" .. name .. "' calls itself on every path (no choice or loop between "
        .. "its definition and this call), so it would never end")
    end
    ctx.calls[#ctx.calls + 1] = step
    local node = ctx:node(step, { activity = run_call, defs = ctx.defs, target = name,
                                  label = "call '" .. name .. "'", shape = "call", named = false })
    ctx:link(src, node.id)
    return node.id
  end,
})

-- P.define(name, step): 22, a block that P.call(name) runs (again).
function M.define(name, body)
  S.check_name(name, "define", 1, 2)
  body = S.as_step(body, "define", 2, "the body", 2)
  return S.new("define", 22, { def = name, body = body })
end

-- P.call(name): 22, runs the block P.define(name, ...) (or the workflow
-- built with that name) as a step, in a frame of its own.
function M.call(name, t)
  S.check_name(name, "call", 1, 2)
  return S.new("call", 22, { target = name, name = S.name_opt(t, "call", 2) })
end

-- ------------------------------------------------------------------ graphs

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- The successors of a graph node: { {to, cond, label} }, and the split.
local function successors(ctx, step, name, nxt)
  if nxt == nil then return {}, { kind = "all" } end
  if type(nxt) == "string" then return { { to = nxt } }, { kind = "all" } end
  if S.is_step(nxt) then
    local kinds = { exclusive_choice = "xor", multi_choice = "or", deferred_choice = "deferred" }
    local kind = kinds[nxt.kind]
    if not kind then
      ctx:refuse(step, "node '" .. name .. "': next must be a node name, a list of names, or "
        .. "an exclusive, multi or deferred choice, got a " .. nxt.kind .. " step")
    end
    local out = {}
    for i, br in ipairs(nxt.branches) do
      if not br.to then
        ctx:refuse(step, "node '" .. name .. "': branch " .. i .. " of its next choice has "
          .. "no 'to' (in a graph, branches go to node names)")
      end
      out[i] = { to = br.to, cond = br.when, label = br.label, on = br.on, into = br.into }
    end
    return out, { kind = kind }, nxt
  end
  if type(nxt) == "table" then
    local out = {}
    for i = 1, table.maxn(nxt) do
      if type(nxt[i]) ~= "string" then
        ctx:refuse(step, "node '" .. name .. "': next[" .. i .. "] must be a node name, got "
          .. S.describe(nxt[i]))
      end
      out[i] = { to = nxt[i] }
    end
    return out, { kind = "all" }
  end
  ctx:refuse(step, "node '" .. name .. "': next must be a node name, a list of names or a "
    .. "choice, got " .. S.describe(nxt))
end

-- Refuses cycles that can never be left: every node in them continues on
-- every token (no join waits for something from outside) and none chooses
-- a way out or ends its thread.
local function check_cycles(ctx, step, names, succ, gnodes)
  local index, low, on, stack, idx = {}, {}, {}, {}, 0
  local sccs = {}
  local function strong(v)
    idx = idx + 1
    index[v], low[v] = idx, idx
    stack[#stack + 1] = v
    on[v] = true
    for _, s in ipairs(succ[v]) do
      local w = s.to
      if not index[w] then
        strong(w)
        low[v] = math.min(low[v], low[w])
      elseif on[w] then
        low[v] = math.min(low[v], index[w])
      end
    end
    if low[v] == index[v] then
      local comp = {}
      repeat
        local w = table.remove(stack)
        on[w] = false
        comp[#comp + 1] = w
      until w == v
      sccs[#sccs + 1] = comp
    end
  end
  for _, v in ipairs(names) do if not index[v] then strong(v) end end
  for _, comp in ipairs(sccs) do
    local inside = {}
    for _, v in ipairs(comp) do inside[v] = true end
    local cyclic = #comp > 1
    if not cyclic then
      for _, s in ipairs(succ[comp[1]]) do if s.to == comp[1] then cyclic = true end end
    end
    if cyclic then
      local way_out = false
      for _, v in ipairs(comp) do
        local g = gnodes[v]
        if #succ[v] == 0 or (g.join ~= nil and g.join.kind ~= "multi_merge"
            and g.join.kind ~= "simple_merge") then
          way_out = true
        end
        if g.split_kind ~= "all" then
          for _, s in ipairs(succ[v]) do if not inside[s.to] then way_out = true end end
        end
      end
      if not way_out then
        table.sort(comp)
        ctx:refuse(step, "nodes " .. table.concat(comp, ", ") .. " form a cycle with no way "
          .. "out (no node in it chooses a branch that leaves it); add an exclusive choice")
      end
    end
  end
end

local function run_graph(frame, node, run)
  local f = engine.run_frame(frame.case, node.subnets[1], frame, run)
  if not engine.completed(f) then return WITHDRAWN end
end

local function compile_graph(ctx, step, owner)
  local gnodes = step.nodes
  local names = sorted_keys(gnodes)
  if not gnodes[step.start] then
    ctx:refuse(step, "start '" .. tostring(step.start) .. "' is not one of its nodes")
  end
  -- successors, in-degrees, reachability
  local succ, splits, choices, indeg = {}, {}, {}, {}
  for _, name in ipairs(names) do indeg[name] = 0 end
  for _, name in ipairs(names) do
    succ[name], splits[name], choices[name] = successors(ctx, step, name, gnodes[name].next)
    gnodes[name].split_kind = splits[name].kind
    for _, s in ipairs(succ[name]) do
      if not gnodes[s.to] then
        ctx:refuse(step, "node '" .. name .. "' goes to '" .. s.to .. "', which is not a node")
      end
      indeg[s.to] = indeg[s.to] + 1
    end
  end
  indeg[step.start] = indeg[step.start] + 1
  local seen, todo = { [step.start] = true }, { step.start }
  while #todo > 0 do
    local v = table.remove(todo)
    for _, s in ipairs(succ[v]) do
      if not seen[s.to] then
        seen[s.to] = true
        todo[#todo + 1] = s.to
      end
    end
  end
  for _, name in ipairs(names) do
    if not seen[name] then
      ctx:refuse(step, "node '" .. name .. "' cannot be reached from start '" .. step.start .. "'")
    end
  end
  check_cycles(ctx, step, names, succ, gnodes)

  return ctx:in_new_net(owner, function(net)
    local entry, exit = {}, {}
    for _, name in ipairs(names) do
      local g = gnodes[name]
      local join = { kind = "each" }
      if g.join then
        local jspec = S.kinds[g.join.kind]
        if jspec.graph_join then
          join = jspec.graph_join(g.join)
        elseif jspec.role ~= "join" or not jspec.in_graph then
          ctx:refuse(g.join, "it cannot join node '" .. name .. "' of a graph: it closes the split "
            .. "just before it in a sequence (in a graph use blocking_discriminator (28), "
            .. "blocking_partial_join (31), local (37) or general (38) synchronizing merges)")
        else
          join = jspec.join(ctx, g.join, indeg[name], nil)
        end
      end
      local run = g.run
      if run ~= nil and not S.is_step(run) and not check.callable(run) then
        ctx:refuse(step, "node '" .. name .. "': run must be a function, a callable object or a "
          .. "step, got " .. S.describe(run))
      end
      if run ~= nil and not S.is_step(run) then
        local why = S.travel_refusal(run, "node '" .. name .. "': run")
        if why then ctx:refuse(step, why) end
        run = S.kinds.task.make(name, run, 1)
        run.where = step.where -- (written in the graph)
      end
      local first, last
      if run == nil or run.kind == "task" then
        -- one node: the task (or a pure router) with the node's join and split
        local f = { join = join, name = name, label = name, shape = run and "task" or "split" }
        if run then f.activity, f.fn = S.kinds.task.run, run.fn end
        first = ctx:node(run or step, f)
        first.name = name
        first.join_step = g.join
        last = first.id
      else
        first = ctx:node(step, { join = join, name = name, label = name, shape = "split",
                                 named = false, join_step = g.join })
        ctx.conditional = ctx.conditional + 1
        last = ctx:need_exit(ctx:compile(run, { node = first.id }), run, "node '" .. name .. "'")
        ctx.conditional = ctx.conditional - 1
      end
      if choices[name] and choices[name].kind == "deferred_choice" then
        -- after its run, the node waits for the first of its sources
        local d = S.kinds.deferred_choice.split_node(ctx, choices[name], { node = last })
        d.name = name .. ": deferred choice"
        last = d.id
      else
        net.nodes[last].split = splits[name]
      end
      entry[name], exit[name] = first.id, last
    end
    ctx:edge(nil, entry[step.start], {})
    for _, name in ipairs(names) do
      for i, s in ipairs(succ[name]) do
        ctx:edge(exit[name], entry[s.to], { cond = s.cond, label = s.label, index = i })
      end
    end
    net.exit = nil -- a graph ends when nothing in it is left to do
  end)
end

S.define("graph", {
  role = "node",
  compile = function(ctx, step, src)
    local node = ctx:node(step, { activity = run_graph, label = step.name or "graph",
                                  shape = "composite" })
    node.subnets = { compile_graph(ctx, step, node) }
    ctx:link(src, node.id)
    return node.id
  end,
})

-- P.graph{ start = "name", nodes = { name = { run =, join =, next = } }, name = }: 10.
function M.graph(t)
  local F = "graph"
  if type(t) ~= "table" or S.is_step(t) then S.argerror(F, 1, "table expected, got " .. S.describe(t)) end
  if type(t.start) ~= "string" or t.start == "" then
    S.argerror(F, 1, "start (the name of the first node) expected, got " .. S.describe(t.start))
  end
  if type(t.nodes) ~= "table" then S.argerror(F, 1, "nodes (a table of named nodes) expected, got " .. S.describe(t.nodes)) end
  S.check_fields(t, F, 1, { "start", "nodes", "name" }, 2)
  local nodes = {}
  for name, g in pairs(t.nodes) do
    if type(name) ~= "string" then S.argerror(F, 1, "node names must be strings, got " .. type(name)) end
    if type(g) ~= "table" or S.is_step(g) then
      S.argerror(F, 1, "node '" .. name .. "' must be a table { run =, join =, next = }, got " .. S.describe(g))
    end
    S.check_fields(g, F, 1, { "run", "join", "next" }, 2, "node '" .. name .. "'")
    if g.join ~= nil and not S.is_step(g.join) then
      S.argerror(F, 1, "node '" .. name .. "': join must be a join step, got " .. S.describe(g.join))
    end
    nodes[name] = { run = g.run, join = g.join, next = g.next }
  end
  S.check_name(t.name, F, 1, 2, true)
  return S.new("graph", 10, { start = t.start, nodes = nodes, name = t.name })
end

return M
