-- Advanced branching and synchronization (6-9, 28-33, 37, 38, 41, 42).
-- Steps are ordered through the case's own telemetry (H.observer): a task
-- waits until the case has taken another step's result, so every order a
-- spec asserts is forced, never a matter of timing.
local H = require "patterns.helpers"
local knhk, P = H.knhk, H.P

local function noop(name) return P.task(name, function() end) end

-- A task that waits for `ev` (made outside it: a task works on a snapshot
-- of what it captures, so the observer itself must stay in the case).
local function waits(name, ev) return P.task(name, function() ev:wait() end) end

-- A task that, on its first and second runs, first waits for gate1 / gate2
-- (nil: no wait). Runs are told apart by tickets taken from a channel.
local function gated(name, gate1, gate2)
  local tickets = knhk.channel(2)
  tickets:send(1)
  tickets:send(2)
  return P.task(name, function()
    local gate = gate2
    if tickets:recv() == 1 then gate = gate1 end
    if gate then gate:wait() end
  end)
end

describe("6 Multi-Choice", function()
  it("runs every branch whose condition holds, at the same time, and no other", function()
    local r = H.run(function()
      local a_in, c_in = knhk.event(), knhk.event()
      return knhk.fail_after(10, function()
        return P.sequence{
          P.multi_choice{
            { when = "x", run = P.task("a", function() a_in:set(); c_in:wait(); return { a = 1 } end) },
            { when = "y", run = P.task("b", function() return { b = 1 } end) },
            { when = "z", run = P.task("c", function() c_in:set(); a_in:wait(); return { c = 1 } end) },
          },
          P.synchronizing_merge(),
        }:execute{ vars = { x = true, y = false, z = true } }
      end)
    end)
    assert.equal("completed", r.status)
    assert.same({ 1, 1 }, { r.vars.a, r.vars.c })
    assert.is_nil(r.vars.b)
    assert.equal(0, H.count(r, "b"))
  end)
end)

describe("7 Structured Synchronizing Merge", function()
  it("waits for exactly the branches its multi-choice took, then continues once", function()
    local r = H.run(function()
      local obs = H.observer()
      local a_done = obs:after("a")
      return P.sequence{
        P.multi_choice{
          { when = "x", run = P.task("a", function() return { a = 1 } end) },
          { when = "y", run = P.task("b", function() return { b = 1 } end) },
          { when = "z", run = P.task("c", function() a_done:wait(); return { c = 1 } end) },
        },
        P.synchronizing_merge(),
        P.task("d", function(v) return { seen = (v.a or 0) + (v.c or 0) } end),
      }:execute{ vars = { x = true, y = false, z = true }, telemetry = obs }
    end)
    assert.equal("completed", r.status)
    assert.equal(1, H.count(r, "d"))
    assert.equal(2, r.vars.seen) -- not before c, the last taken branch
    assert.equal(0, H.count(r, "b")) -- and not waiting for b, which was not taken
  end)
end)

