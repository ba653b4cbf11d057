-- knhk.patterns.workflow: a built workflow — a definition that has been
-- checked as a whole and compiled — and the pattern-executor interface,
-- wf:execute(ctx) -> result.
local knhk = require "knhk"
local S = require "knhk.patterns.step"
local compile = require "knhk.patterns.compile"
local engine = require "knhk.patterns.engine"
local check = require "knhk.check"
local getmetatable = debug.getmetatable -- (why: knhk/check.lua)

local M = {}

local Workflow = {}
Workflow.__index = Workflow
M.Workflow = Workflow

function M.is_workflow(v) return getmetatable(v) == Workflow end
S.stays_in_its_vm(Workflow, "a workflow")

-- Builds `step` (checks the whole definition; raises the first refusal at
-- the caller's line, `level` above this function).
function M.build(step, opts, level)
  level = level or 2
  if not S.is_step(step) then
    if check.callable(step) then
      step = S.as_step(step, "workflow", 1, "the workflow", level + 1)
    else
      S.argerror("workflow", 1, "step expected, got " .. S.describe(step), level + 1)
    end
  end
  opts = opts or {}
  if type(opts) ~= "table" then S.argerror("workflow", 2, "table expected, got " .. type(opts), level + 1) end
  S.check_fields(opts, "workflow", 2, { "name" }, level + 1)
  if opts.name ~= nil then S.check_name(opts.name, "workflow", 2, level + 1) end
  local ok, net, ctx = pcall(compile.compile, step, opts.name)
  if not ok then
    local e = net
    if getmetatable(e) == compile.Refusal then check.error(e.message, level + 1) end
    error(e, 0)
  end
  return setmetatable({ root = step, net = net, name = opts.name or step.name, defs = ctx.defs,
                        triggers = ctx.triggers }, Workflow)
end

-- The pattern-executor interface. ctx (all optional):
--   case_id    a string or number naming the case (default "case-N")
--   vars       the case variables to start with (copied)
--   token      a knhk.token: cancelling it cancels the case
--   telemetry  an object with :event(name, attributes) (default: none)
--   signals    { trigger name = knhk.channel } for triggers fed from outside
-- result: status ("completed", "deadlocked", "cancelled" or "failed"),
-- case_id, vars, trace ({ step, event } in the order things happened), and
-- when it failed: step (its name), error (message), traceback; ended_by:
-- the explicit termination or cancel-case step that ended it; when it is
-- deadlocked, unfinished: the steps still holding tokens when it ended
-- with nothing left to run.
local CTX_FIELDS = { case_id = true, vars = true, token = true, telemetry = true, signals = true }

-- wf.execute(ctx), with a dot, passes ctx as self: each method refuses a
-- self that is not a workflow (check.method), not deep in the engine.
local workflows = { [Workflow] = true }

Workflow.execute = check.method(workflows, "workflow", "execute", function(self, ctx)
  if ctx == nil then ctx = {} end
  if type(ctx) ~= "table" then S.argerror("execute", 1, "table expected, got " .. type(ctx)) end
  for k in pairs(ctx) do -- a misspelt field would be ignored silently
    if not CTX_FIELDS[k] then
      S.argerror("execute", 1, "unknown ctx field "
        .. (type(k) == "string" and ("'" .. k .. "'") or S.describe(k))
        .. " (it takes case_id, vars, token, telemetry, signals)")
    end
  end
  if ctx.vars ~= nil and type(ctx.vars) ~= "table" then
    S.argerror("execute", 1, "ctx.vars must be a table, got " .. type(ctx.vars))
  end
  if ctx.token ~= nil and not knhk.is_token(ctx.token) then
    S.argerror("execute", 1, "ctx.token must be a knhk.token, got " .. S.describe(ctx.token))
  end
  local tel = ctx.telemetry
  if tel ~= nil and not (type(tel) == "table" and check.callable(tel.event)) then
    S.argerror("execute", 1, "ctx.telemetry must have an event method, got " .. S.describe(tel))
  end
  if ctx.signals ~= nil then
    if type(ctx.signals) ~= "table" then
      S.argerror("execute", 1, "ctx.signals must be a table, got " .. type(ctx.signals))
    end
    for name, ch in pairs(ctx.signals) do
      if not knhk.is_channel(ch) then
        S.argerror("execute", 1, "ctx.signals['" .. tostring(name) .. "'] must be a knhk.channel, got "
          .. S.describe(ch))
      end
      if not (self.triggers and self.triggers[name]) then -- a misspelt one would never fire
        local known = {}
        for t in pairs(self.triggers or {}) do known[#known + 1] = "'" .. t .. "'" end
        table.sort(known)
        S.argerror("execute", 1, "ctx.signals['" .. tostring(name) .. "']: the workflow has no trigger "
          .. "of that name (" .. (#known > 0 and ("its triggers: " .. table.concat(known, ", "))
          or "it has no trigger") .. ")")
      end
    end
  end
  if knhk.current() == nil then
    check.error("execute: must be called inside a knhk task (inside knhk.run)", 2)
  end
  if M.capture_hook then M.capture_hook(self) end
  return engine.execute(self, ctx)
end)

Workflow.to_mermaid = check.method(workflows, "workflow", "to_mermaid", function(self)
  return require("knhk.patterns.diagram").mermaid(self)
end)
Workflow.to_dot = check.method(workflows, "workflow", "to_dot", function(self)
  return require("knhk.patterns.diagram").dot(self)
end)

function Workflow:__tostring()
  return "knhk.patterns workflow" .. (self.name and (" '" .. self.name .. "'") or "")
end

return M
