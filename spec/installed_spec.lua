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

  it("has its subfolders: knhk.patterns runs a workflow", function()
    local knhk, P = require "knhk", require "knhk.patterns"
    local r = knhk.run(function()
      return P.sequence{ P.task("a", function() return { x = 1 } end) }:execute()
    end, { workers = 2 })
    assert.equal("completed", r.status)
    assert.equal(1, r.vars.x)
  end)
end)
