-- knhk.patterns.compile: turns a definition (a tree of steps) into nets.
--
-- A net is what runs and what is drawn: nodes (tasks, splits, joins,
-- composite steps) connected by edges that carry tokens, as in the Petri
-- nets the patterns are defined on. A node fires when its join says its
-- input tokens allow it (an AND-join: one on every input; a discriminator:
-- the first of a round); when it completes, its split puts tokens on its
-- outputs (all of them, the one whose condition holds, ...). A composite
-- step (loop, region, critical section, ...) is one node whose activity
-- runs nets of its own, so its inside is structured and drawn nested.
--
-- In a sequence, a split followed directly by a join is a block: the join
-- closes exactly the branches of that split (this is how a structured
-- join, e.g. a discriminator, knows its branches and its region). A split
-- that ends a sequence leaves its branches unjoined: each ends on its own.
local S = require "knhk.patterns.step"

local kinds = S.kinds
local M = {}

local Ctx = {}
Ctx.__index = Ctx

-- A refusal: raised as a table so that workflow.build re-raises it at the
-- user's line, with the message alone.
local Refusal = {}
M.Refusal = Refusal

local function label_of(step)
  local what = step.kind
  if step.pattern then what = what .. " (" .. step.pattern .. ")" end
  if step.name then what = what .. " '" .. step.name .. "'" end
  return what .. " at " .. step.where
end
M.label_of = label_of

function Ctx:refuse(step, msg)
  error(setmetatable({ message = "workflow: " .. (step and (label_of(step) .. ": ") or "") .. msg },
    Refusal), 0)
end

-- Nets are numbered in the order a workflow's compilation makes them (the
-- root is 1): diagrams name their nodes by it.
local function new_net(ctx, owner)
  ctx.nets = ctx.nets + 1
  return { nodes = {}, edges = {}, entry = nil, exit = nil, owner = owner, uid = ctx.nets }
end

-- A node of the current net. f: name, label, join, split, activity (runs
-- in a runner of its own), action (instant, run when it fires), exclusive
-- (cannot fire again while it runs), shape (for diagrams), subnets.
function Ctx:node(step, f)
  local net = self.net
  local id = #net.nodes + 1
  f.id = id
  f.step = step
  f.kind = f.kind or step.kind
  f.pattern = f.pattern or step.pattern
  f.name = f.name or step.name or f.label or step.kind
  f.join = f.join or { kind = "each" }
  f.split = f.split or { kind = "all" }
  f.ins, f.outs = {}, {}
  f.net = net
  net.nodes[id] = f
  if step.name and f.named ~= false then self:register_name(step.name, step, f) end
  return f
end

