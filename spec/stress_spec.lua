-- Many tasks: every one runs exactly once, nothing is lost or left live.
local knhk = require "knhk"

describe("at scale", function()
  it("1M portable tasks each run once and the counters reconcile", function()
    local sum, stats = knhk.run(function()
      local total = 0
      -- in batches, so the handles of one batch are collected before the next
      for batch = 0, 99 do
        knhk.nursery(function(n)
          local hs = {}
          for i = 1, 10000 do hs[i] = n:spawn(function(x) return x end, batch * 10000 + i) end
          for i = 1, 10000 do total = total + hs[i]:join() end
        end)
      end
      return total, knhk.stats()
    end, { workers = 2 })
    assert.equal(1000000 * 1000001 / 2, sum)
    assert.is_true(stats.spawned >= 1000001)
    assert.equal(stats.spawned, stats.completed + stats.failed + stats.cancelled + stats.live)
    assert.equal(0, stats.failed)
  end)

  it("the executor's mirror suite: CPU-bound Lua tasks spread over the workers", function()
    local per_worker = knhk.run(function()
      local hs = {}
      for i = 1, 64 do
        hs[i] = knhk.spawn(function()
          local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
          fib(20)
          return knhk.current().worker
        end)
      end
      local seen = {}
      for _, h in ipairs(hs) do local w = h:join(); seen[w] = (seen[w] or 0) + 1 end
      return seen
    end, { workers = 2 })
    assert.is_true((per_worker[0] or 0) + (per_worker[1] or 0) == 64)
  end)
end)
