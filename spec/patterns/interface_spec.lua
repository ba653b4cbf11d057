-- The pattern-executor interface (wf:execute(ctx) -> result), the rule for
-- case data, the catalogue, and diagrams.
local H = require "patterns.helpers"
local knhk, P = H.knhk, H.P

local function noop(name) return P.task(name, function() end) end

describe("wf:execute(ctx) -> result", function()
  it("a completed case: status, case id, final variables, the trace of its steps", function()
    local r = H.run(function()
      return P.workflow(P.sequence{
        P.task("a", function(v) return { x = v.x + 1 } end),
        P.task("b", function(v) return { y = v.x * 10 } end),
      }):execute{ case_id = "order-7", vars = { x = 1 } }
    end)
    assert.equal("completed", r.status)
    assert.equal("order-7", r.case_id)
    assert.same({ x = 2, y = 20 }, r.vars)
    assert.equal("a:completed b:completed", H.events(r))
  end)

  it("copies ctx.vars: the caller's table is never changed", function()
    local vars = { x = 1, list = { 1 } }
    local r = H.run(function()
      return P.task("a", function(v) return { x = 2, list = { 1, 2 } } end):execute{ vars = vars }
    end)
    assert.equal(2, r.vars.x)
    assert.same({ x = 1, list = { 1 } }, vars)
  end)

  it("a failed case names the failing step, its error and traceback, and cancels the rest", function()
    local r, cleanups, before, after = H.run(function()
      local ch, running = knhk.channel(4), H.barrier(1)
      local before = H.live()
      local r = P.sequence{
        P.parallel_split{
          P.task("charge", function() running.event:wait(); error("card declined") end),
          P.task("reserve", H.blocker(ch, "reserve", running)),
        },
        P.synchronization(),
        noop("ship"),
      }:execute()
      return r, H.drain(ch), before, H.live()
    end)
    assert.equal("failed", r.status)
    assert.equal("charge", r.step)
    assert.matches("interface_spec.lua:%d+: card declined", r.error)
    assert.matches("interface_spec.lua:%d+", r.traceback)
    assert.same({ "reserve" }, cleanups)
    assert.equal(0, H.count(r, "ship"))
    assert.equal(before, after)
  end)

  it("a step that returns something other than a table of updates fails the case", function()
    local r = H.run(function() return P.task("bad", function() return 42 end):execute() end)
    assert.equal("failed", r.status)
    assert.equal("bad", r.step)
    assert.equal("step 'bad' returned a number (expected a table of case variables to update, "
      .. "or nothing)", r.error)
  end)

  it("a condition that raises fails the case at its split, with the condition's traceback", function()
    local r = H.run(function()
      return P.sequence{
        P.exclusive_choice{ { when = function(v) return v.order.total > 1 end, run = noop("x") } },
        P.simple_merge(),
      }:execute{ vars = { order = 5 } }
    end)
    assert.equal("failed", r.status)
    assert.equal("XOR-split", r.step)
    assert.matches("interface_spec.lua:%d+: attempt to index field 'order'", r.error)
    assert.matches("^stack traceback:\n%s*[^\n]*interface_spec.lua:%d+: in function 'cond'", r.traceback)
  end)

  it("reports to ctx.telemetry: the case and each step, as they start and end", function()
    local obs = H.run(function()
      local obs = H.observer()
      P.sequence{ noop("a"), noop("b") }:execute{ case_id = "c1", telemetry = obs }
      return obs
    end)
    local seen = {}
    for _, e in ipairs(obs.events) do
      seen[#seen + 1] = e.name:gsub("^knhk%.workflow%.", "") .. (e.attrs.step and (" " .. e.attrs.step) or "")
        .. (e.attrs.outcome and (" " .. e.attrs.outcome) or "") .. (e.attrs.status and (" " .. e.attrs.status) or "")
      assert.equal("c1", e.attrs.case_id)
    end
    assert.same({ "case.start", "step.start a", "step.end a completed", "step.start b",
                  "step.end b completed", "case.end completed" }, seen)
  end)

  it("goes on when ctx.telemetry raises, and says so once on stderr", function()
    local said, real = {}, io.stderr
    io.stderr = { write = function(_, s) said[#said + 1] = s end }
    local ok, r, calls = pcall(H.run, function()
      local calls = 0
      local sink = { event = function() calls = calls + 1; error("the sink is down") end }
      return P.sequence{ noop("a"), noop("b") }:execute{ telemetry = sink }, calls
    end, 1)
    io.stderr = real
    assert(ok, r)
    assert.equal("completed", r.status)
    assert.equal(6, calls) -- every event was still offered to it
    assert.equal(1, #said)
    assert.matches('ctx.telemetry:event("knhk.workflow.case.start") raised: ', said[1], 1, true)
    assert.matches("the sink is down (the workflow goes on", said[1], 1, true)
  end)

  -- "step.start a" / "step.end a cancelled" ... for the events of one case
  local function ends(obs)
    local starts, out = {}, {}
    for _, e in ipairs(obs.events) do
      local a = e.attrs
      if e.name == "knhk.workflow.step.start" then starts[a.step] = (starts[a.step] or 0) + 1
      elseif e.name == "knhk.workflow.step.end" then
        starts[a.step] = (starts[a.step] or 0) - 1
        out[a.step] = a
      end
    end
    for step, open in pairs(starts) do assert.equal(0, open, step .. ": a start without its end") end
    return out
  end

  it("reports the end of every step that started: one cancelled by a failure ends 'cancelled'", function()
    local obs, r = H.run(function()
      local obs, ch, running = H.observer(), knhk.channel(4), H.barrier(1)
      local r = P.sequence{
        P.parallel_split{
          P.task("charge", function() running.event:wait(); error("card declined") end),
          P.task("reserve", H.blocker(ch, "reserve", running)),
        },
        P.synchronization(),
      }:execute{ telemetry = obs }
      return obs, r
    end)
    assert.equal("failed", r.status)
    local e = ends(obs)
    assert.equal("cancelled", e.reserve.outcome)
    assert.is_nil(e.reserve.error)
    -- the failure's message, not just "failed", on the step and the case
    assert.equal("failed", e.charge.outcome)
    assert.matches("interface_spec.lua:%d+: card declined", e.charge.error)
    local last = obs.events[#obs.events]
    assert.equal("knhk.workflow.case.end", last.name)
    assert.equal("failed", last.attrs.status)
    assert.equal(r.error, last.attrs.error)
  end)

  it("reports the end of a step cancelled through ctx.token", function()
    local obs, r = H.virtual(function()
      local obs, token = H.observer(), knhk.token()
      local started = obs:after("long", 1, "started")
      local r
      knhk.nursery(function(n)
        n:spawn_local(function() started:wait(); knhk.sleep(5); token:cancel() end)
        r = P.sequence{ noop("first"), P.task("long", function() knhk.event():wait() end) }
          :execute{ telemetry = obs, token = token }
      end)
      return obs, r
    end)
    assert.equal("cancelled", r.status)
    local e = ends(obs)
    assert.equal("completed", e.first.outcome)
    assert.equal("cancelled", e.long.outcome)
    assert.equal("cancelled", obs.events[#obs.events].attrs.status)
  end)

  it("ends, cancelled and with nothing left running, when the caller's scope is cancelled", function()
    local caught, before, after, now = H.virtual(function()
      local before = H.live()
      local scope = knhk.move_on_after(60, function()
        P.task("long", function() knhk.event():wait() end):execute()
      end)
      return scope.cancelled_caught, before, H.live(), knhk.now()
    end)
    assert.is_true(caught)
    assert.equal(before, after)
    assert.equal(60, now) -- ended at the scope's deadline
  end)

  it("must be called inside a task", function()
    assert.has_error(function() P.task("a", function() end):execute() end,
      "execute: must be called inside a knhk task (inside knhk.run)")
  end)
end)

describe("wf:execute(ctx) -> result, for errors that are not messages", function()
  it("shows a table a task raised in result.error, not its address", function()
    local r = H.run(function()
      return P.workflow(P.task("tbl", function() error({ code = 7 }) end)):execute{}
    end)
    assert.equal("failed", r.status)
    assert.equal("error raised with a table value: { code = 7 }", r.error)
  end)
end)

describe("wf:execute(ctx), refusing what would be ignored", function()
  it("refuses an unknown ctx field and a signal no trigger of the workflow has", function()
    local r1, r2 = H.run(function()
      local ch = knhk.channel(1)
      return { pcall(function() return P.workflow(P.task("t", function() end)):execute{ varz = {} } end) },
        { pcall(function()
          return P.workflow(P.wait_for(P.persistent_trigger("paid"))):execute{ signals = { payd = ch } }
        end) }
    end)
    assert.is_false(r1[1])
    assert.matches("unknown ctx field 'varz' (it takes case_id, vars, token, telemetry, signals)", r1[2], 1, true)
    assert.is_false(r2[1])
    assert.matches("ctx.signals['payd']: the workflow has no trigger of that name (its triggers: 'paid')",
      r2[2], 1, true)
  end)
end)

describe("a workflow and its steps, kept in the VM that built them", function()
  local here = debug.getinfo(1, "S").short_src
  local STAYS = " (knhk.patterns), which cannot be sent to another worker: build it in the task "
    .. "that runs it, or share it with spawn_local"

  -- What fn, written on one line, raised: its message, which must start at
  -- that line.
  local function refusal(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok, "expected a refusal")
    local prefix = here .. ":" .. debug.getinfo(fn, "S").linedefined .. ": "
    assert.equal(prefix, tostring(err):sub(1, #prefix))
    return tostring(err):sub(#prefix + 1)
  end

  it("are refused when given to a portable task, saying they cannot travel, at the spawn's line", function()
    H.run(function()
      local wf = P.workflow(noop("t"))
      local step, join = noop("u"), P.partial(1)
      local fn_place = "function at " .. here:gsub("%p", "%%%0") .. ":%d+"
      assert.matches("^spawn: upvalue 'wf' of " .. fn_place .. " of the task function is a workflow"
        .. STAYS:gsub("%p", "%%%0") .. "$",
        refusal(function() knhk.spawn(function() return wf:execute() end) end))
      assert.equal("spawn: argument 1 is a workflow step" .. STAYS,
        refusal(function() knhk.spawn(function(s) return s end, step) end))
      assert.equal("spawn: key 'join' of argument 1 is a join of multiple instances" .. STAYS,
        refusal(function() knhk.spawn(function(t) return t end, { join = join }) end))
    end)
  end)

  it("are refused as a message or a portable task's result too", function()
    H.run(function()
      local ch = knhk.channel(1)
      local wf = P.workflow(noop("t"))
      assert.equal("send: the value sent is a workflow" .. STAYS, refusal(function() ch:send(wf) end))
      local ok, err = pcall(function() return knhk.spawn(function() return P.workflow(noop("t")) end):join() end)
      assert.is_false(ok)
      assert.matches("cannot return its results: return value 1 is a workflow" .. STAYS:gsub("%p", "%%%0")
        .. "$", err.message)
    end)
  end)

  it("run in a spawn_local task, which shares them, and in the portable task that built one", function()
    local shared, built = H.run(function()
      local wf = P.workflow(P.task("t", function() return { done = "shared" } end))
      return knhk.spawn_local(function() return wf:execute().vars.done end):join(),
        knhk.spawn(function()
          return P.workflow(P.task("t", function() return { done = "built" } end)):execute().vars.done
        end):join()
    end)
    assert.equal("shared", shared)
    assert.equal("built", built)
  end)
end)

describe("case data", function()
  it("a task works on a snapshot: changing it in place changes nothing", function()
    local r = H.run(function()
      return P.sequence{
        P.task("mutate", function(v) v.list[1] = "changed"; v.x = 99 end),
        P.task("read", function(v) return { seen = v.list[1] .. v.x } end),
      }:execute{ vars = { list = { "kept" }, x = 1 } }
    end)
    assert.equal("kept1", r.vars.seen)
  end)

  it("what a task returns is merged key by key when it completes; other variables stay", function()
    local r = H.run(function()
      return P.sequence{
        P.task("a", function() return { a = 1, shared = "a" } end),
        P.task("b", function() return { b = 2, shared = "b" } end),
      }:execute{ vars = { keep = true } }
    end)
    assert.same({ keep = true, a = 1, b = 2, shared = "b" }, r.vars)
  end)

  it("gives the same result on one worker and on four", function()
    local function wf()
      return P.sequence{
        P.parallel_split{
          P.task("a", function(v) return { a = v.n * 2 } end),
          P.task("b", function(v) return { b = v.n * 3 } end),
          P.mi{ count = 5, into = "xs", run = function(v, i) return v.n + i end },
        },
        P.synchronization(),
        P.task("sum", function(v)
          local s = v.a + v.b
          for _, x in ipairs(v.xs) do s = s + x end
          return { sum = s }
        end),
      }
    end
    local one = H.run(function() return wf():execute{ vars = { n = 10 } } end, 1)
    local four = H.run(function() return wf():execute{ vars = { n = 10 } } end, 4)
    assert.same(one.vars, four.vars)
    assert.equal(20 + 30 + 11 + 12 + 13 + 14 + 15, one.vars.sum)
  end)
end)

describe("P.get and P.list", function()
  it("list the 43 patterns in id order, each with its name, family and description", function()
    local all = P.list()
    assert.equal(43, #all)
    for i, e in ipairs(all) do
      assert.equal(i, e.id)
      assert.is_string(e.name)
      assert.is_string(e.description)
      assert.is_string(e.construct)
      assert.truthy(({ ["basic control-flow"] = 1, ["advanced branching and synchronization"] = 1,
        ["multiple instances"] = 1, ["state-based"] = 1, ["cancellation and force completion"] = 1,
        iteration = 1, termination = 1, trigger = 1 })[e.family], e.family)
    end
    assert.equal("Deferred Choice", all[16].name)
    assert.equal("Explicit Termination", all[43].name)
  end)

  it("get finds a pattern by id or by name, and says when there is none", function()
    assert.equal("state-based", P.get(18).family)
    assert.equal(38, P.get("general synchronizing merge").id)
    local none, msg = P.get(44)
    assert.is_nil(none)
    assert.equal("unknown pattern id 44 (ids are 1-43)", msg)
    assert.is_nil((P.get("no such pattern")))
  end)

  it("every step knows the pattern it expresses; MI steps by their options", function()
    local f = function() end
    assert.equal(12, P.mi{ count = 2, run = f, join = P.detached() }.pattern)
    assert.equal(13, P.mi{ count = 2, run = f }.pattern)
    assert.equal(14, P.mi{ items = "xs", run = f }.pattern)
    assert.equal(15, P.mi{ count = 2, run = f, dynamic = true }.pattern)
    assert.equal(34, P.mi{ count = 4, run = f, join = P.partial(2) }.pattern)
    assert.equal(35, P.mi{ count = 4, run = f, join = P.cancelling_partial(2) }.pattern)
    assert.equal(36, P.mi{ count = 4, run = f, dynamic = true, join = P.complete_when("true") }.pattern)
    assert.equal(29, P.cancelling_discriminator().pattern)
    assert.equal(23, P.transient_trigger("t").pattern)
  end)

  it("make builds a pattern's step from its id or name", function()
    local s = P.make(2, { function() end, function() end })
    assert.equal("parallel_split", s.kind)
    assert.equal(30, P.make("Structured Partial Join", 2).pattern)
    assert.equal(35, P.make(35, { count = 3, k = 1, run = function() end }).pattern)
  end)
end)

describe("diagrams", function()
  local function small()
    return P.sequence{
      P.task("receive", function() end),
      P.exclusive_choice{ { when = "total > 100", run = P.task("review", function() end) },
                          otherwise = P.task("approve", function() end) },
      P.simple_merge(),
      P.critical_section("ledger", P.task("book", function() end)),
    }
  end

  it("to_mermaid draws the net: tasks, splits and joins with their pattern, conditions", function()
    assert.equal([=[
flowchart TD
  s1(("start"))
  n1_1["receive"]
  n1_2{"XOR-split (4)"}
  n1_3["review"]
  n1_4["approve"]
  n1_5{"XOR-join (5)"}
  n1_6[["critical section 'ledger' (39)"]]
  subgraph c2 ["critical section 'ledger' (39)"]
    s2(("in"))
    n2_1["book"]
    s2 --> n2_1
    n2_1 --> e2
    e2(("out"))
  end
  n1_6 -.- s2
  s1 --> n1_1
  n1_1 --> n1_2
  n1_2 -->|"total > 100"| n1_3
  n1_2 -->|"otherwise"| n1_4
  n1_3 --> n1_5
  n1_4 --> n1_5
  n1_5 --> n1_6
  n1_6 --> e1
  e1(("end"))
]=], P.workflow(small()):to_mermaid())
  end)

  it("writes any step name as text: quotes, '#', markup and line breaks cannot break a label", function()
    local name = 'say "hi" #1; <b>bold</b> & co\nsecond line'
    local wf = P.workflow(P.sequence{ P.task(name, function() end) })
    local mermaid = wf:to_mermaid()
    assert.matches('n1_1%["say #quot;hi#quot; #35;1; #lt;b>bold#lt;/b> #amp; co<br/>second line"%]\n', mermaid)
    local dot = wf:to_dot()
    assert.matches('n1_1 [label="say \\"hi\\" #1; <b>bold</b> & co\\nsecond line", shape=box', dot, 1, true)
    -- the line break in the name did not split the line that holds it
    assert.not_matches("\nsecond line", mermaid, 1, true)
    assert.not_matches("\nsecond line", dot, 1, true)
  end)

  it("to_dot draws the same net for Graphviz", function()
    local dot = P.workflow(small(), { name = "order" }):to_dot()
    assert.matches('^digraph "order" {\n', dot)
    assert.matches('n1_2 %[label="XOR%-split %(4%)", shape=diamond%];', dot)
    assert.matches('n1_2 %-> n1_3 %[label="total > 100"%];', dot)
    assert.matches('subgraph cluster_c2 {\n    label="critical section \'ledger\' %(39%)";', dot)
    local open, close = select(2, dot:gsub("{", "")), select(2, dot:gsub("}", ""))
    assert.equal(open, close)
  end)
end)
