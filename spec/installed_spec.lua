-- Run by scripts/luarocks-check against a luarocks-installed tree (and by
-- ctest against the build): `require "knhk"` works for a busted spec.
describe("an installed knhk", function()
  it("can be required and runs tasks on workers", function()
    local knhk = require "knhk"
    local v = knhk.run(function()
      return knhk.spawn(function(x) return x + 1 end, 41):join()
    end, { workers = 2 })
    assert.equal(42, v)
  end)
end)
