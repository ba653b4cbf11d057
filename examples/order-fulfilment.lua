-- order-fulfilment.lua: an order is checked three ways at once (parallel
-- split, synchronization), then routed on its total (exclusive choice,
-- simple merge): big orders go to a person, the others are approved.
--   knhk-lua examples/order-fulfilment.lua [total]
--   knhk-lua --graph examples/order-fulfilment.lua     (its diagram)
local P = require "knhk.patterns"

-- the argument, checked before anything runs: a bad one is refused with
-- the usage line (exit 2)
local args = arg or {}
local function usage(why)
  local me = args[0] or "order-fulfilment.lua"
  io.stderr:write(me:match("[^/]*$"), ": ", why, "\nusage: knhk-lua ", me, " [total]\n")
  os.exit(2)
end
if args[2] ~= nil then usage("too many arguments") end
local total = 250
if args[1] ~= nil then
  total = tonumber(args[1])
  if not (total and total >= 0 and total < math.huge) then -- (nor NaN, nor inf)
    usage("total must be a number >= 0, got '" .. args[1] .. "'")
  end
end

local wf = P.workflow(P.sequence{
  P.task("receive order", function(v)
    return { order = { id = v.id, total = v.total, items = { "widget", "gadget" } } }
  end),
  P.parallel_split{
    P.task("check stock", function(v) return { in_stock = #v.order.items <= 10 } end),
    P.task("check credit", function(v) return { credit_ok = v.order.total < 5000 } end),
    P.task("check address", function() return { address_ok = true } end),
  },
  P.synchronization(),
  P.exclusive_choice{
    { when = "not (in_stock and credit_ok and address_ok)",
      run = P.task("reject", function() return { outcome = "rejected" } end) },
    { when = "order.total > 1000",
      run = P.task("manual review", function() return { outcome = "approved after review" } end) },
    otherwise = P.task("approve", function() return { outcome = "approved" } end),
  },
  P.simple_merge(),
  P.task("notify customer", function(v)
    return { message = string.format("order %s (%.2f): %s", v.order.id, v.order.total, v.outcome) }
  end),
}, { name = "order fulfilment" })

local result = wf:execute{ case_id = "A-1001", vars = { id = "A-1001", total = total } }
if result.status ~= "completed" then
  error(string.format("the case %s at '%s': %s", result.status, tostring(result.step),
    tostring(result.error)), 0)
end
print(result.status .. ": " .. result.vars.message)
print(string.format("checks: stock %s, credit %s, address %s", tostring(result.vars.in_stock),
  tostring(result.vars.credit_ok), tostring(result.vars.address_ok)))
