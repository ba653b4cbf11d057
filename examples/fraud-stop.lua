-- fraud-stop.lua: a shipment is prepared while a fraud check runs; if the
-- check finds fraud, the case ends there and then (explicit termination):
-- whatever is still running is cancelled and nothing ships.
--   knhk-lua examples/fraud-stop.lua [clean]
local P = require "knhk.patterns"

-- the argument, checked before anything runs: a bad one is refused with
-- the usage line (exit 2), rather than taken for the default
local args = arg or {}
if (args[1] ~= nil and args[1] ~= "clean") or args[2] ~= nil then
  local me = args[0] or "fraud-stop.lua"
  io.stderr:write(me:match("[^/]*$"), ": ", args[2] ~= nil and "too many arguments"
    or ("unknown argument '" .. args[1] .. "'"), "\nusage: knhk-lua ", me, " [clean]\n")
  os.exit(2)
end
local fraud = args[1] ~= "clean"
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
if result.status ~= "completed" then
  error(string.format("the case %s at '%s': %s", result.status, tostring(result.step),
    tostring(result.error)), 0)
end
print(result.status .. (result.ended_by and (", ended by '" .. result.ended_by .. "'") or ""))
print("shipped: " .. tostring(result.vars.shipped == true))
