-- knhk.check: argument checks for the public API, worded like Lua's own
--     bad argument #1 to 'sleep' (number expected, got NaN)
-- and raised at the caller's line. `level` follows error(): 2 (the
-- default) blames the caller of the API function that runs the check (or,
-- where that is knhk's own code or a coroutine's base, the program past
-- it: `blame`, below).
-- getmetatable is debug.getmetatable throughout knhk: LuaJIT 2.1's trace
-- recorder compiles getmetatable() of an io file, an ffi namespace or a
-- string buffer to a wrong value (the userdata itself, or garbage that
-- crashes later), and knhk meets such values from user code (a snapshot
-- refusing io.stdout, an error value, a wrong self). debug.getmetatable
-- records correctly, and sees through __metatable, as knhk's checks want.
local type, error, format, tostring, getmetatable = type, error, string.format, tostring, debug.getmetatable

local M = {}

-- How a bad value is named in a message: its type, except for a number
-- where a number was expected: then its value (NaN, -1, 2.5), since its
-- type was not the problem.
function M.got(v, expected)
  if type(v) == "number" and expected:find("number", 1, true) then
    if v ~= v then return "NaN" end
    return tostring(v)
  end
  return type(v)
end

-- A count written as text (a command-line option, an environment
-- variable): decimal digits only, in lo..hi; else nil. tonumber alone
-- would take "1e1", "0x2" and " 2" for numbers a person did not write.
function M.count_text(text, lo, hi)
  local n = type(text) == "string" and text:match("^%d+$") and tonumber(text)
  if not n or n < lo or n > hi then return nil end
  return n
end

-- Predicates: nil when v is acceptable, else what was expected.
local want = {}
M.want = want

-- A function, or a table or userdata whose metatable's __call is a
-- function: what Lua calls as it calls a function (the C side's
-- is_callable, lua/src/klua_core.c, says the same).
local rawget = rawget
function M.callable(v)
  local t = type(v)
  if t == "function" then return true end
  if t ~= "table" and t ~= "userdata" then return false end
  local mt = getmetatable(v)
  return type(mt) == "table" and type(rawget(mt, "__call")) == "function"
end
-- The function a call of v runs: v itself, or its __call; nil when v is
-- not callable. (For what names a callable object by its code: a place,
-- a line.)
function M.called_function(v)
  if type(v) == "function" then return v end
  if M.callable(v) then return rawget(getmetatable(v), "__call") end
end
function want.callable(v)
  if not M.callable(v) then return "function or callable object" end
end
function want.table(v) if type(v) ~= "table" then return "table" end end
function want.string(v) if type(v) ~= "string" then return "string" end end
function want.boolean(v) if type(v) ~= "boolean" then return "boolean" end end
-- a number that is not NaN (infinities are fine: "sleep forever")
function want.number(v) if type(v) ~= "number" or v ~= v then return "number" end end
-- a number >= 0, not NaN (a duration)
function want.nonnegative(v) if type(v) ~= "number" or not (v >= 0) then return "number >= 0" end end
-- a whole number >= min (and <= max, if given)
function want.whole(v, min, max)
  if type(v) ~= "number" or v ~= v or v % 1 ~= 0 or v < min or (max and v > max) then
    return max and format("whole number in %d..%d", min, max) or format("whole number >= %d", min)
  end
end

local blame -- (below, with the rest of where an error is raised)

-- The refusal last raised in this VM: a caller's mistake, a string that
-- names the caller's line. knhk.nursery raises one its body raised as it
-- was raised, as it would be outside a nursery, rather than in a TaskError
-- whose traceback would show only knhk's frames below that line. The C
-- side's refusals (klua_core.c's raise_at) are kept in the same slot.
local registry = debug.getregistry()
local function raise_refusal(e)
  registry["knhk.refusal"] = e
  error(e, 0)
end

-- Whether e is the refusal last raised in this VM.
function M.is_refusal(e) return type(e) == "string" and e == registry["knhk.refusal"] end

function M.fail(n, fname, expected, v, level)
  blame(format("bad argument #%d to '%s' (%s expected, got %s)", n, fname, expected, M.got(v, expected)),
    (level or 2) + 1)
end

-- Argument n of fname must satisfy want[kind]; extra arguments go to it.
function M.arg(kind, v, n, fname, level, ...)
  local w = want[kind](v, ...)
  if w then M.fail(n, fname, w, v, (level or 2) + 1) end
  return v
end

-- A duration (a timeout, a step of the clock), as knhk.sleep takes one: a
-- number (NaN is not one), then one >= 0, each refused in sleep's words.
-- 0 is at once; math.huge is never. (sleep writes it out: see scope.lua)
function M.duration(v, n, fname, level)
  level = (level or 2) + 1
  M.arg("number", v, n, fname, level)
  M.arg("nonnegative", v, n, fname, level)
end

-- An options table, or nil (then {}). `known`, if given, lists the
-- options fname takes: any other key is refused, so that a misspelt option
-- ({ timout = 5 }) is an error rather than silently ignored.
function M.opts(v, n, fname, level, known)
  if v == nil then return {} end
  if type(v) ~= "table" then M.fail(n, fname, "options table", v, (level or 2) + 1) end
  if known then
    for k in pairs(v) do
      local ok = false
      for i = 1, #known do if known[i] == k then ok = true break end end
      if not ok then
        blame(format("bad argument #%d to '%s' (unknown option %s; it takes: %s)", n, fname,
          type(k) == "string" and ("'" .. k .. "'") or tostring(k), table.concat(known, ", ")),
          (level or 2) + 1)
      end
    end
  end
  return v
end

