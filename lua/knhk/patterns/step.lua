-- knhk.patterns.step: steps, the building blocks of a workflow definition.
--
-- A step is a description (a table with the Step metatable): its `kind`
-- says which family module compiles and runs it, `pattern` the catalogue id
-- it expresses, `where` the file:line that wrote it (for messages). Steps
-- are checked when constructed (a caller's mistake raises there, with the
-- caller's line); what needs the whole definition (a join's split, a name
-- someone refers to) is checked when the workflow is built.
local check = require "knhk.check"
local codec = require "knhk.codec"
local getmetatable = debug.getmetatable -- (why: knhk/check.lua)
local M = {}

local Step = {}
Step.__index = Step
M.Step = Step

-- kind -> { role = "task"|"split"|"join"|"node"|"composite", compile = fn, ... }
M.kinds = {}

function M.define(kind, spec)
  assert(not M.kinds[kind], "step kind defined twice: " .. kind)
  M.kinds[kind] = spec
end

function M.is_step(v) return getmetatable(v) == Step end

-- The objects of class mt (`what`: "a workflow") are refused where a task
-- would get a copy of them (a spawn's snapshot, a message, a result),
-- saying so. Copying one is not attempted: a workflow is a compiled net of
-- closures over its steps, whose identity it relies on (the workflow built
-- per step, triggers matched by their step), with conditions compiled from
-- text in environments of their own. The class is knhk's, so the codec's
-- usual hint (register the class) would only mislead.
function M.stays_in_its_vm(mt, what)
  require("knhk").codec.register_staying(mt, what .. " (knhk.patterns), which cannot be sent to "
    .. "another worker: build it in the task that runs it, or share it with spawn_local")
end
M.stays_in_its_vm(Step, "a workflow step")

-- "file.lua:12" of the code that wrote a step: the first frame on the
-- stack outside this library (counting levels would be thrown off by tail
-- calls, e.g. `return P.task(...)`).
function M.where()
  for level = 3, 40 do
    local info = debug.getinfo(level, "Sl")
    if not info then break end
    local src = info.short_src or "?"
    if info.what ~= "C" and src ~= "(tail call)" and not src:find("knhk/patterns/", 1, true) then
      return src:match("[^/]*$") .. ":" .. tostring(info.currentline or "?")
    end
  end
  return "?"
end

-- A new step of `kind` for pattern `pattern`.
function M.new(kind, pattern, fields)
  fields.kind = kind
  fields.pattern = pattern
  fields.where = M.where()
  return setmetatable(fields, Step)
end

-- What a value is, in messages: Lua's type, or the kind of a step.
function M.describe(v)
  if M.is_step(v) then return v.kind .. " step" end
  return type(v)
end

-- What v, given where a number was expected, is in messages: a number's
-- value (2.5, -1, NaN, as check.got says it), a string's type and text,
-- quoted (string "3": not to be read as the number 3), else its type.
function M.describe_number(v)
  if type(v) == "number" then return check.got(v, "number") end
  if type(v) == "string" then return string.format("string %q", v) end
  return M.describe(v)
end

-- error(), worded like Lua's own argument errors, at the user's line: a
-- refusal as the core API's are (check.error).
function M.argerror(fname, n, msg, level)
  check.error(string.format("bad argument #%d to '%s' (%s)", n, fname, msg), (level or 2) + 1)
end

-- The fields table t given to fname (argument n) may have, listed in
-- `known` (and, if `list`, its list of 1..n): any other key is refused, so
-- that a misspelt field (jion =, otherwize =, nme =) is an error at the
-- line that wrote it, not a field silently ignored and a workflow that
-- does something else. `what` ("branch 2") names a table inside argument n.
function M.check_fields(t, fname, n, known, level, what, list)
  for k in pairs(t) do
    local ok = list and type(k) == "number" and k >= 1 and k % 1 == 0
    for i = 1, #known do if known[i] == k then ok = true break end end
    if not ok then
      M.argerror(fname, n, (what and (what .. ": ") or "") .. "unknown field "
        .. (type(k) == "string" and ("'" .. k .. "'") or ("[" .. tostring(k) .. "]")) .. "; it takes: "
        .. table.concat(known, ", ") .. (list and ", and a list" or ""), (level or 2) + 1)
    end
  end
end

-- The name of a step whose one optional argument n is { name = }: nil or
-- a table with a name, or nothing else.
local NAME_ONLY = { "name" }
function M.name_opt(t, fname, n, level)
  level = (level or 2) + 1
  if t == nil then return nil end
  if type(t) ~= "table" or M.is_step(t) then M.argerror(fname, n, "table expected, got " .. M.describe(t), level) end
  M.check_fields(t, fname, n, NAME_ONLY, level)
  M.check_name(t.name, fname, n, level, true)
  return t.name
end

function M.check_name(v, fname, n, level, optional)
  if v == nil and optional then return end
  if type(v) ~= "string" or v == "" then
    M.argerror(fname, n, "name (a non-empty string) expected, got " .. M.describe(v), (level or 2) + 1)
  end
end

function M.check_count(v, fname, n, what, level, min)
  min = min or 0
  if type(v) ~= "number" or v % 1 ~= 0 or v < min then
    M.argerror(fname, n, what .. " must be a whole number >= " .. min .. ", got "
      .. M.describe_number(v), (level or 2) + 1)
  end
end

-- The short name of a task function: its file and line (a callable
-- object's: those of its __call, and what it is).
function M.function_name(fn)
  local info = debug.getinfo(check.called_function(fn), "S")
  local src = (info.short_src or "?"):match("[^/]*$")
  local name = src .. ":" .. tostring(info.linedefined)
  if type(fn) ~= "function" then name = name .. " (callable " .. type(fn) .. ")" end
  return name
end

-- A task's function runs as a portable task, on whichever worker takes
-- it: one that cannot travel there (a userdata, a table of a class
-- knhk.codec does not know) is refused when the step is written, for what
-- knhk.spawn would refuse it as, rather than when a case runs it. Returns
-- the refusal (`what`, e.g. "step 2", names fn), or nil. What fn holds (a
-- function's upvalues, an object's fields) is looked at when its task
-- starts (raise_spawn_refused).
function M.travel_refusal(fn, what)
  local why = codec.refusal(fn)
  if why then return what .. " cannot travel to the worker that runs it: it is " .. why end
end

-- The same, raised as argument n of fname at the user's line.
function M.check_travels(fn, fname, n, what, level)
  local why = M.travel_refusal(fn, what)
  if why then M.argerror(fname, n, why, (level or 2) + 1) end
end

-- Raises err, raised by the spawn of a task of `step` as its case ran:
-- a refusal of what the task's function holds (an upvalue, an object's
-- field), at the line that wrote the step. (Raised inside knhk's runner,
-- it names no line of the program.) Any other error goes on as it is.
function M.raise_spawn_refused(step, err)
  if type(err) ~= "string" then error(err, 0) end
  error(string.format("%s: %s%s: %s", step.where, step.kind,
    step.name and (" '" .. step.name .. "'") or "", err), 0)
end

-- A body: a step, or a function or callable object (which becomes a
-- task). `what` names the place in messages, e.g. "branch 2".
function M.as_step(v, fname, n, what, level)
  if M.is_step(v) then return v end
  if check.callable(v) then
    M.check_travels(v, fname, n, what, (level or 2) + 1)
    return M.kinds.task.make(nil, v, (level or 2) + 1)
  end
  M.argerror(fname, n, what .. " must be a function, a callable object or a step, got "
    .. M.describe(v), (level or 2) + 1)
end

-- Conditions: a function (or callable object) of the case variables, or a
-- Lua expression over them as a string (which also labels the diagram).
-- Returns fn, label.
local cond_env_mt = {}
function M.as_condition(v, fname, n, what, level)
  if check.callable(v) then return v, nil end
  if type(v) == "string" then
    local name = "=condition '" .. v .. "'"
    local chunk = loadstring("return (" .. v .. ")", name) -- one expression, one value
    if not chunk then
      -- the message of the text as written, without the parentheses added
      local plain, err = loadstring("return " .. v, name)
      err = plain and "it is not one expression" or err
      M.argerror(fname, n, what .. " '" .. v .. "' is not a Lua expression: " .. err, (level or 2) + 1)
    end
    -- evaluated with the case variables as its globals (the standard
    -- library is still reachable: names the variables do not have)
    local env = setmetatable({}, cond_env_mt)
    setfenv(chunk, env)
    return function(vars)
      rawset(env, "\0vars", vars)
      return chunk()
    end, v
  end
  M.argerror(fname, n, what .. " must be a function, a callable object or a Lua expression "
    .. "string, got " .. M.describe(v), (level or 2) + 1)
end
cond_env_mt.__index = function(env, k)
  local v = rawget(env, "\0vars")[k]
  if v ~= nil then return v end
  return _G[k]
end

-- ------------------------------------------------- building and running

-- Steps run through a workflow built from them (see knhk.patterns.workflow);
-- the same step builds the same workflow, so it is kept.
local built = setmetatable({}, { __mode = "k" })
function M.built(step)
  local wf = built[step]
  if not wf then
    wf = require("knhk.patterns.workflow").build(step, nil, 3)
    built[step] = wf
  end
  return wf
end

-- step.execute(ctx), with a dot, passes ctx as self: each method refuses a
-- self that is not a step (check.method).
local steps = { [Step] = true }
Step.execute = check.method(steps, "workflow step", "execute", function(self, ctx)
  local result = M.built(self):execute(ctx) -- not a tail call: errors name the caller's line
  return result
end)
Step.to_mermaid = check.method(steps, "workflow step", "to_mermaid", function(self)
  return M.built(self):to_mermaid()
end)
Step.to_dot = check.method(steps, "workflow step", "to_dot", function(self)
  return M.built(self):to_dot()
end)

function Step:__tostring()
  return "knhk.patterns " .. self.kind .. (self.name and (" '" .. self.name .. "'") or "")
    .. " (" .. self.where .. ")"
end

return M
