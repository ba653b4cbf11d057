-- order-fulfilment.lua: an order is checked three ways at once (parallel
-- split, synchronization), then routed on its total (exclusive choice,
-- simple merge): big orders go to a person, the others are approved.
--   knhk-lua examples/order-fulfilment.lua [total]
--   knhk-lua --graph examples/order-fulfilment.lua     (its diagram)
local P = require "knhk.patterns"

local total = tonumber(arg and arg[1]) or 250

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
print(result.status .. ": " .. result.vars.message)
print(string.format("checks: stock %s, credit %s, address %s", tostring(result.vars.in_stock),
  tostring(result.vars.credit_ok), tostring(result.vars.address_ok)))
