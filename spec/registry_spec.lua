-- The telemetry registry (registry/) and its two checkers: scripts/registry-check
-- (the registry against Weaver's grammar) and scripts/registry-live-check (a
-- recording against the registry).
local ROOT = debug.getinfo(1, "S").source:match "^@(.*)/spec/[^/]*$" or ".."
local KNHK_LUA = assert(os.getenv "KNHK_LUA", "KNHK_LUA must name the knhk-lua binary")

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function slurp(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read "*a"
  f:close()
  return s
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p " .. TMP)

-- Runs a command; returns its exit code, stdout and stderr.
local function run(cmd)
  local rc = os.execute(cmd .. " >" .. TMP .. "/out 2>" .. TMP .. "/err")
  return rc / 256, slurp(TMP .. "/out"), slurp(TMP .. "/err")
end

-- A copy of the real registry with `extra` (YAML) added as one more file.
local function registry_with(extra)
  local dir = TMP .. "/reg"
  os.execute("rm -rf " .. dir .. " && cp -r " .. q(ROOT .. "/registry") .. " " .. dir)
  os.execute("rm -f " .. dir .. "/*.md " .. dir .. "/*.png")
  if extra then write(dir .. "/extra.yaml", extra) end
  return dir
end

local function check(dir) return run(q(ROOT .. "/scripts/registry-check") .. " " .. dir) end

describe("scripts/registry-check", function()
  it("accepts the project's registry and counts what it declares", function()
    local rc, out, err = check(q(ROOT .. "/registry"))
    assert.equal(0, rc, err)
    assert.matches("is valid: 7 spans, 9 metrics, 21 attributes in 21 groups", out)
  end)

  it("refuses a group id declared twice, naming the file and the group", function()
    local rc, _, err = check(registry_with [[
groups:
  - id: registry.knhk.nursery
    type: attribute_group
    brief: again
    attributes:
      - id: knhk.extra.thing
        type: int
        stability: development
        brief: x
]])
    assert.equal(1, rc)
    assert.matches("reg/extra.yaml: group 'registry.knhk.nursery': duplicate group id %(first declared in [^)]*attributes.yaml%)", err)
    assert.matches("1 violation in", err)
  end)

  it("refuses a key given twice in one mapping, which a YAML loader would fold silently", function()
    local rc, _, err = check(registry_with [[
groups:
  - id: registry.extra
    type: attribute_group
    brief: first
    brief: second
    attributes:
      - id: knhk.extra.thing
        type: int
        type: int
        stability: development
        brief: x
]])
    assert.equal(1, rc)
    assert.matches("reg/extra.yaml:5: key 'brief' given twice in one mapping", err)
    assert.matches("reg/extra.yaml:9: key 'type' given twice in one mapping", err)
    assert.matches("2 violations in", err)
  end)

  it("refuses an attribute id declared twice", function()
    local rc, _, err = check(registry_with [[
groups:
  - id: registry.extra
    type: attribute_group
    brief: again
    attributes:
      - id: knhk.worker.id
        type: int
        stability: development
        brief: x
]])
    assert.equal(1, rc)
    assert.matches("group 'registry.extra': duplicate attribute id 'knhk.worker.id' %(first declared in group registry.knhk.worker%)", err)
  end)

  it("refuses a ref that resolves to no attribute", function()
    local rc, _, err = check(registry_with [[
groups:
  - id: span.knhk.extra
    type: span
    span_kind: internal
    stability: development
    brief: a span
    attributes:
      - ref: knhk.no.such.attribute
]])
    assert.equal(1, rc)
    assert.matches("extra.yaml: group 'span.knhk.extra': attribute ref 'knhk.no.such.attribute' does not resolve to a declared attribute", err)
  end)

  it("refuses an instrument that is not one of Weaver's", function()
    local rc, _, err = check(registry_with [[
groups:
  - id: metric.knhk.extra
    type: metric
    metric_name: knhk.extra
    instrument: meter
    unit: "1"
    stability: development
    brief: a metric
]])
    assert.equal(1, rc)
    assert.matches("group 'metric.knhk.extra': 'instrument' must be counter, gauge, histogram or updowncounter; got 'meter'", err)
  end)

  it("refuses a metric without a unit", function()
    local rc, _, err = check(registry_with [[
groups:
  - id: metric.knhk.extra
    type: metric
    metric_name: knhk.extra
    instrument: counter
    stability: development
    brief: a metric
]])
    assert.equal(1, rc)
    assert.matches("group 'metric.knhk.extra': a metric needs a 'unit'", err)
  end)

  it("refuses malformed enum members and types, and a span without a kind", function()
    local rc, _, err = check(registry_with [[
groups:
  - id: registry.extra
    type: attribute_group
    brief: x
    attributes:
      - id: knhk.extra.mode
        stability: development
        brief: x
        type:
          members:
            - id: Fast
              value: fast
              stability: development
            - id: slow
              value: fast
            - id: other
              value: 2
              stability: development
      - id: knhk.extra.size
        type: integer
        stability: development
        brief: x
  - id: span.knhk.extra
    type: span
    stability: development
    brief: x
    attributes: []
]])
    assert.equal(1, rc)
    assert.matches("member #1: id must be lower%-case words, got 'Fast'", err)
    assert.matches("member #2: duplicate value 'fast'", err)
    assert.matches("member #2: needs 'stability', got nil", err)
    assert.matches("member #3: value 2 is a int, other members are string", err)
    assert.matches("attribute 'knhk.extra.size': unknown type 'integer'", err)
    assert.matches("group 'span.knhk.extra': a span needs 'span_kind'", err)
  end)

  it("refuses a registry without a manifest", function()
    local dir = registry_with(nil)
    os.remove(dir .. "/manifest.yaml")
    local rc, _, err = check(dir)
    assert.equal(1, rc)
    assert.matches("reg/manifest.yaml: the registry has no manifest.yaml", err)
  end)
end)

-- A recording of one span and one metric, as OTLP/JSON lines.
local function recording(span_attrs, metric)
  local span = string.format([[{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"t"}}]},"scopeSpans":[{"scope":{"name":"knhk"},"spans":[{"traceId":"0123456789abcdef0123456789abcdef","spanId":"0123456789abcdef","name":"knhk.concurrency.nursery","kind":1,"startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":[%s],"status":{}}]}]}]}]],
    span_attrs)
  local path = TMP .. "/rec.jsonl"
  write(path, span .. "\n" .. (metric or "") .. "\n")
  return path
