-- The first example of lua/knhk/patterns/README.md, run as a reader would
-- copy it into a file: it must run as written, and print what it says.
local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local ROOT = debug.getinfo(1, "S").source:match("^@(.*)/spec/patterns/[^/]*$") or ".."

describe("the patterns README's first example", function()
  it("runs as written: the case completes, two parcels of three are shipped", function()
    local f = assert(io.open(ROOT .. "/lua/knhk/patterns/README.md"))
    local text = f:read("*a")
    f:close()
    local code = assert(text:match("```lua\n(.-)\n```"), "no lua block in the README")
    local path = os.tmpname()
    local out = assert(io.open(path, "w"))
    out:write(code)
    out:close()
    local p = assert(io.popen("LUA_PATH=" .. sh_quote(package.path) .. " LUA_CPATH="
      .. sh_quote(package.cpath) .. " timeout 60 luajit " .. sh_quote(path) .. " 2>&1; echo \"exit=$?\""))
    local got = p:read("*a")
    p:close()
    os.remove(path)
    assert.matches("^completed\t1080\t2\nflowchart TD\n", got)
    assert.matches("\nexit=0\n$", got)
  end)
end)
