-- knhk.telemetry: OpenTelemetry spans and metrics as OTLP/JSON lines.
--
--   knhk.telemetry.start{ file = "run.jsonl", interval = 1 }  -- seconds
--   knhk.telemetry.span("order.check", { ["order.id"] = id }, function() ... end)
--   local c = knhk.telemetry.counter("orders.shipped", { unit = "{order}" })
--   c:add(1, { ["order.carrier"] = "cheap" })
--   knhk.telemetry.stop()
--
-- The runtime records its own spans and metrics (nurseries and their
-- tasks, waits, cancel tokens, scopes, workflow patterns; the executor's
-- counters) under the names of registry/, which `names` holds (generated
-- from the registry by the build). See README.md ("Telemetry").
local K = require "knhk.ffi"
K.need "telemetry"
local check = require "knhk.check"
local getmetatable = debug.getmetatable -- (why: knhk/check.lua)

local ffi, C = K.ffi, K.C
local type, pairs, tostring, error = type, pairs, tostring, error

local M = {}

-- The names of the registry, built next to the library (knhk/core.so):
-- the one loaded, else the one package.cpath finds (KNHK_LIB may name a
-- library elsewhere), looked for only then.
-- (knhk-lua's loadfile, when there is one, loads the file's bytecode
-- compiled with knhk-lua when the file is the one compiled.)
local function load_names()
  local load = debug.getregistry()["knhk.loadfile"] or loadfile
  local f, err = load((K.path:match("^(.*)/[^/]*$") or ".") .. "/telemetry_names.lua")
  if f then return f() end
  local core = package.searchpath("knhk.core", package.cpath)
  if core then
    f, err = load(core:match("^(.*)/[^/]*$") .. "/telemetry_names.lua")
    if f then return f() end
  end
  error("knhk.telemetry: cannot load the registry's names (built with knhk/core.so): " .. tostring(err), 0)
end
M.names = load_names()
local N = M.names

function M.enabled() return C.knhk_telemetry_enabled() ~= 0 end
local enabled = M.enabled

-- --------------------------------------------------------- attributes

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(ch)
    if ch == '"' then return '\\"' elseif ch == "\\" then return "\\\\" end
    return string.format("\\u%04x", ch:byte())
  end) .. '"'
end

-- A number OTLP writes as an int (exactly: within 2^53).
local function is_int(v) return v % 1 == 0 and v > -2^53 and v < 2^53 end

local function any_value(v, where)
  local t = type(v)
  if t == "string" then return '{"stringValue":' .. json_string(v) .. "}" end
  if t == "boolean" then return '{"boolValue":' .. tostring(v) .. "}" end
  if t == "number" then
    if is_int(v) then
      return string.format('{"intValue":"%d"}', v)
    end
    if v ~= v or v == math.huge or v == -math.huge then return '{"stringValue":"' .. tostring(v) .. '"}' end
    return string.format('{"doubleValue":%.17g}', v)
  end
  if t == "table" then
    -- OpenTelemetry's attributes are scalars and lists of scalars: a map
    -- (or a list of lists) would need kvlistValue, which the attributes of
    -- a span or a metric do not carry and registry-live-check has no type
    -- for. Refused, as a function is, rather than written as an empty list.
    local n = #v
    -- the first key that is not the list's, in sorted order: pairs' order
    -- varies from run to run, the message should not
    local shown
    for k in pairs(v) do
      if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
        local s = type(k) == "string" and ("'" .. k .. "'") or tostring(k)
        if not shown or s < shown then shown = s end
      end
    end
    if shown then
      error(string.format("%s is a table with key %s, not a list (expected a string, number, boolean or list)",
        where, shown), 0)
    end
    -- OpenTelemetry's lists are of one type: one Lua type, and a list of
    -- numbers that are not all integers is written as doubles throughout
    local parts, first, doubles = {}, n > 0 and type(v[1]), false
    for i = 1, n do
      local e = v[i]
      if type(e) == "table" then
        error(string.format("%s holds a table at [%d] (a list holds strings, numbers or booleans)", where, i), 0)
      end
      if type(e) ~= first then
        error(string.format("%s mixes a %s at [1] and a %s at [%d] (a list holds values of one type)",
          where, first, type(e), i), 0)
      end
      if first == "number" and not is_int(e) then doubles = true end
    end
    for i = 1, n do
      local e = v[i]
      if doubles then
        parts[i] = e ~= e and '{"doubleValue":"NaN"}'
          or e == math.huge and '{"doubleValue":"Infinity"}'
          or e == -math.huge and '{"doubleValue":"-Infinity"}'
          or string.format('{"doubleValue":%.17g}', e)
      else
        parts[i] = any_value(e, where .. "[" .. i .. "]")
      end
    end
    return '{"arrayValue":{"values":[' .. table.concat(parts, ",") .. "]}}"
  end
  error(where .. " is a " .. t .. " (expected a string, number, boolean or list)", 0)