end

local function live(path) return run(q(ROOT .. "/scripts/registry-live-check") .. " " .. q(ROOT .. "/registry") .. " " .. path) end

describe("scripts/registry-live-check", function()
  local ok_attrs = [[{"key":"knhk.nursery.id","value":{"intValue":"7"}},{"key":"knhk.nursery.mode","value":{"stringValue":"supervise"}}]]

  it("accepts a span with its declared attributes and reports what was never seen", function()
    local rc, out, err = live(recording(ok_attrs))
    assert.equal(0, rc, err)
    assert.matches("1 spans, 0 metrics %(0 data points%) checked, 0 violations", out)
    assert.matches("coverage: spans 1/7, metrics 0/9, attributes 2/21", out)
    assert.matches("never seen: span knhk.concurrency.nursery.spawn", out)
    assert.matches("never seen: metric knhk.concurrency.executor.tasks.spawned", out)
  end)

  it("refuses an attribute the registry does not declare", function()
    local rc, _, err = live(recording(ok_attrs .. [[,{"key":"knhk.nursery.colour","value":{"stringValue":"red"}}]]))
    assert.equal(1, rc)
    assert.matches("rec.jsonl:1: span 'knhk.concurrency.nursery' %(0123456789abcdef%): attribute 'knhk.nursery.colour' is not declared in the registry", err)
  end)

  it("refuses an attribute of the wrong type, and a value outside its enum", function()
    local rc, _, err = live(recording([[{"key":"knhk.nursery.id","value":{"stringValue":"7"}},{"key":"knhk.nursery.mode","value":{"stringValue":"lenient"}}]]))
    assert.equal(1, rc)
    assert.matches("attribute 'knhk.nursery.id' is a string value, the registry declares int", err)
    assert.matches("attribute 'knhk.nursery.mode': lenient is not a member of its enum", err)
  end)

  it("refuses a span that lacks a required attribute, and an undeclared span", function()
    local rc, _, err = live(recording([[{"key":"knhk.nursery.id","value":{"intValue":"7"}}]]))
    assert.equal(1, rc)
    assert.matches("required attribute 'knhk.nursery.mode' is missing", err)
  end)

  it("refuses a metric with another instrument or unit than declared", function()
    local metric = [[{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"t"}}]},"scopeMetrics":[{"scope":{"name":"knhk"},"metrics":[{"name":"knhk.concurrency.executor.parks","unit":"ms","gauge":{"dataPoints":[]}},{"name":"knhk.telemetry.records.dropped","unit":"1","sum":{"dataPoints":[],"aggregationTemporality":2,"isMonotonic":true}}]}]}]}]]
    local rc, _, err = live(recording(ok_attrs, metric))
    assert.equal(1, rc)
    assert.matches("metric 'knhk.concurrency.executor.parks': is not a sum %(the registry declares a counter%)", err)
    assert.matches("metric 'knhk.telemetry.records.dropped': unit is '1', the registry declares '{record}'", err)
  end)

  it("refuses a line that is not strict JSON: a number spelt nan or inf", function()
    for _, bad in ipairs { "nan", "-nan", "inf", "-inf" } do
      local metric = [[{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"t"}}]},"scopeMetrics":[{"scope":{"name":"knhk"},"metrics":[{"name":"knhk.telemetry.records.dropped","unit":"{record}","sum":{"dataPoints":[{"attributes":[],"timeUnixNano":"2","asDouble":]]
        .. bad .. [[}],"aggregationTemporality":2,"isMonotonic":true}}]}]}]}]]
      local rc, out, err = live(recording(ok_attrs, metric))
      assert.equal(1, rc, bad)
      assert.matches("rec.jsonl:2: line: not strict JSON %(a number JSON has no spelling for, such as nan or inf%)", err)
      assert.matches("1 violation\n", out)
    end
  end)

  it("refuses a span whose parent is not in the recording", function()
    local path = recording(ok_attrs)
    write(path, (slurp(path):gsub('"name":"knhk.concurrency.nursery"',
      '"parentSpanId":"00000000000000aa","name":"knhk.concurrency.nursery"', 1)))
    local rc, _, err = live(path)
    assert.equal(1, rc)
    assert.matches("its parent span 00000000000000aa is not in the recording", err)
  end)
end)

describe("every example workflow run with --telemetry", function()
  local p = io.popen("ls " .. q(ROOT .. "/examples") .. "/*.lua")
  for example in p:lines() do
    it("passes the live check: " .. example:match("[^/]+$"), function()
      local rec = TMP .. "/example.jsonl"
      local rc, _, err = run(q(KNHK_LUA) .. " --telemetry " .. rec .. " " .. q(example))
      assert.equal(0, rc, err)
      local lrc, out, lerr = live(rec)
      assert.equal(0, lrc, lerr)
      assert.matches("0 violations", out)
      assert.matches("coverage: spans [67]/7, metrics 9/9", out) -- every metric, every run
    end)
  end
  p:close()
end)
