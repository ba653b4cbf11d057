-- bench-patterns.lua: suite `patterns` — the workflow-pattern layer against
-- the same work written directly with a nursery (the peer), in the same
-- invocation. JSON lines on stdout (bench/README.md).
--   luajit bench/bench-patterns.lua [--runs N] [--instances N]
local cjson = require "cjson"
local knhk = require "knhk"
local P = require "knhk.patterns"

local runs, N = 3, 10000
for i = 1, #arg do
  if arg[i] == "--runs" then runs = tonumber(arg[i + 1]) or runs end
  if arg[i] == "--instances" then N = tonumber(arg[i + 1]) or N end
end

local function progress(...) io.stderr:write("  ", string.format(...), "\n") end

local function median(v)
  local s = {}
  for i, x in ipairs(v) do s[i] = x end
  table.sort(s)
  return s[math.floor((#s + 1) / 2)]
end

local function emit(f)
  f.suite, f.runs = "patterns", runs
  io.write(cjson.encode(f), "\n")
  io.flush()
end

-- The small CPU task of every instance (the same body both ways).
local function pattern_work(_, i)
  local x = 0
  for j = 1, 2000 do x = x + (i + j) % 7 end
  return x
end
local function direct_work(i)
  local x = 0
  for j = 1, 2000 do x = x + (i + j) % 7 end
  return x
end

-- MI (13): N instances, their results collected in instance order.
local function ours(workers)
  local wf = P.workflow(P.mi{ name = "work", count = N, run = pattern_work, into = "results" })
  return knhk.run(function()
    local t0 = knhk.now()
    local r = wf:execute()
    local t = knhk.now() - t0
    assert(r.status == "completed" and #r.vars.results == N, r.error)
    return t
  end, { workers = workers })
end

-- The same, written directly: a nursery, N portable tasks, their results.
local function peer(workers)
  return knhk.run(function()
    local t0 = knhk.now()
    local results = knhk.nursery(function(n)
      local hs = {}
      for i = 1, N do hs[i] = n:spawn(direct_work, i) end
      local out = {}
      for i = 1, N do out[i] = hs[i]:join() end
      return out
    end)
    local t = knhk.now() - t0
    assert(#results == N)
    return t
  end, { workers = workers })
end

progress("MI pattern, %d instances of a small CPU task; peer: the same with a nursery", N)
local t = { ours = {}, peer = {} }
for workers = 1, 2 do
  t.ours[workers], t.peer[workers] = {}, {}
  for r = 1, runs do -- interleaved, so that both see the same machine
    t.peer[workers][r] = peer(workers)
    t.ours[workers][r] = ours(workers)
  end
end

for workers = 1, 2 do
  local o, p = median(t.ours[workers]), median(t.peer[workers])
  emit({ bench = "mi_10k", metric = "instances_per_s", unit = "instances/s", workers = workers,
         value = N / o, peer = "nursery", peer_value = N / p, ratio = p / o, better = "higher" })
  emit({ bench = "mi_10k", metric = "overhead", unit = "x", workers = workers, value = o / p,
         better = "lower" })
end
emit({ bench = "mi_10k", metric = "speedup", unit = "x", workers = 2,
       value = median(t.ours[1]) / median(t.ours[2]), peer = "nursery",
       peer_value = median(t.peer[1]) / median(t.peer[2]),
       ratio = (median(t.ours[1]) / median(t.ours[2])) / (median(t.peer[1]) / median(t.peer[2])),
       better = "higher" })
