-- knhk.codec: snapshots of Lua values that can travel to another VM.
--
-- What travels: nil, booleans, numbers, strings; plain tables (deep, with
-- cycles and shared references kept); Lua functions (their prototype by id,
-- their upvalues, and the globals their code reads); the standard library
-- and loaded modules, by name; registered classes (tables with a known
-- metatable, e.g. knhk's errors) and registered handles (tokens, channels,
-- task handles). Anything else is refused, naming where it was found:
--     upvalue 'conn' of function at order.lua:12 is a userdata
--
-- A function's bytecode is dumped once per prototype, wrapped so that one
-- load per VM gives as many closures as needed (see wrap_prototype), and
-- interned in C by id; a snapshot carries only the id.
local ffi = require "ffi"
local bit = require "bit"
local buffer = require "string.buffer"
local jutil = require "jit.util"
local errors = require "knhk.errors"
local check = require "knhk.check"
local is_cancelled_signal = errors.is_signal

local band, bor, rshift, lshift = bit.band, bit.bor, bit.rshift, bit.lshift
local type, pairs, next, getmetatable, select = type, pairs, next, debug.getmetatable, select
local funcinfo, funcbc, funck, funcuvname = jutil.funcinfo, jutil.funcbc, jutil.funck, jutil.funcuvname

local M = {}

-- ---------------------------------------------------------------- bytecode

-- Opcode numbers, read off bytecode LuaJIT compiles for known snippets
-- (jit.util is built in; jit.vmdef, a file, may be off the module path).
local function ops_of(f)
  local out, pc = {}, 1
  while true do
    local ins = jutil.funcbc(f, pc)
    if not ins then return out end
    out[pc] = band(ins, 0xff)
    pc = pc + 1
  end
end
local probe_fnew = ops_of(function() return function() end end) -- FNEW UCLO RET1
local probe_gget = ops_of(function() return knhk_probe_global end) -- GGET RET1
local probe_gset = ops_of(function() knhk_probe_global = 1 end) -- KSHORT GSET RET0
local probe_tgets = ops_of(function(t) return t.x end) -- TGETS RET1
local probe_callt = ops_of(function(f) return f() end) -- MOV CALLT
local probe_callmt = ops_of(function(f, ...) return f(...) end) -- MOV VARG CALLMT
local OP_FNEW, OP_UCLO, OP_RET1 = probe_fnew[1], probe_fnew[2], probe_fnew[3]
local OP_GGET, OP_GSET = probe_gget[1], probe_gset[2]
local OP_TGETS = probe_tgets[1]
local OP_CALLT, OP_CALLMT = probe_callt[2], probe_callmt[3]
-- (spec/codec_spec.lua checks these against jit.vmdef)
M.opcodes = { FNEW = OP_FNEW, UCLO = OP_UCLO, RET1 = OP_RET1, GGET = OP_GGET, GSET = OP_GSET,
              TGETS = OP_TGETS, CALLT = OP_CALLT, CALLMT = OP_CALLMT }

