-- batch.lua: a batch whose size is known only when it runs (one instance
-- per record, on every core), that goes on once a quorum of records is
-- processed (partial join); the others still finish before it ends.
--   knhk-lua examples/batch.lua [records] [quorum]
local P = require "knhk.patterns"

-- the arguments, checked before anything runs: a bad one is refused with
-- the usage line (exit 2), rather than met deep in the workflow or ignored
local args = arg or {}
local function usage(why)
  local me = args[0] or "batch.lua"
  io.stderr:write(me:match("[^/]*$"), ": ", why, "\nusage: knhk-lua ", me, " [records] [quorum]\n")
  os.exit(2)
end
local function count(i, name, default, min, max)
  local text = args[i]
  if text == nil then return default end
  local n = text:match("^%d+$") and tonumber(text)
  if not n or n < min or n > max then
    usage(string.format("%s must be a whole number in %d..%d, got '%s'", name, min, max, text))
  end
  return n
end
if args[3] ~= nil then usage("too many arguments") end
local records = count(1, "records", 12, 0, 100000)
local quorum = count(2, "quorum", 8, 1, 100000)

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
  error("the batch failed", 0) -- knhk-lua exits 1
end
print(result.status .. ": quorum reached with " .. result.vars.report .. " records")
local ended = false
for _, t in ipairs(result.trace) do
  if t.step == "checksum" and t.event == "ended" then ended = true end
end
print("all instances finished before the case ended: " .. tostring(ended))
