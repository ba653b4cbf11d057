-- The example workflows (examples/*.lua), run with knhk-lua as a user
-- would: each prints what its case did, and that output is asserted here.
-- And `knhk-lua --graph`, which draws a workflow without running it.
local KNHK_LUA = assert(os.getenv "KNHK_LUA", "KNHK_LUA must name the knhk-lua binary")
local EXAMPLES = (debug.getinfo(1, "S").source:match("^@(.*)/spec/patterns/") or "..") .. "/examples/"
local TMP = os.tmpname()

local function slurp(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read "*a"
  f:close()
  return s
end

-- knhk-lua on two workers with `args`; returns exit code, stdout, stderr.
local function run(args)
  os.execute(string.format("%q -w 2 %s >%s.out 2>%s.err </dev/null; echo $? >%s.rc",
    KNHK_LUA, args, TMP, TMP, TMP))
  return tonumber(slurp(TMP .. ".rc")), slurp(TMP .. ".out"), slurp(TMP .. ".err")
end

local function example(name, args)
  return run(EXAMPLES .. name .. ".lua" .. (args and (" " .. args) or ""))
end

teardown(function()
  for _, ext in ipairs { "", ".out", ".err", ".rc" } do os.remove(TMP .. ext) end
end)

describe("examples", function()
  it("order fulfilment: checks in parallel, then a choice on the total", function()
    local code, out, err = example("order-fulfilment")
    assert.equal(0, code, err)
    assert.equal("completed: order A-1001 (250.00): approved\n"
      .. "checks: stock true, credit true, address true\n", out)
    local _, big = example("order-fulfilment", "2500")
    assert.equal("completed: order A-1001 (2500.00): approved after review\n"
      .. "checks: stock true, credit true, address true\n", big)
  end)

  it("document review: the verdict or the deadline, whichever comes first", function()
    local code, out, err = example("document-review")
    assert.equal(0, code, err)
    assert.equal("reviewed: approved\narchived design.md v1\n", out)
    -- the deadline waited out on the virtual clock, as --clock virtual does for a user
    local _, silent = run("--clock virtual " .. EXAMPLES .. "document-review.lua silent")
    assert.equal("no review in time: escalated\narchived design.md v1\n", silent)
  end)

  it("batch: as many instances as records, going on at a quorum", function()
    local code, out, err = example("batch", "12 8")
    assert.equal(0, code, err)
    assert.equal("completed: quorum reached with 8 of 12 records\n"
      .. "all instances finished before the case ended: true\n", out)
  end)

  it("payment failure: a declined card cancels the fulfilment region", function()
    local code, out, err = example("payment-failure")
    assert.equal(0, code, err)
    assert.equal("completed: payment declined, order cancelled\n"
      .. "fulfilment cancelled: true, packed: false\n", out)
    local _, ok = example("payment-failure", "ok")
    assert.equal("completed: payment received\nfulfilment cancelled: false, packed: true\n", ok)
  end)

  it("shipping milestone: an address change only while in transit", function()
    local code, out, err = example("shipping-milestone")
    assert.equal(0, code, err)
    assert.equal("completed: shipping to 2 New Street\naddress change applied while in transit\n", out)
    local _, late = example("shipping-milestone", "late")
    assert.equal("completed: shipping to 1 Old Road\naddress change refused: already delivered\n", late)
  end)

  it("ledger: parallel transfers in a critical section lose no update", function()
    local code, out, err = example("ledger", "6")
    assert.equal(0, code, err)
    assert.equal("completed: balance 310 after 6 transfers (expected 310)\n", out)
  end)

  it("fraud stop: fraud ends the case at once, nothing ships", function()
    local code, out, err = example("fraud-stop")
    assert.equal(0, code, err)
    assert.equal("completed, ended by 'stop: fraud'\nshipped: false\n", out)
    local _, clean = example("fraud-stop", "clean")
    assert.equal("completed\nshipped: true\n", clean)
  end)

  it("build pipeline: real commands; a failing compile cancels the rest", function()
    local code, out, err = example("build-pipeline")
    assert.equal(0, code, err)
    assert.equal("built; ./hello says: hello, world\n", out)
    local bcode, bout, berr = example("build-pipeline", "broken")
    assert.equal(1, bcode)
    assert.equal("build failed at 'compile b.c': compile b.c failed (status 1)\n"
      .. "docs: cancelled\n", bout)
    assert.matches("knhk%-lua: the build failed", berr)
  end)
end)

describe("knhk-lua --graph", function()
  it("prints the Mermaid diagram of the workflow a script executes, without running it", function()
    local code, out, err = run("--graph " .. EXAMPLES .. "order-fulfilment.lua")
    assert.equal(0, code, err)
    assert.matches("^flowchart TD\n", out)
    assert.matches('n1_6{"AND%-join %(3%)"}', out)
    assert.matches('n1_7 %-%->|"order.total > 1000"| n1_9', out)
    assert.is_nil(out:find("completed:", 1, true)) -- the case never ran
  end)

  it("--graph=dot prints Graphviz DOT", function()
    local code, out = run("--graph=dot " .. EXAMPLES .. "payment-failure.lua")
    assert.equal(0, code)
    assert.matches("^digraph \"workflow\" {\n", out)
    assert.matches("subgraph cluster_c2 {", out)
  end)

  it("draws a workflow the script returns", function()
    local f = assert(io.open(TMP, "w"))
    f:write('local P = require "knhk.patterns"\nreturn P.sequence{ P.task("only", function() end) }\n')
    f:close()
    local code, out = run("--graph " .. TMP)
    assert.equal(0, code)
    assert.equal('flowchart TD\n  s1(("start"))\n  n1_1["only"]\n  s1 --> n1_1\n'
      .. '  n1_1 --> e1\n  e1(("end"))\n', out)
  end)

  it("runs the script as knhk-lua would, with the knhk global", function()
    local f = assert(io.open(TMP, "w"))
    f:write('local P = require "knhk.patterns"\nlocal t0 = knhk.now()\n'
      .. 'local wf = P.workflow(P.sequence{ P.task("only", function() end) })\n'
      .. 'wf:execute{}\n')
    f:close()
    local code, out, err = run("--graph " .. TMP)
    assert.equal(0, code, err)
    assert.matches('n1_1%["only"%]', out)
  end)

  it("says so when a script has no workflow, and refuses other formats", function()
    local f = assert(io.open(TMP, "w"))
    f:write("return 42\n")
    f:close()
    local code, _, err = run("--graph " .. TMP)
    assert.equal(1, code)
    assert.matches("returned number and ran no workflow", err)
    local code2, _, err2 = run("--graph=svg " .. TMP)
    assert.equal(2, code2)
    assert.equal("knhk-lua: --graph takes mermaid or dot, got 'svg' (try 'knhk-lua --help')\n", err2)
  end)
end)

-- A workflow that fails exits non-zero, and bad arguments are refused
-- before anything runs.
describe("examples' exit codes and arguments", function()
  it("refuse bad arguments up front with a usage line: exit 2, nothing run", function()
    for _, case in ipairs {
      { "batch", "abc", "%[records%] %[quorum%]", "records must be a whole number" },
      { "batch", "-1", "%[records%] %[quorum%]", "records must be a whole number" },
      { "batch", "1.5", "%[records%] %[quorum%]", "records must be a whole number" },
      { "batch", "5 0", "%[records%] %[quorum%]", "quorum must be a whole number" },
      { "batch", "12 8 9", "%[records%] %[quorum%]", "too many arguments" },
      { "ledger", "0", "%[transfers%]", "transfers must be a whole number" },
      { "ledger", "abc", "%[transfers%]", "transfers must be a whole number" },
      { "order-fulfilment", "abc", "%[total%]", "total must be a number" },
      { "order-fulfilment", "-5", "%[total%]", "total must be a number" },
      { "document-review", "slient", "%[silent%]", "unknown argument 'slient'" },
      { "fraud-stop", "clan", "%[clean%]", "unknown argument 'clan'" },
      { "payment-failure", "declined", "%[ok%]", "unknown argument 'declined'" },
      { "shipping-milestone", "later", "%[late%]", "unknown argument 'later'" },
      { "build-pipeline", "brokn", "%[broken%]", "unknown argument 'brokn'" },
      { "hello", "a b", "%[name%]", "too many arguments" },
      { "order", "A-1 B-2", "%[order%-id%]", "too many arguments" },
    } do
      local name, args, usage, why = case[1], case[2], case[3], case[4]
      local code, out, err = example(name, args)
      local what = name .. " " .. args .. ": " .. err
      assert.equal(2, code, what)
      assert.equal("", out, what)
      local file = name:gsub("%-", "%%-") .. "%.lua"
      assert.matches("^" .. file .. ": " .. why:gsub("%p", "%%%0"), err)
      assert.matches("\nusage: knhk%-lua [^\n]*" .. file .. " " .. usage .. "\n$", err)
    end
  end)

  it("exit 1 when the workflow fails: a batch that can never reach its quorum", function()
    for _, args in ipairs { "0", "3 5" } do
      local code, out, err = example("batch", args)
      assert.equal(1, code, err)
      assert.matches("^failed at 'checksum': ", out)
      assert.matches("^knhk%-lua: the batch failed\n", err)
    end
  end)

  it("exit 0 when the workflow completes", function()
    local code, out, err = example("batch", "4 2")
    assert.equal(0, code, err)
    assert.matches("^completed: quorum reached with 2 of 4 records\n", out)
  end)
end)
