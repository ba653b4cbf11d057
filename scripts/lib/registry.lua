-- registry.lua: reads a Weaver semantic-convention registry (a directory of
-- YAML files and a manifest.yaml), checks it against Weaver's grammar
-- (schemas/semconv-syntax.md of OpenTelemetry Weaver, version 1 of the
-- syntax) and resolves it: attributes by id, spans by name, metrics by
-- name. Used by registry-check, registry-live-check and registry-gen.
--
-- A span group's id is `span.` + the span's name (the convention of the
-- OpenTelemetry semantic-conventions registry): that is how a recorded
-- span is matched to its group.
local lyaml = require "lyaml"

local M = {}

local STABILITY = { stable = true, development = true, alpha = true, beta = true,
                    release_candidate = true }
local GROUP_TYPES = { span = true, metric = true, event = true, attribute_group = true,
                      entity = true }
local SPAN_KINDS = { client = true, server = true, producer = true, consumer = true,
                     internal = true }
local INSTRUMENTS = { counter = true, gauge = true, histogram = true, updowncounter = true }
local SIMPLE_TYPES = { string = true, int = true, double = true, boolean = true, any = true,
                       ["string[]"] = true, ["int[]"] = true, ["double[]"] = true,
                       ["boolean[]"] = true }
local REQUIREMENT = { required = true, recommended = true, opt_in = true }
local GROUP_KEYS = {
  common = { id = true, type = true, brief = true, note = true, extends = true, stability = true,
             deprecated = true, display_name = true, attributes = true, annotations = true,
             entity_associations = true },
  span = { span_kind = true, events = true },
  metric = { metric_name = true, instrument = true, unit = true },
  event = { name = true, body = true },
  attribute_group = {},
  entity = { name = true },
}
local ATTR_KEYS = { id = true, ref = true, type = true, brief = true, note = true, examples = true,
                    tag = true, stability = true, deprecated = true, requirement_level = true,
                    sampling_relevant = true, annotations = true, role = true }
local MEMBER_KEYS = { id = true, value = true, brief = true, note = true, stability = true,
                      deprecated = true, annotations = true }

local function sorted_files(dir)
  local p = io.popen("find '" .. dir:gsub("'", "'\\''") .. "' -type f \\( -name '*.yaml' -o -name '*.yml' \\) | LC_ALL=C sort")
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  return out
end

local function read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

local function is_list(v)
  if type(v) ~= "table" then return false end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  return n == #v
end

local function describe(v)
  if type(v) == "string" then return "'" .. v .. "'" end
  if type(v) == "table" then return is_list(v) and "a list" or "a map" end
  return tostring(v)
end

-- The type an example value or enum value has, in the registry's terms.
local function value_type(v)
  if type(v) == "string" then return "string" end
  if type(v) == "boolean" then return "boolean" end
  if type(v) == "number" then return v % 1 == 0 and "int" or "double" end
  return nil
end

local function example_fits(t, v)
  local vt = value_type(v)
  if t == "double" then return vt == "double" or vt == "int" end
  if t == "any" then return vt ~= nil end
  local elem = t:match("^(%a+)%[%]$")
  if elem then
    if type(v) ~= "table" then return false end
    for _, x in ipairs(v) do if not example_fits(elem, x) then return false end end
    return true
  end
  return vt == t
end

