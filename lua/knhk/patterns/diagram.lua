-- knhk.patterns.diagram: a built workflow drawn as Mermaid or Graphviz DOT,
-- and `knhk-lua --graph script.lua`.
--
-- The drawing is the compiled net: tasks are boxes, splits and joins
-- diamonds labelled with their pattern, multiple-instance steps and
-- composite steps (loops, regions, critical sections, ...) double boxes
-- whose inside is drawn as a nested cluster. Conditions label the edges.
local M = {}

local SHAPES = {
  mermaid = {
    task = '["%s"]', split = '{"%s"}', join = '{"%s"}', mi = '[["%s"]]', wait = '>"%s"]',
    signal = '>"%s"]', stop = '(["%s"])', composite = '[["%s"]]', call = '[["%s"]]',
    point = '(("%s"))', marker = '(("%s"))',
  },
  dot = {
    task = "box", split = "diamond", join = "diamond", mi = "box3d", wait = "cds",
    signal = "cds", stop = "octagon", composite = "component", call = "component",
    point = "circle", marker = "circle",
  },
}

local function tag(node)
  if not node.pattern then return "" end
  return " (" .. node.pattern .. ")"
end

local function label(node)
  local shape = node.shape or (node.activity and "task" or "split")
  if shape == "task" then return node.name end
  local base = node.label or node.name
  if node.step.name and node.step.name ~= base then base = node.step.name .. ": " .. base end
  if shape == "mi" then
    local c = node.step.count
    base = node.name .. " ×" .. (type(c) == "number" and c or "n")
  end
  return base .. tag(node)
end

local function shape_of(node)
  if node.shape then return node.shape end
  return node.activity and "task" or "split"
end

