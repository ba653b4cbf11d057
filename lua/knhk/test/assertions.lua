-- knhk.test.assertions: luassert assertions in the words of workflows,
-- registered when knhk.test is loaded (and luassert is there):
--
--   assert.cancelled(fn_or_task)            fn raised Cancelled, or the task
--                                           (joined) had been cancelled
--   assert.error_group(fn [, n])            fn raised an error group (of n)
--   assert.completes_within(seconds, fn)    fn returned within `seconds` of
--                                           the runtime's clock (virtual
--                                           time under clock = "virtual")
--
-- and their negations (assert.is_not.cancelled, ...). Each returns what it
-- caught: the Cancelled error, the group, fn's results.
local knhk = require "knhk"
local errors = require "knhk.errors"
local check = require "knhk.check"

local M = {}

local function pack(...) return { n = select("#", ...), ... } end

-- What an argument is, for a message: a number is shown, anything else by
-- its type.
local function got(v)
  if type(v) == "number" then return tostring(v) end
  return type(v)
end

-- Our assertions write their whole message into arguments[1]; say's
-- template is "%s" and the argument is not formatted again.
local function message(arguments, text)
  arguments[1] = text
  arguments.n = 1
  arguments.nofmt = { true }
end

local function clock_kind() return knhk.clock.kind() end

-- A mistake in an assertion's arguments, raised at the spec's line: past
-- this module's frames and luassert's own.
local PAST_LUASSERT = { "/luassert/", "/say/" }
local function refuse(msg) check.raise(msg, PAST_LUASSERT) end

function M.register(describe_error)
  local ok, assert = pcall(require, "luassert")
  local ok2, say = pcall(require, "say")
  if not ok or not ok2 then return false end

  -- assert.cancelled(fn | task)
  local function cancelled(state, arguments, level)
    local target = arguments[1]
    local run
    if knhk.is_task(target) then
      run = function() return target:join() end
    elseif check.callable(target) then
      run = target
    else
      refuse(string.format("bad argument #1 to 'cancelled' (function, callable object or task "
        .. "expected, got %s)", got(target)))
    end
    local what = knhk.is_task(target) and "the task" or "the function"
    local res = pack(pcall(run))
    if res[1] then
      message(arguments, "Expected " .. what .. " to be cancelled, but it "
        .. (knhk.is_task(target) and "completed" or "returned normally"))
      return false
    end
    local err = res[2]
    if errors.is_cancelled(err) then
      message(arguments, "Expected " .. what .. " not to be cancelled, but it was: " .. tostring(
        errors.is_task_error(err) and err.value or err))
      return true, { err, n = 1 }
    end
    -- another error: for the negation it is no answer but a failure of its
    -- own, raised as it is
    if not state.mod then error(err, 0) end
    message(arguments, "Expected " .. what .. " to be cancelled, but it failed with "
      .. describe_error(err))
    return false
  end
  say:set("assertion.knhk.cancelled.positive", "%s")
  say:set("assertion.knhk.cancelled.negative", "%s")
  assert:register("assertion", "cancelled", cancelled, "assertion.knhk.cancelled.positive",
    "assertion.knhk.cancelled.negative")

  -- assert.error_group(fn [, n])
  local function error_group(state, arguments, level)
    local fn, n = arguments[1], arguments[2]
    if not check.callable(fn) then
      refuse(string.format("bad argument #1 to 'error_group' (function or callable object expected, "
        .. "got %s)", got(fn)))
    end
    if n ~= nil and (type(n) ~= "number" or n % 1 ~= 0 or n < 1) then
      refuse(string.format("bad argument #2 to 'error_group' (whole number >= 1 expected, got %s)",
        got(n)))
    end
    local of = n and string.format(" of %d errors", n) or ""
    local ok, err = pcall(fn)
    if ok then
      message(arguments, "Expected an error group" .. of .. ", but the function returned normally")
      return false
    end
    local g = err
    if errors.is_task_error(g) and errors.is_group(g.value) then g = g.value end
    if not errors.is_group(g) then
      if not state.mod then error(err, 0) end
      message(arguments, "Expected an error group" .. of .. ", but the function failed with "
        .. "a single error:\n" .. describe_error(err))
      return false
    end
    if n and #g.errors ~= n then
      message(arguments, string.format("Expected an error group of %d errors, but got %s", n,
        describe_error(g)))
      return false, { g, n = 1 }
    end
    message(arguments, "Expected no error group" .. of .. ", but got " .. describe_error(g))
    return true, { g, n = 1 }
  end
  say:set("assertion.knhk.error_group.positive", "%s")
  say:set("assertion.knhk.error_group.negative", "%s")
  assert:register("assertion", "error_group", error_group, "assertion.knhk.error_group.positive",
    "assertion.knhk.error_group.negative")

  -- assert.completes_within(seconds, fn): fn runs in a scope that is
  -- cancelled at the deadline, so a function that would wait for ever
  -- ends there and the assertion fails, instead of hanging the test.
  local function completes_within(state, arguments, level)
    local seconds, fn = arguments[1], arguments[2]
    if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 then
      refuse(string.format("bad argument #1 to 'completes_within' (number >= 0 expected, got %s)",
        got(seconds)))
    end
    if not check.callable(fn) then
      refuse(string.format("bad argument #2 to 'completes_within' (function or callable object "
        .. "expected, got %s)", got(fn)))
    end
    if knhk.current() == nil then
      refuse("completes_within: must run inside a knhk task (inside knhk.test.wrap or knhk.run)")
    end
    local kind = clock_kind()
    local start = knhk.now()
    local scope, res = knhk.move_on_after(seconds, function() return pack(fn()) end)
    local elapsed = knhk.now() - start
    if scope.cancelled_caught then
      message(arguments, string.format("Expected the function to complete within %g s (%s time), "
        .. "but it was still running at the deadline, where it was cancelled", seconds, kind))
      return false
    end
    if elapsed > seconds then
      message(arguments, string.format("Expected the function to complete within %g s (%s time), "
        .. "but it took %g s", seconds, kind, elapsed))
      return false
    end
    message(arguments, string.format("Expected the function not to complete within %g s (%s "
      .. "time), but it completed after %g s", seconds, kind, elapsed))
    return true, res
  end
  say:set("assertion.knhk.completes_within.positive", "%s")
  say:set("assertion.knhk.completes_within.negative", "%s")
  assert:register("assertion", "completes_within", completes_within,
    "assertion.knhk.completes_within.positive", "assertion.knhk.completes_within.negative")
  return true
end

return M
