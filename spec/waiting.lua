-- For specs: how many tasks are parked in a wait now (knhk.tasks() rows).
local knhk = require "knhk"

return function()
  local n = 0
  for _, t in ipairs(knhk.tasks()) do
    if t.state == "waiting" then n = n + 1 end
  end
  return n
end
