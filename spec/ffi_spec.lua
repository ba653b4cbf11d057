-- The FFI contract: lua/knhk/ffi.lua's cdef is lua/src/klua_ffi.h, and
-- every function it declares is in the library.
local K = require "knhk.ffi"
for _, part in ipairs { "exec", "clock", "telemetry", "repl" } do K.need(part) end

-- Declarations without comments, preprocessor lines or spacing differences.
local function normalise(text)
  text = text:gsub("/%*.-%*/", " ")
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if not line:match("^%s*#") then out[#out + 1] = line end
  end
  return (table.concat(out, " "):gsub("%s+", " "):gsub("%s*([%(%),;{}%*])%s*", "%1"):gsub("^ ", ""):gsub(" $", ""))
end

local function header()
  local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
  local f = assert(io.open(here .. "/../lua/src/klua_ffi.h"))
  local text = f:read("*a")
  f:close()
  return text
end

describe("knhk.ffi", function()
  it("declares exactly what lua/src/klua_ffi.h declares", function()
    assert.equal(normalise(header()), normalise(K.cdef))
  end)

  it("finds every function it declares in the library", function()
    local missing = {}
    for name in normalise(K.cdef):gmatch("([%w_]+)%(") do
      if name ~= "isatty" and not pcall(function() return K.C[name] end) then
        missing[#missing + 1] = name
      end
    end
    assert.same({}, missing)
  end)

  it("refuses a part it does not have, naming it", function()
    local ok, err = pcall(K.need, "sockets")
    assert.is_false(ok)
    assert.matches("no part named sockets", err, 1, true)
  end)

  it("would notice a declaration that drifted", function()
    local drifted = K.cdef:gsub("int klua_exec_done%(klua_exec_t %*e%);", "long klua_exec_done(klua_exec_t *e);")
    assert.not_equal(normalise(header()), normalise(drifted))
  end)
end)
