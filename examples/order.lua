-- order.lua: an order-handling workflow with the usual shapes: parallel
-- checks (AND-split / join), a race for the first quote, a step that runs a
-- command with a timeout, and a channel between a producer and a consumer.
--   knhk-lua examples/order.lua [order-id]
-- a second argument is refused with the usage line (exit 2), not ignored
if arg and arg[2] ~= nil then
  io.stderr:write(arg[0]:match("[^/]*$"), ": too many arguments\nusage: knhk-lua ", arg[0],
    " [order-id]\n")
  os.exit(2)
end
local order = { id = arg[1] or "A-1001", items = { "widget", "gadget", "gizmo" }, total = 42.5 }

-- parallel checks: all must pass; the first failure cancels the others
local checks = knhk.nursery(function(n)
  n:spawn(function(o) knhk.sleep(0.01); return o.total < 1000 end, order)      -- credit
  n:spawn(function(o) knhk.sleep(0.02); return #o.items > 0 end, order)       -- stock
  n:spawn(function(o) knhk.sleep(0.005); return o.id:match("^%u%-%d+$") ~= nil end, order) -- id
  return n:wait_all()
end)
for i, r in ipairs(checks) do assert(r[1], "check " .. i .. " failed") end
print("checks passed for order " .. order.id)

-- the first carrier to quote wins; the others are cancelled
local carrier, price = knhk.select {
  fast = function() knhk.sleep(0.03); return 12.0 end,
  cheap = function() knhk.sleep(0.01); return 7.5 end,
}
print(string.format("carrier %s at %.2f", carrier, price))

-- a step that runs a command, with a timeout
local label, err = knhk.exec({ "printf", "LABEL %s\\n", order.id }, { timeout = 5 })
if not label then error("label printer: " .. err) end
io.write(label.stdout)

-- a pipeline: a producer packs items, a consumer ships them
local belt = knhk.channel(2)
knhk.nursery(function(n)
  n:spawn(function(ch, items)
    for _, it in ipairs(items) do ch:send({ item = it, at = knhk.now() }) end
    ch:close()
  end, belt, order.items)
  n:spawn_local(function()
    for parcel in belt:values() do print("shipped " .. parcel.item) end
  end)
end)
print("order " .. order.id .. " done")
