-- bench-telemetry.lua: suite `telemetry`, the Lua half — spawn throughput
-- of Lua tasks with telemetry recording against the same work not
-- recording (peer "telemetry_off"), same invocation, runs interleaved.
-- As in bench-telemetry.c: `tasks_per_s` is the run while recording (the
-- reactor drains meanwhile), `tasks_per_s_written` adds writing every
-- remaining record (a flush at the end).
--   luajit bench/bench-telemetry.lua [--runs N]
local ffi = require "ffi"
local cjson = require "cjson"
local knhk = require "knhk"

local runs = 5
for i = 1, #arg do
  if arg[i] == "--runs" then runs = tonumber(arg[i + 1]) or runs end
end
local WORKERS, N = 2, 20000
local path = os.tmpname()

ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_tel_timespec;
int clock_gettime(int clk, bench_tel_timespec *ts);
]]
local ts = ffi.new("bench_tel_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local function median(v)
  local c = {}
  for i, x in ipairs(v) do c[i] = x end
  table.sort(c)
  return c[math.floor((#c + 1) / 2)]
end

local function emit(bench, metric, value, peer_value)
  io.write(cjson.encode { suite = "telemetry", bench = bench, metric = metric, unit = "tasks/s",
    workers = WORKERS, value = value, peer = "telemetry_off", peer_value = peer_value,
    ratio = value / peer_value, better = "higher", runs = runs }, "\n")
  io.flush()
end

local function trivial(x) return x end

local workloads = {
  lua_spawn = function(n) -- portable tasks: a snapshot each, any worker
    knhk.nursery(function(nur) for i = 1, n do nur:spawn(trivial, i) end end)
  end,
  lua_spawn_local = function(n) -- coroutines on this worker's VM
    knhk.nursery(function(nur) for i = 1, n do nur:spawn_local(trivial, i) end end)
  end,
}

knhk.run(function()
  for _, name in ipairs { "lua_spawn", "lua_spawn_local" } do
    local work = workloads[name]
    work(N) -- warm-up: pools, traces
    local on, written, off = {}, {}, {}
    for r = 1, runs do
      local t0 = now()
      work(N)
      off[r] = N / (now() - t0)
      assert(knhk.telemetry.start { file = path })
      t0 = now()
      work(N)
      on[r] = N / (now() - t0)
      knhk.telemetry.flush()
      written[r] = N / (now() - t0)
      knhk.telemetry.stop()
      io.stderr:write(string.format("  %s run %d: %.0f tasks/s recording (%.0f with the file written), %.0f not\n",
        name, r, on[r], written[r], off[r]))
    end
    emit(name, "tasks_per_s", median(on), median(off))
    emit(name, "tasks_per_s_written", median(written), median(off))
  end
end, { workers = WORKERS })
os.remove(path)
