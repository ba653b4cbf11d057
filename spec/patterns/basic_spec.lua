-- Basic control-flow patterns (1-5): each spec shows the pattern's
-- defining behaviour, on two workers.
local H = require "patterns.helpers"
local knhk, P = H.knhk, H.P

local function append(name)
  return P.task(name, function(v) return { log = v.log .. name } end)
end

describe("1 Sequence", function()
  it("starts each step only once the one before completed, and passes its updates on", function()
    local r = H.run(function()
      return P.sequence{ append("a"), append("b"), append("c") }:execute{ vars = { log = "" } }
    end)
    assert.equal("completed", r.status)
    -- each task saw the snapshot its predecessor left: none started early
    assert.equal("abc", r.vars.log)
    assert.is_true(H.pos(r, "a") < H.pos(r, "b") and H.pos(r, "b") < H.pos(r, "c"))
  end)
end)

describe("2 Parallel Split", function()
  it("starts every branch without waiting for the others", function()
    local r = H.run(function()
      local a_ready, b_ready = knhk.event(), knhk.event()
      -- each branch waits for the other to have started: only branches that
      -- run at the same time can both complete
      return knhk.fail_after(10, function()
        return P.sequence{
          P.parallel_split{
            P.task("a", function() a_ready:set(); b_ready:wait(); return { a = true } end),
            P.task("b", function() b_ready:set(); a_ready:wait(); return { b = true } end),
          },
          P.synchronization(),
        }:execute()
      end)
    end)
    assert.equal("completed", r.status)
    assert.is_true(r.vars.a and r.vars.b)
  end)
end)

describe("3 Synchronization", function()
  it("continues once, only after every branch completed", function()
    local r = H.run(function()
      local obs = H.observer()
      local b_done = obs:after("b")
      return P.sequence{
        P.parallel_split{
          P.task("a", function() return { a = 1 } end),
          P.task("b", function() return { b = 2 } end),
          -- c completes last: it waits until the case has taken b's result
          P.task("c", function() b_done:wait(); return { c = 3 } end),
        },
        P.synchronization(),
        P.task("d", function(v) return { sum = v.a + v.b + v.c } end),
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status)
    assert.equal(1, H.count(r, "d"))
    assert.equal(6, r.vars.sum) -- d's snapshot already held every branch's update
    assert.is_true(H.pos(r, "c") < H.pos(r, "d"))
  end)

  it("fails the case when a branch arrives twice (its branches run once each)", function()
    local r = H.run(function()
      local obs = H.observer()
      local a_twice = obs:after("a", 2)
      return P.sequence{
        P.parallel_split{
          P.sequence{ P.thread_split(2), P.task("a", function() end) },
          P.task("b", function() a_twice:wait() end),
        },
        P.synchronization(),
        P.task("d", function() end),
      }:execute{ telemetry = obs }
    end)
    assert.equal("failed", r.status)
    assert.equal("AND-join", r.step)
    assert.matches("branch 1 arrived twice before the join fired", r.error, 1, true)
    assert.equal(0, H.count(r, "d"))
  end)
end)

describe("4 Exclusive Choice", function()
  local function choice(n)
    return P.sequence{
      P.exclusive_choice{
        { when = function(v) return v.n > 100 end, run = append("big") },
        { when = "n > 10", run = append("medium") },
        { when = "n > 1", run = append("small") },
        otherwise = append("tiny"),
      },
      P.simple_merge(),
    }
  end

  it("runs exactly one branch: the first whose condition holds", function()
    local r = H.run(function() return choice(50):execute{ vars = { n = 50, log = "" } } end)
    assert.equal("completed", r.status)
    assert.equal("medium", r.vars.log) -- "small" held too, but comes later
    assert.equal(0, H.count(r, "small") + H.count(r, "big") + H.count(r, "tiny"))
  end)

  it("takes the otherwise branch when no condition holds", function()
    local r = H.run(function() return choice(0):execute{ vars = { n = 0, log = "" } } end)
    assert.equal("tiny", r.vars.log)
  end)

  it("fails the case when no condition holds and there is no otherwise", function()
    local r = H.run(function()
      return P.sequence{
        P.exclusive_choice{ { when = "n > 1", run = append("x") } },
        P.simple_merge(),
      }:execute{ vars = { n = 0, log = "" } }
    end)
    assert.equal("failed", r.status)
    assert.equal("XOR-split", r.step)
    assert.matches("no branch condition held and there is no otherwise branch", r.error, 1, true)
  end)
end)

describe("5 Simple Merge", function()
  it("passes on the branch that arrives, at once and once", function()
    local r = H.run(function()
      return P.sequence{
        P.exclusive_choice{
          { when = "pick == 1", run = append("one") },
          { when = "pick == 2", run = append("two") },
        },
        P.simple_merge(),
        append("-next"),
      }:execute{ vars = { pick = 2, log = "" } }
    end)
    -- the branch not taken never arrives: a merge that waited for it would
    -- leave the case unfinished before "-next"
    assert.equal("completed", r.status)
    assert.equal("two-next", r.vars.log)
    assert.equal(1, H.count(r, "-next"))
    assert.is_nil(r.unfinished)
  end)
end)
