-- Multiple instances (12-15, 34-36). Every spec runs on two workers and
-- checks that the instances really ran on both (H.spreader keeps the first
-- instances busy until another worker has taken one).
local H = require "patterns.helpers"
local knhk, P = H.knhk, H.P

local WORKERS = 2

local function noop(name) return P.task(name, function() end) end

local function workers_of(list, field)
  local ws = {}
  for i, r in ipairs(list) do ws[i] = field and r[field] or r end
  return H.distinct(ws)
end

describe("12 Multiple Instances without Synchronization", function()
  it("continues at once; the case still ends only after every instance", function()
    local r, ws = H.run(function()
      local obs = H.observer()
      local d_done = obs:after("d")
      local spread = H.spreader(WORKERS)
      local out = knhk.channel(16)
      local r = P.sequence{
        P.mi{ name = "notify", count = 4, join = P.detached(), run = function(_, i)
          local w = spread()
          d_done:wait() -- finishes only after the step after it ran
          out:send(w)
        end },
        noop("d"),
      }:execute{ telemetry = obs }
      return r, H.drain(out)
    end, WORKERS)
    assert.equal("completed", r.status, r.error)
    assert.equal(4, #ws)
    assert.is_true(H.pos(r, "notify") < H.pos(r, "d"))
    assert.is_true(H.pos(r, "d") < H.pos(r, "notify", "ended"))
    assert.is_true(workers_of(ws) > 1, "instances ran on one worker only")
  end)
end)

describe("13 Multiple Instances with a priori Design-Time Knowledge", function()
  it("starts the number written in the definition, waits for all, keeps instance order", function()
    local r = H.run(function()
      local spread = H.spreader(WORKERS)
      return P.sequence{
        P.mi{ name = "square", count = 6, into = "squares",
              run = function(_, i) return { i * i, spread() } end },
        P.task("d", function(v) return { n = #v.squares } end),
      }:execute()
    end, WORKERS)
    assert.equal("completed", r.status, r.error)
    assert.equal(6, r.vars.n) -- d started after all six
    for i, s in ipairs(r.vars.squares) do assert.equal(i * i, s[1]) end
    assert.is_true(workers_of(r.vars.squares, 2) > 1, "instances ran on one worker only")
  end)
end)

describe("multiple instances' results", function()
  it("keep an instance's first value, and store nil or nothing as false: the list has no holes", function()
    local r = H.run(function()
      return P.mi{ name = "odd", count = 5, into = "odd",
                   run = function(_, i) if i % 2 == 1 then return i, "extra" end end }:execute()
    end, WORKERS)
    assert.equal("completed", r.status, r.error)
    assert.same({ 1, false, 3, false, 5 }, r.vars.odd)
  end)
end)

describe("14 Multiple Instances with a priori Run-Time Knowledge", function()
  it("starts one instance per item of the case data, counted when the step starts", function()
    local r = H.run(function()
      local spread = H.spreader(WORKERS)
      return P.sequence{
        P.task("load", function() return { orders = { "o1", "o2", "o3", "o4", "o5" } } end),
        P.mi{ name = "ship", items = "orders", into = "shipped",
              run = function(_, i, order) return { order .. " shipped", spread() } end },
      }:execute()
    end, WORKERS)
    assert.equal("completed", r.status, r.error)
    assert.equal(5, #r.vars.shipped)
    assert.equal("o1 shipped", r.vars.shipped[1][1])
    assert.equal("o5 shipped", r.vars.shipped[5][1])
    assert.is_true(workers_of(r.vars.shipped, 2) > 1, "instances ran on one worker only")
  end)

  it("takes the count from a function of the case variables", function()
    local r = H.run(function()
      return P.mi{ count = function(v) return v.n end, into = "xs", run = function(_, i) return i end }
        :execute{ vars = { n = 3 } }
    end, WORKERS)
    assert.same({ 1, 2, 3 }, r.vars.xs)
  end)

  it("fails the case when the count function answers what is not a whole number, saying what it was", function()
    for _, case in ipairs {
      { "3", 'string "3"' }, { 2.5, "2.5" }, { -1, "-1" }, { 0 / 0, "NaN" }, { {}, "table" }, { nil, "nil" },
    } do
      local r = H.run(function()
        return P.mi{ name = "ship", count = function() return case[1] end, run = function() end }:execute{}
      end, WORKERS)
      assert.equal("failed", r.status)
      assert.equal("ship: count must be a whole number >= 0, got " .. case[2], r.error)
    end
  end)
end)

describe("34 Static Partial Join for Multiple Instances", function()
  it("continues once k completed; the others still run before the step ends", function()
    local r, ws = H.run(function()
      local obs = H.observer()
      local d_done = obs:after("d")
      local spread = H.spreader(WORKERS)
      local out = knhk.channel(16)
      local r = P.sequence{
        P.mi{ name = "quotes", count = 5, join = P.partial(2), into = "first",
              run = function(_, i)
                out:send(spread())
                if i > 2 then d_done:wait() end -- these complete after the case moved on
                return i
              end },
        P.task("d", function(v) return { n = #v.first } end),
      }:execute{ telemetry = obs }
      return r, H.drain(out)
    end, WORKERS)
    assert.equal("completed", r.status, r.error)
    assert.equal(2, r.vars.n)
    assert.is_true(H.pos(r, "quotes") < H.pos(r, "d"))
    assert.is_true(H.pos(r, "d") < H.pos(r, "quotes", "ended"))
    assert.equal(5, #ws)
    assert.is_true(workers_of(ws) > 1, "instances ran on one worker only")
  end)
end)

describe("35 Cancelling Partial Join for Multiple Instances", function()
  it("continues once k completed and cancels the remaining instances", function()
    local cleanups, ws
    local r, before, after = H.run(function()
      local spread = H.spreader(WORKERS)
      local ch, out, running = knhk.channel(16), knhk.channel(16), H.barrier(4)
      local block = H.blocker(ch, "cancelled", running)
      local before = H.live()
      local r = P.sequence{
        P.mi{ name = "bids", count = 6, join = P.cancelling_partial(2), into = "won",
              run = function(_, i)
                out:send(spread())
                if i > 2 then block() end
                running.event:wait() -- the first two complete once the others run
                return i
              end },
        P.task("d", function(v) return { n = #v.won } end),
      }:execute()
      cleanups, ws = H.drain(ch), H.drain(out)
      return r, before, H.live()
    end, WORKERS)
    assert.equal("completed", r.status, r.error)
    assert.equal(2, r.vars.n)
    assert.equal(4, #cleanups) -- every instance left was cancelled, and cleaned up
    assert.equal(before, after)
    assert.is_true(workers_of(ws) > 1, "instances ran on one worker only")
  end)
end)
