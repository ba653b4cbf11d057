-- fraud-stop.lua: a shipment is prepared while a fraud check runs; if the
-- check finds fraud, the case ends there and then (explicit termination):
-- whatever is still running is cancelled and nothing ships.
--   knhk-lua examples/fraud-stop.lua [clean]
local P = require "knhk.patterns"

local fraud = not (arg and arg[1] == "clean")
local cleared = P.persistent_trigger("cleared")

local wf = P.workflow(P.parallel_split{
  P.sequence{
    P.task("prepare shipment", function() return { prepared = true } end),
    P.wait_for(cleared),
    P.task("ship", function() return { shipped = true } end),
  },
  P.sequence{
    P.task("fraud check", function(v) return { fraud = v.suspicious } end),
    P.exclusive_choice{
      { when = "fraud", run = P.terminate{ name = "stop: fraud" } },
      otherwise = P.signal(cleared, true),
    },
  },
})

local result = wf:execute{ vars = { suspicious = fraud } }
print(result.status .. (result.ended_by and (", ended by '" .. result.ended_by .. "'") or ""))
print("shipped: " .. tostring(result.vars.shipped == true))
