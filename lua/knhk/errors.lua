-- knhk.errors: the error values knhk raises, and how to recognise them.
--
--   Cancelled    raised at a checkpoint inside a cancelled scope; it unwinds
--                to that scope, which catches it. Do not swallow it: to run
--                cleanup, catch, clean up, and raise it again, e.g.
--                    local ok, err = pcall(work)
--                    cleanup()
--                    if not ok then error(err, 0) end
--                (knhk.is_cancelled(err) tells it apart.)
--   TimeoutError raised by knhk.fail_after when its deadline passed.
--   TaskError    a task's error, carried to whoever joins it: .message,
--                .traceback (text, from the VM the task ran in), .value.
--   ErrorGroup   several errors from one nursery: .errors, in the order they
--                happened; tostring lists them all.
local getmetatable = debug.getmetatable -- (why: knhk/check.lua)
local M = {}

-- tostring that cannot raise. An error object whose __tostring raises (or
-- returns something other than a string) is named with what went wrong:
-- reporting an error must not become an error of its own, which inside an
-- error handler would leave only "error in error handling".
local tostring, pcall, type = tostring, pcall, type -- (a script may replace the globals)
local function safe_tostring(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  local why = not ok and type(s) == "string" and s
    or (ok and "it returned a " or "it raised a ") .. type(s) .. " value"
  return "(a " .. type(v) .. " value whose __tostring failed: " .. why .. ")"
end
M.tostring = safe_tostring

-- t[k] that cannot raise: an error object may be a "strict" table whose
-- __index raises for a field it lacks (nil then).
local function index(t, k) return t[k] end
local function safe_field(t, k)
  local ok, v = pcall(index, t, k)
  if ok then return v end
  return nil
end

local Cancelled = { __name = "knhk.Cancelled" }
Cancelled.__index = Cancelled
Cancelled.__tostring = function(e)
  return "Cancelled" .. (e.reason and (" (" .. e.reason .. ")") or "")
end
M.Cancelled = Cancelled

local reasons = { "explicit", "deadline", "sibling failed", "signal", "shutdown" }

function M.cancelled(reason_code, scope)
  return setmetatable({ reason = reasons[reason_code] or nil, scope = scope }, Cancelled)
end

local codes = {}
for code, name in ipairs(reasons) do codes[name] = code end

-- The reason code of a Cancelled that holds nothing but its reason (what
-- the runtime raised, untouched), so a task it ended can record just the
-- code; nil for any other value.
function M.plain_cancelled_code(e)
  if getmetatable(e) ~= Cancelled then return nil end
  local k = next(e)
  if k == nil then return 0 end
  if k ~= "reason" or next(e, k) ~= nil then return nil end
  return codes[e.reason]
end

-- The Cancelled signal itself, unwinding to its scope. The runtime
-- decides what to catch with this one.
function M.is_signal(e)
  return getmetatable(e) == Cancelled
end

-- knhk.is_cancelled: the signal, or the error that joining a cancelled
-- task raises (a TaskError whose .value is the task's Cancelled). The
-- latter does not unwind the joiner's scopes: the joiner was not cancelled.
function M.is_cancelled(e)
  local mt = getmetatable(e)
  if mt == Cancelled then return true end
  return mt == M.TaskError and getmetatable(e.value) == Cancelled
end

local TimeoutError = { __name = "knhk.TimeoutError" }
TimeoutError.__index = TimeoutError
TimeoutError.__tostring = function(e) return e.message end
M.TimeoutError = TimeoutError

function M.timeout(seconds, where)
  return setmetatable({
    message = (where and (where .. ": ") or "") .. "timed out after " .. tostring(seconds) .. " s",
    seconds = seconds,
  }, TimeoutError)
end

function M.is_timeout(e)
  return getmetatable(e) == TimeoutError
end

local TaskError = { __name = "knhk.TaskError" }
TaskError.__index = TaskError
TaskError.__tostring = function(e)
  if e.traceback and e.traceback ~= "" then return e.message .. "\n" .. e.traceback end
  return e.message
end
M.TaskError = TaskError

function M.task_error(message, traceback, value)
  return setmetatable({ message = message, traceback = traceback, value = value }, TaskError)
end

function M.is_task_error(e)
  return getmetatable(e) == TaskError
end

local ErrorGroup = { __name = "knhk.ErrorGroup" }
ErrorGroup.__index = ErrorGroup
ErrorGroup.__tostring = function(g)
  local out = { string.format("%d errors in a nursery:", #g.errors) }
  for i, e in ipairs(g.errors) do
    out[#out + 1] = string.format("[%d] %s", i, safe_tostring(e))
  end
  return table.concat(out, "\n")
end
M.ErrorGroup = ErrorGroup

function M.group(errors)
  if #errors == 1 then return errors[1] end
  return setmetatable({ errors = errors }, ErrorGroup)
end

function M.is_group(e)
  return getmetatable(e) == ErrorGroup
end

-- The message of any error value, for logs and for TaskError.message.
function M.message(e)
  if type(e) == "string" then return e end
  local m = type(e) == "table" and safe_field(e, "message")
  if m then return safe_tostring(m) end
  return safe_tostring(e)
end

-- A TaskError's message for the value a task raised: the message of an
-- error that has one; a plain table, which has none, nil and false, shown
-- as the CLI shows them (error({ code = 7 }): "error raised with a table
-- value: { code = 7 }", not "table: 0x..."; error(nil): "error raised
-- with no value (nil)", not "nil").
function M.task_message(e)
  if e == nil or e == false
      or (type(e) == "table" and getmetatable(e) == nil and rawget(e, "message") == nil) then
    return M.readable(e)
  end
  return M.message(e)
end

-- Values as people read them (the REPL, error messages): tables one level
-- deep, keys sorted.
-- Entries shown of one table; the rest are counted, not printed (an error
-- raised with a 100 000-element list is one line a person can read).
local SHOW_MAX = 40

local function show(v, depth)
  depth = depth or 0
  if type(v) == "string" then return depth > 0 and string.format("%q", v) or v end
  if type(v) ~= "table" or getmetatable(v) ~= nil or depth > 1 then return safe_tostring(v) end
  local n, named = #v, {}
  for k in pairs(v) do
    if not (type(k) == "number" and k >= 1 and k <= n and k % 1 == 0) then named[#named + 1] = k end
  end
  -- The list, then the named fields. When they do not all fit, the named
  -- fields keep at least half the room: they usually say what the value is
  -- (code = 7), where the list's tail is more of the same.
  local nnamed = math.min(#named, math.max(SHOW_MAX - n, SHOW_MAX / 2))
  local nlist = math.min(n, SHOW_MAX - nnamed)
  local parts = {}
  for i = 1, nlist do parts[#parts + 1] = show(v[i], depth + 1) end
  if nlist < n then parts[#parts + 1] = "... (" .. (n - nlist) .. " more)" end
  table.sort(named, function(a, b)
    if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then return a < b end
    return type(a) < type(b)
  end)
  for i = 1, nnamed do
    local k = named[i]
    local key = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or ("[" .. show(k, depth + 1) .. "]")
    parts[#parts + 1] = key .. " = " .. show(v[k], depth + 1)
  end
  if nnamed < #named then parts[#parts + 1] = "... (" .. (#named - nnamed) .. " more)" end
  return "{ " .. table.concat(parts, ", ") .. " }"
end
M.show = show

-- A task error's message. A value raised that is not a message (error({...}),
-- error(nil), error(false)) is named and shown, not printed as "table:
-- 0x..." or "nil"; an error object with a message or __tostring keeps it.
local function readable_task_error(e)
  local v = e.value
  local tv = type(v)
  if tv == "string" or tv == "number" then return e.message end
  local mt = tv == "table" and getmetatable(v)
  if tv == "table" and (safe_field(v, "message") ~= nil or (type(mt) == "table" and mt.__tostring)) then
    return e.message
  end
  if v == nil then -- nil itself, or a value that could not be copied out of its task
    if e.message == "nil" then return "error raised with no value (nil)" end
    local kind = safe_tostring(e.message):match("^(%a+): 0x%x+$")
    if kind then return "error raised with a " .. kind .. " value" end
    return e.message
  end
  return "error raised with a " .. tv .. " value: " .. show(v)
end

-- What an error says, for a person: a task error's readable message (as
-- above), a string as it is, an error object's message, and any other value
-- named and shown.
function M.readable(e)
  if M.is_task_error(e) then return readable_task_error(e) end
  if type(e) == "string" then return e end
  local m = type(e) == "table" and safe_field(e, "message")
  if type(e) == "table" and m ~= nil then return safe_tostring(m) end
  local mt = type(e) == "table" and getmetatable(e)
  if type(mt) == "table" and mt.__tostring then return safe_tostring(e) end
  if e == nil then return "error raised with no value (nil)" end
  return "error raised with a " .. type(e) .. " value: " .. show(e)
end

return M
