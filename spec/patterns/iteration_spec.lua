-- Iteration (10, 21, 22).
local H = require "patterns.helpers"
local P = H.P

-- A task that appends its name to the case's `path` and counts in `n`.
local function visit(name)
  return function(v) return { path = v.path .. name, n = v.n + 1 } end
end

describe("10 Arbitrary Cycles", function()
  it("runs a cycle entered and left at several points", function()
    -- b and c form a cycle; a enters it at b or at c, and it is left from
    -- c (to d) or from b (to e), as the counter says
    local function wf()
      return P.graph{
        start = "a",
        nodes = {
          a = { run = visit("a"), next = P.exclusive_choice{ { when = "odd", to = "c" }, otherwise = "b" } },
          b = { run = visit("b"), next = P.exclusive_choice{ { when = "n == 5", to = "e" }, otherwise = "c" } },
          c = { run = visit("c"), next = P.exclusive_choice{ { when = "n == 5", to = "d" }, otherwise = "b" } },
          d = { run = visit("d") },
          e = { run = visit("e") },
        },
      }
    end
    local even, odd = H.run(function()
      return wf():execute{ vars = { path = "", n = 0, odd = false } },
             wf():execute{ vars = { path = "", n = 0, odd = true } }
    end)
    assert.equal("completed", even.status, even.error)
    assert.equal("abcbcd", even.vars.path) -- entered at b, left from c
    assert.equal("acbcbe", odd.vars.path)  -- entered at c, left from b
  end)
end)

describe("21 Structured Loop", function()
  it("while_do tests before each round: it may run no round at all", function()
    local r = H.run(function()
      return P.sequence{
        P.while_do("n < 3", visit("x")),
        P.while_do("n < 0", visit("never")),
      }:execute{ vars = { path = "", n = 0 } }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal("xxx", r.vars.path)
    assert.equal(0, H.count(r, "never"))
  end)

  it("repeat_until tests after each round: it runs at least once", function()
    local r = H.run(function()
      return P.sequence{
        P.repeat_until(visit("y"), "true"),
        P.repeat_until(P.sequence{ visit("a"), visit("b") }, function(v) return v.n >= 5 end),
      }:execute{ vars = { path = "", n = 0 } }
    end)
    assert.equal("yabab", r.vars.path) -- y once though "true" held; then until n >= 5
  end)
end)

describe("22 Recursion", function()
  it("a block calls itself until a choice stops it", function()
    local r = H.run(function()
      return P.define("countdown", P.sequence{
        P.exclusive_choice{
          { when = "n > 0", run = P.sequence{
            P.task("step", function(v) return { n = v.n - 1, depth = v.depth + 1 } end),
            P.call("countdown"),
          } },
          otherwise = P.skip(),
        },
        P.simple_merge(),
        P.task("unwind", function(v) return { unwound = v.unwound + 1 } end),
      }):execute{ vars = { n = 5, depth = 0, unwound = 0 } }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(5, r.vars.depth)
    assert.equal(0, r.vars.n)
    assert.equal(6, r.vars.unwound) -- every level finished after the ones it called
    assert.equal(6, H.count(r, "call 'countdown'") + 1)
  end)

  it("a workflow built with a name can call itself", function()
    local r = H.run(function()
      local wf = P.workflow(P.sequence{
        P.task(function(v) return { n = v.n + 1 } end),
        P.exclusive_choice{ { when = "n < 4", run = P.call("again") }, otherwise = P.skip() },
        P.simple_merge(),
      }, { name = "again" })
      return wf:execute{ vars = { n = 0 } }
    end)
    assert.equal(4, r.vars.n)
  end)
end)
