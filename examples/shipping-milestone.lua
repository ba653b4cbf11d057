-- shipping-milestone.lua: a customer may change the delivery address only
-- while the parcel is in transit (milestone): before, the change waits;
-- after delivery, it is refused.
--   knhk-lua examples/shipping-milestone.lua          change while in transit
--   knhk-lua examples/shipping-milestone.lua late     change after delivery
local P = require "knhk.patterns"

-- the argument, checked before anything runs: a bad one is refused with
-- the usage line (exit 2), rather than taken for the default
local args = arg or {}
if (args[1] ~= nil and args[1] ~= "late") or args[2] ~= nil then
  local me = args[0] or "shipping-milestone.lua"
  io.stderr:write(me:match("[^/]*$"), ": ", args[2] ~= nil and "too many arguments"
    or ("unknown argument '" .. args[1] .. "'"), "\nusage: knhk-lua ", me, " [late]\n")
  os.exit(2)
end
local late = args[1] == "late"
local delivered, change = P.persistent_trigger("delivered"), P.persistent_trigger("change")

-- the courier and the customer, outside the case, talk to it through
-- channels; `events` tells them what the case did
local to_case_delivered, to_case_change, events = knhk.channel(1), knhk.channel(1), knhk.channel(4)

local wf = P.workflow(P.parallel_split{
  P.sequence{
    P.task("ship", function() end),
    P.milestone("in transit", P.wait_for(delivered)),
    P.task("close", function() events:send("closed") end),
  },
  P.sequence{
    P.wait_for(change, { into = "address" }),
    P.when_milestone("in transit", P.task("change address", function(v)
      events:send("changed")
      return { shipping_to = v.address }
    end)),
  },
})

knhk.spawn(function(d, c, ev, too_late)
  if too_late then
    d:send(true)            -- delivered...
    ev:recv()               -- ...and the case closed
    c:send("2 New Street")
  else
    c:send("2 New Street")  -- the change, while in transit
    ev:recv()               -- applied
    d:send(true)
  end
end, to_case_delivered, to_case_change, events, late)

local result = wf:execute{ vars = { shipping_to = "1 Old Road" },
                           signals = { delivered = to_case_delivered, change = to_case_change } }
if result.status ~= "completed" then
  error(string.format("the case %s at '%s': %s", result.status, tostring(result.step),
    tostring(result.error)), 0)
end
local refused = false
for _, t in ipairs(result.trace) do
  if t.step == "when milestone 'in transit'" and t.event == "withdrawn" then refused = true end
end
print(result.status .. ": shipping to " .. result.vars.shipping_to)
print("address change " .. (refused and "refused: already delivered" or "applied while in transit"))
