-- The first example of lua/knhk/patterns/README.md, run as a reader would
-- copy it into a file: it must run as written, and print what it says,
-- with luajit, with knhk-lua, and drawn by knhk-lua --graph.
local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local ROOT = debug.getinfo(1, "S").source:match("^@(.*)/spec/patterns/[^/]*$") or ".."
local KNHK_LUA = assert(os.getenv "KNHK_LUA", "KNHK_LUA must name the knhk-lua binary")

describe("the patterns README's first example", function()
  local path

  setup(function()
    local f = assert(io.open(ROOT .. "/lua/knhk/patterns/README.md"))
    local text = f:read("*a")
    f:close()
    local code = assert(text:match("```lua\n(.-)\n```"), "no lua block in the README")
    path = os.tmpname()
    local out = assert(io.open(path, "w"))
    out:write(code)
    out:close()
  end)

  teardown(function() os.remove(path) end)

  -- Runs `command` on the example; returns what it printed (both streams)
  -- and its exit code.
  local function run(command)
    local p = assert(io.popen("LUA_PATH=" .. sh_quote(package.path) .. " LUA_CPATH="
      .. sh_quote(package.cpath) .. " timeout 60 " .. command .. " " .. sh_quote(path)
      .. " 2>&1; echo \"exit=$?\""))
    local got = p:read("*a")
    p:close()
    return got:match("^(.-)exit=(%d+)\n$")
  end

  it("runs as written with luajit: the case completes, two parcels of three are shipped", function()
    local out, code = run("luajit")
    assert.matches("^completed\t1080\t2\nflowchart TD\n", out)
    assert.equal("0", code)
  end)

  it("runs as written with knhk-lua, which runs the script as a task already", function()
    local out, code = run(sh_quote(KNHK_LUA) .. " -w 2")
    assert.matches("^completed\t1080\t2\nflowchart TD\n", out)
    assert.equal("0", code)
  end)

  it("is drawn by knhk-lua --graph without running", function()
    local out, code = run(sh_quote(KNHK_LUA) .. " -w 2 --graph")
    assert.matches("^flowchart TD\n", out)
    assert.not_matches("completed", out)
    assert.equal("0", code)
  end)
end)