-- Walks a net (and the nets of its composite nodes) calling the writer:
-- w.node(id, text, shape), w.edge(from, to, text, dotted), w.open(id, text),
-- w.close().
local function walk(net, w, is_root)
  local function id(n) return "n" .. net.uid .. "_" .. n end
  local start_id, end_id = "s" .. net.uid, "e" .. net.uid
  w.node(start_id, is_root and "start" or "in", "marker")
  local ends = false
  for _, node in ipairs(net.nodes) do
    w.node(id(node.id), label(node), shape_of(node))
    if node.subnets then
      for i, sub in ipairs(node.subnets) do
        w.open("c" .. sub.uid, label(node) .. (#node.subnets > 1 and (" · " .. i) or ""))
        walk(sub, w, false)
        w.close()
        w.edge(id(node.id), "s" .. sub.uid, nil, true)
      end
    end
  end
  for _, e in ipairs(net.edges) do
    local from = e.from and id(e.from) or start_id
    local to = e.to and id(e.to) or end_id
    if not e.to then ends = true end
    w.edge(from, to, e.label, false) -- branches of choices carry their condition's label
  end
  for _, node in ipairs(net.nodes) do
    if #node.outs == 0 then
      ends = true
      w.edge(id(node.id), end_id, nil, false)
    end
  end
  if ends or net.exit then w.node(end_id, is_root and "end" or "out", "marker") end
end

-- Mermaid reads its own entity codes (#quot;, #35;) inside a quoted
-- label and renders the label as HTML: a step named with a quote, a '#',
-- markup or a line break would end the label, become an entity or be
-- drawn as markup. Each such character becomes its code ('<' is enough to
-- keep a tag from being one: "total > 100" stays readable); a line break
-- becomes the <br/> Mermaid draws as one.
local MERMAID_CODES = { ['"'] = "#quot;", ["#"] = "#35;", ["<"] = "#lt;", ["&"] = "#amp;",
                        ["\n"] = "<br/>" }
local function mermaid_text(s)
  return (s:gsub("\r\n", "\n"):gsub('[#"<&\n]', MERMAID_CODES))
end

function M.mermaid(wf)
  local out = { "flowchart TD" }
  local depth = 1
  local function line(s) out[#out + 1] = string.rep("  ", depth) .. s end
  walk(wf.net, {
    node = function(id, text, shape)
      line(id .. SHAPES.mermaid[shape]:format(mermaid_text(text)))
    end,
    edge = function(from, to, text, dotted)
      if dotted then line(from .. " -.- " .. to)
      elseif text then line(from .. ' -->|"' .. mermaid_text(text) .. '"| ' .. to)
      else line(from .. " --> " .. to) end
    end,
    open = function(id, text)
      line("subgraph " .. id .. ' ["' .. mermaid_text(text) .. '"]')
      depth = depth + 1
    end,
    close = function()
      depth = depth - 1
      line("end")
    end,
  }, true)
  return table.concat(out, "\n") .. "\n"
end

-- A DOT string: quotes and backslashes escaped, a line break as DOT's \n
local function dot_text(s)
  return '"' .. s:gsub("\\", "\\\\"):gsub('"', '\\"'):gsub("\r?\n", "\\n") .. '"'
end

function M.dot(wf)
  local out = { "digraph " .. dot_text(wf.name or "workflow") .. " {",
                "  rankdir=TB;", "  node [fontname=\"Helvetica\"];" }
  local depth = 1
  local function line(s) out[#out + 1] = string.rep("  ", depth) .. s end
  walk(wf.net, {
    node = function(id, text, shape)
      line(id .. " [label=" .. dot_text(text) .. ", shape=" .. SHAPES.dot[shape]
        .. (shape == "marker" and ", width=0.3" or "") .. "];")
    end,
    edge = function(from, to, text, dotted)
      local attrs = {}
      if text then attrs[#attrs + 1] = "label=" .. dot_text(text) end
      if dotted then attrs[#attrs + 1] = "style=dotted, arrowhead=none" end
      line(from .. " -> " .. to .. (#attrs > 0 and (" [" .. table.concat(attrs, ", ") .. "]") or "") .. ";")
    end,
    open = function(id, text)
      line("subgraph cluster_" .. id .. " {")
      depth = depth + 1
      line("label=" .. dot_text(text) .. ";")
    end,
    close = function()
      depth = depth - 1
      line("}")
    end,
  }, true)
  out[#out + 1] = "}"
  return table.concat(out, "\n") .. "\n"
end

-- ------------------------------------------------------- knhk-lua --graph

-- Runs `chunk` (a workflow script) in the runtime without running its
-- workflow: the first wf:execute it reaches is stopped and that workflow
-- drawn; a script that returns a workflow (or a step) has it drawn.
-- Returns the exit code.
function M.cli(chunk, args, format, opts)
  local knhk = require "knhk"
  local S = require "knhk.patterns.step"
  local W = require "knhk.patterns.workflow"
  local Stop = {}
  local captured
  W.capture_hook = function(wf)
    captured = wf
    error(Stop, 0)
  end
  -- the root task runs in this VM: it hands the workflow over by upvalue
  -- (a task's results travel by snapshot, which a workflow cannot)
  local ok, err = pcall(knhk.run, function()
    local r = { pcall(chunk, unpack(args)) }
    if not r[1] then
      if r[2] ~= Stop then error(r[2], 0) end
    else
      captured = r[2]
    end
  end, { workers = opts.workers })
  W.capture_hook = nil
  local prog = "knhk-lua --graph"
  if not ok then
    io.stderr:write(prog, ": ", opts.script, ": ", type(err) == "table" and tostring(err.message or err)
      or tostring(err), "\n")
    return 1
  end
  local wf = captured
  if S.is_step(wf) then
    local bok, built = pcall(S.built, wf)
    if not bok then
      io.stderr:write(prog, ": ", tostring(built), "\n")
      return 1
    end
    wf = built
  end
  if not W.is_workflow(wf) then
    io.stderr:write(prog, ": ", opts.script, " returned ", S.describe(wf), " and ran no workflow "
      .. "(it should return a workflow, or call wf:execute)\n")
    return 1
  end
  io.write(format == "dot" and M.dot(wf) or M.mermaid(wf))
  return 0
end

return M
