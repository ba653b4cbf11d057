-- Cancellation and force completion (19, 20, 25-27). Every cancelled task
-- reports its cleanup, and every spec checks that the case left no task
-- running.
local H = require "patterns.helpers"
local knhk, P = H.knhk, H.P

local WORKERS = 2

local function noop(name) return P.task(name, function() end) end
local function waits(name, ev) return P.task(name, function() ev:wait() end) end

-- Runs fn(obs, ch) in the runtime; returns its result, the cleanups
-- reported on ch, and the live task counts before and after.
local function observed(fn)
  return H.run(function()
    local obs, ch = H.observer(), knhk.channel(32)
    local before = H.live()
    local r = fn(obs, ch)
    local after = H.live()
    local cleanups = H.drain(ch)
    table.sort(cleanups)
    return r, cleanups, before, after
  end, WORKERS)
end

describe("19 Cancel Task", function()
  it("withdraws a running task: it is cancelled, and its branch ends there", function()
    local r, cleanups, before, after = observed(function(obs, ch)
      local running = H.barrier(1)
      return P.sequence{
        P.parallel_split{
          P.sequence{ P.task("approve", H.blocker(ch, "approve", running)), noop("notify approval") },
          P.sequence{ P.wait_for(running.event), P.cancel_task("approve"),
                      noop("notify withdrawal") },
        },
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(1, H.count(r, "approve", "withdrawn"))
    assert.equal(0, H.count(r, "notify approval"))
    assert.equal(1, H.count(r, "notify withdrawal"))
    assert.same({ "approve" }, cleanups)
    assert.equal(before, after)
  end)

  it("withdraws a task that has not started: the tokens waiting for it go", function()
    local r = H.run(function()
      local obs = H.observer()
      return P.graph{
        start = "s",
        nodes = {
          s = { next = { "x", "y", "c" } },
          x = { run = function() end, next = "approve" },
          -- approve waits for both x and y: x's token waits at its input...
          y = { run = waits("y", obs:after("c")), next = "approve" },
          approve = { join = P.synchronization(), run = function() end },
          -- ...until the cancel takes it away; y's token then finds it alone
          c = { run = P.sequence{ waits("c", obs:after("x")), P.cancel_task("approve") } },
        },
      }:execute{ telemetry = obs }
    end)
    -- y's token can never be joined by x's: the case is deadlocked there
    assert.equal("deadlocked", r.status, r.error)
    assert.equal(0, H.count(r, "approve"))
    assert.same({ "approve" }, r.unfinished)
  end)
end)

describe("20 Cancel Case", function()
  it("cancels everything still running and ends the case cancelled", function()
    local r, cleanups, before, after = observed(function(obs, ch)
      local running = H.barrier(4)
      return P.sequence{
        P.parallel_split{
          P.task("long", H.blocker(ch, "long", running)),
          P.mi{ name = "batch", count = 3, run = H.blocker(ch, "instance", running) },
          P.sequence{
            P.wait_for(running.event),
            P.task("fraud check", function() return { fraud = true } end),
            P.cancel_case(),
            noop("never"),
          },
        },
      }:execute{ telemetry = obs }
    end)
    assert.equal("cancelled", r.status)
    assert.equal("cancel case", r.ended_by)
    assert.is_true(r.vars.fraud) -- what completed before stays
    assert.equal(0, H.count(r, "never"))
    assert.same({ "instance", "instance", "instance", "long" }, cleanups)
    assert.equal(before, after)
  end)

  it("is cancelled from outside by ctx.token", function()
    local r, cleanups, before, after = observed(function(obs, ch)
      local token, running = knhk.token(), H.barrier(1)
      local canceller = knhk.spawn(function() running.event:wait(); token:cancel() end)
      local r = P.task("long", H.blocker(ch, "long", running)):execute{ telemetry = obs, token = token }
      -- the spec's own task: ended before the live tasks are counted again
      -- (the case can end while it is still returning from cancel)
      canceller:join()
      return r
    end)
    assert.equal("cancelled", r.status)
    assert.same({ "long" }, cleanups)
    assert.equal(before, after)
  end)
end)

describe("25 Cancel Region", function()
  it("withdraws every step of the region at once; steps outside go on", function()
    local r, cleanups, before, after = observed(function(obs, ch)
      local running = H.barrier(3)
      local picked = obs:after("pick")
      return P.sequence{
        P.parallel_split{
          P.sequence{
            P.region("packing", P.sequence{
              P.parallel_split{ P.task("pick", function() running.arrive() end),
                                P.task("wrap", H.blocker(ch, "wrap", running)),
                                P.task("label", H.blocker(ch, "label", running)) },
              P.synchronization(),
              noop("seal"),
            }),
            noop("after packing"),
          },
          P.sequence{
            P.wait_for(running.event),
            P.wait_for(picked), -- pick's token waits at the join inside
            P.cancel_region("packing"),
            noop("refund"),
          },
        },
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status, r.error)
    assert.same({ "label", "wrap" }, cleanups)
    assert.equal(0, H.count(r, "seal") + H.count(r, "after packing"))
    assert.equal(1, H.count(r, "packing", "withdrawn"))
    assert.is_nil(r.unfinished) -- what a withdrawn region left is not a deadlock
    assert.equal(1, H.count(r, "refund"))
    assert.equal(before, after)
  end)

  it("a failure in a region cancels the rest of it and fails the case, naming the step", function()
    local r, cleanups, before, after = observed(function(_, ch)
      local running = H.barrier(1)
      return P.region("payment", P.sequence{
        P.parallel_split{
          P.task("charge card", function() running.event:wait(); error("card declined") end),
          P.task("reserve stock", H.blocker(ch, "reserve stock", running)),
        },
        P.synchronization(),
      }):execute()
    end)
    assert.equal("failed", r.status)
    assert.equal("charge card", r.step)
    assert.matches("card declined", r.error, 1, true)
    assert.matches("cancellation_spec.lua:%d+", r.traceback)
    assert.same({ "reserve stock" }, cleanups)
    assert.equal(before, after)
  end)
end)

-- An MI step whose instances 1 and 2 complete (reporting on `done`) and the
-- others block until cancelled (reporting their cleanup on `ch`); each
-- sends its worker on `seen` first.
local function batch(ch, done, seen, running)
  local block, spread = H.blocker(ch, "instance", running), H.spreader(WORKERS)
  return P.mi{ name = "batch", count = 6, into = "results", run = function(_, i)
    seen:send(spread())
    if i > 2 then block() end
    done:send(i)
    return i
  end }
end

-- Waits until instances 1 and 2 completed and the 4 others are running.
local function after_two(done, running)
  return P.task("two done", function() done:recv(); done:recv(); running.event:wait() end)
end

describe("26 Cancel Multiple Instance Activity", function()
  it("withdraws the step: running instances are cancelled, and nothing follows it", function()
    local ws
    local r, cleanups, before, after = observed(function(_, ch)
      local done, seen, running = knhk.channel(8), knhk.channel(8), H.barrier(4)
      local r = P.parallel_split{
        P.sequence{ batch(ch, done, seen, running), noop("after batch") },
        P.sequence{ after_two(done, running), P.cancel_mi("batch") },
      }:execute()
      ws = H.drain(seen)
      return r
    end)
    assert.equal("completed", r.status, r.error)
    assert.is_true(H.distinct(ws) > 1, "instances ran on one worker only")
    assert.equal(1, H.count(r, "batch", "withdrawn"))
    assert.equal(0, H.count(r, "after batch"))
    assert.is_nil(r.vars.results)
    assert.equal(4, #cleanups)
    assert.equal(before, after)
  end)
end)

describe("27 Complete Multiple Instance Activity", function()
  it("forces the step to complete: running instances are cancelled, the completed ones count", function()
    local ws
    local r, cleanups, before, after = observed(function(_, ch)
      local done, seen, running = knhk.channel(8), knhk.channel(8), H.barrier(4)
      local r = P.parallel_split{
        P.sequence{ batch(ch, done, seen, running), P.task("after batch", function(v)
          return { counted = #v.results }
        end) },
        P.sequence{ after_two(done, running), P.complete_mi("batch") },
      }:execute()
      ws = H.drain(seen)
      return r
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(1, H.count(r, "batch", "completed"))
    assert.equal(2, r.vars.counted)
    table.sort(r.vars.results)
    assert.same({ 1, 2 }, r.vars.results)
    assert.equal(4, #cleanups)
    assert.equal(before, after)
    assert.is_true(H.distinct(ws) > 1, "instances ran on one worker only")
  end)
end)
