-- knhk.scope: cancel scopes, timeouts, checkpoints, sleep, and tokens.
--
-- A scope is a region of a task bound to a cancel token, a child of the
-- scope around it (a shield's is a root). Cancelled, every checkpoint
-- inside raises Cancelled; it unwinds to the outermost cancelled scope,
-- which catches it (scope.cancelled_caught). Checkpoints are level
-- triggered: caught inside the scope, the next checkpoint raises again.
local core = require "knhk.core"
local codec = require "knhk.codec"
local check = require "knhk.check"
local errors = require "knhk.errors"
local R = require "knhk.runtime"
local getmetatable = debug.getmetatable -- (why: knhk/check.lua)

local pcall, select, unpack = pcall, select, unpack
local co_yield = coroutine.yield
local pack, telemetry, tel_enabled = R.pack, R.telemetry, R.tel_enabled

local M = {}

local CANCEL_DEADLINE = 2

-- ------------------------------------------------------------------ time

local core_now = core.now

-- knhk.now() -> seconds on the runtime's monotonic clock
function M.now()
  local ns = core_now()
  if ns == nil then R.raise("knhk.now: no runtime is running (call it inside knhk.run)") end
  return ns / 1e9
end

local sleep_until = R.waiter(core.sleep_try)

-- knhk.sleep(seconds): a checkpoint that waits
function M.sleep(seconds)
  -- check.want.number, written out: check.arg's frames (it takes varargs)
  -- would take a sleeping task past LuaJIT's first coroutine stack
  if type(seconds) ~= "number" or seconds ~= seconds then check.fail(1, "sleep", "number", seconds) end
  if seconds < 0 then check.fail(1, "sleep", "number >= 0", seconds) end
  local ns = core_now()
  if ns == nil then R.raise("knhk.sleep: must be called inside a knhk task (inside knhk.run)") end
  -- sleep(0) is a checkpoint that lets the other tasks run (as in Trio);
  -- a deadline already passed would not yield, and a loop of sleep(0)
  -- would keep its worker to itself
  if seconds <= 0 then return M.checkpoint() end
  return sleep_until(ns + seconds * 1e9)
end

-- knhk.checkpoint(): raises Cancelled if the current scope is cancelled,
-- and lets other tasks run. Inside a C function that called back into Lua
-- (a table.sort comparator, a string.gsub callback), which cannot be
-- suspended, it is a cancellation point only: it raises, or returns.
function M.checkpoint()
  local reason = core.cancelled()
  if reason then R.raise_cancelled(reason) end
  if not core.reschedule() then return end
  co_yield(R.MARK_WAIT)
  reason = core.cancelled()
  if reason then R.raise_cancelled(reason) end
end

-- ----------------------------------------------------------------- scopes

local Scope = {}
Scope.__index = Scope
M.Scope = Scope
check.name_kind(Scope, "cancel scope")
-- A scope is a place on its task's stack: another worker could do nothing
-- with a copy (the codec's hint to register the class would mislead).
codec.register_staying(Scope, "a cancel scope, which cannot be sent to another "
  .. "worker: it belongs to the task that opened it (cancel it there, or share it with spawn_local)")

function Scope:cancel()
  if getmetatable(self) ~= Scope then check.bad_self("cancel", "cancel scope", self) end
  self.cancel_called = true
  core.token_cancel(self.token)
end

function Scope:__tostring()
  return "knhk.cancel_scope" .. (self.cancelled_caught and " (cancelled)" or "")
end

-- Runs fn(scope, ...) in a new scope; deadline: runtime nanoseconds or nil.
local function in_scope(deadline_ns, shield, fn, ...)
  local tok, prev, dl = core.scope_enter(deadline_ns, shield)
  local scope = setmetatable({ token = tok, shield = shield, cancel_called = false,
                               cancelled_caught = false }, Scope)
  local res = pack(pcall(fn, scope, ...))
  local reason, outer = core.scope_exit(tok, prev, dl)
  -- as Trio's: cancel() was called, or the scope's own deadline has passed
  if deadline_ns and core_now() >= deadline_ns then scope.cancel_called = true end
  if tel_enabled() then telemetry().scope_drop(core.handle_ptr(tok), shield, reason, res, outer) end
  if res[1] then return scope, unpack(res, 2, res.n) end
  local e = res[2]
  -- Cancelled unwinds to the outermost cancelled scope: this one, unless
  -- the scope around it is cancelled too (then that one catches it).
  if errors.is_signal(e) and reason ~= 0 and (shield or not outer) then
    scope.cancelled_caught = true
    scope.reason = reason
    return scope
  end
  error(e, 0)
end
M.in_scope = in_scope

local function deadline_of(seconds)
  local ns = core_now()
  if ns == nil then return nil end
  return ns + seconds * 1e9
end

-- A timeout is a duration, as sleep's is (check.duration). A deadline is
-- a time on the clock: one already past is due.

-- knhk.cancel_scope(fn [, opts]) -> scope, fn's results. opts.deadline
-- (knhk.now() time), opts.timeout (seconds from now), opts.shield.
function M.cancel_scope(fn, opts)
  check.arg("callable", fn, 1, "cancel_scope")
  opts = check.opts(opts, 2, "cancel_scope", 2, { "timeout", "deadline", "shield" })
  check.field("number", opts, "deadline", 2, "cancel_scope")
  check.field("number", opts, "timeout", 2, "cancel_scope")
  check.field("nonnegative", opts, "timeout", 2, "cancel_scope") -- (a number by now: its range)
  if core_now() == nil then
    R.raise("knhk.cancel_scope: must be called inside a knhk task (inside knhk.run)")
  end
  local deadline = opts.deadline and opts.deadline * 1e9
  if opts.timeout then
    local d = deadline_of(opts.timeout)
    deadline = deadline and math.min(deadline, d) or d
  end
  return in_scope(deadline, opts.shield and true or false, fn)
end

local function call_with(scope, fn, ...) return fn(...) end

-- knhk.move_on_after(seconds, fn, ...) -> scope, results
function M.move_on_after(seconds, fn, ...)
  check.duration(seconds, 1, "move_on_after")
  check.arg("callable", fn, 2, "move_on_after")
  local d = deadline_of(seconds)
  if d == nil then R.raise("knhk.move_on_after: must be called inside a knhk task (inside knhk.run)") end
  return in_scope(d, false, call_with, fn, ...)
end

-- knhk.fail_after(seconds, fn, ...) -> results; raises a TimeoutError
function M.fail_after(seconds, fn, ...)
  check.duration(seconds, 1, "fail_after")
  check.arg("callable", fn, 2, "fail_after")
  local d = deadline_of(seconds)
  if d == nil then R.raise("knhk.fail_after: must be called inside a knhk task (inside knhk.run)") end
  local res = pack(in_scope(d, false, call_with, fn, ...))
  local scope = res[1]
  if scope.cancelled_caught and scope.reason == CANCEL_DEADLINE then
    error(errors.timeout(seconds, "knhk.fail_after"), 2)
  end
  return unpack(res, 2, res.n)
end

-- ----------------------------------------------------------------- tokens

local mts = core.metatables()
local Token = check.no_missing_methods({}, "token")
M.Token = Token
mts.token.__index = Token
check.name_kind(mts.token, "token")
local tokens = { [mts.token] = true }
mts.token.__tostring = function(t)
  return "knhk.token" .. (core.token_is_cancelled(t) and " (cancelled)" or "")
end
codec.register_handle("token", mts.token, function(h) return select(2, core.export(h)) end,
  function(n, copy) return core.import(6, n, copy) end)

function M.is_token(v) return getmetatable(v) == mts.token end

-- knhk.token([parent]) -> a cancel token (a root, or a child of parent)
function M.token(parent)
  if parent ~= nil and getmetatable(parent) ~= mts.token then check.fail(1, "token", "token", parent) end
  return core.token_new(parent)
end

Token.child = check.method(tokens, "token", "child", core.token_new)
Token.cancel = check.method(tokens, "token", "cancel", core.token_cancel)
Token.is_cancelled = check.method(tokens, "token", "is_cancelled", core.token_is_cancelled)

-- t:wait(): waits (a checkpoint) until the token is cancelled
Token.wait = check.self_method(tokens, "token", "wait", R.waiter(core.token_wait_try))

return M
