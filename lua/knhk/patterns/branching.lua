-- knhk.patterns.branching: advanced branching and synchronization
-- (patterns 6-9, 28-33, 37, 38, 41, 42).
--
--   P.multi_choice{ {when = c, run = s}, ... }   6  every branch whose condition holds
--   P.synchronizing_merge()                      7  waits for the branches the split took
--   P.multi_merge()                              8  continues once per arrival
--   P.discriminator()                            9  first arrival continues; resets after all
--   P.blocking_discriminator()                  28  ... later rounds wait for the reset
--   P.cancelling_discriminator()                29  ... and cancels the other branches
--   P.partial_join(k)                           30  k of n continue; resets after all
--   P.blocking_partial_join(k)                  31  ... later rounds wait for the reset
--   P.cancelling_partial_join(k)                32  ... and cancels the other branches
--   P.generalised_and_join()                    33  AND-join that keeps extra tokens
--   P.local_synchronizing_merge()               37  OR-join on local knowledge (skip tokens)
--   P.general_synchronizing_merge()             38  OR-join: until nothing more can arrive
--   P.thread_merge(n)                           41  n threads of one branch become one
--   P.thread_split(n)                           42  one thread becomes n
local S = require "knhk.patterns.step"
local engine = require "knhk.patterns.engine"
local basic = require "knhk.patterns.basic"

local M = {}
local joins = engine.joins
local define_join = basic.define_join

-- ----------------------------------------------------------- multi-choice

S.define("multi_choice", { role = "split", conditional = true, split_node = basic.split_node("or") })

-- P.multi_choice{ {when = c, run = s}, ..., otherwise = s }: 6.
function M.multi_choice(t)
  local branches = basic.choice_branches("multi_choice", t, 2, true)
  return S.new("multi_choice", 6, { branches = branches, name = t.name })
end

-- ------------------------------------------------------------ merges (7, 8)

-- Structured synchronizing merge: the split before it says which branches
-- it took (frame.js[id].expect, one entry per firing of the split).
joins.sync_struct = function(frame, node)
  local st = frame.js[node.id]
  local want = st.expect[1]
  if not want then return nil end
  local m = frame.m
  for i, e in ipairs(node.ins) do
    if want[i] and m[e] == 0 then return nil end
  end
  for i, e in ipairs(node.ins) do
    if want[i] then m[e] = m[e] - 1 end
  end
  table.remove(st.expect, 1)
  return "fire"
end

define_join("synchronizing_merge", {
  needs_expect = true,
  in_graph = false,
  join = function() return { kind = "sync_struct" } end,
  label = function() return "OR-join" end,
})

function M.synchronizing_merge(t)
  return S.new("synchronizing_merge", 7, { name = S.name_opt(t, "synchronizing_merge", 1) })
end

define_join("multi_merge", {
  in_graph = true,
  join = function() return { kind = "each" } end,
  label = function() return "multi-merge" end,
})

function M.multi_merge(t)
  return S.new("multi_merge", 8, { name = S.name_opt(t, "multi_merge", 1) })
end

-- ----------------------------------------- discriminators and partial joins

-- One join for 9, 28-32: the first k arrivals of a round fire it once;
-- the round ends (the join resets) when every input has arrived once.
--   strict     structured (9, 30): an input arriving twice in one round is
--              a mistake in the definition
--   blocking   (28, 31): an input arriving twice waits for the reset
--   cancelling (29, 32): once it fired, the other branches of its block
--              are cancelled and it resets at once
local function reset(st)
  st.seen, st.nseen, st.nreal, st.fired = {}, 0, 0, false
end