describe("8 Multi-Merge", function()
  it("passes on every branch that arrives: what follows runs once per arrival", function()
    local r = H.run(function()
      local obs = H.observer()
      local d_once = obs:after("d")
      return P.sequence{
        P.parallel_split{
          noop("a"),
          P.task("b", function() d_once:wait() end), -- arrives after d ran for a
        },
        P.multi_merge(),
        noop("d"),
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status)
    assert.equal(2, H.count(r, "d"))
    assert.is_true(H.pos(r, "d", "completed", 1) < H.pos(r, "b"))
  end)
end)

describe("9 Structured Discriminator", function()
  it("continues once, on the first branch, without waiting for the others", function()
    local r = H.run(function()
      local obs = H.observer()
      local d_done = obs:after("d")
      return P.sequence{
        P.parallel_split{
          noop("a"),
          P.task("b", function() d_done:wait() end),
          P.task("c", function() d_done:wait() end),
        },
        P.discriminator(),
        noop("d"),
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status)
    assert.equal(1, H.count(r, "d")) -- b and c arrived later, and were absorbed
    assert.is_true(H.pos(r, "d") < H.pos(r, "b") and H.pos(r, "d") < H.pos(r, "c"))
  end)

  it("resets only once every branch has arrived: then it fires again", function()
    -- two threads run the block; the second thread's `a` is held until the
    -- first round is over (b arrived), and fires the join again
    local r = H.run(function()
      local obs = H.observer()
      return P.sequence{
        P.thread_split(2),
        P.parallel_split{ gated("a", nil, obs:after("b", 1)),
                          gated("b", obs:after("d", 1), obs:after("d", 2)) },
        P.discriminator(),
        noop("d"),
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(2, H.count(r, "d"))
    assert.is_true(H.pos(r, "d", "completed", 1) < H.pos(r, "b", "completed", 1))
    assert.is_true(H.pos(r, "b", "completed", 1) < H.pos(r, "d", "completed", 2))
  end)

  it("fails the case when a branch arrives again before the reset (see 28)", function()
    local r = H.run(function()
      local obs = H.observer()
      return P.sequence{
        P.thread_split(2),
        P.parallel_split{ noop("a"), waits("b", obs:after("a", 2)) },
        P.discriminator(),
        noop("d"),
      }:execute{ telemetry = obs }
    end)
    assert.equal("failed", r.status)
    assert.matches("branch 1 arrived again before every branch had arrived once", r.error, 1, true)
  end)
end)

describe("28 Blocking Discriminator", function()
  it("holds a branch that arrives again until every branch has arrived, then fires for it", function()
    local r = H.run(function()
      local obs = H.observer()
      return P.sequence{
        P.thread_split(2),
        -- both a's arrive before any b: the second one must wait for the
        -- reset, and then fire at once: the second b arrives only after that
        P.parallel_split{ noop("a"), gated("b", obs:after("a", 2), obs:after("d", 2)) },
        P.blocking_discriminator(),
        noop("d"),
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(2, H.count(r, "d"))
    assert.is_true(H.pos(r, "a", "completed", 2) < H.pos(r, "b", "completed", 1))
    -- the second firing came only after the first round was complete
    assert.is_true(H.pos(r, "b", "completed", 1) < H.pos(r, "d", "completed", 2))
  end)
end)

describe("29 Cancelling Discriminator", function()
  it("continues on the first branch and cancels the others, leaving nothing running", function()
    local cleanups = {}
    local r, live_before, live_after = H.run(function()
      local ch, running = knhk.channel(8), H.barrier(2)
      local before = H.live()
      local r = P.sequence{
        P.parallel_split{ waits("a", running.event), P.task("b", H.blocker(ch, "b", running)),
                          P.task("c", H.blocker(ch, "c", running)) },
        P.cancelling_discriminator(),
        noop("d"),
      }:execute()
      cleanups = H.drain(ch)
      return r, before, H.live()
    end)
    assert.equal("completed", r.status)
    assert.equal(1, H.count(r, "d"))
    assert.equal(1, H.count(r, "b", "withdrawn"))
    assert.equal(1, H.count(r, "c", "withdrawn"))
    table.sort(cleanups)
    assert.same({ "b", "c" }, cleanups)
    assert.equal(live_before, live_after)
  end)
end)

describe("30 Structured Partial Join", function()
  it("continues once k of n branches arrived, and absorbs the rest", function()
    local r = H.run(function()
      local obs = H.observer()
      return P.sequence{
        P.parallel_split{
          noop("a"),
          waits("b", obs:after("a")),
          waits("c", obs:after("d")),
        },
        P.partial_join(2),
        noop("d"),
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status)
    assert.equal(1, H.count(r, "d"))
    assert.is_true(H.pos(r, "b") < H.pos(r, "d")) -- not after a alone
    assert.is_true(H.pos(r, "d") < H.pos(r, "c")) -- nor waiting for c
  end)
end)

describe("31 Blocking Partial Join", function()
  it("holds branches arriving again until the round is over, then counts them", function()
    local r = H.run(function()
      local obs = H.observer()
      return P.sequence{
        P.thread_split(2),
        P.parallel_split{
          gated("a", nil, obs:after("d", 1)),
          gated("b", nil, obs:after("c", 1)),
          gated("c", obs:after("a", 2), obs:after("d", 2)), -- round two: the held a, and b
        },
        P.blocking_partial_join(2),
        noop("d"),
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(2, H.count(r, "d"))
    -- the second a arrived during round one and waited for its end (c)
    assert.is_true(H.pos(r, "a", "completed", 2) < H.pos(r, "c", "completed", 1))
    assert.is_true(H.pos(r, "c", "completed", 1) < H.pos(r, "d", "completed", 2))
  end)
end)

describe("32 Cancelling Partial Join", function()
  it("continues once k of n arrived and cancels the remaining branches", function()
    local cleanups
    local r, before, after = H.run(function()
      local ch, running = knhk.channel(8), H.barrier(1)
      local before = H.live()
      local r = P.sequence{
        P.parallel_split{ waits("a", running.event), waits("b", running.event),
                          P.task("c", H.blocker(ch, "c", running)) },
        P.cancelling_partial_join(2),
        noop("d"),
      }:execute()
      cleanups = H.drain(ch)
      return r, before, H.live()
    end)
    assert.equal("completed", r.status)
    assert.equal(1, H.count(r, "d"))
    assert.equal(1, H.count(r, "c", "withdrawn"))
    assert.same({ "c" }, cleanups)
    assert.equal(before, after)
  end)
end)

describe("33 Generalised AND-Join", function()
  it("fires only once every input has a token, and keeps extra tokens for later", function()
    local r = H.run(function()
      local obs = H.observer()
      return P.sequence{
        P.parallel_split{
          P.sequence{ P.thread_split(2), noop("a") },          -- two tokens on input 1
          P.sequence{ P.thread_split(2), gated("b", obs:after("a", 2), obs:after("d", 1)) },
        },
        P.generalised_and_join(),
        noop("d"),
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(2, H.count(r, "d"))
    -- two a's waited for the first b; the second a's token was kept for b's second
    assert.is_true(H.pos(r, "a", "completed", 2) < H.pos(r, "d", "completed", 1))
    assert.is_true(H.pos(r, "b", "completed", 1) < H.pos(r, "d", "completed", 1))
    assert.is_true(H.pos(r, "b", "completed", 2) < H.pos(r, "d", "completed", 2))
  end)
end)

describe("37 Local Synchronizing Merge", function()
  it("waits for the branches taken; the others reach it as skip tokens, their steps skipped", function()
    local r = H.run(function()
      local obs = H.observer()
      local a_done = obs:after("a")
      return P.graph{
        start = "s",
        nodes = {
          s = { next = P.multi_choice{ { when = "x", to = "a" }, { when = "y", to = "b" },
                                        { when = "z", to = "c" } } },
          a = { run = function() return { a = 1 } end, next = "m" },
          b = { run = function() return { b = 1 } end, next = "b2" },
          b2 = { run = function() return { b2 = 1 } end, next = "m" },
          c = { run = function() a_done:wait(); return { c = 1 } end, next = "m" },
          m = { join = P.local_synchronizing_merge(), next = "d" },
          d = { run = function(v) return { seen = (v.a or 0) + (v.b or 0) + (v.c or 0) } end },
        },
      }:execute{ vars = { x = true, y = false, z = true }, telemetry = obs }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(1, H.count(r, "d"))
    assert.equal(2, r.vars.seen)
    assert.equal(1, H.count(r, "b", "skipped"))
    assert.equal(1, H.count(r, "b2", "skipped"))
    assert.is_nil(r.vars.b2)
  end)
end)

describe("38 General Synchronizing Merge", function()
  it("fires only when no more tokens can arrive", function()
    local r = H.run(function()
      local obs = H.observer()
      return P.sequence{
        P.parallel_split{
          noop("a"),
          P.sequence{ P.task("b", function() knhk.event():wait() end), noop("after b") },
          P.sequence{ waits("killer", obs:after("a")), P.cancel_task("b") },
        },
        P.general_synchronizing_merge(),
        noop("d"),
      }:execute{ telemetry = obs }
    end)
    assert.equal("completed", r.status, r.error)
    assert.equal(1, H.count(r, "d"))
    assert.equal(0, H.count(r, "after b"))
    -- a arrived first, but b could still deliver: only once b was withdrawn
    -- (and the third branch arrived) could nothing more come
    assert.is_true(H.pos(r, "a") < H.pos(r, "killer"))
    assert.is_true(H.pos(r, "b", "withdrawn") < H.pos(r, "d"))
  end)

  it("fires when a branch not taken cannot deliver, without skip tokens", function()
    local r = H.run(function()
      return P.sequence{
        P.multi_choice{ { when = "true", run = noop("a") }, { when = "false", run = noop("b") } },
        P.general_synchronizing_merge(),
        noop("d"),
      }:execute()
    end)
    assert.equal("completed", r.status)
    assert.equal(1, H.count(r, "d"))
    assert.equal(0, H.count(r, "b") + H.count(r, "b", "skipped"))
  end)
end)

describe("41 Thread Merge", function()
  it("merges n threads of one branch into one", function()
    local r = H.run(function()
      return P.sequence{ P.thread_split(3), noop("a"), P.thread_merge(3), noop("d") }:execute()
    end)
    assert.equal("completed", r.status)
    assert.equal(3, H.count(r, "a"))
    assert.equal(1, H.count(r, "d"))
    assert.is_true(H.pos(r, "a", "completed", 3) < H.pos(r, "d"))
  end)
end)

describe("42 Thread Split", function()
  it("runs what follows in n threads at once", function()
    local r = H.run(function()
      local count = H.overlap_counter()
      local all_in = knhk.event()
      return knhk.fail_after(10, function()
        return P.sequence{
          P.thread_split(3),
          -- each thread waits until all three are inside: they run together
          P.task("b", function()
            count.bump(1)
            if count.read().now == 3 then all_in:set() end
            all_in:wait()
          end),
        }:execute()
      end)
    end)
    assert.equal("completed", r.status)
    assert.equal(3, H.count(r, "b"))
  end)
end)
