-- LuaJIT 2.1's trace recorder compiles getmetatable() of an io file, an ffi
-- namespace or a string buffer to a wrong value: a hot snapshot refusal of
-- io.stdout crashed the runtime now and then. knhk's modules look at
-- metatables through debug.getmetatable (lua/knhk/check.lua says why).
local knhk = require "knhk"

describe("metatables in knhk's own code", function()
  it("are read with debug.getmetatable in every module", function()
    local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
    -- (find: this spec runs another program, so the sanitizer builds leave it out)
    local files = io.popen("find '" .. here .. "/../lua/knhk' -name '*.lua'"):read("*a")
    local seen = 0
    for path in files:gmatch("[^\n]+") do
      seen = seen + 1
      local n = 0
      for line in io.lines(path) do
        n = n + 1
        local code = line:gsub("%-%-.*$", "")
        -- a call of the plain global: getmetatable( not after "." or a name
        local bare = code:match("^getmetatable%(") or code:match("[^%w_.]getmetatable%(")
        if bare then
          local aliased = false
          for l in io.lines(path) do
            if l:match("^local [%w_, ]*getmetatable[%w_, ]* = .*debug%.getmetatable") then aliased = true end
          end
          assert(aliased, path .. ":" .. n .. ": getmetatable without the debug.getmetatable alias")
        end
      end
    end
    assert.is_true(seen > 10)
  end)

  it("lets a hot loop of snapshot refusals of io.stdout name the value every time", function()
    for _ = 1, 300 do
      local ok, err = pcall(knhk.run, function() knhk.spawn(function() end, 1, io.stdout) end,
        { workers = 1 })
      assert.is_false(ok)
      assert.matches("argument 2 is a userdata", tostring(err), 1, true)
    end
  end)
end)
