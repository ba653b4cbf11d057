-- knhk.clock: the runtime's clock (README.md, "Time and the clock").
--
-- A runtime reads one clock, chosen by knhk.run's `clock` option: "real"
-- (monotonic, the default) or "virtual": it starts at 0 and, as soon as
-- every task is waiting, jumps to the earliest pending timer (a sleep, a
-- deadline, a timeout) and fires it, so a workflow with a three-day timeout
-- runs in milliseconds. knhk.now(), sleeps, cancel scopes' deadlines,
-- move_on_after, fail_after and the patterns' timers all follow it.
--
-- Real work (knhk.exec, the reactor's file operations) is awaited in real
-- time: while it is in flight a virtual clock stands still.
-- core/include/knhk/clock.h has the rules; core/src/clock.c the invariant.
local core = require "knhk.core"
local check = require "knhk.check"
local R = require "knhk.runtime"

local error, type = error, type

local M = {}

-- the last time the clock can show: from there on it is "never" (KLUA_NEVER_NS, lua/src/klua.h)
local MAX_SECONDS = 1.8e10
local function knhk_now() return require("knhk").now() end

local KINDS = { [0] = "real", [1] = "virtual" }
M.KINDS = { real = 0, virtual = 1 }

local function running_rt(fname)
  if not R.running() then
    check.error("knhk.clock." .. fname .. ": no runtime is running (call it inside knhk.run)", 3)
  end
  return R.rt
end

-- knhk.clock.kind() -> "real" or "virtual": the running runtime's clock.
function M.kind()
  local rt = running_rt("kind")
  local K = require "knhk.ffi"
  K.need "clock"
  return KINDS[K.C.klua_clock_kind(rt)]
end

-- knhk.clock.advance(seconds): moves a virtual clock forward by hand, then
-- waits until every timer that became due has fired, in deadline order
-- (equal deadlines in the order they were set; klua_clock.c), so when it
-- returns knhk.now() is `seconds` later. The wait lets other tasks run,
-- and the tasks those timers woke on this worker were queued ahead of the
-- caller: on the default schedule they have run, up to their next wait,
-- by then (on other workers they run alongside; a seeded schedule picks
-- among them and the caller). The wait is uncancellable, so advance is not
-- a cancellation point: a cancelled scope does not stop the clock moving.
-- The clock then jumps on by itself once every task waits again. Raises
-- when the runtime's clock is real.
function M.advance(seconds)
  check.duration(seconds, 1, "advance")
  local rt = running_rt("advance")
  local K = require "knhk.ffi"
  K.need "clock"
  local ffi, C = K.ffi, K.C
  if C.klua_clock_kind(rt) ~= M.KINDS.virtual then
    check.error("knhk.clock.advance: the runtime's clock is real; run with { clock = \"virtual\" }"
      .. " to move time by hand", 2)
  end
  if not core.current() then
    check.error("knhk.clock.advance: must be called inside a knhk task (inside knhk.run)", 2)
  end
  -- the clock counts nanoseconds in 64 bits: about 570 years to "never"
  if knhk_now() + seconds >= MAX_SECONDS then
    check.fail(1, "advance", string.format("number that keeps the clock below %d years",
      math.floor(MAX_SECONDS / (365 * 86400))), seconds)
  end
  -- A task that cannot wait here (inside a C function that called back
  -- into Lua) is refused before the clock moves: wait_try raises so.
  core.wait_try(true)
  core.wait_end()
  local err = ffi.new("int[1]")
  local a = C.klua_clock_advance(core.current_ptr(), seconds, err)
  if a == nil then
    error("knhk.clock.advance: " .. ffi.string(C.knhk_strerror(err[0])), 2)
  end
  -- uncancellable: the timer is due now, the reactor fires it at once
  R.wait(function() return C.klua_clock_advanced(a) ~= 0 end, function() return false end, true)
  C.klua_clock_advance_free(a)
end

return M
