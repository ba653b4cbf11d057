-- knhk.patterns.triggers: triggers (patterns 23, 24), and what a step can
-- wait for.
--
--   local paid = P.persistent_trigger("paid")    24  kept until taken
--   local ping = P.transient_trigger("ping")     23  lost if nobody waits
--   P.wait_for(paid [, { into = "var" }])        waits; the signal's value into `var`
--   P.signal(paid, value)                        signals from inside the case
--   P.timer(seconds)                             a delay; also a source to wait for
--
-- Triggers are named: each case has its own. From outside, a case is
-- signalled through a channel given as ctx.signals[name]; a persistent
-- trigger reads it when a step waits, a transient one drains it at once and
-- drops what finds nobody waiting. Sources a step can wait for (P.wait_for,
-- the branches of P.deferred_choice): triggers, timers, knhk channels
-- (persistent: a message waits in the channel), events and tokens.
local knhk = require "knhk"
local S = require "knhk.patterns.step"
local engine = require "knhk.patterns.engine"

local M = {}

-- --------------------------------------------------------- declarations

S.define("trigger", { role = "source" })

local function trigger(kind, pattern)
  return function(name)
    S.check_name(name, kind, 1, 2)
    return S.new("trigger", pattern, { name = name, transient = pattern == 23 })
  end
end
M.transient_trigger = trigger("transient_trigger", 23)
M.persistent_trigger = trigger("persistent_trigger", 24)

S.define("timer", {
  role = "node",
  compile = function(ctx, step, src)
    local node = ctx:node(step, {
      activity = function() knhk.sleep(step.seconds) end,
      label = "wait " .. step.seconds .. " s", shape = "wait",
    })
    ctx:link(src, node.id)
    return node.id
  end,
})

-- P.timer(seconds): as a step, waits; as a source, fires after `seconds`.
function M.timer(seconds, t)
  if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 then
    S.argerror("timer", 1, "seconds must be a number >= 0, got "
      .. (type(seconds) == "number" and tostring(seconds) or S.describe(seconds)))
  end
  return S.new("timer", nil, { seconds = seconds, name = S.name_opt(t, "timer", 2) })
end