-- The lines where fn's own code makes a tail call (`return f(x)`), each
-- once, in ascending order: where a call that left no frame of fn was
-- made.
function M.tail_call_lines(fn)
  local lines, seen = {}, {}
  for pc, op in ipairs(ops_of(fn)) do
    if op == OP_CALLT or op == OP_CALLMT then
      local line = funcinfo(fn, pc).currentline
      if line and not seen[line] then
        seen[line] = true
        lines[#lines + 1] = line
      end
    end
  end
  table.sort(lines)
  return lines
end

local function read_uleb(s, pos)
  local v, shift = 0, 0
  while true do
    local b = s:byte(pos)
    pos = pos + 1
    v = v + lshift(band(b, 0x7f), shift) -- bit ops are 32-bit: fine for sizes here
    if b < 0x80 then return v, pos end
    shift = shift + 7
  end
end

local function uleb(v)
  local out = {}
  repeat
    local b = band(v, 0x7f)
    v = rshift(v, 7)
    out[#out + 1] = string.char(v > 0 and bor(b, 0x80) or b)
  until v == 0
  return table.concat(out)
end

local function u32le(v)
  return string.char(band(v, 0xff), band(rshift(v, 8), 0xff), band(rshift(v, 16), 0xff),
    band(rshift(v, 24), 0xff))
end

-- Given string.dump(f), returns a chunk whose main function is
--     function(u1, ..., un) return <f with upvalues u1..un> end
-- i.e. f becomes the child of a tiny parent that FNEWs it from its own
-- parameters. Loading that chunk once per VM and calling it gives a new
-- closure of the same prototype each time: no reload, no re-tracing.
local function wrap_prototype(dump, nuv)
  assert(dump:sub(1, 3) == "\27LJ", "not LuaJIT bytecode")
  local flags, pos = read_uleb(dump, 5)
  if band(flags, 1) ~= 0 then error("knhk.codec: big-endian bytecode is not supported") end
  local strip = band(flags, 2) ~= 0
  if not strip then
    local n
    n, pos = read_uleb(dump, pos)
    pos = pos + n
  end
  local header = dump:sub(1, pos - 1)
  local protos = {}
  while true do
    local len
    len, pos = read_uleb(dump, pos)
    if len == 0 then break end
    protos[#protos + 1] = dump:sub(pos, pos + len - 1)
    pos = pos + len
  end
  -- find f's upvalue descriptors and point them at the parent's locals
  local f = protos[#protos]
  local sizeuv = f:byte(4)
  assert(sizeuv == nuv, "upvalue count mismatch")
  local p = 5
  local _, sizebc
  _, p = read_uleb(f, p) -- sizekgc
  _, p = read_uleb(f, p) -- sizekn
  sizebc, p = read_uleb(f, p)
  if not strip then
    local sizedbg
    sizedbg, p = read_uleb(f, p)
    if sizedbg > 0 then
      _, p = read_uleb(f, p)
      _, p = read_uleb(f, p)
    end
  end
  local uvat = p + sizebc * 4
  local uvs = {}
  local all_immutable = true
  for i = 0, sizeuv - 1 do
    local lo, hi = f:byte(uvat + 2 * i, uvat + 2 * i + 1)
    local immutable = band(hi * 256 + lo, 0x4000)
    if immutable == 0 then all_immutable = false end
    local v = 0x8000 + immutable + i -- PROTO_UV_LOCAL | slot i
    uvs[#uvs + 1] = string.char(band(v, 0xff), rshift(v, 8))
  end
  protos[#protos] = f:sub(1, uvat - 1) .. table.concat(uvs) .. f:sub(uvat + 2 * sizeuv)
  -- the parent: FNEW n, <child>; UCLO 0; RET1 n, 2
  local n = nuv
  local parent = table.concat {
    string.char(0x01, n, n + 1, 0), -- flags PROTO_CHILD, numparams, framesize, sizeuv
    uleb(1), uleb(0), uleb(3),      -- sizekgc, sizekn, sizebc (without the header)
    strip and "" or uleb(0),        -- no debug info
    u32le(OP_FNEW + lshift(n, 8)),                   -- FNEW A=n D=0 (kgc[~0])
    u32le(OP_UCLO + lshift(0x8000, 16)),             -- UCLO A=0 J=0
    u32le(OP_RET1 + lshift(n, 8) + lshift(2, 16)),   -- RET1 A=n D=2
    uleb(0),                                         -- kgc[0]: the child
  }
  local out = { header }
  for _, pr in ipairs(protos) do
    out[#out + 1] = uleb(#pr)
    out[#out + 1] = pr
  end
  out[#out + 1] = uleb(#parent)
  out[#out + 1] = parent
  out[#out + 1] = uleb(0)
  return table.concat(out), all_immutable
end
M.wrap_prototype = wrap_prototype

local function add_name(names, name)
  if not names[name] then
    names[name] = true
    names[#names + 1] = name
  end
end

-- Names of the globals a prototype (and the functions nested in it) read
-- or write: a task's writes go to its own table of them, never to the
-- globals of the VM it runs in (on worker 0, the spawner's).
--
-- A global read through _G with a constant key (_G.NAME, _G["NAME"]) is
-- named too: it compiles to GGET _G into a slot and, at once, TGETS from
-- that slot with the name as a constant (a write, _G.NAME = v, needs no
-- copy: the task writes to its own table).
local function globals_read(fn, names, seen, writes)
  seen[fn] = true
  local info = funcinfo(fn)
  local g_slot -- the slot the instruction just before loaded _G into
  for pc = 1, (info.bytecodes or 0) - 1 do
    local ins = funcbc(fn, pc)
    local op = band(ins, 0xff)
    if op == OP_GGET or op == OP_GSET then
      local name = funck(fn, -rshift(ins, 16) - 1)
      add_name(names, name)
      if op == OP_GSET and writes then writes[name] = true end
      g_slot = op == OP_GGET and name == "_G" and band(rshift(ins, 8), 0xff) or nil
    else
      if op == OP_TGETS and rshift(ins, 24) == g_slot then
        add_name(names, funck(fn, -band(rshift(ins, 16), 0xff) - 1))
      end
      g_slot = nil
    end
  end
  for i = 1, info.gcconsts or 0 do
    local k = funck(fn, -i)
    if type(k) == "proto" and not seen[k] then globals_read(k, names, seen, writes) end
  end
  return names
end

-- ------------------------------------------------------------ name tables

-- The standard library as it is when this module loads travels by name:
-- its C functions in _G, and each library's functions and tables under
-- "lib.field". What they are is taken now, in the order pairs() meets
-- them; the two tables of names are made from that the first time either
-- is read (one index of ~200 new strings, which a run that never sends a
-- builtin does not need), with what it would have held at load.
local builtin_name, name_builtin = {}, {}
local module_name = setmetatable({}, { __mode = "k" })
local STDLIB = { "string", "table", "math", "os", "io", "coroutine", "debug", "bit", "jit",
                 "package", "ffi" }

-- The C functions of _G (name, value, ...), and per library present its
-- name, table, and its fields that are functions or tables (key, value, ...).
local global_cfuncs, lib_fields = {}, {}
local function take_builtins()
  local n = 0
  for k, v in pairs(_G) do
    if type(v) == "function" and funcinfo(v).addr then -- a C function
      global_cfuncs[n + 1], global_cfuncs[n + 2] = k, v
      n = n + 2
    end
  end
  for _, lib in ipairs(STDLIB) do
    local t = package.loaded[lib] or _G[lib]
    if type(t) == "table" then
      local fields, m = { lib, t }, 2
      for k, v in pairs(t) do
        if type(k) == "string" and (type(v) == "function" or type(v) == "table") then
          fields[m + 1], fields[m + 2] = k, v
          m = m + 2
        end
      end
      lib_fields[#lib_fields + 1] = fields
    end
  end
end

local WEAK_KEYS = { __mode = "k" }
local function index_builtins()
  setmetatable(builtin_name, WEAK_KEYS)
  setmetatable(name_builtin, nil)
  for i = 1, #global_cfuncs, 2 do
    local k, v = global_cfuncs[i], global_cfuncs[i + 1]
    builtin_name[v] = k
    name_builtin[k] = v
  end
  for _, fields in ipairs(lib_fields) do
    local lib, t = fields[1], fields[2]
    builtin_name[t] = lib
    name_builtin[lib] = t
    for i = 3, #fields, 2 do
      local v = fields[i + 1]
      local name = lib .. "." .. fields[i]
      if builtin_name[v] == nil then builtin_name[v] = name end
      name_builtin[name] = v
    end
  end
  global_cfuncs, lib_fields = nil, nil
end
setmetatable(builtin_name, { __mode = "k", __index = function(_, v)
  index_builtins()
  return builtin_name[v]
end })
setmetatable(name_builtin, { __index = function(_, name)
  index_builtins()
  return name_builtin[name]
end })
-- They and the loops below run once per VM: left to the interpreter, as
-- the rest of this chunk is (jit.off(true)), since the traces the JIT
-- would record and compile for them cost more than running them (~0.2 ms
-- of every knhk-lua start).
jit.off(true)
jit.off(take_builtins)
jit.off(index_builtins)
take_builtins()

-- The globals every task sees besides those its code names: the standard
-- library, the same on every worker. A task's environment falls back to
-- this table, never to the worker's own _G (which, on worker 0, is the
-- spawner's), so a global reached dynamically answers the same everywhere.
-- (The names without a dot: _G's C functions, and the libraries.)
local base_env = { _VERSION = _VERSION }
for i = 1, #global_cfuncs, 2 do base_env[global_cfuncs[i]] = global_cfuncs[i + 1] end
for _, fields in ipairs(lib_fields) do base_env[fields[1]] = fields[2] end
local BASE_MT = { __index = base_env, __metatable = false }
-- Environments made by the decoder: a function defined in a task and
-- spawned again has one of them, and is treated as having the globals.
local task_envs = setmetatable({}, { __mode = "k" })

-- A globals table: this VM's _G, the standard library's, or a task's
-- (made by the decoder, or by the C side's fast start, which gives it
-- BASE_MT).
local getmetatable_raw = debug.getmetatable
local function is_globals_table(t)
  return t == _G or t == base_env or task_envs[t] ~= nil or getmetatable_raw(t) == BASE_MT
end

-- Named values: builtins and modules travel by name, and the C side's
-- fast path (klua_value.c) sends them as a number the receiving VM turns
-- back into the name and resolves. M.on_named(v, key) is told of each one
-- the encoder meets (key: "B" builtin name, or "M" module name), so that
-- the next spawn that carries it needs no codec.
M.on_named = function() end

-- The value a named-value key stands for, in this VM.
local resolve_module
function M.named_value(key)
  local kind, name = key:sub(1, 1), key:sub(2)
  if kind == "B" then
    local v = name_builtin[name]
    if v == nil then error("knhk.codec: this VM has no builtin " .. name) end
    return v
  end
  return resolve_module(name)
end

-- Modules by require name, and their C functions by "module\0field".
local indexed_modules = {}
local named_modules = setmetatable({}, { __mode = "k" }) -- (register_module's)
local function index_modules()
  for name, mod in pairs(package.loaded) do
    if not indexed_modules[name] and type(mod) == "table" and builtin_name[mod] == nil then
      indexed_modules[name] = true
      -- A table loaded under several names (a package's init that returns
      -- one of its parts: luassert is luassert.assert) travels by the
      -- shortest, the one whose loading sets up the rest.
      local known = module_name[mod]
      if not named_modules[mod] and (not known or #name < #known) then
        module_name[mod] = name
        -- its C functions, and, for knhk's own modules, its Lua functions
        -- too: knhk.nursery in another VM is that VM's knhk.nursery (their
        -- upvalues are the module's state, which no snapshot should copy)
        local own = name == "knhk" or name:sub(1, 5) == "knhk."
        for k, v in pairs(mod) do
          if type(k) == "string" and type(v) == "function" and (own or funcinfo(v).addr) then
            module_name[v] = name .. "\0" .. k
          end
        end
      end
    end
  end
end

-- Never compiled (nor encode_table, below): on the LuaJIT 2.1 that Debian
-- ships (2.1-20230119), a compiled pairs()/next() loop that a finalizer
-- re-enters (a __gc that spawns while a spawn is being encoded) was seen
-- to loop for ever. Run by the interpreter, it does not.
jit.off(index_modules)

-- Whether another VM can `require` the module: a snapshot names it, and
-- the receiving VM loads it.
local requirable = {}
local function can_require(name)
  local known = requirable[name]
  if known ~= nil then return known end
  local root = name:match("^[^.]+")
  local ok = package.preload[name] ~= nil
    or package.searchpath(name, package.path) ~= nil
    or package.searchpath(name, package.cpath) ~= nil
    or (root ~= name and package.searchpath(root, package.cpath) ~= nil)
  requirable[name] = ok
  return ok
end

-- The module paths the spawners use (runtime.lua sets both): a snapshot
-- names a module its spawner's package.path finds, which a script may have
-- changed after this VM was made.
M.share_paths = function() end
M.spawner_paths = function() end

local function require_here(name)
  local ok, m = pcall(require, name)
  if ok then return m end
  local p, c = M.spawner_paths()
  if p and (p ~= package.path or c ~= package.cpath) then
    package.path, package.cpath = p, c
    return require(name)
  end
  error(m, 0)
end

function resolve_module(name)
  local mod, field = name:match("^([^%z]+)%z(.+)$")
  if mod then return require_here(mod)[field] end
  return require_here(name)
end

-- The module `mod`, loaded in this VM, travels as `require(name)` rather
-- than by a name package.loaded gives it: another VM that meets it loads
-- `name`, which may set it up for that VM (knhk.test has luassert travel
-- as knhk.test.luassert, whose failed assertions busted reports as such).
function M.register_module(name, mod)
  named_modules[mod] = true
  module_name[mod] = name
end

-- ------------------------------------------------------ classes, handles

local classes, class_names, class_modules = {}, {}, {}
local class_places = {} -- name -> "file:line" of its registration, for the refusal below

-- The module whose loading is calling us: the nearest main chunk on the
-- stack that `require` runs (its first vararg is the module's name, which
-- package.loaded does not hold as a value yet), or nil.
local function module_being_loaded()
  for level = 3, 50 do
    local info = debug.getinfo(level, "S")
    if not info then return nil end
    if info.what == "main" then
      local _, name = debug.getlocal(level, -1)
      if type(name) == "string" and type(rawget(package.loaded, name)) ~= "table"
        and can_require(name) then
        return name
      end
    end
  end
end

-- A table with metatable `mt` travels as a plain table and gets `mt` back.
-- It travels with the name of the module that registered the class (the
-- one being loaded, or `module`): a VM that meets the class before it
-- loaded that module loads it, which registers the class there too.
-- A name names one metatable in a VM: registering the same one again is
-- what each VM's loading of the module does, but another one under a name
-- taken would have tables of the first class arrive as the second (the
-- receiver knows the class by name only), so it is refused. That holds for
-- a file run again (dofile in the REPL), which makes a new metatable: the
-- tables made by the first run would travel as the new class.
function M.register_class(name, mt, module)
  if type(name) ~= "string" or name:find("%z") then
    check.error("bad argument #1 to 'register_class' (class name expected: a string without NUL, got "
      .. (type(name) == "string" and "one with NUL" or type(name)) .. ")", 2)
  end
  if type(mt) ~= "table" then
    check.error("bad argument #2 to 'register_class' (metatable expected, got " .. type(mt) .. ")", 2)
  end
  if module ~= nil and type(module) ~= "string" then
    check.error("bad argument #3 to 'register_class' (module name expected, got " .. type(module) .. ")", 2)
  end
  local taken = class_names[name]
  if taken ~= nil and taken ~= mt then
    error(string.format("bad argument #1 to 'register_class' (class '%s' is already registered "
      .. "for another metatable%s; a class name names one metatable: register a class once, "
      .. "in the module that defines it (a file run again, as by dofile, makes a new metatable), "
      .. "or give this one a name of its own)", name,
      class_places[name] and (", at " .. class_places[name]) or ""), 2)
  end
  if taken == nil then
    local info = debug.getinfo(2, "Sl")
    class_places[name] = info and info.currentline > 0
      and (info.short_src .. ":" .. info.currentline) or nil
  end
  classes[mt] = name
  class_names[name] = mt
  class_modules[name] = module or module_being_loaded() or class_modules[name]
end

-- The error for `what`, a callable object that arrived in this VM as a
-- table without its __call: its class, registered outside any module,
-- is not registered here (its tables arrive plain).
function M.arrived_without_call(what)
  local _, worker = require("knhk.core").current()
  return string.format("knhk: %s arrived on worker %d without its __call: its class is not "
    .. "registered in that worker's VM (knhk.codec.register_class must have run there)",
    what, worker or 0)
end

-- The metatable of class `name` in this VM, loading its module if the
-- class came with one this VM has not loaded yet; nil for a class
-- registered outside any module (its tables arrive plain).
local function class_mt(name, module)
  local mt = class_names[name]
  if mt == nil and module then
    require_here(module)
    mt = class_names[name]
    if mt == nil then
      error(string.format("knhk.codec: class '%s' arrived from module '%s', which this VM "
        .. "loaded, but loading it did not register the class", name, module), 0)
    end
  end
  return mt
end

-- Classes of knhk's own whose tables stay in the VM that made them (a
-- built workflow and its steps: knhk.patterns.step). A value of one is
-- refused as `what`, which says so and what to do instead, rather than
-- with register_class's hint: the class is knhk's, and registering it
-- would not make it travel.
local staying = {}
function M.register_staying(mt, what) staying[mt] = what end

-- What a table whose metatable mt is neither a class nor a handle kind is
-- refused as.
local function class_refusal(mt)
  return staying[mt] or "a table with a metatable knhk does not know (register its metatable "
    .. "with knhk.codec.register_class)"
end

local handle_kinds, handle_names, handle_modules = {}, {}, {}
-- Values whose metatable (or ctype) is `key` travel as a number that
-- export(v) makes (taking a reference) and import(n) turns back.
function M.register_handle(name, key, export, import)
  if type(key) == "cdata" then key = tonumber(key) end -- a ctype: by its id
  handle_kinds[key] = { name = name, export = export }
  handle_names[name] = import
end
-- The module that registers handle kind `name` (whose handles have
-- metatable `mt`), loaded by a VM that meets such a handle before it
-- loaded the module (knhk loads knhk.task, knhk.sync, ... at the first
-- read of a field of theirs).
local module_of_mt = {}
function M.handle_module(name, module, mt)
  handle_modules[name] = module
  if mt ~= nil then module_of_mt[mt] = module end
end

-- The handle kind of key (handle_key's), loading the module that
-- registers it if this VM has not yet.
local function handle_kind(key)
  local h = handle_kinds[key]
  if h == nil and key ~= nil and module_of_mt[key] then
    require(module_of_mt[key])
    h = handle_kinds[key]
  end
  return h
end

local function handle_key(v)
  local t = type(v)
  if t == "cdata" then return tonumber(ffi.typeof(v)) end
  return getmetatable(v)
end

-- ---------------------------------------------------------------- encoder

local T_NIL, T_FALSE, T_TRUE, T_INT, T_NUM, T_STR = 0, 1, 2, 3, 4, 5
local T_TAB, T_REF, T_FN, T_BUILTIN, T_MODULE, T_CLASS, T_HANDLE, T_END = 6, 7, 8, 9, 10, 11, 12, 13
local T_UVJOIN, T_GLOBALS, T_SELF, T_CLASS_IN = 14, 15, 16, 17
-- how a function's environment travels
local ENV_GLOBALS, ENV_SANDBOX, ENV_SANDBOX_REF = 0, 1, 2

-- Tables deeper than this are refused (with their place) rather than
-- overflowing the encoder's or decoder's stack.
local MAX_DEPTH = 1000
M.MAX_DEPTH = MAX_DEPTH

-- Prototype ids belong to one runtime (knhk.run): M.init starts afresh.
-- Prototypes are told apart by their full dump (code, constants, chunk
-- name, lines, upvalue names): closures of two factories that compile to
-- the same code are still two prototypes.
local protos_by_closure = setmetatable({}, { __mode = "k" })
local protos_by_dump = {}
local register_proto -- set by M.init: bytes -> id

-- What reaches or changes a function's environment or upvalues other than
-- by reading and writing its globals: code that names one of these (or
-- holds the string "debug", as require "debug" does) may change a closure
-- other tasks would share ("Shared closures" below).
local REFLECTIVE = { _G = true, getfenv = true, setfenv = true, debug = true, module = true }
local function has_debug_string(fn, seen)
  seen[fn] = true
  local info = funcinfo(fn)
  for i = 1, info.gcconsts or 0 do
    local k = funck(fn, -i)
    if k == "debug" then return true end
    if type(k) == "proto" and not seen[k] and has_debug_string(k, seen) then return true end
  end
  return false
end
local function reflective(fn, globals)
  for i = 1, #globals do
    if REFLECTIVE[globals[i]] then return true end
  end
  return has_debug_string(fn, {})
end

-- Whether a builtin or module (a named value's key: "B" name or "M"
-- name) is the same harmless value in every copy: not one of the above
-- (nor debug's functions), and of the modules only knhk's own (another
-- module's code could reach its caller's environment).
function M.named_shareable(key)
  local kind, name = key:sub(1, 1), key:sub(2)
  if kind == "B" then
    return not (REFLECTIVE[name] or name:match("^debug%."))
  end
  local modname = name:match("^[^%z]+")
  return modname == "knhk" or modname:sub(1, 5) == "knhk."
end

local function proto_of(fn)
  local p = protos_by_closure[fn]
  if p then return p end
  local dump = string.dump(fn)
  p = protos_by_dump[dump]
  if not p then
    local info = funcinfo(fn)
    local nuv = info.upvalues or 0
    local uvnames = {}
    for i = 0, nuv - 1 do uvnames[i + 1] = funcuvname(fn, i) or ("#" .. (i + 1)) end
    local wrapped, immutable = wrap_prototype(dump, nuv)
    local writes = {}
    p = {
      id = register_proto(wrapped),
      nuv = nuv,
      uvnames = uvnames,
      globals = globals_read(fn, {}, {}, writes),
      writes = writes,
    }
    -- shareable (see "Shared closures" below): no upvalue is ever
    -- assigned, its code (nested functions too) writes no global, and it
    -- reaches no environment otherwise
    p.reflective = reflective(fn, p.globals)
    p.shareable = immutable and next(writes) == nil and not p.reflective
    protos_by_dump[dump] = p
  end
  protos_by_closure[fn] = p
  return p
end

local function fn_place(fn)
  local info = funcinfo(fn)
  local src = (info.source or "?"):gsub("^[@=]", "") -- a file's name, or a chunk's ("=stdin")
  return string.format("function at %s:%d", src, info.linedefined or 0)
end

-- "function at file:line" for a Lua function (a C function: its name if
-- the codec knows it; a callable object: what it is, and where its __call
-- is), computed once per closure or object.
local places = setmetatable({}, { __mode = "k" })
function M.place_of(fn)
  local p = places[fn]
  if p == nil then
    if type(fn) ~= "function" then
      local call = rawget(getmetatable(fn) or {}, "__call")
      local ok, info = pcall(funcinfo, call)
      p = "callable " .. type(fn)
      if ok and info.source then p = p .. " (__call " .. fn_place(call) .. ")" end
    else
      local ok, info = pcall(funcinfo, fn)
      if ok and info.source then p = fn_place(fn)
      else p = "C function " .. (builtin_name[fn] or "?") end
    end
    places[fn] = p
  end
  return p
end

-- The path to the value being encoded is kept as cheap descriptors (a
-- key, or a function and what of it) and turned into words only when a
-- value is refused.
local PATH_UPVALUE, PATH_GLOBAL = {}, {}

local function describe(enc, i)
  local seg = enc.path[i]
  if type(seg) == "table" then
    local what, fn, name = seg[1], seg[2], seg[3]
    if what == PATH_UPVALUE then return "upvalue '" .. name .. "' of " .. fn_place(fn) end
    return "global '" .. name .. "' read by " .. fn_place(fn)
  end
  if i == 1 then return enc.places(seg) end
  if type(seg) == "number" then return "[" .. seg .. "]" end
  return seg
end

local function refuse(enc, v, what)
  local msg, depth = {}, enc.depth
  for i = depth, 1, -1 do
    if depth > 12 and i == depth - 5 then
      msg[#msg + 1] = "... (" .. (depth - 10) .. " levels) ..."
    elseif depth <= 12 or i > depth - 5 or i <= 5 then
      msg[#msg + 1] = describe(enc, i)
    end
  end
  local where = table.concat(msg, " of ")
  error({ knhk_refused = true, message = where .. " is " .. (what or ("a " .. type(v))) }, 0)
end

local encode_value

local function put_uleb(buf, v)
  while v >= 0x80 do
    buf:put(string.char(bor(band(v, 0x7f), 0x80)))
    v = math.floor(v / 128)
  end
  buf:put(string.char(v))
end

local function put_str(buf, s)
  put_uleb(buf, #s)
  buf:put(s)
end

-- A value that travels by name (a builtin, a module or a module's field).
local function put_named(buf, tag, name)
  buf:put(string.char(tag))
  put_str(buf, name)
end

local function new_ref(enc, v)
  local n = enc.nrefs + 1
  enc.nrefs = n
  enc.seen[v] = n
  return n
end

-- Enters one level of nesting below path segment `seg`.
local function enter(enc, v, seg)
  local depth = enc.depth + 1
  enc.depth = depth
  enc.path[depth] = seg
  -- (depth 1 is the value's own slot: a table at the top is level 1 of
  -- its nesting when entered at depth 2)
  if depth - 1 > MAX_DEPTH then refuse(enc, v, "nested deeper than " .. MAX_DEPTH .. " levels") end
end

local function leave(enc)
  enc.path[enc.depth] = nil
  enc.depth = enc.depth - 1
end

-- What a module (or a function of one) that travels as `name` is refused
-- as, or nil when another VM can load it.
local function module_refusal(name)
  local modname = name:match("^[^%z]+")
  if not can_require(modname) then
    return "the module '" .. modname .. "', which require cannot load (it is only in "
      .. "package.loaded): give it a name require can find, or pass what the task needs"
  end
end

local function put_module(enc, v, name)
  local why = module_refusal(name)
  if why then refuse(enc, v, why) end
  put_named(enc.buf, T_MODULE, name)
  M.share_paths()
  M.on_named(v, "M" .. name)
end

local function put_builtin(enc, v, name)
  put_named(enc.buf, T_BUILTIN, name)
  M.on_named(v, "B" .. name)
  if not M.named_shareable("B" .. name) then enc.reflective = true end
end

-- The reference a handle's export takes belongs to the snapshot: its owner
-- (a task's record, for results) is told which handles it holds. An export
-- that raises (a nursery that has closed) refuses the handle, with its place.
-- A snapshot refused after some exports has no owner: M.encode gives their
-- references back (drop_exported).
local function put_handle(enc, v, h)
  local ok, n = pcall(h.export, v)
  if not ok then refuse(enc, v, type(n) == "string" and n:gsub("^[^\n]-:%d+: ", "") or nil) end
  put_named(enc.buf, T_HANDLE, h.name)
  local hs = enc.handles
  if not hs then
    hs = {}
    enc.handles = hs
  end
  hs[#hs + 1] = v
  local ex = enc.exported -- (to give back if the encode fails: drop_exported)
  if not ex then
    ex = {}
    enc.exported = ex
  end
  ex[#ex + 1] = h.name
  ex[#ex + 1] = n
  return encode_value(enc, n)
end

-- A key as a refusal's path names it: by value when it has one that
-- reads well, by kind when its value is an address (a table used as a key).
local function key_place(k)
  local t = type(k)
  if t == "string" then return "key '" .. k .. "'" end
  if t == "number" or t == "boolean" then return "key " .. tostring(k) end
  return "a " .. t .. " key"
end

local function encode_table(enc, t)
  local buf = enc.buf
  local mt = getmetatable(t)
  if mt ~= nil then
    local cname = classes[mt]
    if not cname then
      local h = handle_kind(mt)
      if h then return put_handle(enc, t, h) end
      refuse(enc, t, class_refusal(mt))
    end
    local module = class_modules[cname]
    if module then
      put_named(buf, T_CLASS_IN, cname)
      put_str(buf, module)
    else
      put_named(buf, T_CLASS, cname)
    end
  end
  new_ref(enc, t)
  buf:put(string.char(T_TAB))
  local n = #t
  put_uleb(buf, n)
  enter(enc, t, nil)
  local path, depth = enc.path, enc.depth
  for i = 1, n do
    path[depth] = i
    encode_value(enc, t[i])
  end
  for k, v in next, t do
    if not (type(k) == "number" and k >= 1 and k <= n and k % 1 == 0) then
      path[depth] = key_place(k)
      encode_value(enc, k)
      encode_value(enc, v)
    end
  end
  leave(enc)
  buf:put(string.char(T_END))
end

jit.off(encode_table) -- see index_modules

local function index_env(env, name) return env[name] end

-- The value a function's code gets for global `name`: raw first; through
-- the environment's __index if it has one. A global that does not exist
-- (including one a strict environment refuses to look up) travels as nil.
-- A Cancelled raised inside the __index (it waited, say, and its scope was
-- cancelled) is not a refusal: it unwinds on, as at any checkpoint.
local function global_value(env, name)
  local v = rawget(env, name)
  if v ~= nil or getmetatable(env) == nil then return v end
  local ok, r = pcall(index_env, env, name)
  if ok then return r end
  if is_cancelled_signal(r) then error(r, 0) end
  return nil
end

-- Whether env is a proxy of the globals (as a test framework's environment
-- over _G is): its __index leads to a globals table, or it answers `_G`
-- with one. A sandbox that hands out _G protects nothing, so treating it
-- as the globals gives away nothing it did not.
local function proxies_globals(env)
  for _ = 1, 16 do
    local mt = getmetatable_raw(env)
    local up = mt and rawget(mt, "__index")
    if type(up) == "function" then
      local ok, g = pcall(index_env, env, "_G")
      if not ok and is_cancelled_signal(g) then error(g, 0) end
      return ok and type(g) == "table" and is_globals_table(g)
    end
    if type(up) ~= "table" then return false end
    if is_globals_table(up) then return true end
    env = up
  end
  return false
end

-- Environments: the globals (the VM's _G, a task's, or a proxy of them)
-- travel as the names the code reads, over the standard library; any other
-- table given with setfenv (a sandbox, with or without a metatable)
-- travels as the names read from it, and nothing else: a sandboxed
-- function never gains the standard library by being spawned.
local function put_env(enc, fn, env, globals)
  local buf = enc.buf
  if is_globals_table(env) or proxies_globals(env) then
    buf:put(string.char(ENV_GLOBALS))
  else
    local ref = enc.seen[env]
    if ref then
      buf:put(string.char(ENV_SANDBOX_REF))
      put_uleb(buf, ref)
    else
      new_ref(enc, env)
      buf:put(string.char(ENV_SANDBOX))
    end
  end
  put_uleb(buf, #globals)
  if #globals == 0 then return end
  local seg = { PATH_GLOBAL, fn, nil }
  local path, depth = enc.path, enc.depth
  path[depth] = seg
  for i = 1, #globals do
    local name = globals[i]
    seg[3] = name
    put_str(buf, name)
    encode_value(enc, global_value(env, name))
  end
end

local upvalueid, getupvalue = debug.upvalueid, debug.getupvalue

-- A number of this VM's for an object (a closure, a builtin), the same
-- while it lives: where a shareable closure comes from (with VM_ID, an id
-- no other VM of the process has while this one lives: distinct closures
-- of one content stay distinct in a task), and the part of a shared
-- closure's key that a shared closure or named value is.
local VM_ID = tostring({}):match("0x%x+") or tostring({})
local object_ids = setmetatable({}, { __mode = "k" })
local next_object_id = 0
local function object_id(v)
  local id = object_ids[v]
  if not id then
    next_object_id = next_object_id + 1
    id = next_object_id
    object_ids[v] = id
  end
  return id
end

-- The name a loaded module gives fn, if any: modules loaded since are
-- looked for once per snapshot.
local function function_module_name(enc, fn)
  local mname = module_name[fn]
  if not mname and not enc.modules_indexed then
    enc.modules_indexed = true
    index_modules()
    mname = module_name[fn]
  end
  return mname
end

local C_FUNCTION_REFUSAL = "a C function that is not part of a loaded module"

local function encode_function(enc, fn)
  local buf = enc.buf
  local ok, info = pcall(funcinfo, fn)
  if not ok or info.addr or not info.source then -- a C function
    local name = builtin_name[fn]
    if name then return put_builtin(enc, fn, name) end
    local mname = function_module_name(enc, fn)
    if mname then return put_module(enc, fn, mname) end
    refuse(enc, fn, C_FUNCTION_REFUSAL)
  end
  if info.source:find("knhk/", 1, true) then -- knhk's own: by name, if a module of it exports it
    local mname = function_module_name(enc, fn)
    if mname then return put_module(enc, fn, mname) end
  end
  local p = proto_of(fn)
  local me = new_ref(enc, fn)
  buf:put(string.char(T_FN))
  put_uleb(buf, p.id)
  -- whether the receiver may share one closure for it ("Shared closures"):
  -- 1, then where it comes from (this VM's id for the closure: two
  -- closures are never one in a task); set to 2 (not shared) at the end if
  -- the snapshot's code reaches environments, writes a global this one
  -- reads, or joins one of its upvalues
  local writes = enc.writes
  for name in pairs(p.writes) do writes[name] = true end
  if p.reflective then enc.reflective = true end
  if p.shareable then
    local at = enc.shareable
    at[#at + 1] = #buf
    at[#at + 1] = p
    enc.flag_at[me] = #buf
    buf:put(string.char(1))
    put_uleb(buf, object_id(fn))
    put_str(buf, VM_ID)
  else
    buf:put(string.char(0))
  end
  local seg = { PATH_UPVALUE, fn, nil }
  enter(enc, fn, seg)
  -- Closures that share an upvalue (debug.upvalueid) share it in the
  -- snapshot too: the second one joins the first's.
  local uvs = enc.uvs
  for i = 1, p.nuv do
    local id = upvalueid(fn, i)
    local at = uvs[id]
    if p.shareable and rawequal(select(2, getupvalue(fn, i)), fn) then
      -- itself (a recursive local function): never assigned, so the
      -- receiver's copy may hold itself in a cell of its own (a closure
      -- sharing that cell keeps its own: only debug.upvalueid tells)
      if not at then uvs[id] = { me, i } end
      buf:put(string.char(T_SELF))
    elseif at then
      buf:put(string.char(T_UVJOIN))
      put_uleb(buf, at[1])
      put_uleb(buf, at[2])
      local shared_at = enc.flag_at[at[1]] -- a cell of a shareable one: not shared
      if shared_at then enc.unshare[#enc.unshare + 1] = shared_at end
    else
      uvs[id] = { me, i }
      seg[3] = p.uvnames[i]
      local _, v = getupvalue(fn, i)
      encode_value(enc, v)
    end
  end
  put_env(enc, fn, getfenv(fn), p.globals)
  leave(enc)
end

encode_value = function(enc, v)
  local buf = enc.buf
  local t = type(v)
  if t == "nil" then
    buf:put(string.char(T_NIL))
  elseif t == "boolean" then
    buf:put(string.char(v and T_TRUE or T_FALSE))
  elseif t == "number" then
    if v % 1 == 0 and v >= 0 and v < 0x10000000 and (v ~= 0 or 1 / v > 0) then
      buf:put(string.char(T_INT))
      put_uleb(buf, v)
    else -- as the 8 bytes of the double: -0.0 and NaN stay what they are
      buf:put(string.char(T_NUM))
      local p = buf:reserve(8)
      ffi.cast("double*", p)[0] = v
      buf:commit(8)
    end
  elseif t == "string" then
    buf:put(string.char(T_STR))
    put_str(buf, v)
  else
    local ref = enc.seen[v]
    if ref then
      buf:put(string.char(T_REF))
      put_uleb(buf, ref)
      return
    end
    if t == "table" then
      if is_globals_table(v) then
        enc.reflective = true -- the globals table itself: environments in reach
        return buf:put(string.char(T_GLOBALS))
      end
      local bname = builtin_name[v]
      if bname then return put_builtin(enc, v, bname) end
      local mname = module_name[v]
      if not mname and not enc.modules_indexed then
        -- modules loaded since: looked for once per snapshot, unless the
        -- table is a known class or handle (a module may have a metatable:
        -- busted's `assert` is luassert's module table)
        local mt = getmetatable(v)
        if mt == nil or not (classes[mt] or handle_kinds[mt]) then
          enc.modules_indexed = true
          index_modules()
          mname = module_name[v]
        end
      end
      if mname then return put_module(enc, v, mname) end
      encode_table(enc, v)
    elseif t == "function" then
      encode_function(enc, v)
    else
      local h = handle_kind(handle_key(v))
      if h then return put_handle(enc, v, h) end
      refuse(enc, v)
    end
  end
end

-- v's module name, with package.loaded looked at again for one not known
-- yet (a module loaded since the last look).
local function module_name_now(v)
  if not module_name[v] then index_modules() end
  return module_name[v]
end

-- What v is refused as by what it is, or nil when a value such as v
-- travels: the encoder's own judgement of its kind (a table's class or
-- module, a userdata's handle kind, a C function's name), without looking
-- at what it holds (a table's fields, a function's upvalues and globals),
-- which is looked at when it is sent. For a value known long before it is
-- sent: a workflow's task, refused when the step is written rather than
-- when its case runs.
function M.refusal(v)
  local t = type(v)
  if t == "table" then
    local mt = getmetatable(v)
    if mt == nil or classes[mt] or handle_kind(mt) or builtin_name[v] or is_globals_table(v) then
      return nil
    end
    local mname = module_name_now(v) -- (a module travels by name, whatever its metatable)
    if mname then return module_refusal(mname) end
    return class_refusal(mt)
  elseif t == "function" then
    local ok, info = pcall(funcinfo, v)
    if ok and info.source and not info.addr then return nil end -- a Lua function
    if builtin_name[v] then return nil end
    local mname = module_name_now(v)
    if mname then return module_refusal(mname) end
    return C_FUNCTION_REFUSAL
  elseif t == "userdata" or t == "cdata" or t == "thread" then
    if handle_kind(handle_key(v)) then return nil end
    return "a " .. t
  end
  return nil
end

-- Encoders not in use. Each encode takes its own, so encoding is
-- re-entrant: user code that runs in the middle of one (an environment's
-- __index, a finalizer, a wait that lets other tasks run) may encode too.
local idle_encoders = {}

local function take_encoder(places)
  local n = #idle_encoders
  local enc = idle_encoders[n]
  if enc then
    idle_encoders[n] = nil
  else
    enc = { buf = buffer.new(256) }
  end
  enc.seen, enc.uvs, enc.path = {}, {}, {}
  enc.nrefs, enc.depth, enc.places, enc.modules_indexed = 0, 0, places, false
  enc.handles, enc.exported = nil, nil
  enc.writes, enc.shareable, enc.flag_at, enc.unshare = {}, {}, {}, {}
  enc.reflective = false
  return enc
end

local function give_back(enc)
  enc.buf:reset()
  enc.seen, enc.uvs, enc.path, enc.places = nil, nil, nil, nil
  enc.writes, enc.shareable, enc.flag_at, enc.unshare = nil, nil, nil, nil
  idle_encoders[#idle_encoders + 1] = enc
end

local function encode_all(enc, n, ...)
  put_uleb(enc.buf, n)
  for i = 1, n do
    enc.depth = 1
    enc.path[1] = i
    encode_value(enc, (select(i, ...)))
  end
  -- A shareable function is not shared when the snapshot's code reaches
  -- environments (it could change the shared one), writes a global it
  -- reads (it must see the write: its task's environment), or joins one
  -- of its upvalues.
  local at, writes = enc.shareable, enc.writes
  if #at > 0 then
    local bytes = ffi.cast("uint8_t*", (enc.buf:ref()))
    for i = 1, #at, 2 do
      local unshare = enc.reflective
      local globals = at[i + 1].globals
      for k = 1, #globals do
        if writes[globals[k]] then unshare = true break end
      end
      if unshare then bytes[at[i]] = 2 end
    end
    for _, pos in ipairs(enc.unshare) do bytes[pos] = 2 end
  end
  return enc.buf:tostring()
end

-- Encodes n values; `places(i)` names value i for refusals (e.g.
-- "argument 2"). Returns a string, or raises a refusal table
-- { knhk_refused = true, message = ... } (or an error user code raised).
-- Also returns the handles the snapshot holds a reference to, if any (a
-- list), for an owner that must drop them (knhk.runtime's task results).
-- The references an encode that failed had taken (put_handle's exports,
-- as kind name and number): each becomes a handle of its own again, which
-- the collector drops with its reference. (Kept, they would keep their
-- channels, events or nurseries alive for ever: the snapshot that owned
-- them was never made.)
local function drop_exported(ex)
  for i = 1, ex and #ex or 0, 2 do handle_names[ex[i]](ex[i + 1]) end
end

function M.encode(n, places, ...)
  local enc = take_encoder(places)
  local ok, res = pcall(encode_all, enc, n, ...)
  local handles = enc.handles
  if not ok then drop_exported(enc.exported) end
  give_back(enc)
  if not ok then error(res, 0) end
  return res, handles
end

-- The prototype of fn as one number, for the C side's cache (klua_core.c):
-- id + upvalues * 2^24, + 2^40 if its snapshot needs this codec (it has an
-- environment of its own), + 2^41 if its code reads globals (the C side
-- sends the globals it reads when each is a plain or named value), + 2^42
-- if its closures may be shared ("Shared closures" below).
function M.proto_number(fn)
  local p = proto_of(fn)
  local slow = not is_globals_table(getfenv(fn))
  return p.id + p.nuv * 2 ^ 24 + (slow and 2 ^ 40 or 0) + (#p.globals > 0 and 2 ^ 41 or 0)
    + (p.shareable and 2 ^ 42 or 0)
end

-- The names of the globals prototype `id`'s code reads (fn: a closure of
-- it), for the C side's fast path.
local names_by_id = {}
function M.globals_names(id, fn)
  local names = names_by_id[id]
  if not names then
    names = proto_of(fn).globals
    names_by_id[id] = names
  end
  return names
end

-- What the C side needs to build a task's globals: the metatable that
-- puts the standard library under them, and the table it reads through.
M.BASE_MT, M.base_env = BASE_MT, base_env

-- ---------------------------------------------------------------- decoder

local wrappers = {} -- proto id -> the loaded wrapper, in this VM
local infos = {}    -- proto id -> its number (as proto_number), in this VM
local nuvs = {}     -- proto id -> its upvalue count
local get_proto     -- set by M.init: id -> bytes

local function wrapper_of(id)
  local w = wrappers[id]
  if not w then
    local bytes = get_proto(id)
    local err
    w, err = loadstring(bytes)
    if not w then error("knhk.codec: cannot load prototype " .. id .. ": " .. tostring(err)) end
    wrappers[id] = w
    local f = w()
    local info = funcinfo(f)
    nuvs[id] = info.upvalues or 0
    infos[id] = id + nuvs[id] * 2 ^ 24 + (#globals_read(f, {}, {}) > 0 and 2 ^ 41 or 0)
  end
  return w
end

-- A new closure of prototype id in this VM, and its number (proto_number).
function M.new_closure(id)
  local fn = wrapper_of(id)()
  return fn, infos[id]
end

local function rd_byte(r)
  local b = r.p[r.pos]
  r.pos = r.pos + 1
  return b
end

local function rd_uleb(r)
  local v, mul = 0, 1
  while true do
    local b = r.p[r.pos]
    r.pos = r.pos + 1
    if b < 0x80 then return v + b * mul end
    v = v + (b - 0x80) * mul
    mul = mul * 128
  end
end

local function rd_str(r)
  local n = rd_uleb(r)
  local s = ffi.string(r.p + r.pos, n)
  r.pos = r.pos + n
  return s
end

-- The snapshot's globals: one table per snapshot, shared by the functions
-- in it (as they shared _G), over the standard library.
local function globals_of(r)
  local env = r.genv
  if env == nil then
    env = setmetatable({}, BASE_MT)
    task_envs[env] = true
    r.genv = env
  end
  return env
end

local decode_value

local function new_ref_d(r, v)
  local n = r.nrefs + 1
  r.nrefs = n
  r.refs[n] = v
end

local function decode_table(r, mt)
  local t = {}
  new_ref_d(r, t)
  local n = rd_uleb(r)
  for i = 1, n do t[i] = decode_value(r) end
  while r.p[r.pos] ~= T_END do
    local k = decode_value(r)
    t[k] = decode_value(r)
  end
  r.pos = r.pos + 1
  if mt then setmetatable(t, mt) end
  return t
end

local setupvalue, upvaluejoin = debug.setupvalue, debug.upvaluejoin

-- Shared closures. LuaJIT specialises its traces on the closure a call
-- reaches: a task's helper function made anew for every task (a fresh copy
-- from each snapshot) meets traces recorded for another copy, and a
-- recursive helper ran ~4x slower in tasks than in plain LuaJIT. A function
-- of a task's start whose copies cannot differ in behaviour is given one
-- closure per VM instead, found by its content and where it comes from:
--  - its upvalues are never assigned (LuaJIT marks them immutable) and hold
--    values the same in every copy: nil, booleans, numbers, short strings,
--    the function itself, builtins, knhk's modules, other shared closures;
--  - the globals it reads hold builtins, knhk's modules or shared closures
--    (a number or a string in the task's globals could be changed there by
--    code the snapshot does not show, which a copy would see);
--  - its code writes no global, and no code of the snapshot reaches an
--    environment or upvalues (REFLECTIVE above: names, builtins as values,
--    the globals table as a value), writes a global it reads, or joins one
--    of its upvalues;
--  - it comes in a task's start (decode_start): a function in a message or
--    a result is the receiver's own copy.
-- Reflection reached at run time by other routes (a chunk loaded with
-- loadstring, a module required later) on a shared function is not seen:
-- README says so. Closures are cached in weak tables, per runtime.
-- (The C side does the same for a task's own function when its start is
-- inline: klua_core.c, "Closures of a task's own function shared by
-- content".)
-- key -> closure, closure -> key; new for each runtime (M.init)
local shared_closures = setmetatable({}, { __mode = "v" })
local shared_key = setmetatable({}, { __mode = "k" })
local SHORT_STRING = 64

-- The part of a shared closure's key that value v is, or nil: v differs
-- from copy to copy.
local function key_of(v, self, r)
  local t = type(v)
  if t == "number" then return string.format("n%a", v)
  elseif t == "string" then return #v <= SHORT_STRING and ("s" .. #v .. ":" .. v) or nil
  elseif t == "boolean" then return v and "T" or "F"
  elseif t == "nil" then return "N"
  elseif rawequal(v, self) then return "@"
  elseif shared_key[v] or (r.named and r.named[v] and M.named_shareable(r.named[v])) then
    return "o" .. object_id(v)
  end
  return nil
end

-- A builtin or a module's value: the same object in every decode of the
-- VM; its key ("B" name, "M" name) kept for key_of.
local function named_value(r, v, key)
  local named = r.named
  if not named then
    named = {}
    r.named = named
  end
  named[v] = key
  return v
end

local function decode_function(r)
  local id = rd_uleb(r)
  local flag, key = rd_byte(r), nil
  if flag ~= 0 then -- where it comes from, then: shared unless the flag says not
    local origin = rd_uleb(r)
    local vm = rd_str(r)
    -- (only in a task's start: a function that arrives in a message or a
    -- result is the receiver's own copy, whatever it does with it)
    if flag == 1 and r.share then key = { id, vm, origin } end
  end
  local fn = wrapper_of(id)()
  new_ref_d(r, fn)
  local ref = r.nrefs
  for i = 1, nuvs[id] do
    local tag = r.p[r.pos]
    if tag == T_SELF then
      r.pos = r.pos + 1
      setupvalue(fn, i, fn)
      if key then key[#key + 1] = "@" end
    elseif tag == T_UVJOIN then
      r.pos = r.pos + 1
      local other = r.refs[rd_uleb(r)]
      upvaluejoin(fn, i, other, rd_uleb(r))
      key = nil
    else
      local v = decode_value(r)
      setupvalue(fn, i, v)
      if key then key[#key + 1] = key_of(v, fn, r) or false end
    end
  end
  local kind, env = rd_byte(r), nil
  if kind == ENV_GLOBALS then
    env = globals_of(r)
  elseif kind == ENV_SANDBOX then
    env = {}
    new_ref_d(r, env)
    key = nil
  else
    env = r.refs[rd_uleb(r)]
    key = nil
  end
  local nglobals = rd_uleb(r)
  local names, values = key and {}, key and {}
  for i = 1, nglobals do
    local name = rd_str(r)
    local v = decode_value(r)
    rawset(env, name, v)
    if key then
      names[i], values[i] = name, v
      key[#key + 1] = name
      -- a global's value must be a builtin, knhk's or a shared function:
      -- others (a number, a string, ...) may be changed in the task's
      -- globals by code the snapshot does not show (a module writing its
      -- caller's environment), which a copy would see and a shared one not
      local k = type(v) ~= "nil" and type(v) ~= "boolean" and type(v) ~= "number"
        and type(v) ~= "string" and key_of(v, fn, r)
      key[#key + 1] = k or false
    end
  end
  setfenv(fn, env)
  if key then
    for i = 4, #key do
      if key[i] == false then return fn end
    end
    local k = table.concat(key, "\0")
    local shared = shared_closures[k]
    if shared then
      r.refs[ref] = shared
      return shared
    end
    -- the first: it becomes the shared one, with the globals it reads in
    -- an environment of its own
    local own = setmetatable({}, BASE_MT)
    task_envs[own] = true
    for i = 1, nglobals do rawset(own, names[i], values[i]) end
    setfenv(fn, own)
    shared_closures[k] = fn
    shared_key[fn] = k
  end
  return fn
end

decode_value = function(r)
  local tag = rd_byte(r)
  if tag == T_NIL then return nil
  elseif tag == T_FALSE then return false
  elseif tag == T_TRUE then return true
  elseif tag == T_INT then return rd_uleb(r)
  elseif tag == T_NUM then
    local v = ffi.cast("const double*", r.p + r.pos)[0]
    r.pos = r.pos + 8
    return v
  elseif tag == T_STR then return rd_str(r)
  elseif tag == T_TAB then return decode_table(r, nil)
  elseif tag == T_CLASS or tag == T_CLASS_IN then
    local name = rd_str(r)
    local mt = class_mt(name, tag == T_CLASS_IN and rd_str(r) or nil)
    if rd_byte(r) ~= T_TAB then error("knhk.codec: corrupt snapshot (class)") end
    return decode_table(r, mt)
  elseif tag == T_REF then return r.refs[rd_uleb(r)]
  elseif tag == T_GLOBALS then return globals_of(r)
  elseif tag == T_BUILTIN then
    local name = rd_str(r)
    local v = name_builtin[name]
    if v == nil then error("knhk.codec: this VM has no builtin " .. name) end
    return named_value(r, v, "B" .. name)
  elseif tag == T_MODULE then
    local name = rd_str(r)
    return named_value(r, resolve_module(name), "M" .. name)
  elseif tag == T_HANDLE then
    local name = rd_str(r)
    local import = handle_names[name]
    if not import and handle_modules[name] then
      require(handle_modules[name])
      import = handle_names[name]
    end
    if not import then error("knhk.codec: no handle kind " .. name .. " in this VM") end
    return import(decode_value(r), r.copies)
  elseif tag == T_FN then return decode_function(r)
  end
  error("knhk.codec: corrupt snapshot (tag " .. tostring(tag) .. ")")
end

local function unpack_n(t, i, n)
  if i > n then return end
  return t[i], unpack_n(t, i + 1, n)
end

-- Decodes a snapshot made by encode from `len` bytes at `ptr` (a cdata
-- pointer) or from a string. Returns n, then the values.
local function decode(ptr, copies, share)
  local keep
  if type(ptr) == "string" then
    keep = ptr
    ptr = ffi.cast("const uint8_t*", keep)
  end
  local r = { p = ffi.cast("const uint8_t*", ptr), pos = 0, refs = {}, nrefs = 0, keep = keep,
              copies = copies, share = share }
  local n = rd_uleb(r)
  local vals = {}
  for i = 1, n do vals[i] = decode_value(r) end
  return n, unpack_n(vals, 1, n)
end

-- Decodes a snapshot read once (a message): its handles' references go to
-- the handles made.
function M.decode(ptr) return decode(ptr, false, false) end

-- The same for a task's start: its functions may be shared closures.
function M.decode_start(ptr) return decode(ptr, false, true) end

-- Decodes a snapshot read as often as asked (a task's results, which every
-- join decodes): the handles made take references of their own.
function M.decode_copies(ptr) return decode(ptr, true, false) end

-- The runtime tells the codec where prototypes are interned. Ids from an
-- earlier runtime mean nothing in this one: every cache starts empty.
function M.init(register, get)
  register_proto, get_proto = register, get
  protos_by_closure = setmetatable({}, { __mode = "k" })
  protos_by_dump = {}
  wrappers, nuvs, infos = {}, {}, {}
  names_by_id = {}
  -- keys name prototypes by id: a new runtime's ids are new
  shared_closures = setmetatable({}, { __mode = "v" })
  shared_key = setmetatable({}, { __mode = "k" })
end

return M
