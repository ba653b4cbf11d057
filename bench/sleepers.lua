-- sleepers.lua: N tasks that sleep, for the `lua` suite's sleepers_1m rows.
--   knhk-lua bench/sleepers.lua N spawn|spawn_local cancel|signal
-- cancel: spawns N sleeping tasks in a nursery, cancels it, and prints
--   {"spawn_s":..,"cancel_s":..,"rss_mb":..} (RSS with every task asleep);
-- signal: spawns them, prints "ready", and sleeps: the harness sends
--   SIGINT and times how long the process takes to end.
-- As a plain luajit script (kind "coroutines"): N plain coroutines parked at
-- a yield, the peer.
local n, kind, mode = tonumber(arg[1]), arg[2], arg[3]

local function rss_mb()
  local f = io.open("/proc/self/statm")
  local pages = f:read("*n")
  pages = f:read("*n")
  f:close()
  return pages * 4096 / 2 ^ 20
end

if kind == "coroutines" then
  local ffi = require "ffi"
  ffi.cdef "typedef struct { long s, ns; } sl_ts; int clock_gettime(int, sl_ts *);"
  local ts = ffi.new("sl_ts")
  local function t() ffi.C.clock_gettime(1, ts) return tonumber(ts.s) + tonumber(ts.ns) / 1e9 end
  local t0 = t()
  local cos = {}
  local yield = coroutine.yield
  local function sleeper() yield() end
  for i = 1, n do
    local co = coroutine.create(sleeper)
    coroutine.resume(co)
    cos[i] = co
  end
  local t1 = t()
  local rss = rss_mb()
  for i = 1, n do coroutine.resume(cos[i]) end -- "cancel": each runs to its end
  local t2 = t()
  io.write(string.format('{"spawn_s":%.4f,"cancel_s":%.4f,"rss_mb":%.1f}\n', t1 - t0, t2 - t1, rss))
  return
end

local spawn = kind == "spawn_local" and "spawn_local" or "spawn"
-- Each task says it started, then sleeps: the spawn figure ends when every
-- task sleeps, as the peer's ends when every coroutine is parked.
local function sleeper(started) started:release(); knhk.sleep(3600) end

local started = knhk.semaphore(0)
local function all_started() for _ = 1, n do started:acquire() end end

if mode == "signal" then
  knhk.nursery(function(nur)
    for _ = 1, n do nur[spawn](nur, sleeper, started) end
    all_started()
    io.write("ready\n")
    io.flush()
    knhk.sleep(3600)
  end)
  return
end

local t0, t1, t2, rss = knhk.now()
knhk.nursery(function(nur)
  for _ = 1, n do nur[spawn](nur, sleeper, started) end
  all_started()
  knhk.sleep(0) -- the last one started reaches its sleep
  t1 = knhk.now()
  rss = rss_mb()
  nur:cancel()
end)
t2 = knhk.now()
io.write(string.format('{"spawn_s":%.4f,"cancel_s":%.4f,"rss_mb":%.1f}\n', t1 - t0,
  t2 - t1, rss))
