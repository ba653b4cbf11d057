-- bench-lua.lua: suite `lua` — the knhk Lua layer against a single-VM
-- coroutine scheduler in plain LuaJIT (bench/single_vm.lua), same work,
-- same invocation. JSON lines on stdout (../shared/BENCH.md).
--   luajit bench/bench-lua.lua [--runs N]
local ffi = require "ffi"
local cjson = require "cjson"
local knhk = require "knhk"
local single = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/single_vm.lua")

local runs = 3
for i = 1, #arg do
  if arg[i] == "--runs" then runs = tonumber(arg[i + 1]) or runs end
end

ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *ts);
struct bench_mallinfo2 { size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks,
                         uordblks, fordblks, keepcost; };
struct bench_mallinfo2 mallinfo2(void);
]]
local ts = ffi.new("bench_timespec")
local function now_ns()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end

local function progress(...) io.stderr:write("  ", string.format(...), "\n") end

local function median(v)
  table.sort(v)
  return v[math.floor((#v + 1) / 2)]
end

local function percentile(v, p)
  table.sort(v)
  return v[math.max(1, math.floor(p * #v + 0.5))]
end

local function emit(bench, metric, unit, workers, value, peer_value, higher)
  local f = { suite = "lua", bench = bench, metric = metric, unit = unit, value = value,
              better = higher and "higher" or "lower", runs = runs }
  if workers then f.workers = workers end
  if peer_value then
    f.peer = "single_vm"
    f.peer_value = peer_value
    f.ratio = higher and value / peer_value or peer_value / value
  end
  io.write(cjson.encode(f), "\n")
  io.flush()
end

local BATCH = 8
local function trivial(x) return x end

-- Per-call spawn latency: batches of BATCH spawns timed together.
local function latency(spawn, nbatch, overhead)
  local samples, hs = {}, {}
  for b = 1, nbatch do
    local t0 = now_ns()
    for k = 1, BATCH do hs[#hs + 1] = spawn(trivial, k) end
    samples[b] = (now_ns() - t0 - overhead) / BATCH
    if #hs >= 4096 then
      for i = 1, #hs do hs[i]:join() end
      hs = {}
    end
  end
  for i = 1, #hs do hs[i]:join() end
  return percentile(samples, 0.5), percentile(samples, 0.99)
end

local function timer_overhead()
  local v = {}
  for i = 1, 10001 do
    local a = now_ns()
    v[i] = now_ns() - a
  end
  return median(v)
end

local function throughput(spawn, n)
  local t0 = now_ns()
  local hs = {}
  for i = 1, n do hs[i] = spawn(trivial, i) end
  for i = 1, n do hs[i]:join() end
  return n / ((now_ns() - t0) / 1e9)
end

-- ---------------------------------------------------------------- spawn

local function bench_spawn()
  local overhead = timer_overhead()
  progress("timer: %.0f ns per empty timed region, subtracted", overhead)
  local peer = { p50 = {}, p99 = {}, tput = {} }
  for r = 1, runs do
    single.run(function()
      peer.p50[r], peer.p99[r] = latency(single.spawn, 5000, overhead)
      peer.tput[r] = throughput(single.spawn, 200000)
    end)
  end
  local pp50, pp99, ptput = median(peer.p50), median(peer.p99), median(peer.tput)
  for _, kind in ipairs { "spawn", "spawn_local" } do
    for workers = 1, 2 do
      local p50, p99, tput = {}, {}, {}
      for r = 1, runs do
        knhk.run(function()
          local sp = knhk[kind]
          p50[r], p99[r] = latency(sp, 5000, overhead)
          tput[r] = throughput(sp, 200000)
        end, { workers = workers })
      end
      local base = kind == "spawn" and "spawn_latency" or "spawn_local_latency"
      emit(base, "p50", "ns", workers, median(p50), pp50, false)
      emit(base, "p99", "ns", workers, median(p99), pp99, false)
      emit(kind == "spawn" and "throughput" or "spawn_local_throughput", "tasks_per_s", "tasks/s",
        workers, median(tput), ptput, true)
    end
  end
end

-- ------------------------------------------------------------ cpu-bound

local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end

local function bench_cpu()
  local function ours(workers)
    return knhk.run(function()
      local t0 = now_ns()
      local hs = {}
      for i = 1, 64 do hs[i] = knhk.spawn(fib, 27) end
      for i = 1, 64 do hs[i]:join() end
      return (now_ns() - t0) / 1e9
    end, { workers = workers })
  end
  local t1, t2, ts = {}, {}, {}
  for r = 1, runs do
    t1[r] = ours(1)
    t2[r] = ours(2)
    ts[r] = single.run(function()
      local t0 = now_ns()
      local hs = {}
      for i = 1, 64 do hs[i] = single.spawn(fib, 27) end
      for i = 1, 64 do hs[i]:join() end
      return (now_ns() - t0) / 1e9
    end)
  end
  emit("cpu_bound_lua", "speedup", "x", 2, median(t1) / median(t2), nil, true)
  emit("cpu_bound_lua", "s", "s", 2, median(t2), median(ts), false)
end

-- ---------------------------------------------------- memory per sleeper

local function heap_bytes()
  collectgarbage()
  collectgarbage()
  return collectgarbage("count") * 1024 + tonumber(ffi.C.mallinfo2().uordblks)
end

local function bench_sleepers()
  local N = 100000
  local v, pv = {}, {}
  for r = 1, runs do
    v[r] = knhk.run(function()
      local before = heap_bytes()
      local per
      knhk.nursery(function(n)
        local ev = knhk.event()
        for _ = 1, N do n:spawn_local(function() ev:wait() end) end
        knhk.sleep(0.05) -- all started and waiting
        per = (heap_bytes() - before) / N
        ev:set()
      end)
      return per
    end, { workers = 1 })
    pv[r] = single.run(function()
      local before = heap_bytes()
      local ch = single.channel(1)
      local hs = {}
      for i = 1, N do hs[i] = single.spawn(function() return ch:recv() end) end
      local per
      single.spawn(function()
        per = (heap_bytes() - before) / N
        for _ = 1, N do ch:send(1) end
      end)
      for i = 1, N do hs[i]:join() end
      return per
    end)
  end
  emit("sleeping_task", "bytes", "bytes", 1, median(v), median(pv), false)
end

-- -------------------------------------------------------------- channels

local function bench_channels()
  local N = 200000
  local peer = {}
  for r = 1, runs do
    peer[r] = single.run(function()
      local ch = single.channel(1024)
      local t0 = now_ns()
      local c = single.spawn(function() for _ = 1, N do ch:recv() end end)
      single.spawn(function() for i = 1, N do ch:send(i) end end)
      c:join()
      return N / ((now_ns() - t0) / 1e9)
    end)
  end
  for workers = 1, 2 do
    local v = {}
    for r = 1, runs do
      v[r] = knhk.run(function()
        local ch = knhk.channel(1024)
        local t0 = now_ns()
        knhk.nursery(function(n)
          n:spawn(function(c, k) for _ = 1, k do c:recv() end end, ch, N)
          n:spawn(function(c, k) for i = 1, k do c:send(i) end end, ch, N)
        end)
        return N / ((now_ns() - t0) / 1e9)
      end, { workers = workers })
    end
    emit("channel", "msgs_per_s", "msgs/s", workers, median(v), median(peer), true)
  end
end

progress("spawn latency and throughput")
bench_spawn()
progress("cpu-bound Lua")
bench_cpu()
progress("memory per sleeping task")
bench_sleepers()
progress("channels")
bench_channels()
