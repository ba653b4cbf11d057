-- payment-failure.lua: fulfilment starts while the card is charged; when
-- the payment fails, the whole fulfilment region is cancelled at once
-- (cancel region), whatever it was doing, and the customer is told.
--   knhk-lua examples/payment-failure.lua         the card is declined
--   knhk-lua examples/payment-failure.lua ok      the payment goes through
local P = require "knhk.patterns"

-- the argument, checked before anything runs: a bad one is refused with
-- the usage line (exit 2), rather than taken for the default
local args = arg or {}
if (args[1] ~= nil and args[1] ~= "ok") or args[2] ~= nil then
  local me = args[0] or "payment-failure.lua"
  io.stderr:write(me:match("[^/]*$"), ": ", args[2] ~= nil and "too many arguments"
    or ("unknown argument '" .. args[1] .. "'"), "\nusage: knhk-lua ", me, " [ok]\n")
  os.exit(2)
end
local declined = args[1] ~= "ok"

local function slow(name, field)
  -- stands in for work that takes a while (picking, packing): until cancelled
  return P.task(name, function(v)
    knhk.sleep(v.slow and 30 or 0)
    return { [field] = true }
  end)
end

local wf = P.workflow(P.parallel_split{
  P.region("fulfilment", P.sequence{
    P.parallel_split{ slow("pick items", "picked"), slow("print label", "labelled") },
    P.synchronization(),
    slow("pack", "packed"),
  }),
  P.sequence{
    P.task("charge card", function(v) return { paid = not v.declined } end),
    P.exclusive_choice{
      { when = "not paid", run = P.sequence{
        P.cancel_region("fulfilment"),
        P.task("tell customer", function() return { told = "payment declined, order cancelled" } end),
      } },
      otherwise = P.task("confirm", function() return { told = "payment received" } end),
    },
    P.simple_merge(),
  },
})

local result = wf:execute{ vars = { declined = declined, slow = declined } }
if result.status ~= "completed" then
  error(string.format("the case %s at '%s': %s", result.status, tostring(result.step),
    tostring(result.error)), 0)
end
local withdrawn = false
for _, t in ipairs(result.trace) do
  if t.step == "fulfilment" and t.event == "withdrawn" then withdrawn = true end
end
print(result.status .. ": " .. result.vars.told)
print("fulfilment cancelled: " .. tostring(withdrawn) .. ", packed: " .. tostring(result.vars.packed == true))
