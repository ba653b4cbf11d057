-- Run by scripts/luarocks-check against a luarocks-installed tree (and by
-- ctest against the build): `require "knhk"` works for a busted spec. With
-- KNHK_TREE (the tree; scripts/luarocks-check sets it) the tree's layout is
-- checked too.
describe("an installed knhk", function()
  it("can be required and runs tasks on workers", function()
    local knhk = require "knhk"
    local v = knhk.run(function()
      return knhk.spawn(function(x) return x + 1 end, 41):join()
    end, { workers = 2 })
    assert.equal(42, v)
  end)

  it("has its subfolders: knhk.patterns runs a workflow", function()
    local knhk, P = require "knhk", require "knhk.patterns"
    local r = knhk.run(function()
      return P.sequence{ P.task("a", function() return { x = 1 } end) }:execute()
    end, { workers = 2 })
    assert.equal("completed", r.status)
    assert.equal(1, r.vars.x)
  end)

  it("has knhk.test: a wrapped body runs, and its assertions are registered", function()
    local knhk, T = require "knhk", require "knhk.test"
    local ran
    T.wrap(function()
      assert.completes_within(60, function() ran = knhk.current() ~= nil end)
    end, { seed = 1 })()
    assert.is_true(ran)
  end)
end)

local TREE = os.getenv "KNHK_TREE"
local BUILT_FROM = os.getenv "KNHK_BUILT_FROM" -- the sources it was built from (gone now)

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

local function capture(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read "*a"
  p:close()
  return out
end

if TREE then
  describe("a luarocks tree with knhk", function()
    it("has libknhk and its headers under lib/ and include/, only Lua modules in lib/lua/5.1",
      function()
      assert.is_true(exists(TREE .. "/lib/libknhk.so"))
      assert.is_true(exists(TREE .. "/lib/libknhk.a"))
      assert.is_true(exists(TREE .. "/include/knhk/reactor.h"))
      assert.is_true(exists(TREE .. "/lib/lua/5.1/knhk/core.so"))
      assert.equal("knhk\n", capture("ls " .. TREE .. "/lib/lua/5.1"))
    end)

    it("a C program builds against lib/ and include/ and runs", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert.equal(0, os.execute("mkdir " .. dir))
      local f = assert(io.open(dir .. "/errs.c", "w"))
      f:write('#include <stdio.h>\n#include <knhk/errors.h>\n'
        .. 'int main(void) { puts(knhk_strerror(KNHK_EINVAL)); return 0; }\n')
      f:close()
      local out = capture(string.format(
        "cc -I%s/include %s/errs.c -o %s/errs -L%s/lib -l:libknhk.a $(pkg-config --libs libuv) "
        .. "-lpthread && %s/errs", TREE, dir, dir, TREE, dir))
      os.execute("rm -rf " .. dir)
      assert.equal("invalid argument\n", out)
    end)

    it("its knhk-lua finds knhk in the tree only, not in the sources it was built from", function()
      local out = capture(TREE .. "/bin/knhk-lua -e " .. "'print(package.path) print(package.cpath) "
        .. "print(package.searchpath(\"knhk.cli\", package.path)) "
        .. "print(package.searchpath(\"knhk.core\", package.cpath))'")
      local path, cpath, cli, core = out:match "^(.-)\n(.-)\n(.-)\n(.-)\n$"
      assert.is_string(path, out)
      assert.is_truthy(BUILT_FROM)
      assert.is_nil(path:find(BUILT_FROM, 1, true))
      assert.is_nil(cpath:find(BUILT_FROM, 1, true))
      assert.equal(1, cli:find(TREE .. "/bin/../share/lua/5.1/", 1, true))
      assert.equal(1, core:find(TREE .. "/bin/../lib/lua/5.1/", 1, true))
    end)
  end)
end
