-- Triggers (23, 24).
local H = require "patterns.helpers"
local knhk, P = H.knhk, H.P

local function noop(name) return P.task(name, function() end) end

describe("23 Transient Trigger", function()
  it("is lost when no step waits for it; a waiting step gets the next one", function()
    local r = H.run(function()
      local obs = H.observer()
      local ping = P.transient_trigger("ping")
      return P.sequence{
        P.parallel_split{
          P.sequence{ P.signal(ping, "early"), noop("sent early") },
          P.sequence{ P.wait_for(obs:after("sent early")),
                      P.wait_for(ping, { into = "got", name = "listen" }) },
          P.sequence{ P.wait_for(obs:after("listen", 1, "started")), P.signal(ping, "late") },
        },
        P.synchronization(),
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal("late", r.vars.got) -- "early" found nobody waiting, and is gone
  end)

  it("from outside (ctx.signals): dropped when nobody waits, delivered to one that does", function()
    local r = H.run(function()
      local obs = H.observer()
      local ping = P.transient_trigger("ping")
      local outside = knhk.channel(0) -- a send returns once the case has taken the signal
      local sent, listening = knhk.event(), obs:after("listen", 1, "started")
      knhk.spawn(function()
        outside:send("early")
        sent:set()
        listening:wait()
        outside:send("late")
      end)
      return P.sequence{
        P.wait_for(sent),
        P.wait_for(ping, { into = "got", name = "listen" }),
      }:execute{ telemetry = obs, signals = { ping = outside } }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal("late", r.vars.got)
  end)
end)

describe("24 Persistent Trigger", function()
  it("is kept until a step takes it", function()
    local r = H.run(function()
      local paid = P.persistent_trigger("paid")
      return P.sequence{
        P.signal(paid, function(v) return v.amount end), -- nobody waits yet
        noop("pack"),
        P.wait_for(paid, { into = "payment" }),
      }:execute{ vars = { amount = 42 } }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(42, r.vars.payment)
  end)

  it("from outside (ctx.signals): a signal sent before the case waits is kept", function()
    local r = H.run(function()
      local paid = P.persistent_trigger("paid")
      local outside = knhk.channel(4)
      outside:send("wire transfer")
      return P.sequence{ noop("pack"), P.wait_for(paid, { into = "payment" }) }
        :execute{ signals = { paid = outside } }
    end)
    assert.equal("wire transfer", r.vars.payment)
  end)

  it("each signal is taken once", function()
    local r = H.run(function()
      local paid = P.persistent_trigger("paid")
      return P.sequence{
        P.signal(paid, 1), P.signal(paid, 2),
        P.parallel_split{ P.wait_for(paid, { into = "a" }), P.wait_for(paid, { into = "b" }) },
        P.synchronization(),
      }:execute()
    end)
    local got = { r.vars.a, r.vars.b }
    table.sort(got)
    assert.same({ 1, 2 }, got)
  end)
end)

describe("waiting for a closed channel", function()
  it("fails the waiting step with a clear error instead of waiting for ever", function()
    local r = H.virtual(function()
      local paid = P.persistent_trigger("paid")
      local ch = knhk.channel(1)
      ch:close()
      return P.sequence{ P.wait_for(paid, { into = "v", name = "await payment" }), noop("ship") }
        :execute{ signals = { paid = ch } }
    end)
    assert.equal("failed", r.status)
    assert.equal("await payment", r.step)
    assert.equal("wait_for: trigger 'paid' (its channel, ctx.signals['paid']) is closed and empty, so "
      .. "it can never fire (expected an open channel, or one that still holds a message)", r.error)
    assert.equal(0, H.count(r, "ship"))
  end)

  it("still takes what a closed channel holds", function()
    local r = H.virtual(function()
      local ch = knhk.channel(1)
      ch:send("paid in full")
      ch:close()
      return P.wait_for(ch, { into = "v" }):execute()
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal("paid in full", r.vars.v)
  end)

  it("as every branch of a deferred choice, fails the choice instead of waiting for ever", function()
    local r, now = H.virtual(function()
      local a, b = knhk.channel(1), knhk.channel(1)
      a:close()
      knhk.spawn_local(function() knhk.sleep(5) b:close() end) -- the last open one, later
      return P.sequence{
        P.deferred_choice{ { on = a, run = noop("by a") }, { on = b, run = noop("by b") } },
        P.simple_merge(),
        noop("after"),
      }:execute(), knhk.now()
    end)
    assert.equal("failed", r.status)
    assert.equal(5, now)
    assert.equal("deferred_choice: every branch waits for a channel that is closed and empty, so "
      .. "none can ever fire (expected at least one open channel, or one that still holds a "
      .. "message)", r.error)
    assert.equal(0, H.count(r, "by a") + H.count(r, "by b") + H.count(r, "after"))
  end)

  it("as a branch of a deferred choice, never wins: another branch decides", function()
    local r, now = H.virtual(function()
      local ch = knhk.channel(1)
      ch:close()
      return P.sequence{
        P.deferred_choice{ { on = ch, run = noop("by message") }, { on = P.timer(60), run = noop("timed out") } },
        P.simple_merge(),
      }:execute(), knhk.now()
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(60, now)
    assert.equal(1, H.count(r, "timed out"))
    assert.equal(0, H.count(r, "by message"))
  end)
end)