end

-- { key = value } -> an OTLP attribute list (JSON), keys sorted.
local function encode_attrs(attrs, fname, argn)
  if attrs == nil then return nil end
  local keys = {}
  for k in pairs(attrs) do
    if type(k) ~= "string" then
      check.error(string.format("bad argument #%d to '%s' (attribute names must be strings, got %s)",
        argn, fname, type(k)), 3)
    end
    keys[#keys + 1] = k
  end
  if #keys == 0 then return nil end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do
    local ok, v = pcall(any_value, attrs[k], "attribute '" .. k .. "'")
    if not ok then check.error(string.format("bad argument #%d to '%s' (%s)", argn, fname, v), 3) end
    parts[i] = '{"key":' .. json_string(k) .. ',"value":' .. v .. "}"
  end
  return "[" .. table.concat(parts, ",") .. "]"
end
M.encode_attributes = encode_attrs

-- ------------------------------------------------------------ lifecycle

-- knhk.telemetry.start{ file = path [, interval = seconds] [, service = name] }
-- -> true, or nil, message, code (the file cannot be opened, or already
-- recording).
function M.start(opts)
  check.arg("table", opts, 1, "start")
  if type(opts.file) ~= "string" or opts.file == "" then
    check.error("bad argument #1 to 'start' (field 'file' must be a file name, got "
      .. (opts.file == "" and "an empty string" or type(opts.file)) .. ")", 2)
  end
  local interval = opts.interval
  if interval ~= nil and (type(interval) ~= "number" or not (interval > 0)) then
    check.error("bad argument #1 to 'start' (field 'interval' must be a number of seconds > 0, got "
      .. tostring(interval) .. ")", 2)
  end
  if opts.service ~= nil and type(opts.service) ~= "string" then
    check.error("bad argument #1 to 'start' (field 'service' must be a string, got "
      .. type(opts.service) .. ")", 2)
  end
  local rc = C.klua_telemetry_start(opts.file, interval or 1, opts.service)
  if rc == K.EALREADY then return nil, "knhk.telemetry.start: already recording", rc end
  if rc ~= 0 then
    return nil, "knhk.telemetry.start: cannot open " .. opts.file .. ": " .. ffi.string(C.knhk_strerror(rc)), rc
  end
  return true
end

-- knhk.telemetry.stop() -> true, or nil and a message when not recording.
-- Writes everything recorded so far, and the metrics a last time.
function M.stop()
  local rc = C.knhk_telemetry_stop()
  if rc ~= 0 then return nil, "knhk.telemetry.stop: not recording", rc end
  return true
end

-- knhk.telemetry.flush(): writes what was recorded so far (and metrics).
function M.flush()
  return C.knhk_telemetry_flush() == 0
end

-- ---------------------------------------------------------------- spans

local name_ids = {}
local function name_id(name)
  local id = name_ids[name]
  if not id then
    id = C.knhk_telemetry_intern(name)
    if id < 0 then error("knhk.telemetry: out of memory", 0) end
    name_ids[name] = id
  end
  return id
end

local parent_box = ffi.new("uint64_t[1]")

-- Begins a span (child of the running task's current span); returns a
-- handle for end_span, or nil when not recording.
function M.begin_span(name)
  if not enabled() then return nil end
  local span = C.knhk_telemetry_span_begin(name_id(name), parent_box)
  if span == 0 then return nil end
  return { span = span, parent = parent_box[0] }
end

-- Ends a span begun by begin_span: attrs { key = value }, err (a failure:
-- the span's status is an error with that message).
function M.end_span(h, attrs, err)
  if h == nil then return end
  local json = encode_attrs(attrs, "span", 2)
  C.knhk_telemetry_span_end(h.span, h.parent, err and 2 or 0, json, json and #json or 0,
    err and tostring(err) or nil)
end

local function pack(...) return { n = select("#", ...), ... } end

-- (one that cannot raise, and shows a table raised as an error, as the CLI does)
local message_of = require("knhk.errors").readable

-- knhk.telemetry.span(name, attrs, fn, ...) -> fn(...)'s results. Runs fn
-- inside a span: spans, nurseries and tasks begun inside are its children.
-- An error from fn marks the span as failed and is raised again.
function M.span(name, attrs, fn, ...)
  check.arg("string", name, 1, "span")
  if attrs ~= nil and type(attrs) ~= "table" then check.fail(2, "span", "table", attrs) end
  check.arg("callable", fn, 3, "span")
  encode_attrs(attrs, "span", 2) -- a bad attribute is the caller's mistake, before fn runs
  local h = M.begin_span(name)
  local res = pack(pcall(fn, ...))
  if res[1] then
    M.end_span(h, attrs)
    return unpack(res, 2, res.n)
  end
  local cancelled = type(res[2]) == "table" and getmetatable(res[2]) ~= nil
    and require("knhk.errors").is_signal(res[2])
  M.end_span(h, attrs, (not cancelled) and message_of(res[2]) or nil)
  error(res[2], 0)
end

-- A span without duration, now (for events such as a scope's drop).
function M.instant(name, attrs)
  if not enabled() then return end
  local json = encode_attrs(attrs, "instant", 2)
  C.knhk_telemetry_span_instant(name_id(name), json, json and #json or 0)
end

-- ---------------------------------------------------- runtime's own spans

-- A cancel scope ends (knhk.runtime's scopes): res is what its function
-- gave (pcall's results); it caught its own cancellation if that raised a
-- Cancelled while its token, and not the token around it, was cancelled.
function M.scope_drop(token, shield, reason, res, outer_cancelled)
  if not enabled() then return end
  local caught = not res[1] and require("knhk.errors").is_signal(res[2]) and reason ~= 0
    and (shield or not outer_cancelled)
  local a = { [N.attr.CANCEL_TOKEN_ID] = tonumber(C.knhk_telemetry_token_id(token)),
              [N.attr.CANCEL_SCOPE_CAUGHT] = caught and true or false,
              [N.attr.CANCEL_SCOPE_SHIELD] = shield and true or false }
  if reason ~= 0 then a[N.attr.CANCEL_REASON] = M.reason_name(reason) end
  M.instant(N.span.CONCURRENCY_CANCEL_SCOPE_DROP, a)
end

local reasons = { [K.CANCEL_EXPLICIT] = "EXPLICIT", [K.CANCEL_DEADLINE] = "DEADLINE",
                  [K.CANCEL_SIBLING] = "SIBLING", [K.CANCEL_SIGNAL] = "SIGNAL",
                  [K.CANCEL_SHUTDOWN] = "SHUTDOWN" }
function M.reason_name(reason)
  return N.enum.CANCEL_REASON[reasons[tonumber(reason)] or "SHUTDOWN"]
end

-- ------------------------------------------------ the patterns' handle

local catalogue
local families -- catalogue family -> registry member value
local function pattern_info(id)
  catalogue = catalogue or require "knhk.patterns.catalogue"
  local ok, e = pcall(catalogue.get, id)
  if not ok or type(e) ~= "table" then return nil end
  return e
end

-- The telemetry handle a workflow case reports to (ctx.telemetry of
-- wf:execute): each case and each step becomes a knhk.workflow.pattern.execute
-- span (steps nest under their case, through the tasks that run them);
-- events go on to `forward` (the caller's own handle) too.
function M.pattern_handle(forward)
  local open = {} -- "task id / case / step" -> stack of spans begun
  local function key(a)
    local cur = require("knhk").current()
    return (cur and cur.id or 0) .. "\0" .. tostring(a.case_id) .. "\0" .. tostring(a.step)
  end
  local handle = {}
  local told -- the caller's handle raised once: said on stderr, not again
  -- An observer that fails must not change what it observes: an error
  -- from the caller's handle is reported (once per case) and the case
  -- goes on. A cancellation raised in it goes on unwinding.
  local function tell(name, a)
    local ok, err = pcall(forward.event, forward, name, a)
    if ok then return end
    if require("knhk.errors").is_signal(err) then error(err, 0) end
    if told then return end
    told = true
    io.stderr:write(("knhk: ctx.telemetry:event(%q) raised: %s (the workflow goes on; later errors from this handle are not shown)\n")
      :format(name, message_of(err)))
  end
  function handle.event(_, name, a)
    if forward then tell(name, a) end
    if not enabled() then return end
    local attrs = { [N.attr.WORKFLOW_CASE_ID] = tostring(a.case_id) }
    if a.step ~= nil then
      attrs[N.attr.WORKFLOW_STEP_NAME] = tostring(a.step)
      local p = a.pattern and pattern_info(a.pattern)
      if p then
        attrs[N.attr.PATTERN_ID] = p.id
        attrs[N.attr.PATTERN_NAME] = p.name
        attrs[N.attr.PATTERN_FAMILY] = p.family
      end
    elseif a.workflow ~= nil then
      attrs[N.attr.WORKFLOW_NAME] = tostring(a.workflow)
    end
    if name == "knhk.workflow.case.start" or name == "knhk.workflow.step.start" then
      local k = key(a)
      local stack = open[k] or {}
      open[k] = stack
      stack[#stack + 1] = { h = M.begin_span(N.span.WORKFLOW_PATTERN_EXECUTE), attrs = attrs,
                            case_id = a.case_id }
    elseif name == "knhk.workflow.case.end" or name == "knhk.workflow.step.end" then
      local outcome = a.status or a.outcome
      local k = key(a)
      if name == "knhk.workflow.case.end" then
        -- steps still open were cancelled with their case: their runners
        -- unwound without reporting an end
        for k2, stack in pairs(open) do
          if k2 ~= k and stack[1] and stack[1].case_id == a.case_id then
            for i = #stack, 1, -1 do
              local e = stack[i]
              e.attrs[N.attr.WORKFLOW_OUTCOME] = N.enum.WORKFLOW_OUTCOME.CANCELLED
              M.end_span(e.h, e.attrs)
            end
            open[k2] = nil
          end
        end
      end
      local stack = open[k]
      local top = stack and table.remove(stack)
      if stack and #stack == 0 then open[k] = nil end
      if top then
        for k2, v in pairs(top.attrs) do if attrs[k2] == nil then attrs[k2] = v end end
      end
      attrs[N.attr.WORKFLOW_OUTCOME] = outcome
      if top then
        M.end_span(top.h, attrs, outcome == "failed" and (a.error or "failed") or nil)
      else -- ended without having started (withdrawn first, a failing condition)
        M.instant(N.span.WORKFLOW_PATTERN_EXECUTE, attrs)
      end
    end
  end
  return handle
end

-- ---------------------------------------------------------- instruments

-- Each kind of instrument is a class of its own with its one method: a
-- counter and an updowncounter add, a histogram records, a gauge sets.
-- Another kind's method is an error that names the kind and the method,
-- not a value recorded as if it fitted (a counter "set" to -7 would export
-- a negative monotonic sum).
local KINDS = { counter = 0, updowncounter = 1, histogram = 2, gauge = 3 }
local classes = {} -- kind name -> the class (metatable) of its instruments

-- OpenTelemetry's rule for an instrument's name: a letter, then letters,
-- digits and _ . - /, at most 255 in all. A name outside it ("", "my
-- counter") would be exported and then refused or mangled by a collector.
local function refuse_bad_name(name, fname)
  if #name <= 255 and name:find("^%a[%w_%.%-/]*$") then return end
  local why = #name > 255 and ("a name of " .. #name .. " characters")
    or (name == "" and "an empty string"
      or '"' .. name:gsub("%c", function(c) return "\\" .. c:byte() end) .. '"')
  check.error("bad argument #1 to '" .. fname .. "' (instrument name expected: a letter, then letters, "
    .. "digits, '_', '.', '-' or '/', at most 255 in all; got " .. why .. ")", 4)
end

local function instrument(kind, fname, name, opts)
  check.arg("string", name, 1, fname, 3)
  refuse_bad_name(name, fname)
  opts = check.opts(opts, 2, fname, 3, kind == "histogram" and { "unit", "bounds" } or { "unit" })
  if opts.unit ~= nil and type(opts.unit) ~= "string" then
    check.error("bad argument #2 to '" .. fname .. "' (field 'unit' must be a string, got "
      .. type(opts.unit) .. ")", 3)
  end
  local bounds = opts.bounds
  if kind == "histogram" then
    bounds = bounds or { 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000 }
    if type(bounds) ~= "table" or #bounds == 0 then
      check.error("bad argument #2 to '" .. fname .. "' (field 'bounds' must be a list of numbers)", 3)
    end
    for i = 1, #bounds do
      local b = bounds[i]
      -- (the bucket above the last bound is always there: +inf is not one)
      if type(b) == "number" and (b ~= b or b == math.huge or b == -math.huge) then
        check.error(string.format("bad argument #2 to '%s' (field 'bounds' must be finite numbers, "
          .. "got %s at %d)", fname, check.got(b, "number"), i), 3)
      end
      if type(b) ~= "number" or (i > 1 and b <= bounds[i - 1]) then
        check.error("bad argument #2 to '" .. fname .. "' (field 'bounds' must be ascending numbers)", 3)
      end
    end
  end
  -- (fields are set whole, false for none: a missing one would be taken for
  -- a missing method)
  return setmetatable({ name = name, kind = KINDS[kind], unit = opts.unit or "", bounds = bounds or false,
                        series = {} }, classes[kind])
end

-- The id of the time series of instrument `inst` for attrs (made once per
-- attribute set).
local function series_id(inst, attrs, fname)
  local json = encode_attrs(attrs, fname, 2) or ""
  local id = inst.series[json]
  if id then return id end
  local b, nb = nil, 0
  if inst.bounds then
    nb = #inst.bounds
    b = ffi.new("double[?]", nb, inst.bounds)
  end
  id = C.knhk_telemetry_instrument(inst.name, inst.kind, inst.unit, json ~= "" and json or nil, b, nb)
  if id < 0 then error("knhk.telemetry: cannot make instrument " .. inst.name, 0) end
  inst.series[json] = id
  return id
end

-- What series_id's encoding refuses, refused while not recording too: a
-- call that is wrong is wrong whether or not it is recorded. Scalars with
-- string names pass at the cost of a walk; anything else is encoded once,
-- which raises what is wrong with it (from the same depth as series_id).
local function check_attrs(attrs, fname)
  for k, v in pairs(attrs) do
    local t = type(v)
    if type(k) ~= "string" or (t ~= "string" and t ~= "number" and t ~= "boolean") then
      encode_attrs(attrs, fname, 2)
      return
    end
  end
end

-- The class of the instruments of `kind`, whose one method `fname` records
-- a value that check_value (if any) accepts.
local function class(kind, fname, check_value)
  local c = check.no_missing_methods({}, kind)
  c.__index = c
  check.name_kind(c, kind)
  c[fname] = function(self, v, attrs)
    if getmetatable(self) ~= c then check.bad_self(fname, kind, self) end
    if type(v) ~= "number" then check.fail(1, fname, "number", v) end
    -- NaN and the infinities measure nothing, and a NaN added to a sum
    -- stays in it: refused here (NaN passes every comparison a check could
    -- make, such as a counter's v < 0)
    if v ~= v or v == math.huge or v == -math.huge then
      check.error(string.format("bad argument #1 to '%s' (%s '%s' takes a finite number, got %s)",
        fname, kind, self.name, check.got(v, "number")), 2)
    end
    if check_value then check_value(v, fname) end
    if attrs ~= nil and type(attrs) ~= "table" then check.fail(2, fname, "table", attrs) end
    if not enabled() then
      if attrs ~= nil then check_attrs(attrs, fname) end
      return
    end
    C.knhk_telemetry_record(series_id(self, attrs, fname), v)
  end
  classes[kind] = c
  -- An instrument travels (a task may count into one its spawner made):
  -- its fields are plain, and its series ids name the process's registry.
  require("knhk.codec").register_class("knhk.telemetry." .. kind, c, "knhk.telemetry")
  return c
end

class("counter", "add", function(v, fname)
  if v < 0 then
    check.error("bad argument #1 to '" .. fname .. "' (a counter only goes up, got " .. v .. ")", 3)
  end
end)
class("updowncounter", "add")
class("histogram", "record")
class("gauge", "set")

-- knhk.telemetry.counter(name [, { unit = }]) -> c; c:add(n [, attrs])
function M.counter(name, opts) return (instrument("counter", "counter", name, opts)) end
-- knhk.telemetry.updowncounter(name [, { unit = }]) -> c; c:add(n [, attrs])
function M.updowncounter(name, opts) return (instrument("updowncounter", "updowncounter", name, opts)) end
-- knhk.telemetry.histogram(name [, { unit =, bounds = {...} }]) -> h; h:record(v [, attrs])
function M.histogram(name, opts) return (instrument("histogram", "histogram", name, opts)) end
-- knhk.telemetry.gauge(name [, { unit = }]) -> g; g:set(v [, attrs])
function M.gauge(name, opts) return (instrument("gauge", "gauge", name, opts)) end

return M
