-- examples/*.lua as tests written with knhk.test: each script runs as the
-- body of a wrapped test (its main chunk in the root task, with `knhk` and
-- `arg` as knhk-lua gives them), what it prints is asserted, and it must
-- leave no task behind. Examples that wait on timers run again under the
-- virtual clock, where their waits take no real time (pending in a build
-- without it). spec/patterns/examples_spec.lua runs the same scripts
-- through the knhk-lua command; the C examples (fork-join.c, mirrors.c)
-- are ctest tests of their own.
local knhk = require "knhk"
local T = require "knhk.test"
local ffi = require "ffi"

ffi.cdef [[
int dup(int fd);
int dup2(int fd, int to);
int close(int fd);
int creat(const char *path, unsigned mode);
]]
local C = ffi.C

local EXAMPLES = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$") or "..") .. "/examples/"

local function slurp(path)
  local f = assert(io.open(path))
  local s = f:read "*a"
  f:close()
  return s
end

-- Runs fn(...) with the process's standard output going to a file, and
-- returns what was written there: prints from every worker's VM land in
-- it, since they all write to the one stdout.
-- Returns ok, fn's error (or nil), the output.
local function capture_stdout(fn, ...)
  io.stdout:flush()
  local path = os.tmpname()
  local fd = C.creat(path, tonumber("600", 8))
  assert(fd >= 0, "cannot create " .. path)
  local saved = C.dup(1)
  C.dup2(fd, 1)
  C.close(fd)
  local ok, err = pcall(fn, ...)
  io.stdout:flush()
  C.dup2(saved, 1)
  C.close(saved)
  local out = slurp(path)
  os.remove(path)
  return ok, not ok and err or nil, out
end

-- Runs examples/<name>.lua with arguments ... in the running task, as
-- knhk-lua would (global `knhk`, `arg`). Returns ok, its error, what it
-- printed.
local function run_example(name, ...)
  local path = EXAMPLES .. name .. ".lua"
  local chunk = assert(loadfile(path))
  local saved_knhk, saved_arg = rawget(_G, "knhk"), rawget(_G, "arg")
  rawset(_G, "knhk", knhk)
  rawset(_G, "arg", { [0] = path, ... })
  local ok, err, out = capture_stdout(chunk, ...)
  rawset(_G, "knhk", saved_knhk)
  rawset(_G, "arg", saved_arg)
  return ok, err, out
end

-- What examples/<name>.lua printed; its error fails the test.
local function example(name, ...)
  local ok, err, out = run_example(name, ...)
  if not ok then error(err, 0) end
  return out
end

-- it() for a body under the virtual clock.
local function it_virtual(name, body)
  it(name .. " (virtual time)", T.wrap(body, { clock = "virtual", workers = 2 }))
end

-- The virtual seconds body() took: under the virtual clock the time
-- jumps from one timer to the next, so this is exactly the sum of the
-- waits on the critical path.
local function virtual_elapsed(body)
  local start = knhk.now()
  local out = body()
  return knhk.now() - start, out
end

local HELLO = "hello, workflow\nbook packed\nlamp packed\nchair packed\n"
  .. "slow step cancelled:\ttrue\nsquares:\t1 4 9 16 25 36 49 64\ndone on 2 workers\n"

describe("examples/hello.lua", function()
  it("spawns, packs in a nursery, times out a slow step, maps", T.wrap(function()
    assert.equal(HELLO, example("hello"))
  end, { workers = 2 }))

  it("greets the name it is given", T.wrap(function()
    assert.matches("^hello, knhk\n", example("hello", "knhk"))
  end, { workers = 2 }))

  it_virtual("waits 0.05 s for the packing (the chair), then 0.05 s for the timeout, no more",
    function()
      local took, out = virtual_elapsed(function() return example("hello") end)
      assert.equal(HELLO, out)
      assert.near(0.1, took, 1e-6)
    end)
end)

local ORDER = "checks passed for order A-1001\ncarrier cheap at 7.50\nLABEL A-1001\n"
  .. "shipped widget\nshipped gadget\nshipped gizmo\norder A-1001 done\n"

describe("examples/order.lua", function()
  it("checks in parallel, races the carriers, prints a label, ships through a channel",
    T.wrap(function()
      assert.equal(ORDER, example("order"))
    end, { workers = 2 }))

  it_virtual("the cheap carrier wins the race at 0.01 s after the checks' 0.02 s", function()
    local took, out = virtual_elapsed(function() return example("order") end)
    assert.equal(ORDER, out)
    assert.is_true(took >= 0.03 - 1e-6, "took " .. took)
  end)
end)

describe("examples/order-fulfilment.lua", function()
  it("approves an order at once, and one over 1000 after a review", T.wrap(function()
    assert.equal("completed: order A-1001 (250.00): approved\n"
      .. "checks: stock true, credit true, address true\n", example("order-fulfilment"))
    assert.equal("completed: order A-1001 (2500.00): approved after review\n"
      .. "checks: stock true, credit true, address true\n", example("order-fulfilment", "2500"))
  end, { workers = 2 }))
end)

describe("examples/document-review.lua", function()
  it("records the verdict that comes before the deadline", T.wrap(function()
    assert.equal("reviewed: approved\narchived design.md v1\n", example("document-review"))
  end, { workers = 2 }))

  it("escalates when no verdict comes in time", T.wrap(function()
    assert.equal("no review in time: escalated\narchived design.md v1\n",
      example("document-review", "silent"))
  end, { workers = 2 }))

  it_virtual("escalates at the deadline exactly", function()
    local took, out = virtual_elapsed(function() return example("document-review", "silent") end)
    assert.equal("no review in time: escalated\narchived design.md v1\n", out)
    assert.near(0.05, took, 1e-6)
  end)
end)

describe("examples/batch.lua", function()
  it("runs one instance per record and goes on at the quorum", T.wrap(function()
    assert.equal("completed: quorum reached with 8 of 12 records\n"
      .. "all instances finished before the case ended: true\n", example("batch", "12", "8"))
  end, { workers = 2 }))

  it("says why when the quorum is more than the records, and fails", T.wrap(function()
    local ok, err, out = run_example("batch", "3", "5")
    assert.is_false(ok)
    assert.equal("the batch failed", err)
    assert.matches("^failed at 'checksum': .*partial%(5%)", out)
  end, { workers = 2 }))

  it("reaches its quorum in every interleaving", T.explore(function()
    assert.matches("^completed: quorum reached with 3 of 5 records\n", example("batch", "5", "3"))
  end, { runs = 20 }))
end)

describe("examples/payment-failure.lua", function()
  local DECLINED = "completed: payment declined, order cancelled\n"
    .. "fulfilment cancelled: true, packed: false\n"

  it("cancels the fulfilment region when the card is declined", T.wrap(function()
    assert.equal(DECLINED, example("payment-failure"))
  end, { workers = 2 }))

  it("packs the order when the payment goes through", T.wrap(function()
    assert.equal("completed: payment received\nfulfilment cancelled: false, packed: true\n",
      example("payment-failure", "ok"))
  end, { workers = 2 }))

  it_virtual("never waits out the 30 s steps it cancels", function()
    local took, out = virtual_elapsed(function() return example("payment-failure") end)
    assert.equal(DECLINED, out)
    assert.is_true(took < 30, "took " .. took)
  end)
end)

describe("examples/shipping-milestone.lua", function()
  it("applies an address change while the parcel is in transit", T.wrap(function()
    assert.equal("completed: shipping to 2 New Street\naddress change applied while in transit\n",
      example("shipping-milestone"))
  end, { workers = 2 }))

  it("refuses it once delivered, in every interleaving", T.explore(function()
    assert.equal("completed: shipping to 1 Old Road\naddress change refused: already delivered\n",
      example("shipping-milestone", "late"))
  end, { runs = 20 }))
end)

describe("examples/ledger.lua", function()
  it("loses no update across parallel transfers", T.wrap(function()
    assert.equal("completed: balance 310 after 6 transfers (expected 310)\n",
      example("ledger", "6"))
  end, { workers = 2 }))

  it("loses no update in any interleaving", T.explore(function()
    assert.equal("completed: balance 160 after 3 transfers (expected 160)\n",
      example("ledger", "3"))
  end, { runs = 20 }))
end)

describe("examples/fraud-stop.lua", function()
  it("ends the case at once on fraud: nothing ships", T.wrap(function()
    assert.equal("completed, ended by 'stop: fraud'\nshipped: false\n", example("fraud-stop"))
  end, { workers = 2 }))

  it("ships a clean order", T.wrap(function()
    assert.equal("completed\nshipped: true\n", example("fraud-stop", "clean"))
  end, { workers = 2 }))
end)

describe("examples/build-pipeline.lua", function()
  -- real commands: real time, whatever the clock (see README, "Testing")
  it("builds and runs a C program", T.wrap(function()
    assert.equal("built; ./hello says: hello, world\n", example("build-pipeline"))
  end, { workers = 2 }))

  it("cancels the rest when a compile fails, and fails the workflow", T.wrap(function()
    local ok, err, out = run_example("build-pipeline", "broken")
    assert.is_false(ok)
    assert.equal("the build failed", err)
    assert.equal("build failed at 'compile b.c': compile b.c failed (status 1)\n"
      .. "docs: cancelled\n", out)
  end, { workers = 2 }))
end)
