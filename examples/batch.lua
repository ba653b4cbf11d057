-- batch.lua: a batch whose size is known only when it runs (one instance
-- per record, on every core), that goes on once a quorum of records is
-- processed (partial join); the others still finish before it ends.
--   knhk-lua examples/batch.lua [records] [quorum]
local P = require "knhk.patterns"

local records = tonumber(arg and arg[1]) or 12
local quorum = tonumber(arg and arg[2]) or 8

local function checksum(v, i, record)
  local h = 0
  for round = 1, 20000 do h = (h * 31 + record.seed + round) % 1000003 end
  return { id = record.id, sum = h }
end

local wf = P.workflow(P.sequence{
  P.task("load records", function(v)
    local list = {}
    for i = 1, v.n do list[i] = { id = "r" .. i, seed = i * 7 } end
    return { records = list }
  end),
  P.mi{ name = "checksum", items = "records", run = checksum, join = P.partial(quorum), into = "done" },
  P.task("report quorum", function(v) return { report = #v.done .. " of " .. #v.records } end),
})

local result = wf:execute{ vars = { n = records } }
if result.status ~= "completed" then -- a quorum above the records: it can never be reached
  print(result.status .. " at '" .. tostring(result.step) .. "': " .. tostring(result.error))
  return
end
print(result.status .. ": quorum reached with " .. result.vars.report .. " records")
local ended = false
for _, t in ipairs(result.trace) do
  if t.step == "checksum" and t.event == "ended" then ended = true end
end
print("all instances finished before the case ended: " .. tostring(ended))