-- Field `key` of options table n, if present, must satisfy want[kind].
function M.field(kind, opts, key, n, fname, level, ...)
  local v = opts[key]
  if v == nil then return nil end
  local w = want[kind](v, ...)
  if w then
    blame(format("bad argument #%d to '%s' (%s: %s expected, got %s)", n, fname, key, w,
      M.got(v, w)), (level or 2) + 1)
  end
  return v
end

-- ------------------------------------------------------ where it is raised
-- A mistake is reported where the program made it, however deep in knhk
-- it was found: at the first frame outside knhk's own modules (and outside
-- C functions such as pcall). `also`: patterns of sources to pass over too
-- (another library between knhk and the program, as luassert is for
-- knhk.test's assertions).
local function passed_over(source, also)
  if source:match("knhk/[%w_/]+%.lua$") then return true end
  for i = 1, also and #also or 0 do
    if source:match(also[i]) then return true end
  end
  return false
end

-- Lua code of the program, with a line to show.
local function is_program(info, also)
  return info.what ~= "C" and info.currentline > 0 and not passed_over(info.source, also)
end

-- "file:line: ", as error() writes a place.
local function place_of(info) return format("%s:%d: ", info.short_src, info.currentline) end

-- Where the stack goes on once a coroutine's frames are passed, none of
-- them the program's (its frame went in a tail call, or the task's
-- function is knhk's own): for the root task's own coroutine, the
-- program's call of knhk.run, as if the root's function had been called
-- there; for another task's, the line that defined its function; anywhere
-- else no place, rather than one inside knhk (knhk.core says which: the C
-- side's refusals use it too).
local function below_the_stack() return require("knhk.core").place_below() end

-- The place of the first frame of the program from `level` on (numbered
-- as debug.getinfo numbers them for the caller of program_place).
local function program_place(level, also)
  level = level + 1
  while true do
    local info = debug.getinfo(level, "Sl")
    if not info then return below_the_stack() end
    if is_program(info, also) then return place_of(info) end
    level = level + 1
  end
end

-- error(msg, level), as Lua raises it, for the checks that blame a given
-- frame (the caller of the API function, mostly): when that frame is
-- knhk's own or the base of a coroutine, the program's frame past it is
-- blamed instead; a C function that the program called the API through (a
-- pcall) keeps Lua's own answer, no place. A C function that knhk called
-- (a cancel scope's pcall, when the program's function made the API call
-- as a tail call and its frame went) is passed over like knhk's frames.
blame = function(msg, level)
  level = level + 1
  local info = debug.getinfo(level, "Sl")
  local place
  if info and is_program(info) then
    place = place_of(info)
  elseif info and info.what == "C" and is_program(debug.getinfo(level + 1, "Sl") or info) then
    place = ""
  else
    place = program_place(level)
  end
  raise_refusal(place .. msg)
end

-- error(msg) at the user's line (past the sources matching `also` too).
function M.raise(msg, also) raise_refusal(program_place(2, also) .. msg) end

-- error(msg, level) for a caller's mistake whose message a module writes
-- out itself (one that want's predicates do not say): the frame `level`
-- names blamed as error() would blame it (2, the default: the caller of
-- the function that calls M.error), or the program's frame past it, and
-- kept as this VM's refusal, as every refusal above is.
function M.error(msg, level) blame(msg, (level or 2) + 1) end

-- Where the program called the function that calls caller_place (through
-- C functions such as pcall), for knhk.run: the root task's stack goes on
-- there. "" when knhk's own code called it (knhk-lua, knhk.test), or none.
function M.caller_place()
  local level = 3
  while true do
    local info = debug.getinfo(level, "Sl")
    if not info then return "" end
    if info.what ~= "C" then return is_program(info) and place_of(info) or "" end
    level = level + 1
  end
end

-- ------------------------------------------------------------ methods

-- knhk's objects by metatable, so that a message says "got channel"
-- rather than "got userdata".
local kind_names = {}

-- Names the objects whose metatable is mt.
function M.name_kind(mt, name) kind_names[mt] = name end

-- What v is, for a message: a knhk object's kind, else its type.
function M.what(v) return kind_names[getmetatable(v)] or type(v) end

-- Argument n of fname is not what was expected: raised at the user's line
-- (for checks made below the function the user called).
function M.refuse(n, fname, expected, v)
  M.raise(format("bad argument #%d to '%s' (%s expected, got %s)", n, fname, expected, M.got(v, expected)))
end

-- A method called with '.' instead of ':' (h.join() for h:join()), or on
-- another object: raised at the user's line.
function M.bad_self(fname, expected, v)
  M.raise(format("bad argument #1 to '%s' (%s expected, got %s)", fname, expected, M.what(v)))
end

-- f as a method of the objects whose metatable is in `accepts` (a set):
-- any other self is refused with bad_self before f runs.
function M.method(accepts, expected, fname, f)
  return function(self, ...)
    if not accepts[getmetatable(self)] then M.bad_self(fname, expected, self) end
    return f(self, ...)
  end
end

-- The same for an f that takes nothing but its self. Without the varargs:
-- a task that waits through a vararg frame (sem:acquire(), ev:wait())
-- holds it a few slots higher on its stack, enough to outgrow LuaJIT's
-- first coroutine stack (see runtime.lua's wait loops).
function M.self_method(accepts, expected, fname, f)
  return function(self)
    if not accepts[getmetatable(self)] then M.bad_self(fname, expected, self) end
    return f(self)
  end
end

-- Makes a missing method of a class an error that names it
-- ("channel has no method 'len'") instead of a call of nil.
function M.no_missing_methods(class, kind)
  return setmetatable(class, { __index = function(_, k)
    M.raise(format("%s has no method '%s'", kind, tostring(k)))
  end })
end

return M
