-- For specs: fn(...) in two portable tasks that can only both finish on
-- two different workers (each waits, without yielding, until the other
-- has started). Returns the two tasks' results, each as a table.
local knhk = require "knhk"

local function meet(mine, other, fn, ...)
  mine:set()
  local deadline = os.clock() + 20
  while not other:is_set() do
    if os.clock() > deadline then error("no other worker ran the other task", 0) end
  end
  return fn(...)
end

return function(fn, ...)
  local ea, eb = knhk.event(), knhk.event()
  local a = knhk.spawn(meet, ea, eb, fn, ...)
  local b = knhk.spawn(meet, eb, ea, fn, ...)
  return { a:join() }, { b:join() }
end
