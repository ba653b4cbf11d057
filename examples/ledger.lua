-- ledger.lua: transfers run in parallel, but each one reads the balance,
-- computes and writes it back inside the "ledger" critical section, so
-- none is lost: a task sees the case variables as they are when it starts,
-- and inside the section nobody else changes them meanwhile.
--   knhk-lua examples/ledger.lua [transfers]
local P = require "knhk.patterns"

local n = tonumber(arg and arg[1]) or 5

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
local expected = 100
for i = 1, n do expected = expected + 10 * i end
print(string.format("%s: balance %d after %d transfers (expected %d)", result.status,
  result.vars.balance, n, expected))
