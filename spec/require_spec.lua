-- require "knhk" from a plain luajit (a child process: this spec forks).
describe("require \"knhk\" from plain luajit", function()
  local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

  it("finds knhk/core.so through $KNHK_LIB when package.cpath does not", function()
    local lib = assert(package.searchpath("knhk.core", package.cpath))
    local cmd = "KNHK_LIB=" .. sh_quote(lib) .. " LUA_CPATH='/nonexistent/?.so' LUA_PATH="
      .. sh_quote(package.path) .. " luajit -e " .. sh_quote([[
        local knhk = require "knhk"
        io.write(knhk.run(function() return knhk.spawn(function() return 6 * 7 end):join() end,
          { workers = 2 }))]]) .. " 2>&1"
    local f = assert(io.popen(cmd))
    local out = f:read("*a")
    f:close()
    assert.equal("42", out)
  end)

  it("says what $KNHK_LIB named when it cannot load it", function()
    local cmd = "KNHK_LIB=/nonexistent/core.so LUA_CPATH='/nonexistent/?.so' LUA_PATH="
      .. sh_quote(package.path) .. " luajit -e 'require \"knhk\"' 2>&1"
    local f = assert(io.popen(cmd))
    local out = f:read("*a")
    f:close()
    assert.matches("knhk: cannot load $KNHK_LIB (/nonexistent/core.so)", out, 1, true)
  end)
end)
