-- ledger.lua: transfers run in parallel, but each one reads the balance,
-- computes and writes it back inside the "ledger" critical section, so
-- none is lost: a task sees the case variables as they are when it starts,
-- and inside the section nobody else changes them meanwhile.
--   knhk-lua examples/ledger.lua [transfers]
local P = require "knhk.patterns"

-- the argument, checked before anything runs: a bad one is refused with
-- the usage line (exit 2)
local args = arg or {}
local function usage(why)
  local me = args[0] or "ledger.lua"
  io.stderr:write(me:match("[^/]*$"), ": ", why, "\nusage: knhk-lua ", me, " [transfers]\n")
  os.exit(2)
end
if args[2] ~= nil then usage("too many arguments") end
local n = 5
if args[1] ~= nil then
  n = args[1]:match("^%d+$") and tonumber(args[1])
  if not n or n < 1 or n > 1000 then
    usage("transfers must be a whole number in 1..1000, got '" .. args[1] .. "'")
  end
end

local function transfer(i)
  return P.critical_section("ledger", P.task("transfer " .. i, function(v)
    local seen = v.balance
    knhk.sleep(0.002) -- a round trip to the bank, while holding the ledger
    return { balance = seen + 10 * i }
  end))
end

local branches = {}
for i = 1, n do branches[i] = transfer(i) end

local wf = P.workflow(P.sequence{ P.parallel_split(branches), P.synchronization() })
local result = wf:execute{ vars = { balance = 100 } }
if result.status ~= "completed" then
  error(string.format("the case %s at '%s': %s", result.status, tostring(result.step),
    tostring(result.error)), 0)
end
local expected = 100
for i = 1, n do expected = expected + 10 * i end
print(string.format("%s: balance %d after %d transfers (expected %d)", result.status,
  result.vars.balance, n, expected))
