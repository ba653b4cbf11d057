-- knhk.codec on its own: what survives a snapshot, and the bytecode facts
-- it relies on.
local codec = require "knhk.codec"

describe("knhk.codec", function()
  local reg = {}
  setup(function()
    codec.init(function(bytes) reg[#reg + 1] = bytes; return #reg end,
      function(id) return reg[id] end)
  end)

  local function roundtrip(...)
    local s = codec.encode(select("#", ...), function(i) return "argument " .. i end, ...)
    return select(2, codec.decode(s))
  end

  it("reads opcode numbers that agree with the VM's own table", function()
    local vmdef = require "jit.vmdef"
    for name, op in pairs(codec.opcodes) do
      assert.equal(name, (vmdef.bcnames:sub(op * 6 + 1, op * 6 + 6):gsub("%s+$", "")))
    end
  end)

  it("finds the lines of a function's own tail calls, not those of the functions it makes", function()
    local chunk = assert(loadstring("local x = ...\nif x then return print(x) end\n"
      .. "local function f(...) return select(1, ...) end\nprint(f(x))\nreturn f(...)\n"))
    assert.same({ 2, 5 }, codec.tail_call_lines(chunk))
    assert.same({}, codec.tail_call_lines(function() print(1) end))
  end)

  it("round-trips scalars, including large, negative and fractional numbers", function()
    local a, b, c, d, e, f = roundtrip(nil, true, false, -7.25, 2 ^ 40, "bytes\0inside")
    assert.is_nil(a)
    assert.is_true(b)
    assert.is_false(c)
    assert.equal(-7.25, d)
    assert.equal(2 ^ 40, e)
    assert.equal("bytes\0inside", f)
  end)

  it("keeps cycles and shared references", function()
    local shared = {}
    local t = { shared, shared }
    t.me = t
    local u = roundtrip(t)
    assert.equal(u, u.me)
    assert.equal(u[1], u[2])
  end)

  it("makes one prototype id per function, however many closures", function()
    local before = #reg
    local function mk(v) return function() return v end end
    local a, b = roundtrip(mk(1), mk(2))
    assert.equal(1, a())
    assert.equal(2, b())
    assert.equal(before + 1, #reg)
  end)

  it("sends the standard library by the names it had when the codec loaded", function()
    -- a copy of the module, loaded now, that has sent nothing yet
    package.loaded["knhk.codec"] = nil
    local fresh = require "knhk.codec"
    package.loaded["knhk.codec"] = codec
    local freg = {}
    fresh.init(function(bytes) freg[#freg + 1] = bytes; return #freg end,
      function(id) return freg[id] end)
    local function send(v)
      return select(2, fresh.decode(fresh.encode(1, function() return "argument 1" end, v)))
    end
    -- changed after it loaded: a library function replaced, a C function
    -- added to a library
    local real_rep = string.rep
    local file_write = debug.getmetatable(io.stdout).__index.write
    string.rep = function(str, n) return real_rep(str, n) end
    table.knhk_added = file_write
    local ok, err = pcall(function()
      local rep = send(string.rep) -- a Lua function: it travels as one
      assert.are_not.equal(real_rep, rep)
      assert.equal("abab", rep("ab", 2))
      assert.equal(real_rep, send(real_rep)) -- by its name, string.rep
      assert.equal(string.byte, send(string.byte))
      assert.equal(print, send(print))
      local sent, why = pcall(send, file_write)
      assert.is_false(sent)
      assert.matches("a C function that is not part of a loaded module", why.message)
    end)
    string.rep, table.knhk_added = real_rep, nil
    assert(ok, err)
  end)
end)
