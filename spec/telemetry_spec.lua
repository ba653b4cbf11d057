-- knhk.telemetry: recording a run as OTLP/JSON lines, spans from Lua, the
-- runtime's own spans (nurseries, tasks, scopes, workflow patterns) and
-- instruments.
local knhk = require "knhk"
local two_workers = require "two_workers"
local P = require "knhk.patterns"
-- Recordings are read as strict JSON: lua-cjson would read nan and inf,
-- which no collector does.
local cjson = require("cjson").new()
cjson.decode_invalid_numbers(false)
local T = knhk.telemetry

local function tmpfile()
  local p = os.tmpname()
  return p
end

-- The recording at path: spans (by id), spans by name, metrics by name.
local function read(path)
  local spans, by_name, metrics, lines = {}, {}, {}, 0
  for line in io.lines(path) do
    lines = lines + 1
    local o = cjson.decode(line)
    for _, rs in ipairs(o.resourceSpans or {}) do
      for _, ss in ipairs(rs.scopeSpans) do
        for _, s in ipairs(ss.spans) do
          local a = {}
          for _, kv in ipairs(s.attributes or {}) do
            local v = kv.value
            a[kv.key] = v.stringValue or v.boolValue
            if v.intValue then a[kv.key] = tonumber(v.intValue) end
            if v.doubleValue then a[kv.key] = v.doubleValue end
          end
          s.attrs = a
          spans[s.spanId] = s
          by_name[s.name] = by_name[s.name] or {}
          table.insert(by_name[s.name], s)
        end
      end
    end
    for _, rm in ipairs(o.resourceMetrics or {}) do
      for _, sm in ipairs(rm.scopeMetrics) do
        for _, m in ipairs(sm.metrics) do metrics[m.name] = m end -- the last export wins
      end
    end
  end
  return { spans = spans, by_name = by_name, metrics = metrics, lines = lines }
end

-- Records fn run in a runtime of `workers` on `clock` (default real);
-- returns the recording.
local function record(fn, workers, clock)
  local path = tmpfile()
  assert(T.start { file = path, interval = 60 })
  local ok, err = pcall(knhk.run, fn, { workers = workers or 2, clock = clock })
  assert(T.stop())
  local rec = read(path)
  os.remove(path)
  assert(ok, err)
  return rec
end

