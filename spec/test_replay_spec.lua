-- knhk.test.explore inside busted: the report names the failing seed and a
-- command that replays it, and that command fails the same way, alone.
-- Runs busted on spec/fixtures/explore_bug.lua, a spec that fails on
-- purpose, the way this spec itself was started.


local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- This busted: the interpreter and script this process was started with.
local function busted()
  return quote(arg[-1]) .. " " .. quote(arg[0])
end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

local dir = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$")
local file = dir .. "fixtures/explore_bug.lua"

describe("knhk.test.explore in busted", function()
  local report, seed, replay

  setup(function()
    report = sh("env -u KNHK_SEED " .. busted() .. " --ignore-lua -o plainTerminal " .. quote(file))
    seed = report:match("knhk%.test%.explore: seed (%d+) failed %(run %d+ of 100%)")
    replay = report:match("\nreplay: ([^\n]+)")
  end)

  it("fails the test, naming the first seed that fails and why", function()
    assert.matches("0 successes / 1 failure", report, 1, true)
    assert.is_string(seed, report)
    assert.matches("overdrawn: balance %-20", report)
  end)

  it("prints a one-line command that sets KNHK_SEED and selects that test", function()
    assert.is_string(replay, report)
    assert.matches("^KNHK_SEED=" .. seed .. " ", replay)
    assert.matches(quote(file), replay, 1, true)
    assert.matches("--filter='^an account %(fixture%) is never overdrawn by two withdrawals "
      .. "%[sic%]$'", replay, 1, true)
  end)

  it("replays that seed alone, and it fails the same way", function()
    local again = sh(replay)
    assert.matches("0 successes / 1 failure", again, 1, true)
    assert.matches("knhk.test.explore: seed " .. seed .. " failed (run 1 of 1)", again, 1, true)
    assert.matches("overdrawn: balance %-20", again)
  end)
end)
