-- State-based patterns (16-18, 39, 40).
local H = require "patterns.helpers"
local knhk, P = H.knhk, H.P

local function noop(name) return P.task(name, function() end) end
local function waits(name, ev) return P.task(name, function() ev:wait() end) end

-- A task that counts, in `count`, how many such tasks are running at once;
-- it stays inside for one second (run under the virtual clock: every task
-- that can run meanwhile does, so an overlap, were one allowed, shows) and
-- records its name in the case's `order`. n of them, one at a time, take
-- exactly n virtual seconds.
local function counted(count, name)
  return P.task(name, function(v)
    count.bump(1)
    knhk.sleep(1)
    count.bump(-1)
    return { order = v.order .. name }
  end)
end

describe("16 Deferred Choice", function()
  it("the first source to fire picks its branch; the others never run", function()
    local r, now = H.virtual(function()
      local offer = knhk.channel(4)
      offer:send("accept")
      return P.sequence{
        P.deferred_choice{
          { on = offer, into = "answer", run = noop("accepted") },
          { on = P.timer(30), run = noop("timed out") },
        },
        P.simple_merge(),
      }:execute(), knhk.now()
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(0, now) -- the timer was withdrawn, never waited out
    assert.equal("accept", r.vars.answer)
    assert.equal(1, H.count(r, "accepted"))
    assert.equal(0, H.count(r, "timed out"))
  end)

  it("a timer decides when nothing else happens, at its time exactly", function()
    local r, now = H.virtual(function()
      return P.sequence{
        P.deferred_choice{
          { on = knhk.channel(1), run = noop("answered") },
          { on = P.timer(3600), run = noop("reminded") },
        },
        P.simple_merge(),
      }:execute(), knhk.now()
    end)
    assert.equal(3600, now)
    assert.equal(1, H.count(r, "reminded"))
    assert.equal(0, H.count(r, "answered"))
  end)

  it("a branch that loses takes nothing: its channel keeps its messages", function()
    for _ = 1, 5 do
      local r, left = H.run(function()
        local ch, ev = knhk.channel(4), knhk.event()
        ch:send("m")
        ev:set() -- both are ready: either may win
        local r = P.sequence{
          P.deferred_choice{ { on = ch, run = noop("by message") }, { on = ev, run = noop("by event") } },
          P.simple_merge(),
        }:execute()
        return r, H.drain(ch)
      end)
      if H.count(r, "by message") == 1 then
        assert.same({}, left)
        assert.equal(0, H.count(r, "by event"))
      else
        assert.equal(1, H.count(r, "by event"))
        assert.same({ "m" }, left)
      end
    end
  end)
end)

describe("17 Interleaved Parallel Routing", function()
  it("runs each task once, in an order its sequences allow, never two at once", function()
    local r, now = H.virtual(function()
      local count = H.overlap_counter()
      return P.interleaved_parallel{
        P.sequence{ counted(count, "a"), counted(count, "b") },
        P.sequence{ counted(count, "c"), counted(count, "d") },
        counted(count, "e"),
      }:execute{ vars = { order = "" } }, knhk.now()
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(5, now) -- five one-second tasks, one after another
    local order = r.vars.order
    assert.equal(5, #order)
    for _, t in ipairs { "a", "b", "c", "d", "e" } do assert.equal(1, H.count(r, t)) end
    assert.is_true(order:find("a") < order:find("b") and order:find("c") < order:find("d"), order)
  end)

  it("holds across workers: at most one of its tasks runs at any moment", function()
    local peak, entries = H.virtual(function()
      local count = H.overlap_counter()
      P.interleaved_parallel{
        P.sequence{ counted(count, "a"), counted(count, "b") },
        P.sequence{ counted(count, "c"), counted(count, "d") },
        counted(count, "e"),
      }:execute{ vars = { order = "" } }
      local v = count.read()
      return v.max, v.entries
    end)
    assert.equal(1, peak)
    assert.equal(5, entries)
  end)
end)

describe("18 Milestone", function()
  it("a guarded step waits for the milestone and runs while it holds", function()
    local r = H.run(function()
      local delivered = knhk.event()
      return knhk.fail_after(10, function()
        return P.sequence{
          P.parallel_split{
            P.sequence{
              noop("ship"),
              -- in transit until the address change below has run
              P.milestone("in transit", P.wait_for(delivered, { name = "deliver" })),
              noop("close"),
            },
            P.when_milestone("in transit", P.task("change address", function() delivered:set() end)),
          },
          P.synchronization(),
        }:execute()
      end)
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(1, H.count(r, "change address"))
    -- it could not start before the milestone was reached (after ship), and
    -- the milestone could not pass before it ran (it ends the wait)
    assert.is_true(H.pos(r, "ship") < H.pos(r, "change address"))
  end)

  it("a guarded step is withdrawn once the milestone has passed", function()
    local r = H.run(function()
      local obs = H.observer()
      local passed = obs:after("close")
      return P.sequence{
        P.parallel_split{
          P.sequence{ P.milestone("in transit", noop("deliver")), noop("close") },
          P.sequence{ P.wait_for(passed), P.when_milestone("in transit", noop("change address")),
                      noop("after change") },
        },
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(0, H.count(r, "change address"))
    assert.equal(0, H.count(r, "after change"))
    assert.equal(1, H.count(r, "when milestone 'in transit'", "withdrawn"))
  end)

  -- the case can no longer reach the milestone: the guarded step can never
  -- be enabled, so it is withdrawn and the case ends (it never waits for ever)
  local function express_or_standard(express, prep_seconds)
    return H.virtual(function()
      return P.parallel_split{
        P.sequence{
          P.exclusive_choice{
            { when = "express", run = P.milestone("packing", P.task("pack", function() knhk.sleep(5) end)) },
            otherwise = noop("standard"),
          },
          P.simple_merge(),
        },
        P.sequence{ P.task("prep", function() knhk.sleep(prep_seconds) end),
                    P.when_milestone("packing", noop("upgrade")), noop("after upgrade") },
      }:execute{ vars = { express = express } }, knhk.now()
    end)
  end

  it("a guarded step is withdrawn when a choice took the branch without the milestone", function()
    local r, now = express_or_standard(false, 10)
    assert.equal("completed", r.status, r.error)
    assert.equal(10, now) -- withdrawn as soon as it was reached, not left waiting
    assert.equal(1, H.count(r, "standard"))
    assert.equal(0, H.count(r, "upgrade"))
    assert.equal(0, H.count(r, "after upgrade")) -- no token leaves a withdrawn step
    assert.equal(1, H.count(r, "when milestone 'packing'", "withdrawn"))
    assert.is_nil(r.unfinished)
  end)

  it("a guarded step that waits is withdrawn once the other branches end without the milestone", function()
    -- the guarded step is reached first; the choice is made (and the
    -- milestone's branch left out) only later, after the 10 s step
    local r, withdrawn_at = H.virtual(function()
      local at
      local tel = { event = function(_, name, a)
        if name == "knhk.workflow.step.end" and a.outcome == "withdrawn" then at = knhk.now() end
      end }
      local r = P.parallel_split{
        P.sequence{
          P.task("decide", function() knhk.sleep(10) end),
          P.exclusive_choice{ { when = "express", run = P.milestone("packing", noop("pack")) },
                              otherwise = noop("standard") },
          P.simple_merge(),
          P.task("label", function() knhk.sleep(5) end),
        },
        P.when_milestone("packing", noop("upgrade")),
      }:execute{ vars = { express = false }, telemetry = tel }
      return r, at
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(10, withdrawn_at) -- when the choice left the milestone out, not at the end (15)
    assert.equal(0, H.count(r, "upgrade"))
    assert.equal(1, H.count(r, "label"))
    assert.is_true(H.pos(r, "when milestone 'packing'", "withdrawn") < H.pos(r, "label"), H.events(r))
  end)

  it("a guarded step still waits while the milestone's branch can get there", function()
    local r = express_or_standard(true, 1)
    assert.equal("completed", r.status, r.error)
    assert.equal(1, H.count(r, "upgrade")) -- ran while packing held
    assert.equal(1, H.count(r, "after upgrade"))
    assert.is_true(H.pos(r, "upgrade") < H.pos(r, "pack"), H.events(r))
  end)

  it("a guarded step is withdrawn when its milestone was withdrawn", function()
    local r = H.virtual(function()
      local obs = H.observer()
      return P.parallel_split{
        P.sequence{ P.task("wait", function() knhk.event():wait() end),
                    P.milestone("open", noop("holding")) },
        P.sequence{ waits("withdraw", obs:after("wait", 1, "started")), P.cancel_task("wait") },
        P.when_milestone("open", noop("guarded")),
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(0, H.count(r, "guarded"))
    assert.equal(1, H.count(r, "wait", "withdrawn"))
    assert.equal(1, H.count(r, "when milestone 'open'", "withdrawn"))
  end)

  -- When a guarded step was withdrawn, in virtual seconds (nil: never).
  local function withdrawn_at(tel_into)
    return { event = function(_, name, a)
      if name == "knhk.workflow.step.end" and a.outcome == "withdrawn" then tel_into.at = knhk.now() end
    end }
  end

  it("without a loop, a guarded step reached after the milestone passed is withdrawn as it is reached", function()
    -- no loop: the milestone is passed at 1, the guarded step is reached at
    -- 2 and withdrawn then, not when the case ends (11)
    local seen = {}
    local r = H.virtual(function()
      return P.parallel_split{
        P.sequence{ P.milestone("m", P.task("hold", function() knhk.sleep(1) end)),
                    P.task("long", function() knhk.sleep(10) end) },
        P.sequence{ P.task("prep", function() knhk.sleep(2) end),
                    P.when_milestone("m", noop("guarded")), noop("after") },
      }:execute{ telemetry = withdrawn_at(seen) }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(2, seen.at)
    assert.equal(0, H.count(r, "guarded"))
    assert.equal(0, H.count(r, "after"))
    assert.equal(1, H.count(r, "when milestone 'm'", "withdrawn"))
  end)

  -- A loop whose every round holds the milestone "m" for a second (hold),
  -- then spends a second (between); three rounds, 0 to 6 s. Beside it, a
  -- guarded step reached at `ready` seconds.
  local function loop_beside(ready, tel)
    return P.parallel_split{
      P.repeat_until(P.sequence{
        P.milestone("m", P.task("hold", function() knhk.sleep(1) end)),
        P.task("between", function(v) knhk.sleep(1) return { round = v.round + 1 } end),
      }, "round >= 3"),
      P.sequence{ P.task("prep", function() knhk.sleep(ready) end),
                  P.when_milestone("m", P.task("guarded", function() return { ran_at = knhk.now() } end)),
                  noop("after") },
    }:execute{ vars = { round = 0 }, telemetry = tel }
  end

  it("a guarded step reached after a loop's round passed the milestone runs in a later round", function()
    local r = H.virtual(function() return loop_beside(1.5) end)
    assert.equal("completed", r.status, r.error)
    assert.equal(2, r.vars.ran_at) -- as the second round's hold began
    assert.equal(1, H.count(r, "guarded"))
    assert.equal(1, H.count(r, "after"))
    assert.equal(0, H.count(r, "when milestone 'm'", "withdrawn"))
    assert.equal(3, H.count(r, "hold"))
  end)

  it("a guarded step is withdrawn once the loop has ended with the milestone passed", function()
    -- reached in the last round after its hold (5.5): it waits, since the
    -- loop may go round again, until the loop ends (6)
    local seen = {}
    local r = H.virtual(function() return loop_beside(5.5, withdrawn_at(seen)) end)
    assert.equal("completed", r.status, r.error)
    assert.equal(6, seen.at)
    assert.equal(0, H.count(r, "guarded"))
    assert.equal(0, H.count(r, "after"))
    assert.equal(1, H.count(r, "when milestone 'm'", "withdrawn"))
    -- reached after the loop ended: withdrawn at once
    local seen2 = {}
    local r2 = H.virtual(function() return loop_beside(8, withdrawn_at(seen2)) end)
    assert.equal("completed", r2.status, r2.error)
    assert.equal(8, seen2.at)
    assert.equal(0, H.count(r2, "guarded"))
  end)

  it("a guarded step inside a loop's round is withdrawn, not kept for the next round it holds up", function()
    -- each round: the milestone (0-1) beside a guarded step reached at 1.5;
    -- the round ends only once that step has, so the next round's
    -- milestone cannot come while it waits
    local r, now = H.virtual(function()
      local r = P.repeat_until(P.sequence{
        P.parallel_split{
          P.milestone("m", P.task("hold", function() knhk.sleep(1) end)),
          P.sequence{ P.task("prep", function() knhk.sleep(1.5) end),
                      P.when_milestone("m", noop("guarded")) },
        },
        P.general_synchronizing_merge(),
        P.task("between", function(v) return { round = v.round + 1 } end),
      }, "round >= 3"):execute{ vars = { round = 0 } }
      return r, knhk.now()
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(4.5, now) -- three rounds of 1.5 s
    assert.equal(0, H.count(r, "guarded"))
    assert.equal(3, H.count(r, "when milestone 'm'", "withdrawn"))
    assert.equal(3, H.count(r, "between"))
  end)

  it("a guarded step runs when a graph's cycle comes back to the milestone", function()
    local r = H.virtual(function()
      return P.parallel_split{
        P.graph{ start = "hold", nodes = {
          hold = { run = P.milestone("m", P.task("hold", function() knhk.sleep(1) end)), next = "count" },
          count = { run = function(v) knhk.sleep(1) return { round = v.round + 1 } end,
                    next = P.exclusive_choice{ { when = "round < 3", to = "hold" },
                                               { when = "round >= 3", to = "done" } } },
          done = { run = noop("done") },
        } },
        P.sequence{ P.task("prep", function() knhk.sleep(1.5) end),
                    P.when_milestone("m", P.task("guarded", function() return { ran_at = knhk.now() } end)) },
      }:execute{ vars = { round = 0 } }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(2, r.vars.ran_at)
    assert.equal(1, H.count(r, "guarded"))
  end)

  it("a guarded step runs at a later milestone of the same name", function()
    local r = H.virtual(function()
      return P.parallel_split{
        P.sequence{ P.milestone("m", P.task("first", function() knhk.sleep(1) end)),
                    P.task("gap", function() knhk.sleep(1) end),
                    P.milestone("m", P.task("second", function() knhk.sleep(1) end)) },
        P.sequence{ P.task("prep", function() knhk.sleep(1.5) end),
                    P.when_milestone("m", P.task("guarded", function() return { ran_at = knhk.now() } end)) },
      }:execute()
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(2, r.vars.ran_at)
    assert.is_true(H.pos(r, "gap") < H.pos(r, "guarded") and H.pos(r, "guarded") < H.pos(r, "second"),
      H.events(r))
  end)

  it("guarded steps waiting for each other's milestones are all withdrawn", function()
    local r = H.virtual(function()
      return P.parallel_split{
        P.sequence{ P.when_milestone("a", noop("x")), P.milestone("b", noop("hold b")) },
        P.sequence{ P.when_milestone("b", noop("y")), P.milestone("a", noop("hold a")) },
      }:execute()
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(0, H.count(r, "x") + H.count(r, "y"))
    assert.equal(1, H.count(r, "when milestone 'a'", "withdrawn"))
    assert.equal(1, H.count(r, "when milestone 'b'", "withdrawn"))
  end)
end)

describe("39 Critical Section", function()
  it("sections of one name never overlap, on any worker; other names do", function()
    local r, peak, now = H.virtual(function()
      local count = H.overlap_counter()
      local inside = knhk.event()
      local r = knhk.fail_after(10, function()
        return P.sequence{
          P.parallel_split{
            P.critical_section("ledger", P.sequence{ counted(count, "a"), counted(count, "b") }),
            P.critical_section("ledger", P.sequence{ counted(count, "c"), counted(count, "d") }),
            -- another name: it runs while a ledger section holds its lock
            P.critical_section("mail", P.task("mail", function() inside:wait() end)),
            P.critical_section("ledger", P.task("e", function() inside:set() end)),
          },
          P.synchronization(),
        }:execute{ vars = { order = "" } }
      end)
      return r, count.read().max, knhk.now()
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(1, peak)
    assert.equal(4, now) -- the ledger's four seconds one after another
    -- a section runs whole: a-b and c-d are never interleaved
    local order = r.vars.order
    assert.is_true(order == "abcd" or order == "cdab", order)
  end)

  it("a lock given to the section excludes other cases too", function()
    local peak, now = H.virtual(function()
      local count, lock = H.overlap_counter(), knhk.lock()
      local wf = P.workflow(P.critical_section("ledger",
        P.sequence{ counted(count, "a"), counted(count, "b") }, { lock = lock }))
      knhk.nursery(function(n)
        for _ = 1, 3 do n:spawn_local(function() wf:execute{ vars = { order = "" } } end) end
      end)
      return count.read().max, knhk.now()
    end)
    assert.equal(1, peak)
    assert.equal(6, now) -- three cases' two seconds, one case at a time
  end)
end)

describe("40 Interleaved Routing", function()
  it("runs each task once, in any order, never two at once", function()
    local r, peak, now = H.virtual(function()
      local count = H.overlap_counter()
      local r = P.interleaved{ counted(count, "a"), counted(count, "b"), counted(count, "c") }
        :execute{ vars = { order = "" } }
      return r, count.read().max, knhk.now()
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(1, peak)
    assert.equal(3, now)
    local got = {}
    for ch in r.vars.order:gmatch(".") do got[#got + 1] = ch end
    table.sort(got)
    assert.same({ "a", "b", "c" }, got)
  end)
end)