local function only(rec, name)
  local list = rec.by_name[name] or {}
  assert.equal(1, #list, "spans named " .. name)
  return list[1]
end

-- Is `s` below `ancestor` (through parent links)?
local function under(rec, s, ancestor)
  local p = rec.spans[s.parentSpanId or ""]
  while p do
    if p == ancestor then return true end
    p = rec.spans[p.parentSpanId or ""]
  end
  return false
end

describe("knhk.telemetry.start and stop", function()
  it("write spans and metrics as OTLP/JSON lines, with the resource and scope", function()
    local path = tmpfile()
    assert.is_true(T.start { file = path, service = "spec" })
    assert.is_true(T.enabled())
    knhk.run(function() knhk.spawn(function() return 1 end):join() end, { workers = 1 })
    assert.is_true(T.stop())
    assert.is_false(T.enabled())
    local first = cjson.decode(io.lines(path)())
    os.remove(path)
    local rs = (first.resourceSpans or first.resourceMetrics)[1]
    assert.same({ key = "service.name", value = { stringValue = "spec" } }, rs.resource.attributes[1])
    assert.equal("knhk", (rs.scopeSpans or rs.scopeMetrics)[1].scope.name)
  end)

  it("report a second start and a stop without a start as run-time failures", function()
    local path = tmpfile()
    assert(T.start { file = path })
    local ok, msg = T.start { file = path }
    assert.is_nil(ok)
    assert.equal("knhk.telemetry.start: already recording", msg)
    assert(T.stop())
    local ok2, msg2 = T.stop()
    assert.is_nil(ok2)
    assert.equal("knhk.telemetry.stop: not recording", msg2)
    os.remove(path)
  end)

  it("cannot open a file in a directory that does not exist", function()
    local ok, msg, code = T.start { file = "/nonexistent/dir/run.jsonl" }
    assert.is_nil(ok)
    assert.equal("knhk.telemetry.start: cannot open /nonexistent/dir/run.jsonl: no such file or directory", msg)
    assert.is_number(code)
  end)

  it("refuses options of the wrong kind, in the caller's terms", function()
    assert.has_error(function() T.start() end, "bad argument #1 to 'start' (table expected, got nil)")
    assert.has_error(function() T.start { file = 3 } end,
      "bad argument #1 to 'start' (field 'file' must be a file name, got number)")
    assert.has_error(function() T.start { file = "" } end,
      "bad argument #1 to 'start' (field 'file' must be a file name, got an empty string)")
    assert.has_error(function() T.start { file = "x", interval = 0 } end,
      "bad argument #1 to 'start' (field 'interval' must be a number of seconds > 0, got 0)")
  end)

  -- real time: the export interval is real time whatever the runtime's clock
  it("exports the metrics at the interval, without being asked", function()
    local path = tmpfile()
    assert(T.start { file = path, interval = 0.02 })
    local seen = false
    knhk.run(function()
      for _ = 1, 200 do
        knhk.sleep(0.01)
        local f = io.open(path)
        seen = f and f:read("*a"):find('"resourceMetrics"', 1, true) ~= nil
        if f then f:close() end
        if seen then break end
      end
    end, { workers = 1 })
    assert(T.stop())
    os.remove(path)
    assert.is_true(seen)
  end)
end)

describe("the runtime's spans", function()
  it("make a nursery's span the parent of its children's, on every worker they run on", function()
    local rec = record(function()
      knhk.nursery(function(n)
        for i = 1, 12 do
          n:spawn(function(k)
            local x = 0
            for j = 1, 200000 do x = x + j % 7 end -- work long enough to be stolen
            return k + x * 0
          end, i)
        end
      end)
    end, 2)
    local children = {} -- nursery span -> its children's spans
    for _, s in ipairs(rec.by_name["knhk.concurrency.nursery.spawn"]) do
      local parent = rec.spans[s.parentSpanId]
      assert.equal("knhk.concurrency.nursery", parent.name)
      assert.equal(parent.traceId, s.traceId)
      assert.equal(parent.attrs["knhk.nursery.id"], s.attrs["knhk.nursery.id"])
      assert.equal("completed", s.attrs["knhk.task.status"])
      assert.is_number(s.attrs["knhk.worker.id"])
      children[parent] = children[parent] or {}
      table.insert(children[parent], s)
    end
    local body -- the nursery of the body above: the one with 12 children
    for n, list in pairs(children) do if #list == 12 then body = n end end
    assert.is_table(body)
    assert.equal("fail_fast", body.attrs["knhk.nursery.mode"])
  end)

  it("keep a task's parent on the worker it runs on: knhk.spawn, spawn_local, and what a moved task spawns", function()
    local got
    local rec = record(function()
      -- two tasks that can only both finish on two different workers
      local a, b = two_workers(function()
        local c = knhk.spawn(function() return knhk.current().worker end)
        local l = knhk.spawn_local(function() return knhk.current().worker end)
        return knhk.current().worker, c:join(), l:join()
      end)
      got = { a, b }
    end, 2)
    assert.are_not.equal(got[1][1], got[2][1]) -- a and b ran on different workers
    local spawns = rec.by_name["knhk.concurrency.nursery.spawn"]
    local root = spawns[1]
    for _, s in ipairs(spawns) do -- the root task: its nursery is the run's
      if rec.spans[s.parentSpanId].parentSpanId == nil then root = s end
    end
    -- the spans of the tasks spawned by `parent`, through its own nursery
    local function children(parent)
      local list = {}
      for _, s in ipairs(spawns) do
        local n = rec.spans[s.parentSpanId]
        if n.name == "knhk.concurrency.nursery" and n.parentSpanId == parent.spanId then
          assert.equal(parent.traceId, s.traceId)
          assert.equal(n.attrs["knhk.nursery.id"], s.attrs["knhk.nursery.id"])
          list[#list + 1] = s
        end
      end
      table.sort(list, function(x, y) return x.attrs["knhk.task.index"] < y.attrs["knhk.task.index"] end)
      return list
    end
    local ab = children(root)
    assert.equal(2, #ab)
    for i, task in ipairs(ab) do
      assert.equal(got[i][1], task.attrs["knhk.worker.id"])
      local cl = children(task) -- spawned on whichever worker task ran on
      assert.equal(2, #cl)
      assert.equal(got[i][2], cl[1].attrs["knhk.worker.id"])
      assert.equal(got[i][3], cl[2].attrs["knhk.worker.id"])
      assert.equal(task.attrs["knhk.worker.id"], cl[2].attrs["knhk.worker.id"]) -- local: same VM
    end
  end)

  it("mark a failed task's span as an error and its nursery's cancellation as a span", function()
    local rec = record(function()
      pcall(knhk.nursery, function(n)
        n:spawn(function() error("boom") end)
        n:spawn(function() knhk.sleep(10) end)
      end)
    end, 2, "virtual")
    local failed, cancelled = 0, 0
    for _, s in ipairs(rec.by_name["knhk.concurrency.nursery.spawn"]) do
      if s.attrs["knhk.task.status"] == "failed" then
        failed = failed + 1
        assert.equal(2, s.status.code)
      elseif s.attrs["knhk.task.status"] == "cancelled" then
        cancelled = cancelled + 1
      end
    end
    assert.equal(1, failed)
    assert.is_true(cancelled >= 1)
    local reasons = {}
    for _, s in ipairs(rec.by_name["knhk.concurrency.cancel.token.cancel"]) do
      reasons[s.attrs["knhk.cancel.reason"]] = true
    end
    assert.is_true(reasons.sibling)
  end)

  it("report a scope's drop, and whether it caught its cancellation", function()
    local rec = record(function()
      knhk.move_on_after(1, function() knhk.sleep(10) end)
    end, 2, "virtual")
    local drop = only(rec, "knhk.concurrency.cancel.scope.drop")
    assert.is_true(drop.attrs["knhk.cancel.scope.caught"])
    assert.equal("deadline", drop.attrs["knhk.cancel.reason"])
    assert.equal(drop.startTimeUnixNano, drop.endTimeUnixNano)
  end)

  -- real time: spans are timed in real time, the wait's length is the subject
  it("time the wait of a nursery's opener as a child of the nursery", function()
    local rec = record(function()
      knhk.nursery(function(n) n:spawn(function() knhk.sleep(0.02) end) end)
    end)
    local waited = false
    for _, w in ipairs(rec.by_name["knhk.concurrency.nursery.wait"]) do
      local parent = rec.spans[w.parentSpanId]
      assert.equal("knhk.concurrency.nursery", parent.name)
      if w.attrs["knhk.nursery.live"] == 1 then
        waited = true
        assert.is_true(tonumber(w.endTimeUnixNano) - tonumber(w.startTimeUnixNano) > 5e6)
      end
    end
    assert.is_true(waited)
  end)
end)

describe("knhk.telemetry.span", function()
  it("nests spans and the nurseries begun inside, also across a wait", function()
    local rec = record(function()
      T.span("outer", { ["order.id"] = "A-1" }, function()
        knhk.sleep(1) -- the task waits: its current span stays
        T.span("inner", { size = 3, ok = true, ratio = 0.5 }, function()
          knhk.nursery(function(n) n:spawn(function() end) end)
        end)
      end)
    end, 2, "virtual")
    local outer, inner = only(rec, "outer"), only(rec, "inner")
    assert.equal(outer.spanId, inner.parentSpanId)
    assert.equal(outer.traceId, inner.traceId)
    assert.same({ ["order.id"] = "A-1" }, outer.attrs)
    assert.same({ size = 3, ok = true, ratio = 0.5 }, inner.attrs)
    local nested = 0
    for _, s in ipairs(rec.by_name["knhk.concurrency.nursery"]) do
      if s.parentSpanId == inner.spanId then nested = nested + 1 end
    end
    assert.equal(1, nested)
  end)

  it("marks a span whose function raised as an error and raises again", function()
    local rec = record(function()
      local ok, err = pcall(T.span, "step", nil, function() error("no stock", 0) end)
      assert.is_false(ok)
      assert.equal("no stock", err)
    end)
    local s = only(rec, "step")
    assert.same({ code = 2, message = "no stock" }, s.status)
  end)

  it("names an error raised as a table as people read it, not by its address", function()
    local rec = record(function()
      local ok, err = pcall(T.span, "step", nil, function() error({ code = 7 }) end)
      assert.is_false(ok)
      assert.same({ code = 7 }, err)
    end)
    local s = only(rec, "step")
    assert.same({ code = 2, message = "error raised with a table value: { code = 7 }" }, s.status)
  end)

  it("returns the function's results and records nothing when not recording", function()
    local a, b = T.span("quiet", nil, function(x) return x, x + 1 end, 1)
    assert.equal(1, a)
    assert.equal(2, b)
  end)

  it("refuses attributes that OTLP cannot carry", function()
    assert.has_error(function() T.span("s", { f = print }, function() end) end,
      "bad argument #2 to 'span' (attribute 'f' is a function (expected a string, number, boolean or list))")
    assert.has_error(function() T.span(1, nil, function() end) end,
      "bad argument #1 to 'span' (string expected, got number)")
  end)

  it("refuses a map or a list of lists as an attribute, rather than losing it", function()
    local ran = false
    assert.has_error(function() T.span("s", { order = { id = 7, total = 9.5 } }, function() ran = true end) end,
      "bad argument #2 to 'span' (attribute 'order' is a table with key 'id', not a list "
      .. "(expected a string, number, boolean or list))")
    assert.is_false(ran) -- refused before fn runs
    assert.has_error(function() T.span("s", { tags = { "a", "b", extra = 1 } }, function() end) end,
      "bad argument #2 to 'span' (attribute 'tags' is a table with key 'extra', not a list "
      .. "(expected a string, number, boolean or list))")
    assert.has_error(function() T.span("s", { grid = { { 1 }, { 2 } } }, function() end) end,
      "bad argument #2 to 'span' (attribute 'grid' holds a table at [1] (a list holds strings, numbers or booleans))")
    assert.has_error(function() T.span("s", { ids = { "a", 2 } }, function() end) end,
      "bad argument #2 to 'span' (attribute 'ids' mixes a string at [1] and a number at [2] "
      .. "(a list holds values of one type))")
    record(function()
      assert.has_error(function() T.counter("c"):add(1, { where = { x = 1 } }) end,
        "bad argument #2 to 'add' (attribute 'where' is a table with key 'x', not a list "
        .. "(expected a string, number, boolean or list))")
    end)
  end)

  it("refuses an instrument's bad attributes whether or not it is recording", function()
    assert.is_false(T.enabled())
    assert.has_error(function() T.counter("c"):add(1, { where = { x = 1 } }) end,
      "bad argument #2 to 'add' (attribute 'where' is a table with key 'x', not a list "
      .. "(expected a string, number, boolean or list))")
    assert.has_error(function() T.histogram("h"):record(1, { f = print }) end,
      "bad argument #2 to 'record' (attribute 'f' is a function (expected a string, number, boolean or list))")
    assert.has_error(function() T.gauge("g"):set(1, { [1] = "x" }) end,
      "bad argument #2 to 'set' (attribute names must be strings, got number)")
    -- good ones cost nothing but the check
    T.counter("c"):add(1, { route = "/a", code = 200, ok = true, tags = { "x", "y" } })
  end)

  it("records a list as an array of its values, of one type, and a string that is not UTF-8 with replacement characters",
    function()
      local rec = record(function()
        T.span("s", { tags = { "a", "b" }, sizes = { 1, 2.5 }, counts = { 1, 2 }, empty = {},
                      raw = "ok\255\254" }, function() end)
      end)
      local attrs = {}
      for _, kv in ipairs(only(rec, "s").attributes) do attrs[kv.key] = kv.value end
      assert.same({ arrayValue = { values = { { stringValue = "a" }, { stringValue = "b" } } } }, attrs.tags)
      -- one type a list: doubles throughout when one is not an integer
      assert.same({ arrayValue = { values = { { doubleValue = 1 }, { doubleValue = 2.5 } } } }, attrs.sizes)
      assert.same({ arrayValue = { values = { { intValue = "1" }, { intValue = "2" } } } }, attrs.counts)
      assert.same({ arrayValue = { values = {} } }, attrs.empty)
      assert.equal("ok\239\191\189\239\191\189", attrs.raw.stringValue) -- U+FFFD twice
    end)
end)

describe("workflow patterns", function()
  it("run each case and step as a knhk.workflow.pattern.execute span, steps under their case", function()
    local rec = record(function()
      local wf = P.sequence { P.task("pick", function() end),
                              P.mi { count = 2, run = function() end, name = "pack" }, name = "ship" }
      P.workflow(wf):execute { case_id = "c-1" }
    end)
    local case, steps = nil, {}
    for _, s in ipairs(rec.by_name["knhk.workflow.pattern.execute"]) do
      assert.equal("c-1", s.attrs["knhk.workflow.case.id"])
      assert.equal("completed", s.attrs["knhk.workflow.outcome"])
      if s.attrs["knhk.workflow.step.name"] then steps[s.attrs["knhk.workflow.step.name"]] = s
      else case = s end
    end
    assert.is_table(case)
    assert.equal("ship", case.attrs["knhk.workflow.name"])
    for _, name in ipairs { "pick", "pack" } do
      assert.is_table(steps[name], name)
      assert.is_true(under(rec, steps[name], case), name .. " is under its case")
    end
    assert.is_nil(steps.pick.attrs["knhk.pattern.id"]) -- a plain task runs no pattern
    assert.equal(13, steps.pack.attrs["knhk.pattern.id"])
    assert.equal("Multiple Instances with a priori Design-Time Knowledge", steps.pack.attrs["knhk.pattern.name"])
    assert.equal("multiple instances", steps.pack.attrs["knhk.pattern.family"])
  end)
end)

describe("workflow patterns that fail", function()
  it("carry the failure's message on the failed step's span and its case's", function()
    local rec = record(function()
      local running = knhk.event()
      P.workflow(P.sequence { P.parallel_split { P.task("slow", function() running:wait() knhk.sleep(60) end),
                                                 P.task("bad", function() running:set() error("no stock") end) },
                              P.synchronization() }):execute { case_id = "f-1" }
    end)
    local by = {}
    for _, s in ipairs(rec.by_name["knhk.workflow.pattern.execute"]) do
      by[s.attrs["knhk.workflow.step.name"] or "case"] = s
    end
    assert.equal("failed", by.bad.attrs["knhk.workflow.outcome"])
    assert.matches("telemetry_spec.lua:%d+: no stock$", by.bad.status.message)
    assert.equal("failed", by.case.attrs["knhk.workflow.outcome"])
    assert.equal(by.bad.status.message, by.case.status.message)
    assert.equal("cancelled", by.slow.attrs["knhk.workflow.outcome"]) -- not failed
    assert.is_nil(by.slow.status.message)
  end)
end)

describe("nested workflow patterns", function()
  it("run a loop's body steps under the loop's span, each round, on two workers", function()
    local rec = record(function()
      local wf = P.sequence {
        P.task("init", function() return { i = 0 } end),
        P.while_do(function(v) return v.i < 2 end,
          P.sequence { P.task("inc", function(v) return { i = v.i + 1 } end),
                       P.mi { count = 2, run = function() end, name = "fan" } }, { name = "loop" }),
        name = "nest" }
      assert.equal("completed", P.workflow(wf):execute({ case_id = "n-1" }).status)
    end, 2)
    local by = {}
    for _, s in ipairs(rec.by_name["knhk.workflow.pattern.execute"]) do
      local k = s.attrs["knhk.workflow.step.name"] or "case"
      by[k] = by[k] or {}
      table.insert(by[k], s)
    end
    assert.equal(1, #by.loop)
    assert.equal(21, by.loop[1].attrs["knhk.pattern.id"])
    assert.is_true(under(rec, by.loop[1], by.case[1]))
    assert.is_false(under(rec, by.init[1], by.loop[1]))
    for _, name in ipairs { "inc", "fan" } do
      assert.equal(2, #by[name], name .. ": one per round")
      for _, s in ipairs(by[name]) do assert.is_true(under(rec, s, by.loop[1]), name .. " is under the loop") end
    end
  end)
end)

describe("instruments", function()
  it("sum a counter per attribute set and bucket a histogram", function()
    local rec = record(function()
      local c = T.counter("orders.shipped", { unit = "{order}" })
      c:add(2, { carrier = "fast" })
      c:add(3, { carrier = "fast" })
      c:add(1, { carrier = "cheap" })
      local h = T.histogram("orders.weight", { unit = "kg", bounds = { 1, 10 } })
      for _, v in ipairs { 0.5, 5, 50, 7 } do h:record(v) end
    end)
    local c = rec.metrics["orders.shipped"]
    assert.equal("{order}", c.unit)
    assert.is_true(c.sum.isMonotonic)
    local by = {}
    for _, p in ipairs(c.sum.dataPoints) do by[p.attributes[1].value.stringValue] = p.asDouble end
    assert.same({ fast = 5, cheap = 1 }, by)
    local h = rec.metrics["orders.weight"].histogram.dataPoints[1]
    assert.equal("4", h.count)
    assert.same({ "1", "2", "1" }, h.bucketCounts)
    assert.same({ 1, 10 }, h.explicitBounds)
    assert.equal(62.5, h.sum)
  end)

  it("travel to portable tasks on other workers, which record into the same series", function()
    local two_workers = require "two_workers"
    local rec = record(function()
      local c, h = T.counter("orders.remote"), T.histogram("weight.remote", { bounds = { 1, 10 } })
      c:add(1, { carrier = "fast" })
      local a, b = two_workers(function()
        c:add(2, { carrier = "fast" })
        h:record(5)
        return getmetatable(c) ~= nil and c.name
      end)
      assert.same({ "orders.remote" }, a)
      assert.same({ "orders.remote" }, b)
    end)
    assert.equal(5, rec.metrics["orders.remote"].sum.dataPoints[1].asDouble)
    assert.equal("2", rec.metrics["weight.remote"].histogram.dataPoints[1].count)
  end)

  it("have only their own kind's method: a counter adds, a histogram records, a gauge sets", function()
    local c, u = T.counter("orders"), T.updowncounter("queue")
    local h, g = T.histogram("weight"), T.gauge("load")
    local wrong = { { c, "counter", { "record", "set" } }, { u, "updowncounter", { "record", "set" } },
                    { h, "histogram", { "add", "set" } }, { g, "gauge", { "add", "record" } } }
    for _, w in ipairs(wrong) do
      for _, method in ipairs(w[3]) do
        assert.has_error(function() w[1][method](w[1], -7) end,
          w[2] .. " has no method '" .. method .. "'")
      end
    end
    -- a method taken from another kind refuses the instrument
    assert.has_error(function() h.record(c, 1) end,
      "bad argument #1 to 'record' (histogram expected, got counter)")
  end)

  it("never export a monotonic counter below zero, nor a gauge that was added to", function()
    local rec = record(function()
      local c, g = T.counter("orders"), T.gauge("load")
      c:add(5)
      g:set(3)
      for _, call in ipairs { function() c:add(-7) end, function() c:record(-7) end,
                              function() c:set(-7) end, function() g:add(1) end } do
        assert.is_false(pcall(call))
      end
    end)
    assert.equal(5, rec.metrics["orders"].sum.dataPoints[1].asDouble)
    assert.is_true(rec.metrics["orders"].sum.isMonotonic)
    assert.equal(3, rec.metrics["load"].gauge.dataPoints[1].asDouble)
  end)

  it("refuse names that OpenTelemetry does not allow, at the caller's line", function()
    local rule = "instrument name expected: a letter, then letters, digits, '_', '.', '-' or '/', "
      .. "at most 255 in all; got "
    assert.has_error(function() T.counter("") end, "bad argument #1 to 'counter' (" .. rule .. "an empty string)")
    assert.has_error(function() T.gauge("my gauge") end, "bad argument #1 to 'gauge' (" .. rule .. '"my gauge")')
    assert.has_error(function() T.histogram("1st") end, "bad argument #1 to 'histogram' (" .. rule .. '"1st")')
    assert.has_error(function() T.updowncounter("a\nb") end,
      "bad argument #1 to 'updowncounter' (" .. rule .. '"a\\10b")')
    assert.has_error(function() T.counter("x" .. string.rep("y", 255)) end,
      "bad argument #1 to 'counter' (" .. rule .. "a name of 256 characters)")
    local ok, err = pcall(T.counter, "")
    assert.is_false(ok)
    local ok2, err2 = pcall(function() T.counter("no spaces") end)
    assert.is_false(ok2)
    assert.matches("^[^:]*telemetry_spec%.lua:%d+: bad argument #1 to 'counter'", err2)
    assert.matches("instrument name expected", err)
    -- what the rule allows
    for _, name in ipairs { "a", "http.server.duration", "queue-depth", "orders/s", "x_1", string.rep("z", 255) } do
      assert.equal(name, T.counter(name).name)
    end
  end)

  it("refuse values that are not finite, naming the instrument and the value", function()
    local cases = { { T.counter("c"), "add", 0 / 0, "counter 'c' takes a finite number, got NaN" },
                    { T.counter("c"), "add", math.huge, "counter 'c' takes a finite number, got inf" },
                    { T.updowncounter("u"), "add", -math.huge, "updowncounter 'u' takes a finite number, got -inf" },
                    { T.histogram("h"), "record", 0 / 0, "histogram 'h' takes a finite number, got NaN" },
                    { T.gauge("g"), "set", math.huge, "gauge 'g' takes a finite number, got inf" } }
    for _, c in ipairs(cases) do
      assert.has_error(function() c[1][c[2]](c[1], c[3]) end,
        "bad argument #1 to '" .. c[2] .. "' (" .. c[4] .. ")")
    end
    assert.has_error(function() T.histogram("h", { bounds = { 1, math.huge } }) end,
      "bad argument #2 to 'histogram' (field 'bounds' must be finite numbers, got inf at 2)")
    assert.has_error(function() T.histogram("h", { bounds = { 0 / 0 } }) end,
      "bad argument #2 to 'histogram' (field 'bounds' must be finite numbers, got NaN at 1)")
  end)

  it("keep every metrics line strict JSON: a value refused is not recorded, a sum that overflows is \"Infinity\"",
    function()
      local rec = record(function()
        local g, c = T.gauge("load"), T.counter("bytes")
        g:set(2)
        assert.is_false(pcall(g.set, g, 0 / 0))
        c:add(1e308)
        c:add(1e308) -- the sum is no longer finite: written as OTLP/JSON spells it
      end)
      -- (read() decodes strictly: a bare nan or inf would have failed it)
      assert.equal(2, rec.metrics["load"].gauge.dataPoints[1].asDouble)
      assert.equal("Infinity", rec.metrics["bytes"].sum.dataPoints[1].asDouble)
      assert.is_table(rec.metrics["knhk.concurrency.executor.tasks.completed"])
    end)

  it("refuses a counter that goes down, and values that are not numbers", function()
    local c = T.counter("x")
    assert.has_error(function() c:add(-1) end, "bad argument #1 to 'add' (a counter only goes up, got -1)")
    assert.has_error(function() c:add("1") end, "bad argument #1 to 'add' (number expected, got string)")
    assert.has_error(function() T.histogram("h", { bounds = { 2, 1 } }) end,
      "bad argument #2 to 'histogram' (field 'bounds' must be ascending numbers)")
  end)
end)