joins.partial = function(frame, node)
  local j, st = node.join, frame.js[node.id]
  local m, s = frame.m, frame.s
  local ins = node.ins
  local n = #ins
  local again = true
  while again do
    again = false
    for i, e in ipairs(ins) do
      if m[e] + s[e] > 0 then
        if st.seen[i] then
          if j.strict and m[e] > 0 then
            error(node.name .. ": branch " .. i .. " arrived again before every branch had "
              .. "arrived once (a structured join; where branches can arrive again before "
              .. "the reset, use " .. (j.k == 1 and "blocking_discriminator (28)"
              or "blocking_partial_join (31)") .. ")", 0)
          end
          -- blocking: the token waits on its input until the reset
        else
          local real = m[e] > 0
          if real then m[e] = m[e] - 1 else s[e] = s[e] - 1 end
          st.seen[i] = true
          st.nseen = st.nseen + 1
          if real then st.nreal = st.nreal + 1 end
          if not st.fired and st.nreal >= j.k then
            st.fired = true
            if j.cancelling then
              engine.cancel_between(frame, node.region.lo, node.region.hi, node.id)
              reset(st)
            elseif st.nseen == n then
              reset(st)
            end
            return "fire"
          end
          if st.nseen == n then
            reset(st)
            again = true -- tokens that waited for the reset may count now
            break
          end
        end
      end
    end
  end
  return nil
end

local AFTER_PARALLEL = { parallel_split = true }
local WHY_PARALLEL = "it resets once every branch has arrived, so it closes a parallel split "
  .. "(all branches run)"

local function partial_join_spec(k_of, flags)
  return function(ctx, step, n)
    local k = k_of(step)
    if k > n then
      ctx:refuse(step, "k = " .. k .. " but it joins " .. n .. " branches; k must be at most " .. n)
    end
    return { kind = "partial", k = k, strict = flags.strict, blocking = flags.blocking,
             cancelling = flags.cancelling }
  end
end

local function one() return 1 end
local function k_field(step) return step.k end

define_join("discriminator", {
  after = AFTER_PARALLEL, after_why = WHY_PARALLEL, in_graph = false,
  join = partial_join_spec(one, { strict = true }),
})
define_join("blocking_discriminator", {
  after = AFTER_PARALLEL, after_why = WHY_PARALLEL, in_graph = true,
  join = partial_join_spec(one, { blocking = true }),
})
define_join("cancelling_discriminator", {
  after = AFTER_PARALLEL, after_why = WHY_PARALLEL, in_graph = false,
  join = partial_join_spec(one, { cancelling = true }),
})

local function pj_label(step) return step.kind:gsub("_", " ") .. " " .. step.k .. "-of-n" end

define_join("partial_join", {
  after = AFTER_PARALLEL, after_why = WHY_PARALLEL, in_graph = false, label = pj_label,
  join = partial_join_spec(k_field, { strict = true }),
})
define_join("blocking_partial_join", {
  after = AFTER_PARALLEL, after_why = WHY_PARALLEL, in_graph = true, label = pj_label,
  join = partial_join_spec(k_field, { blocking = true }),
})
define_join("cancelling_partial_join", {
  after = AFTER_PARALLEL, after_why = WHY_PARALLEL, in_graph = false, label = pj_label,
  join = partial_join_spec(k_field, { cancelling = true }),
})

function M.discriminator(t) return S.new("discriminator", 9, { name = S.name_opt(t, "discriminator", 1) }) end
function M.blocking_discriminator(t)
  return S.new("blocking_discriminator", 28, { name = S.name_opt(t, "blocking_discriminator", 1) })
end
function M.cancelling_discriminator(t)
  return S.new("cancelling_discriminator", 29, { name = S.name_opt(t, "cancelling_discriminator", 1) })
end

local function partial_ctor(kind, pattern)
  return function(k, t)
    S.check_count(k, kind, 1, "k", 2, 1)
    return S.new(kind, pattern, { k = k, name = S.name_opt(t, kind, 2) })
  end
end
M.partial_join = partial_ctor("partial_join", 30)
M.blocking_partial_join = partial_ctor("blocking_partial_join", 31)
M.cancelling_partial_join = partial_ctor("cancelling_partial_join", 32)

-- ------------------------------------------------------ AND and OR joins

