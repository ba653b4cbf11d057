-- Termination (11, 43).
local H = require "patterns.helpers"
local knhk, P = H.knhk, H.P

local function noop(name) return P.task(name, function() end) end
local function waits(name, ev) return P.task(name, function() ev:wait() end) end

describe("11 Implicit Termination", function()
  it("ends the case when nothing is left to do, without an end step", function()
    local r, before, after = H.run(function()
      local obs = H.observer()
      local before = H.live()
      -- three branches end on their own, the last one well after the others
      local r = P.sequence{
        noop("start"),
        P.parallel_split{ noop("a"), noop("b"), waits("c", obs:after("b")) },
      }:execute{ telemetry = obs }
      return r, before, H.live()
    end)
    assert.equal("completed", r.status)
    assert.equal(1, H.count(r, "c")) -- execute returned only after the last branch
    assert.is_nil(r.unfinished)
    assert.is_nil(r.ended_by)
    assert.equal(before, after)
  end)

  it("ends a case that can go no further as deadlocked, and lists where tokens were left", function()
    local r = H.run(function()
      local obs = H.observer()
      return P.sequence{
        P.parallel_split{
          P.sequence{ P.task("approve", function() knhk.event():wait() end), noop("approved") },
          P.sequence{ waits("withdraw", obs:after("approve", 1, "started")), P.cancel_task("approve") },
        },
        P.synchronization(), -- waits for approve's branch, which was withdrawn
        noop("ship"),
      }:execute{ telemetry = obs }
    end)
    -- not "completed": ship never ran, and the pattern excludes a deadlock
    assert.equal("deadlocked", r.status)
    assert.equal(0, H.count(r, "ship"))
    assert.same({ "AND-join" }, r.unfinished)
  end)

  it("a thread merge waiting for more threads than were split is deadlocked too", function()
    local r = H.virtual(function()
      return P.sequence{ P.thread_split(3), noop("pick"), P.thread_merge(2), noop("pack") }:execute()
    end)
    assert.equal("deadlocked", r.status)
    assert.equal(3, H.count(r, "pick"))
    assert.equal(1, H.count(r, "pack")) -- two threads made one; the third waits for a partner
    assert.same({ "merge 2 threads" }, r.unfinished)
  end)

  it("a case whose every join fired is completed, with nothing unfinished", function()
    local r = H.virtual(function()
      return P.sequence{ P.thread_split(4), noop("pick"), P.thread_merge(2), noop("pack") }:execute()
    end)
    assert.equal("completed", r.status)
    assert.equal(2, H.count(r, "pack"))
    assert.is_nil(r.unfinished)
  end)
end)

describe("43 Explicit Termination", function()
  it("cancels everything still running and ends the case at once", function()
    local cleanups
    local r, before, after = H.run(function()
      local ch, running = knhk.channel(8), H.barrier(3)
      local obs = H.observer()
      local before = H.live()
      local r = P.sequence{
        P.parallel_split{
          P.task("long", H.blocker(ch, "long", running)),
          P.mi{ name = "batch", count = 2, run = H.blocker(ch, "instance", running) },
          P.sequence{ waits("decide", running.event), P.terminate{ name = "done" },
                      noop("never") },
        },
      }:execute{ telemetry = obs }
      cleanups = H.drain(ch)
      table.sort(cleanups)
      return r, before, H.live()
    end)
    assert.equal("completed", r.status)
    assert.equal("done", r.ended_by)
    assert.equal(0, H.count(r, "never"))
    assert.equal(1, H.count(r, "long", "cancelled"))
    assert.equal(1, H.count(r, "batch", "cancelled"))
    assert.same({ "instance", "instance", "long" }, cleanups)
    assert.equal(before, after)
  end)
end)