-- An edge from node `from` (nil: the net's entry) to node `to`.
function Ctx:edge(from, to, attrs)
  local net = self.net
  local e = attrs or {}
  e.id = #net.edges + 1
  e.from, e.to = from, to
  net.edges[e.id] = e
  if from then
    local fo = net.nodes[from].outs
    fo[#fo + 1] = e.id
  else
    if net.entry then self:refuse(nil, "internal: a net has two entries") end
    net.entry = e.id
  end
  if to then
    local ti = net.nodes[to].ins
    ti[#ti + 1] = e.id
  end
  return e
end

-- src: where control comes from: { node = id or nil, cond, label, index }
function Ctx:link(src, to)
  return self:edge(src.node, to, { cond = src.cond, label = src.label, index = src.index })
end

-- Compiles `step` with control arriving from `src`; returns the id of the
-- node control leaves it from, or nil when it has no single exit (its
-- branches end on their own).
function Ctx:compile(step, src)
  if self.path[step] then
    self:refuse(step, "it contains itself, so the definition is an endless cycle; "
      .. "repeat with P.while_do / P.repeat_until (21), or draw cycles with P.graph (10)")
  end
  local spec = kinds[step.kind]
  if spec.role == "join" then
    self:refuse(step, "a join closes the split just before it in a sequence; it cannot stand alone")
  end
  if not spec.compile and spec.role ~= "split" then
    self:refuse(step, "a " .. step.kind .. " is not a step (use it where a source is expected)")
  end
  self.path[step] = true
  local exit
  if spec.role == "split" then -- alone: its branches are not joined
    exit = self:unjoined(step, src)
  else
    exit = spec.compile(self, step, src)
  end
  self.path[step] = nil
  return exit
end

-- Compiles `step` into a net of its own (the inside of a composite node).
function Ctx:subnet(step, owner)
  return self:in_new_net(owner, function(net)
    net.exit = self:compile(step, { node = nil })
  end)
end

-- Runs build(net) with a new net as the current one; returns the net.
function Ctx:in_new_net(owner, build)
  local saved = self.net
  local net = new_net(self, owner)
  self.net = net
  build(net)
  self:finish_net(net)
  self.net = saved
  return net
end

-- A composite node: one node of this net whose activity runs the nets
-- compiled from `bodies` (its subnets). conditional: its bodies may not
-- run (a recursion through them can end).
function Ctx:composite(step, src, bodies, f, conditional)
  f.shape = f.shape or "composite"
  local node = self:node(step, f)
  node.subnets = {}
  if conditional then self.conditional = self.conditional + 1 end
  for i, b in ipairs(bodies) do node.subnets[i] = self:subnet(b, node) end
  if conditional then self.conditional = self.conditional - 1 end
  self:link(src, node.id)
  return node.id
end

-- Whether control leaves `step` by one exit; refuses when it must.
function Ctx:need_exit(exit, step, what)
  if exit == nil then
    self:refuse(step, what .. " ends with a split whose branches are not joined; "
      .. "put a join after it (only the end of a workflow may leave branches unjoined)")
  end
  return exit
end

-- -------------------------------------------------------------- sequences

-- Compiles steps one after the other; a split directly followed by a join
-- becomes a block.
function Ctx:chain(list, src, owner)
  local i, n = 1, #list
  local exit = nil
  local done = {} -- per step compiled: the milestone guards in it, the milestones so far
  while i <= n do
    local s = list[i]
    done[#done + 1] = { guards = #self.guards }
    local role = kinds[s.kind].role
    if role == "join" then
      self:refuse(s, "it does not follow a split; a join closes the split just before it "
        .. "in a sequence (step " .. i .. " of " .. label_of(owner) .. ")")
    end
    if i > 1 and exit == nil then
      self:refuse(list[i - 1], "its branches are not joined, so step " .. i .. " of "
        .. label_of(owner) .. " would never start; put a join after it")
    end
    local here = i == 1 and src or { node = exit }
    if role == "split" then
      local nxt = list[i + 1]
      if nxt and kinds[nxt.kind].role == "join" then
        exit = self:block(s, nxt, here)
        i = i + 2
      else
        exit = self:unjoined(s, here)
        i = i + 1
      end
    else
      exit = self:compile(s, here)
      i = i + 1
    end
    local d = done[#done]
    d.guards_end, d.milestones = #self.guards, #self.milestones_seen
  end
  -- a milestone in a later step of the sequence comes only after the
  -- guarded steps of an earlier one have been enabled
  for _, d in ipairs(done) do
    for g = d.guards + 1, d.guards_end do self:milestones_after(self.guards[g], d.milestones) end
  end
  return exit
end

-- The split node of a split step, and its branches compiled after it.
-- Returns the split node and, per branch, { exit = node id } or
-- { direct = src } for an empty branch (P.skip()).
function Ctx:branches(split, src)
  local spec = kinds[split.kind]
  local snode = spec.split_node(self, split, src)
  local exits = {}
  for i, br in ipairs(split.branches) do
    local bsrc = { node = snode.id, cond = br.when, label = br.label, index = i }
    if br.to then
      self:refuse(split, "branch " .. i .. " goes 'to' graph node '" .. br.to .. "', but this "
        .. "split is not the 'next' of a P.graph node; give it a 'run' step")
    end
    if br.step.kind == "skip" then
      exits[i] = { direct = bsrc }
    else
      if spec.conditional then self.conditional = self.conditional + 1 end
      local ex = self:compile(br.step, bsrc)
      if spec.conditional then self.conditional = self.conditional - 1 end
      exits[i] = { exit = ex, step = br.step }
    end
  end
  return snode, exits
end

function Ctx:block(split, join, src)
  local jspec = kinds[join.kind]
  local n = #split.branches
  local bad = jspec.after and not jspec.after[split.kind]
  if bad then
    self:refuse(join, "it cannot close " .. split.kind .. " (" .. split.pattern .. "): "
      .. jspec.after_why)
  end
  local snode, exits = self:branches(split, src)
  for i, ex in ipairs(exits) do
    if ex.step then self:need_exit(ex.exit, ex.step, "branch " .. i .. " of " .. label_of(split)) end
  end
  local jnode = self:node(join, { join = jspec.join(self, join, n, split), label = jspec.label(join) })
  for i, ex in ipairs(exits) do
    if ex.direct then self:link(ex.direct, jnode.id)
    else self:edge(ex.exit, jnode.id, { index = i }) end
  end
  -- the branches of this block, for joins that cancel them
  jnode.region = { lo = snode.id + 1, hi = jnode.id - 1 }
  if jspec.needs_expect then snode.pair = jnode.id end
  return jnode.id
end

function Ctx:unjoined(split, src)
  local _, exits = self:branches(split, src)
  for _, ex in ipairs(exits) do
    if ex.direct then -- an empty branch that ends at once: an edge to nowhere
      self:link(ex.direct, nil)
    end
  end
  return nil
end

-- ------------------------------------------------------------------ names

-- Names that other steps refer to (cancel_task, complete_mi, ...) must be
-- unique; every name is kept with the nodes that carry it.
function Ctx:register_name(name, step, node)
  local e = self.names[name]
  if not e then
    e = { steps = {}, nodes = {} }
    self.names[name] = e
  end
  local seen = false
  for _, s in ipairs(e.steps) do if s == step then seen = true end end
  if not seen then e.steps[#e.steps + 1] = step end
  e.nodes[#e.nodes + 1] = node
end

-- A step that refers to another by name; checked once all is compiled.
-- check(target_step) -> nil or a message.
function Ctx:reference(step, name, what, check)
  self.refs[#self.refs + 1] = { step = step, name = name, what = what, check = check }
end

function Ctx:resolve_references()
  for _, r in ipairs(self.refs) do
    local e = self.names[r.name]
    if not e then
      self:refuse(r.step, "no step is named '" .. r.name .. "' (" .. r.what .. " needs one)")
    end
    if #e.steps > 1 then
      local at = {}
      for _, s in ipairs(e.steps) do at[#at + 1] = s.where end
      self:refuse(r.step, #e.steps .. " steps are named '" .. r.name .. "' (at "
        .. table.concat(at, ", ") .. "); " .. r.what .. " needs one")
    end
    if r.check then
      local msg = r.check(e.steps[1])
      if msg then self:refuse(r.step, msg) end
    end
  end
end

-- ------------------------------------------------------------ milestones

-- Every P.milestone, in the order compiled; inside a P.define it may also
-- run wherever the block is called, so no order is known for it.
function Ctx:milestone_defined(step)
  self.milestones_seen[#self.milestones_seen + 1] = { name = step.milestone, step = step,
                                                      in_define = self.define_depth > 0 }
end

-- A P.when_milestone: which milestones of its name can come only after it
-- has been enabled (use.after[i] for milestones_seen[i]).
function Ctx:milestone_guard(step)
  local use = { step = step, name = step.milestone, after = {}, from = #self.milestones_seen }
  self.guards[#self.guards + 1] = use
  return use
end

-- The milestones compiled since the `from`th come after `use`.
function Ctx:milestones_after(use, from)
  for k = from + 1, #self.milestones_seen do
    if self.milestones_seen[k].name == use.name then use.after[k] = true end
  end
end

-- Refuses a guarded step whose every milestone comes after it: the case
-- can never be in the milestone's state when the step is enabled, so the
-- step would always be withdrawn (WCP-18).
function Ctx:check_milestone_order()
  for _, use in ipairs(self.guards) do
    local first, all = nil, true
    for k, ms in ipairs(self.milestones_seen) do
      if ms.name == use.name then
        if not use.after[k] or ms.in_define then
          all = false
          break
        end
        first = first or ms
      end
    end
    if first and all then
      self:refuse(use.step, "the milestone '" .. use.name .. "' it waits for (" .. label_of(first.step)
        .. ") comes only after it, later in its sequence, so it can never hold when this step is "
        .. "enabled; put the milestone before it, or on a parallel branch")
    end
  end
end

-- Which milestones each node can lead to (itself, the nets it runs, the
-- nodes after it): node.milestones, a set of names. A guarded step whose
-- milestone no running step can lead to any more is withdrawn
-- (knhk.patterns.state). A fixpoint: graphs and recursion make cycles.
local function milestone_reach(root)
  local nets, seen = {}, {}
  local function inner(node)
    local out = {}
    for i, sub in ipairs(node.subnets or out) do out[i] = sub end
    if node.defs and node.target and node.defs[node.target] then
      out[#out + 1] = node.defs[node.target].net
    end
    return out
  end
  local function collect(net)
    if seen[net] then return end
    seen[net] = true
    nets[#nets + 1] = net
    for _, node in ipairs(net.nodes) do
      node.milestones = {}
      for _, sub in ipairs(inner(node)) do collect(sub) end
    end
  end
  collect(root)
  local grew = true
  local function add(set, name)
    if not set[name] then
      set[name] = true
      grew = true
    end
  end
  while grew do
    grew = false
    for _, net in ipairs(nets) do
      for id = #net.nodes, 1, -1 do
        local node = net.nodes[id]
        local set = node.milestones
        if node.kind == "milestone" then add(set, node.step.milestone) end
        for _, sub in ipairs(inner(node)) do
          for _, n in ipairs(sub.nodes) do
            for name in pairs(n.milestones) do add(set, name) end
          end
        end
        for _, eid in ipairs(node.outs) do
          local to = net.edges[eid].to
          if to then
            for name in pairs(net.nodes[to].milestones) do add(set, name) end
          end
        end
      end
    end
  end
end

-- --------------------------------------------------------- net analysis

-- Edges that can reach a local synchronizing merge (37) carry skip tokens
-- for branches not taken; each general synchronizing merge (38) knows,
-- per input, what lies upstream of it (to tell whether a token can still
-- arrive there).
function Ctx:finish_net(net)
  local locals = {}
  for _, node in ipairs(net.nodes) do
    if node.join.kind == "and" and node.join.skips then locals[#locals + 1] = node end
  end
  if #locals > 0 then
    local reach = {}
    local function walk(node_id)
      if reach[node_id] then return end
      reach[node_id] = true
      for _, eid in ipairs(net.nodes[node_id].ins) do
        local e = net.edges[eid]
        e.skips = true
        if e.from then walk(e.from) end
      end
    end
    for _, node in ipairs(locals) do walk(node.id) end
    -- a cycle on those edges would pass skip tokens round it forever
    local state = {}
    local function cyclic(node_id)
      if state[node_id] == 1 then return true end
      if state[node_id] == 2 then return false end
      state[node_id] = 1
      for _, eid in ipairs(net.nodes[node_id].outs) do
        local e = net.edges[eid]
        if e.skips and e.to and cyclic(e.to) then return true end
      end
      state[node_id] = 2
      return false
    end
    for id in pairs(reach) do
      if cyclic(id) then
        self:refuse(locals[1].join_step or locals[1].step, "a cycle leads to it, and skip tokens would go round it "
          .. "forever; where branches loop, use general_synchronizing_merge (38)")
      end
    end
  end
  for _, node in ipairs(net.nodes) do
    if node.join.kind == "general" then
      node.join.up = {}
      for i, eid in ipairs(node.ins) do
        local nodes, edges, seen = {}, {}, { [node.id] = true }
        local function back(e_id)
          local e = net.edges[e_id]
          local from = e.from
          if from and not seen[from] then
            seen[from] = true
            nodes[#nodes + 1] = from
            for _, up in ipairs(net.nodes[from].ins) do
              edges[#edges + 1] = up
              back(up)
            end
          end
        end
        back(eid)
        node.join.up[i] = { nodes = nodes, edges = edges }
      end
    end
  end
end

-- ---------------------------------------------------------------- entry

-- Compiles a whole definition. Returns the root net and what the workflow
-- keeps of the compilation (names, definitions for recursion).
function M.compile(root, name)
  local ctx = setmetatable({
    net = nil, path = {}, names = {}, refs = {}, defs = {}, conditional = 0,
    milestones = {}, milestone_uses = {}, triggers = {}, trigger_waits = {}, signals = {},
    milestones_seen = {}, guards = {}, define_depth = 0,
    defining = {}, -- define name -> conditional depth when it was entered
    calls = {}, nets = 0,
  }, Ctx)
  ctx.workflow_name = name
  local net = new_net(ctx, nil)
  ctx.net = net
  if name then
    -- the whole workflow can be called by its name (recursion, 22)
    ctx.defs[name] = { net = net, step = root }
    ctx.defining[name] = 0
  end
  net.exit = ctx:compile(root, { node = nil })
  ctx:finish_net(net)
  ctx:resolve_references()
  for _, call in ipairs(ctx.calls) do
    if not ctx.defs[call.target] then
      ctx:refuse(call, "no P.define (and no workflow built with that name) is named '"
        .. call.target .. "'")
    end
  end
  for mname, use in pairs(ctx.milestone_uses) do
    if not ctx.milestones[mname] then
      ctx:refuse(use, "no P.milestone is named '" .. mname .. "'")
    end
  end
  if #ctx.guards > 0 then
    ctx:check_milestone_order()
    milestone_reach(net)
  end
  for tname, use in pairs(ctx.signals) do
    if not ctx.trigger_waits[tname] then
      ctx:refuse(use, "no step waits for trigger '" .. tname .. "' (declare it with "
        .. "P.transient_trigger or P.persistent_trigger and wait for it with P.wait_for)")
    end
  end
  return net, ctx
end

M.Ctx = Ctx
return M