-- Keys given twice in one mapping, as { line = n, key = k } (1-based
-- lines). A YAML loader keeps the last value silently; Weaver refuses
-- them. Walks the parser's events: a mapping alternates key and value,
-- and a value may be a whole nested collection.
local yaml_events = require "yaml"
local function duplicate_keys(text)
  local dups = {}
  local stack = {} -- per open collection: { mapping = bool, keys = {}, expect_key = bool }
  local function value_done()
    local top = stack[#stack]
    if top and top.mapping then top.expect_key = true end
  end
  local ok = pcall(function()
    for ev in yaml_events.parser(text) do
      local top = stack[#stack]
      if ev.type == "MAPPING_START" or ev.type == "SEQUENCE_START" then
        if top and top.mapping then top.expect_key = false end
        stack[#stack + 1] = { mapping = ev.type == "MAPPING_START", keys = {}, expect_key = true }
      elseif ev.type == "MAPPING_END" or ev.type == "SEQUENCE_END" then
        stack[#stack] = nil
        value_done()
      elseif ev.type == "SCALAR" or ev.type == "ALIAS" then
        if top and top.mapping and top.expect_key then
          local k = tostring(ev.value)
          if top.keys[k] then dups[#dups + 1] = { line = ev.start_mark.line + 1, key = k } end
          top.keys[k] = true
          top.expect_key = false
        else
          value_done()
        end
      end
    end
  end)
  return ok and dups or {}
end
M.duplicate_keys = duplicate_keys

-- Loads and checks the registry in `dir`. Returns a resolved registry and
-- the list of violations ({ file, group, message }).
function M.load(dir)
  dir = dir:gsub("/+$", "")
  local errs = {}
  local function err(file, group, msg)
    errs[#errs + 1] = { file = file, group = group, message = msg }
  end
  local reg = { dir = dir, groups = {}, attributes = {}, spans = {}, metrics = {}, manifest = nil,
                attribute_list = {}, group_list = {} }

  -- the manifest
  local mpath = dir .. "/manifest.yaml"
  local mtext = read(mpath)
  if not mtext then
    mpath = dir .. "/registry_manifest.yaml"
    mtext = read(mpath)
  end
  if not mtext then
    err(dir .. "/manifest.yaml", nil, "the registry has no manifest.yaml")
  else
    local ok, m = pcall(lyaml.load, mtext)
    if not ok or type(m) ~= "table" then
      err(mpath, nil, "not valid YAML: " .. tostring(m))
    else
      reg.manifest = m
      if type(m.name) ~= "string" or m.name == "" then err(mpath, nil, "manifest has no 'name'") end
      if m.schema_url == nil and (m.semconv_version == nil or m.schema_base_url == nil) then
        err(mpath, nil, "manifest needs 'schema_url' (or both 'schema_base_url' and 'semconv_version')")
      elseif m.schema_url ~= nil and (type(m.schema_url) ~= "string"
          or not m.schema_url:match("^https?://[^/]+/.*/[^/]+$")) then
        err(mpath, nil, "manifest 'schema_url' must be a URL ending in a version segment, got "
          .. describe(m.schema_url))
      end
    end
  end

  -- every group of every file
  for _, path in ipairs(sorted_files(dir)) do
    local base = path:match("[^/]+$")
    if base ~= "manifest.yaml" and base ~= "registry_manifest.yaml" then
      local text = read(path)
      local ok, doc = pcall(lyaml.load, text)
      for _, d in ipairs(ok and duplicate_keys(text) or {}) do
        err(path .. ":" .. d.line, nil, "key '" .. d.key .. "' given twice in one mapping (YAML keeps only the last)")
      end
      if not ok then
        err(path, nil, "not valid YAML: " .. tostring(doc))
      elseif type(doc) ~= "table" or doc.groups == nil then
        err(path, nil, "a semantic-convention file must have a top-level 'groups' list")
      elseif not is_list(doc.groups) then
        err(path, nil, "'groups' must be a list, got " .. describe(doc.groups))
      else
        for k in pairs(doc) do
          if k ~= "groups" and k ~= "imports" then err(path, nil, "unknown top-level key '" .. tostring(k) .. "'") end
        end
        for i, g in ipairs(doc.groups) do
          if type(g) ~= "table" then
            err(path, "#" .. i, "a group must be a map, got " .. describe(g))
          else
            g.__file = path
            reg.group_list[#reg.group_list + 1] = g
          end
        end
      end
    end
  end

  -- groups: ids, types, fields
  for i, g in ipairs(reg.group_list) do
    local file = g.__file
    local gid = type(g.id) == "string" and g.id or ("#" .. i)
    if type(g.id) ~= "string" or g.id == "" then
      err(file, gid, "group has no 'id'")
    elseif reg.groups[g.id] then
      err(file, gid, "duplicate group id (first declared in " .. reg.groups[g.id].__file .. ")")
    else
      reg.groups[g.id] = g
    end
    if not GROUP_TYPES[g.type] then
      err(file, gid, "'type' must be one of span, metric, event, attribute_group, entity; got "
        .. describe(g.type))
    end
    if type(g.brief) ~= "string" then err(file, gid, "group has no 'brief'") end
    if g.type ~= "attribute_group" and g.type ~= nil then
      if g.stability == nil then err(file, gid, "group has no 'stability'")
      end
    end
    if g.stability ~= nil and not STABILITY[g.stability] then
      err(file, gid, "'stability' must be stable, development, alpha, beta or release_candidate; got "
        .. describe(g.stability))
    end
    local allowed = GROUP_KEYS[g.type] or {}
    for k in pairs(g) do
      if k ~= "__file" and not GROUP_KEYS.common[k] and not allowed[k] then
        err(file, gid, "unknown field '" .. tostring(k) .. "' for a group of type " .. tostring(g.type))
      end
    end
    if g.type == "span" then
      if not SPAN_KINDS[g.span_kind] then
        err(file, gid, "a span needs 'span_kind' (client, server, producer, consumer or internal); got "
          .. describe(g.span_kind))
      end
      if g.attributes == nil and g.extends == nil then err(file, gid, "a span needs 'attributes' or 'extends'") end
      if type(g.id) == "string" then
        local name = g.id:match("^span%.(.+)$")
        if not name then
          err(file, gid, "a span group's id must be 'span.' followed by the span's name")
        else
          reg.spans[name] = g
        end
      end
    elseif g.type == "metric" then
      if type(g.metric_name) ~= "string" or g.metric_name == "" then
        err(file, gid, "a metric needs 'metric_name'")
      elseif reg.metrics[g.metric_name] then
        err(file, gid, "duplicate metric_name '" .. g.metric_name .. "' (also group "
          .. reg.metrics[g.metric_name].id .. ")")
      else
        reg.metrics[g.metric_name] = g
      end
      if not INSTRUMENTS[g.instrument] then
        err(file, gid, "'instrument' must be counter, gauge, histogram or updowncounter; got "
          .. describe(g.instrument))
      end
      if type(g.unit) ~= "string" then
        err(file, gid, "a metric needs a 'unit' (a UCUM unit such as 'ns', '1' or '{task}')")
      end
    elseif g.type == "attribute_group" then
      if g.attributes == nil and g.extends == nil then
        err(file, gid, "an attribute group needs 'attributes' or 'extends'")
      end
    end
    if g.attributes ~= nil and not is_list(g.attributes) then
      err(file, gid, "'attributes' must be a list, got " .. describe(g.attributes))
      g.attributes = {}
    end
  end

  -- attribute definitions (ids), before refs can be resolved
  for _, g in ipairs(reg.group_list) do
    local gid = type(g.id) == "string" and g.id or "?"
    for j, a in ipairs(g.attributes or {}) do
      local where = "attribute #" .. j
      if type(a) ~= "table" then
        err(g.__file, gid, where .. " must be a map, got " .. describe(a))
      elseif a.id ~= nil then
        if type(a.id) ~= "string" or not a.id:match("^[a-z][a-z0-9_]*[%.a-z0-9_]*$") then
          err(g.__file, gid, where .. ": id must be lower-case dotted words, got " .. describe(a.id))
        elseif reg.attributes[a.id] then
          err(g.__file, gid, "duplicate attribute id '" .. a.id .. "' (first declared in group "
            .. reg.attributes[a.id].__group .. ")")
        else
          a.__group = gid
          reg.attributes[a.id] = a
          reg.attribute_list[#reg.attribute_list + 1] = a
        end
      end
    end
  end

  local function check_type(g, gid, name, a)
    local t = a.type
    if type(t) == "string" then
      local inner = t:match("^template%[(.+)%]$")
      if not SIMPLE_TYPES[inner or t] then
        err(g.__file, gid, "attribute '" .. name .. "': unknown type " .. describe(t))
        return
      end
      if (t == "string" or t == "string[]") and a.examples == nil then
        err(g.__file, gid, "attribute '" .. name .. "': a " .. t .. " attribute needs 'examples'")
      end
      if a.examples ~= nil and not inner then
        local ex, list = a.examples, nil
        if t:match("%[%]$") then -- one array, or a list of arrays
          list = (type(ex) == "table" and type(ex[1]) == "table") and ex or { ex }
        else                      -- one value, or a list of values
          list = type(ex) == "table" and ex or { ex }
        end
        for _, ex in ipairs(list) do
          if not example_fits(t, ex) then
            err(g.__file, gid, "attribute '" .. name .. "': example " .. describe(ex)
              .. " is not a " .. t)
          end
        end
      end
    elseif type(t) == "table" and not is_list(t) then
      for k in pairs(t) do
        if k ~= "members" and k ~= "allow_custom_values" then
          err(g.__file, gid, "attribute '" .. name .. "': unknown field '" .. tostring(k) .. "' in an enum type")
        end
      end
      if not is_list(t.members) or #t.members == 0 then
        err(g.__file, gid, "attribute '" .. name .. "': an enum needs a non-empty 'members' list")
        return
      end
      local ids, values, vtype = {}, {}, nil
      for k, m in ipairs(t.members) do
        local mw = "attribute '" .. name .. "': member #" .. k
        if type(m) ~= "table" then
          err(g.__file, gid, mw .. " must be a map")
        else
          for key in pairs(m) do
            if not MEMBER_KEYS[key] then err(g.__file, gid, mw .. ": unknown field '" .. tostring(key) .. "'") end
          end
          if type(m.id) ~= "string" or not m.id:match("^[a-z][a-z0-9_%.]*$") then
            err(g.__file, gid, mw .. ": id must be lower-case words, got " .. describe(m.id))
          elseif ids[m.id] then
            err(g.__file, gid, mw .. ": duplicate member id '" .. m.id .. "'")
          else
            ids[m.id] = true
          end
          local vt = value_type(m.value)
          if vt == nil or vt == "double" then
            err(g.__file, gid, mw .. ": value must be a string, an int or a boolean, got " .. describe(m.value))
          else
            if vtype and vt ~= vtype then
              err(g.__file, gid, mw .. ": value " .. describe(m.value) .. " is a " .. vt
                .. ", other members are " .. vtype)
            end
            vtype = vtype or vt
            if values[m.value] then err(g.__file, gid, mw .. ": duplicate value " .. describe(m.value)) end
            values[m.value] = true
          end
          if not STABILITY[m.stability] then
            err(g.__file, gid, mw .. ": needs 'stability', got " .. describe(m.stability))
          end
        end
      end
      a.__enum_type = vtype
    else
      err(g.__file, gid, "attribute '" .. name .. "': needs a 'type', got " .. describe(t))
    end
  end

  local function check_requirement(g, gid, name, rl)
    if rl == nil then return end
    if type(rl) == "string" then
      if not REQUIREMENT[rl] then
        err(g.__file, gid, "attribute '" .. name .. "': requirement_level must be required, "
          .. "recommended, opt_in or {conditionally_required: ...}; got " .. describe(rl))
      end
    elseif type(rl) == "table" and not is_list(rl) then
      local n = 0
      for k, v in pairs(rl) do
        n = n + 1
        if (k ~= "conditionally_required" and k ~= "recommended") or type(v) ~= "string" then
          err(g.__file, gid, "attribute '" .. name .. "': requirement_level {" .. tostring(k)
            .. ": ...} is not conditionally_required or recommended with a condition")
        end
      end
      if n ~= 1 then err(g.__file, gid, "attribute '" .. name .. "': requirement_level map must have one key") end
    else
      err(g.__file, gid, "attribute '" .. name .. "': requirement_level is " .. describe(rl))
    end
  end

  -- every attribute entry: definitions and references
  for _, g in ipairs(reg.group_list) do
    local gid = type(g.id) == "string" and g.id or "?"
    g.__attrs = {}
    for j, a in ipairs(g.attributes or {}) do
      if type(a) == "table" then
        for k in pairs(a) do
          if not ATTR_KEYS[k] and k ~= "__group" and k ~= "__enum_type" then
            err(g.__file, gid, "attribute #" .. j .. ": unknown field '" .. tostring(k) .. "'")
          end
        end
        if a.id ~= nil and a.ref ~= nil then
          err(g.__file, gid, "attribute #" .. j .. ": has both 'id' and 'ref'")
        elseif a.ref ~= nil then
          for _, k in ipairs { "type", "stability", "deprecated" } do
            if a[k] ~= nil then
              err(g.__file, gid, "attribute ref '" .. tostring(a.ref) .. "': '" .. k .. "' is not allowed with ref")
            end
          end
          local target = type(a.ref) == "string" and reg.attributes[a.ref]
          if not target then
            err(g.__file, gid, "attribute ref '" .. tostring(a.ref) .. "' does not resolve to a declared attribute")
          else
            g.__attrs[#g.__attrs + 1] = { def = target, requirement = a.requirement_level or "recommended" }
          end
          check_requirement(g, gid, tostring(a.ref), a.requirement_level)
        elseif a.id ~= nil then
          local name = tostring(a.id)
          if type(a.brief) ~= "string" then err(g.__file, gid, "attribute '" .. name .. "' has no 'brief'") end
          if not STABILITY[a.stability] then
            err(g.__file, gid, "attribute '" .. name .. "': needs 'stability', got " .. describe(a.stability))
          end
          check_type(g, gid, name, a)
          check_requirement(g, gid, name, a.requirement_level)
          g.__attrs[#g.__attrs + 1] = { def = a, requirement = a.requirement_level or "recommended" }
        else
          err(g.__file, gid, "attribute #" .. j .. ": needs 'id' (a definition) or 'ref' (a reference)")
        end
      end
    end
  end

  -- extends: resolves, and brings the extended group's attributes
  for _, g in ipairs(reg.group_list) do
    if g.extends ~= nil then
      local base = type(g.extends) == "string" and reg.groups[g.extends]
      if not base then
        err(g.__file, g.id, "extends '" .. tostring(g.extends) .. "', which is not a group of the registry")
      else
        for _, a in ipairs(base.__attrs or {}) do g.__attrs[#g.__attrs + 1] = a end
      end
    end
  end

  table.sort(errs, function(x, y)
    if x.file ~= y.file then return x.file < y.file end
    return tostring(x.group) < tostring(y.group)
  end)
  return reg, errs
end

-- The registry's name for an attribute's type: string, int, double,
-- boolean, an array type, or for an enum the type of its values.
function M.attr_type(def)
  if type(def.type) == "table" then return def.__enum_type or "string", def.type.members end
  return def.type
end

-- The attributes a span or metric group has: { [id] = { def, requirement } }.
function M.group_attributes(g)
  local out = {}
  for _, a in ipairs(g.__attrs or {}) do out[a.def.id] = a end
  return out
end

function M.format_error(e)
  return e.file .. (e.group and (": group '" .. e.group .. "'") or "") .. ": " .. e.message
end

return M