-- Whether v can be waited for; raises (at the user's line) if not.
function M.check_source(v, fname, n, what, level)
  if S.is_step(v) and (v.kind == "trigger" or v.kind == "timer") then return v end
  if knhk.is_channel(v) or knhk.is_event(v) or knhk.is_token(v) then return v end
  S.argerror(fname, n, what .. " must be a trigger, a timer, a channel, an event or a token, got "
    .. S.describe(v), (level or 2) + 1)
end

-- The pattern waiting for `v` expresses, and how diagrams name it.
function M.source_pattern(v)
  if S.is_step(v) then
    if v.kind == "trigger" then return v.pattern, (v.transient and "transient" or "persistent")
      .. " trigger '" .. v.name .. "'" end
    return nil, "timer " .. v.seconds .. " s"
  end
  if knhk.is_channel(v) then return 24, "channel" end
  if knhk.is_event(v) then return 24, "event" end
  return nil, "token"
end

-- Compile-time: one name, one kind; `waits`: this step waits for it.
function M.declare(ctx, step, trig, waits)
  if waits then ctx.trigger_waits[trig.name] = true end
  local seen = ctx.triggers[trig.name]
  if seen and seen.transient ~= trig.transient then
    ctx:refuse(step, "trigger '" .. trig.name .. "' is declared transient at "
      .. (seen.transient and seen.where or trig.where) .. " and persistent at "
      .. (seen.transient and trig.where or seen.where))
  end
  ctx.triggers[trig.name] = ctx.triggers[trig.name] or trig
end

-- ----------------------------------------------------------- at run time

local function deliver(t, v)
  local ws = t.waiters
  t.waiters = {}
  for _, w in ipairs(ws) do
    w.value = v
    w.ev:set()
  end
  return #ws
end

-- A transient trigger fed from outside: every signal goes at once to the
-- steps waiting now, or nowhere.
local function pump(t, ch)
  while true do
    local v, ok = ch:recv()
    if not ok then return end
    deliver(t, v)
  end
end

-- The case's state of trigger `trig`, made on first use.
local function state(case, trig)
  local t = case.triggers[trig.name]
  if t then return t end
  local ext = case.signals[trig.name]
  if ext ~= nil and not knhk.is_channel(ext) then
    error("ctx.signals['" .. trig.name .. "'] must be a knhk.channel, got " .. S.describe(ext), 0)
  end
  if trig.transient then
    t = { transient = true, waiters = {} }
    if ext then case.helpers:spawn_local(pump, t, ext) end
  else
    t = { ch = ext or knhk.channel(1024) }
  end
  case.triggers[trig.name] = t
  return t
end

-- At the start of a case: the transient triggers fed from outside start
-- listening now (a signal that comes before anyone waits is dropped, not
-- kept for the first who waits).
function M.start(case, declared)
  for name, trig in pairs(declared) do
    if trig.transient and case.signals[name] ~= nil then state(case, trig) end
  end
end

-- Waits for source `on`: returns its value (if any) and whether the value
-- was taken from a channel (a losing branch of a deferred choice gives it
-- back, so that no message is lost). A closed channel never fires: as a
-- branch of a deferred choice it just never wins; `closed_raises` (a step
-- that waits for this source alone) raises instead, as it would wait for
-- ever. A function as `closed_raises` is called instead (a deferred
-- choice's: it raises once every branch found its channel closed).
function M.wait(case, on, closed_raises)
  local what = nil
  if S.is_step(on) then
    if on.kind == "timer" then
      knhk.sleep(on.seconds)
      return nil, false
    end
    local t = state(case, on)
    if t.transient then
      local w = { ev = knhk.event() }
      t.waiters[#t.waiters + 1] = w
      local ok, err = pcall(w.ev.wait, w.ev)
      if not ok then
        for i, x in ipairs(t.waiters) do
          if x == w then table.remove(t.waiters, i) break end
        end
        error(err, 0)
      end
      return w.value, false
    end
    what = "trigger '" .. on.name .. "' (its channel, ctx.signals['" .. on.name .. "'])"
    on = t.ch
  end
  if knhk.is_channel(on) then
    local v, ok = on:recv()
    if not ok then
      if type(closed_raises) == "function" then
        closed_raises()
      elseif closed_raises then
        error("wait_for: " .. (what or "its channel") .. " is closed and empty, so it can never "
          .. "fire (expected an open channel, or one that still holds a message)", 0)
      end
      knhk.event():wait()
    end
    return v, true
  end
  on:wait() -- an event or a token
  return nil, false
end

-- Gives back a value a losing branch took (see M.wait).
function M.give_back(case, on, v)
  if S.is_step(on) then on = state(case, on).ch end
  on:send(v)
end

-- ------------------------------------------------------ wait_for, signal

S.define("wait_for", {
  role = "node",
  compile = function(ctx, step, src)
    if S.is_step(step.on) and step.on.kind == "trigger" then M.declare(ctx, step, step.on, true) end
    local _, what = M.source_pattern(step.on)
    local node = ctx:node(step, {
      activity = function(frame)
        local v = M.wait(frame.case, step.on, true)
        if step.into then return { [step.into] = v } end
      end,
      label = "wait for " .. what, shape = "wait",
    })
    ctx:link(src, node.id)
    return node.id
  end,
})

-- P.wait_for(source [, { into = "var", name = }]).
function M.wait_for(on, t)
  M.check_source(on, "wait_for", 1, "the source", 2)
  if t ~= nil and type(t) ~= "table" then S.argerror("wait_for", 2, "table expected, got " .. type(t)) end
  t = t or {}
  S.check_fields(t, "wait_for", 2, { "into", "name" }, 2)
  if t.into ~= nil and type(t.into) ~= "string" then
    S.argerror("wait_for", 2, "into must name a case variable, got " .. S.describe(t.into))
  end
  S.check_name(t.name, "wait_for", 2, 2, true)
  return S.new("wait_for", (M.source_pattern(on)), { on = on, into = t.into, name = t.name })
end

S.define("signal", {
  role = "node",
  compile = function(ctx, step, src)
    M.declare(ctx, step, step.trigger, false)
    ctx.signals[step.trigger.name] = ctx.signals[step.trigger.name] or step
    local trig = step.trigger
    local node = ctx:node(step, {
      activity = function(frame)
        local case = frame.case
        local v = step.value
        if type(v) == "function" then v = v(case.vars) end
        local t = state(case, trig)
        if t.transient then deliver(t, v) else t.ch:send(v) end
      end,
      label = "signal '" .. trig.name .. "'", shape = "signal",
    })
    ctx:link(src, node.id)
    return node.id
  end,
})

-- P.signal(trigger, value): value may be a function of the case variables.
function M.signal(trig, value, t)
  if not (S.is_step(trig) and trig.kind == "trigger") then
    S.argerror("signal", 1, "trigger (P.transient_trigger or P.persistent_trigger) expected, got "
      .. S.describe(trig))
  end
  return S.new("signal", trig.pattern, { trigger = trig, value = value, name = S.name_opt(t, "signal", 3) })
end

return M
