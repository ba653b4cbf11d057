-- The scripts a new user runs first (scripts/build: what scripts/run and
-- scripts/test call).
local ROOT = debug.getinfo(1, "S").source:match "^@(.*)/spec/[^/]*$" or ".."

local function slurp(path)
  local f = assert(io.open(path))
  local s = f:read "*a"
  f:close()
  return s
end

describe("scripts/build", function()
  it("prints only the build directory on stdout; a first build says what it builds on stderr",
    function()
    local tmp = os.tmpname()
    os.remove(tmp)
    assert.equal(0, os.execute("mkdir " .. tmp))
    local dir = tmp .. "/build"
    local rc = os.execute(string.format("nice %s/scripts/build plain %s >%s/out 2>%s/err", ROOT, dir,
      tmp, tmp))
    local out, err = slurp(tmp .. "/out"), slurp(tmp .. "/err")
    os.execute("rm -rf " .. tmp)
    assert.equal(0, rc, err)
    assert.equal(dir .. "\n", out) -- scripts capture it
    assert.matches("^scripts/build: first plain build, in " .. dir:gsub("%p", "%%%0"), err)
    assert.matches("\n%[ *%d+%%%] Building C object core/[^\n]*reactor%.c", err) -- progress
    assert.matches("\n%[ *%d+%%%] Linking C executable knhk%-lua\n", err)
  end)
end)
