-- knhk.steps: workflow steps built on nurseries: map, race, select.
local check = require "knhk.check"
local R = require "knhk.runtime"
local N = require "knhk.nursery"
local T = require "knhk.task"
local sync = require "knhk.sync"
local errors = require "knhk.errors"

local select, pairs, ipairs, type, tostring, pcall, unpack = select, pairs, ipairs, type, tostring, pcall, unpack

local M = {}

local function in_task(where)
  if not require("knhk.core").current() then
    R.raise(where .. ": must be called inside a knhk task (inside knhk.run)")
  end
end

-- What a race (or a map) raises when branches failed: a failing branch has finished,
-- so the first failure wins, and is raised as it would be alone (its
-- message, traceback and value). Branches that failed at the same time
-- (before the cancellation reached them) lost to it: their errors come in
-- its .also, in the order they happened, and its message says so, rather
-- than the ErrorGroup of the race's own nursery ("2 errors in a nursery").
-- Anything else the nursery raises (a Cancelled, a refusal) goes on as it
-- is, and so does a refusal of a later branch's spawn that came with a
-- failure of one already started: the race never began as written.
local function first_line(e) return (errors.message(e):match("^[^\n]*")) end
local function first_failure(fname, what, whats, e)
  if not errors.is_group(e) then return e end
  for _, x in ipairs(e.errors) do
    if check.is_refusal(x) then return x end
  end
  local first, also, lost = e.errors[1], {}, {}
  for i = 2, #e.errors do
    also[i - 1] = e.errors[i]
    lost[i - 1] = first_line(e.errors[i])
  end
  local note = #also == 1
    and ("another " .. what .. " failed at the same time; its error is in .also: ")
    or (#also .. " other " .. whats .. " failed at the same time; their errors are in .also: ")
  local message = errors.message(first) .. "\n(" .. fname .. ": " .. note .. table.concat(lost, "; ") .. ")"
  local won = errors.is_task_error(first) and errors.task_error(message, first.traceback, first.value)
    or errors.task_error(message, nil, first)
  won.also = also
  return won
end

-- Runs a race's nursery: its results, or its failure in race's words
-- (`what`, `whats` race: "branch", "branches", or select's cases).
local function race_nursery(fname, what, whats, body)
  local res = R.pack(pcall(N.nursery, body))
  if not res[1] then error(first_failure(fname, what, whats, res[2]), 0) end
  return unpack(res, 2, res.n)
end

-- knhk.map(list, fn [, opts]) -> { fn(list[1]), ... } in order, computed by
-- portable tasks on every core, at most opts.limit at once. The first
-- error cancels the rest and is raised (items that failed at the same time
-- are in its .also, as a race's). list.n, if set, is its length.
function M.map(list, fn, opts)
  check.arg("table", list, 1, "map")
  check.arg("callable", fn, 2, "map")
  opts = check.opts(opts, 3, "map", 2, { "limit" })
  local limit = check.field("whole", opts, "limit", 3, "map", 2, 1)
  -- a list with holes says its length in n, as table.pack's does; its
  -- results say theirs the same way (a nil result is a hole too)
  local n = check.field("whole", list, "n", 1, "map", 2, 0)
  in_task("knhk.map")
  local results = { n = n }
  n = n or #list
  -- what cannot travel is named as the caller knows it, in spawn's words:
  -- "map: the task function is a userdata", "map: item 3 of the list is a
  -- userdata" (raised at the caller's line: the nursery lets a refusal
  -- through as it was raised)
  local item
  local function places(k) -- fn, list[item]
    if k == 1 then return "the task function" end
    return "item " .. item .. " of the list"
  end
  local function limited_places(k) -- a wrapper, then fn, list[item], the semaphore
    return k == 1 and "the task function" or places(k - 1)
  end
  local spawn_into_as = T.spawn_into_as
  race_nursery("knhk.map", "item", "items", function(nur)
    local sem = limit and sync.semaphore(limit)
    local hs = {}
    for i = 1, n do
      item = i
      if sem then
        sem:acquire()
        hs[i] = spawn_into_as(nur, "map", limited_places, function(f, v, s)
          local ok, r = pcall(f, v)
          s:release()
          if not ok then error(r, 0) end
          return r
        end, fn, list[i], sem)
      else
        hs[i] = spawn_into_as(nur, "map", places, fn, list[i])
      end
    end
    for i = 1, n do results[i] = hs[i]:join() end
  end)
  return results
end

-- knhk.race(f1, f2, ...) -> the results of the first to finish; the others
-- are cancelled and waited for before it returns. (A failure: first_failure.)
function M.race(...)
  local n = select("#", ...)
  if n == 0 then
    R.raise("bad argument #1 to 'race' (function or callable object expected, got no value)")
  end
  local fns = { ... }
  for i = 1, n do check.arg("callable", fns[i], i, "race") end
  in_task("knhk.race")
  -- what cannot travel is named as the caller knows it, in spawn's words:
  -- "race: task function #2 is a userdata"
  local i
  local function places() return "task function #" .. i end
  return race_nursery("knhk.race", "branch", "branches", function(nur)
    for k = 1, n do
      i = k
      T.spawn_into_as(nur, "race", places, fns[k])
    end
    return nur:wait_any()
  end)
end

-- knhk.select{ name = fn, ... } -> name, results of the first to finish;
-- the others are cancelled and waited for. (A failure: as race's.)
function M.select(cases)
  check.arg("table", cases, 1, "select")
  local names, fns = {}, {}
  for k, f in pairs(cases) do
    if not check.callable(f) then
      R.raise("bad argument #1 to 'select' (case '" .. tostring(k) .. "' is a " .. type(f)
        .. ", expected a function or callable object)")
    end
    names[#names + 1], fns[#fns + 1] = k, f
  end
  if #fns == 0 then R.raise("bad argument #1 to 'select' (no cases)") end
  in_task("knhk.select")
  -- what cannot travel is named by its case, in spawn's words: "select:
  -- the task function of case 'b' is a userdata"
  local case
  local function places(k) -- a wrapper, then the case's function and its name
    return k == 1 and "the task function" or k == 2 and ("the task function of case '" .. tostring(case) .. "'")
      or ("the name of case '" .. tostring(case) .. "'")
  end
  return race_nursery("knhk.select", "case", "cases", function(nur)
    for i, f in ipairs(fns) do
      case = names[i]
      T.spawn_into_as(nur, "select", places, function(g, nm) return nm, g() end, f, names[i])
    end
    return nur:wait_any()
  end)
end

return M