define_join("generalised_and_join", {
  after = AFTER_PARALLEL,
  after_why = "it waits for a token from every branch, so it closes a parallel split",
  in_graph = true,
  join = function() return { kind = "and" } end,
  label = function() return "generalised AND-join" end,
})

function M.generalised_and_join(t)
  return S.new("generalised_and_join", 33, { name = S.name_opt(t, "generalised_and_join", 1) })
end

-- 37: an AND-join over tokens and skip tokens (dead-path elimination):
-- branches not taken carry a skip token down to it (compile marks the
-- edges that lead here), so it needs only what arrives at its inputs.
define_join("local_synchronizing_merge", {
  in_graph = true,
  join = function() return { kind = "and", skips = true } end,
  label = function() return "local OR-join" end,
})

function M.local_synchronizing_merge(t)
  return S.new("local_synchronizing_merge", 37, { name = S.name_opt(t, "local_synchronizing_merge", 1) })
end

-- 38: fires once some input has a token and no token can arrive any more
-- at the others: nothing upstream of an empty input holds a token or runs
-- (compile lists, per input, the edges and nodes upstream of it).
joins.general = function(frame, node)
  local m, s, live = frame.m, frame.s, frame.live
  local ins = node.ins
  local any = false
  for _, e in ipairs(ins) do
    if m[e] + s[e] > 0 then
      any = true
      break
    end
  end
  if not any then return nil end
  local up = node.join.up
  for i, e in ipairs(ins) do
    if m[e] + s[e] == 0 then
      local u = up[i]
      for _, ue in ipairs(u.edges) do
        if m[ue] + s[ue] > 0 then return nil end
      end
      for _, un in ipairs(u.nodes) do
        if live[un] > 0 then return nil end
      end
    end
  end
  local real = false
  for _, e in ipairs(ins) do
    if m[e] > 0 then
      m[e] = m[e] - 1
      real = true
    elseif s[e] > 0 then
      s[e] = s[e] - 1
    end
  end
  return real and "fire" or "skip"
end

define_join("general_synchronizing_merge", {
  in_graph = true,
  join = function() return { kind = "general" } end,
  label = function() return "general OR-join" end,
})

function M.general_synchronizing_merge(t)
  return S.new("general_synchronizing_merge", 38, { name = S.name_opt(t, "general_synchronizing_merge", 1) })
end

-- ------------------------------------------------------- threads (41, 42)

joins.thread_merge = function(frame, node)
  local m = frame.m
  local need = node.join.n
  local total = 0
  for _, e in ipairs(node.ins) do total = total + m[e] end
  if total < need then return nil end
  for _, e in ipairs(node.ins) do
    local take = math.min(m[e], need)
    m[e] = m[e] - take
    need = need - take
    if need == 0 then break end
  end
  return "fire"
end

S.define("thread_merge", {
  role = "node",
  graph_join = function(step) return { kind = "thread_merge", n = step.n } end,
  compile = function(ctx, step, src)
    local node = ctx:node(step, { join = { kind = "thread_merge", n = step.n },
                                  label = "merge " .. step.n .. " threads", shape = "join" })
    ctx:link(src, node.id)
    return node.id
  end,
})

-- P.thread_merge(n): 41.
function M.thread_merge(n, t)
  S.check_count(n, "thread_merge", 1, "n", 2, 1)
  return S.new("thread_merge", 41, { n = n, name = S.name_opt(t, "thread_merge", 2) })
end

S.define("thread_split", {
  role = "node",
  compile = function(ctx, step, src)
    local node = ctx:node(step, { split = { kind = "threads", n = step.n },
                                  label = "split into " .. step.n .. " threads", shape = "split" })
    ctx:link(src, node.id)
    return node.id
  end,
})

-- P.thread_split(n): 42. What follows it in its sequence runs n times.
function M.thread_split(n, t)
  S.check_count(n, "thread_split", 1, "n", 2, 1)
  return S.new("thread_split", 42, { n = n, name = S.name_opt(t, "thread_split", 2) })
end

return M
