-- Reads the benchmarks' JSON lines (bench/README.md) on stdin; prints them as a table with the
-- targets of bench/targets.lua (met / not met), or passes them through
-- unchanged with --json. Usage: bench-report.lua ROOT [--json]
local cjson = require "cjson"
local root, mode = arg[1], arg[2]
local targets = dofile(root .. "/bench/targets.lua")

local function target_for(f)
  for _, t in ipairs(targets) do
    if t.suite == f.suite and t.bench == f.bench and t.metric == f.metric
        and (t.workers == nil or t.workers == f.workers) then
      return t
    end
  end
end

-- A target is on the figure's value, or on another field (`field =
-- "ratio"`: relative to the peer of the same run).
local function verdict(f, t)
  local v = f[t.field or "value"]
  if v == nil then return "no " .. (t.field or "value") end
  local ok
  if t.op == "<" then ok = v < t.value
  elseif t.op == "<=" then ok = v <= t.value
  elseif t.op == ">" then ok = v > t.value
  else ok = v >= t.value end
  return ok and "met" or "NOT MET"
end

local function num(v)
  if v == nil then return "" end
  local a = math.abs(v)
  if a >= 1e6 then return string.format("%.3g", v) end
  if a >= 100 then return string.format("%.0f", v) end
  if a >= 1 then return string.format("%.2f", v) end
  return string.format("%.3g", v)
end

local rows = {}
for line in io.lines() do
  if mode == "--json" then
    io.write(line, "\n")
  else
    local ok, f = pcall(cjson.decode, line)
    if ok and type(f) == "table" then
      rows[#rows + 1] = f
    else
      io.stderr:write("bench: not a figure, ignored: ", line, "\n")
    end
  end
end
if mode == "--json" then return end

local header = { "suite", "bench", "metric", "workers", "value", "unit", "peer", "peer value",
                 "ratio", "target", "" }
local out = { header }
for _, f in ipairs(rows) do
  local t = target_for(f)
  out[#out + 1] = {
    f.suite, f.bench, f.metric, f.workers and tostring(f.workers) or "",
    num(f.value), f.unit, f.peer or "", num(f.peer_value),
    f.ratio and string.format("%.2fx", f.ratio) or "",
    t and ((t.field and t.field .. " " or "") .. t.op .. " " .. num(t.value)) or "",
    t and verdict(f, t) or "",
  }
end
local width = {}
for _, r in ipairs(out) do
  for i, c in ipairs(r) do width[i] = math.max(width[i] or 0, #c) end
end
for n, r in ipairs(out) do
  local cells = {}
  for i, c in ipairs(r) do
    local right = (i >= 4 and i <= 5) or i == 8 or i == 9
    cells[i] = right and string.rep(" ", width[i] - #c) .. c or c .. string.rep(" ", width[i] - #c)
  end
  print((table.concat(cells, "  "):gsub("%s+$", "")))
  if n == 1 then
    local rule = {}
    for i = 1, #width do rule[i] = string.rep("-", width[i]) end
    print(table.concat(rule, "  "))
  end
end
print("ratio: how many times better ours is than the peer (> 1: ahead); value: median of runs")
