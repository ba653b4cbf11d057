-- bench-cli.lua: suite `cli` — start-up of `knhk-lua -e ''` against
-- `luajit -e ''`, same invocation, medians. Processes are started with
-- posix_spawn (no shell in between) and timed to their exit.
--   luajit bench/bench-cli.lua KNHK_LUA [--runs N]
local ffi = require "ffi"
local cjson = require "cjson"

ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } cli_timespec;
int clock_gettime(int clk, cli_timespec *ts);
int posix_spawnp(int *pid, const char *file, const void *file_actions, const void *attrp,
                 char *const argv[], char *const envp[]);
int waitpid(int pid, int *status, int options);
extern char **environ;
]]
local C = ffi.C
local knhk_lua = assert(arg[1], "usage: bench-cli.lua path/to/knhk-lua [--runs N]")
local runs = 30
for i = 2, #arg do if arg[i] == "--runs" then runs = tonumber(arg[i + 1]) end end

local ts = ffi.new("cli_timespec")
local function now_ms()
  C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1e3 + tonumber(ts.tv_nsec) / 1e6
end

local function spawn_time(argv)
  local cargv = ffi.new("char*[?]", #argv + 1)
  local keep = {}
  for i, a in ipairs(argv) do
    keep[i] = ffi.new("char[?]", #a + 1, a)
    cargv[i - 1] = keep[i]
  end
  local pid, status = ffi.new("int[1]"), ffi.new("int[1]")
  local t0 = now_ms()
  assert(C.posix_spawnp(pid, argv[1], nil, nil, cargv, C.environ) == 0, "cannot start " .. argv[1])
  C.waitpid(pid[0], status, 0)
  local dt = now_ms() - t0
  assert(status[0] == 0, argv[1] .. " failed")
  return dt
end

local function median(v)
  table.sort(v)
  return v[math.floor((#v + 1) / 2)]
end

local ours, peer = {}, {}
for r = 1, runs do -- interleaved, so both see the same machine
  ours[r] = spawn_time { knhk_lua, "-e", "" }
  peer[r] = spawn_time { "luajit", "-e", "" }
end
local v, p = median(ours), median(peer)
io.write(cjson.encode {
  suite = "cli", bench = "startup", metric = "ms", unit = "ms", value = v,
  peer = "luajit", peer_value = p, ratio = p / v, better = "lower", runs = runs,
}, "\n")
io.write(cjson.encode {
  suite = "cli", bench = "startup", metric = "vs_luajit", unit = "x", value = v / p,
  better = "lower", runs = runs,
}, "\n")
