-- knhk.test.luassert: luassert as a portable task on another worker sees
-- it while busted runs the spec.
--
-- busted reports a failed assertion as a Failure, not an Error, by the
-- error object: luassert raises through an `error` that busted bound to
-- busted.fail, which raises { message = ... } with a failure metatable
-- (its __type is "failure"). busted binds it in the VM that runs the spec
-- only: another worker's VM loads luassert afresh, whose failed assertion
-- raises a plain string. So knhk.test has luassert travel under this
-- module's name (codec.register_module): a worker VM that meets `assert`
-- loads this module, whose luassert raises failures as busted.fail does,
-- of classes that travel (knhk.codec.register_class) and that the spec's
-- VM has registered as busted's own failure metatables.
local codec = require "knhk.codec"
local assert = require "luassert"

local throw, getmetatable = error, debug.getmetatable

-- busted's failure metatables (busted/core.lua), for this VM
local Failure = { __index = {}, __type = "failure", __tostring = function(e) return tostring(e.message) end }
local FailureNoString = { __index = {}, __type = "failure" }
codec.register_class("knhk.test.failure", Failure)
codec.register_class("knhk.test.failure_nostring", FailureNoString)

local function has_tostring(v)
  local mt = getmetatable(v)
  return type(v) == "string" or type(v) == "number" or (type(mt) == "table" and mt.__tostring ~= nil)
end

-- What luassert's error(msg, level) raises while busted runs: a failure
-- object whose message carries the position that `level` names (the
-- assertion's line), raised from that same level. A level that is not a
-- positive number asks for no position, as error's does.
local function fail(msg, level)
  local mt = has_tostring(msg) and Failure or FailureNoString
  if type(level) ~= "number" then level = 1 end
  if level <= 0 then throw(setmetatable({ message = msg }, mt), level) end
  -- error's own formatting, at the caller's level (+1 for this function,
  -- +1 for pcall's frame)
  local _, positioned = pcall(throw, msg, level + 2)
  throw(setmetatable({ message = positioned }, mt), level + 1)
end

-- busted.bindfenv(callable, "error", fail), on what busted binds
local function bind(callable)
  local f = (getmetatable(callable) or {}).__call or callable
  setfenv(f, setmetatable({ error = fail }, { __index = getfenv(f) }))
end
bind(assert)
bind(assert.is_true)

return assert
