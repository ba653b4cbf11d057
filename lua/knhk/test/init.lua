-- knhk.test: busted specs of workflows.
--
--   local T = require "knhk.test"
--   it("ships within three days", T.wrap(function()
--     assert.completes_within(72 * 3600, function() ship(order) end)
--   end, { clock = "virtual" }))
--
-- wrap(fn [, opts]) runs fn as the root task of a fresh runtime and turns
-- what went wrong into a test failure: an error (with its traceback), an
-- error group (every member with its traceback), a task the body left
-- running (named, then cancelled). explore(fn, { runs = N }) runs a body
-- under N seeded schedules and names the first seed that fails, with the
-- command that replays it. Requiring the module registers the assertions
-- assert.cancelled, assert.error_group and assert.completes_within with
-- luassert. See README.md, "Testing your workflows".
local knhk = require "knhk"
local check = require "knhk.check"
local errors = require "knhk.errors"
local R = require "knhk.runtime"
local getmetatable = debug.getmetatable -- (why: knhk/check.lua)

local M = {}

local function pack(...) return { n = select("#", ...), ... } end

-- ---------------------------------------------------------------- options

-- KNHK_SEED, if set: the seed every wrapped body runs with (how a failing
-- seed that explore found is replayed). nil when unset.
local function env_seed()
  local s = os.getenv "KNHK_SEED"
  if s == nil or s == "" then return nil end
  local n = tonumber(s)
  if not n or n < 0 or n % 1 ~= 0 or n > 2 ^ 53 then
    error("knhk.test: KNHK_SEED must be a whole number in 0..2^53, got '" .. s .. "'", 0)
  end
  return n
end

-- Checks wrap's and explore's options (argument n of fname).
local function check_opts(opts, n, fname)
  opts = check.opts(opts, n, fname, 3, fname == "explore" and
    { "workers", "seed", "clock", "name", "runs" } or { "workers", "seed", "clock", "name" })
  check.field("whole", opts, "workers", n, fname, 3, 1, 256)
  check.field("whole", opts, "seed", n, fname, 3, 0, 2 ^ 53)
  check.field("string", opts, "clock", n, fname, 3)
  if opts.clock ~= nil and not knhk.clock.KINDS[opts.clock] then -- here, not when the test runs
    check.error(string.format("bad argument #%d to '%s' (clock: \"real\" or \"virtual\" expected, got '%s')",
      n, fname, opts.clock), 3)
  end
  check.field("string", opts, "name", n, fname, 3)
  if opts.seed ~= nil and opts.workers ~= nil and opts.workers ~= 1 then
    check.error(string.format("bad argument #%d to '%s' (seed: a seeded schedule runs on 1 worker, "
      .. "got workers = %d)", n, fname, opts.workers), 3)
  end
  return opts
end

-- ---------------------------------------------------------- describing

local show_table = errors.show -- a table raised as an error: { code = 7, "x" }

-- An error value as a test failure: message and traceback; for a group,
-- every member, numbered, each with its own traceback.
local function describe_error(e, indent)
  indent = indent or ""
  local function lines(text)
    return (text:gsub("\n", "\n" .. indent))
  end
  if errors.is_group(e) then
    local out = { indent .. string.format("an error group of %d errors:", #e.errors) }
    for i, member in ipairs(e.errors) do
      out[#out + 1] = indent .. string.format("[%d] ", i)
        .. describe_error(member, indent .. "    "):gsub("^%s*", "")
    end
    return table.concat(out, "\n")
  end
  if errors.is_task_error(e) then
    if errors.is_group(e.value) then return describe_error(e.value, indent) end
    local msg = tostring(e.message)
    if type(e.value) == "table" and getmetatable(e.value) == nil then
      msg = "an error raised with a table value: " .. show_table(e.value)
    end
    local tb = e.traceback
    return indent .. lines(msg .. ((tb and tb ~= "") and ("\n" .. tb) or ""))
  end
  if errors.is_cancelled(e) then return indent .. "cancelled: " .. tostring(e) end
  if type(e) == "table" and getmetatable(e) == nil then
    return indent .. "an error raised with a table value: " .. show_table(e)
  end
  return indent .. lines(tostring(e))
end
M.describe_error = describe_error

-- One live task (a row of knhk.tasks()), as a failure names it, from the
-- worker `here`: what it is, whose it is, where it runs, and what it does
-- as far as that holds still. A task of another worker runs on while the
-- root looks (it may end a wait and begin another): its state is only what
-- was seen. One of this worker cannot run meanwhile: what it waits for
-- (knhk.tasks() gives it for those only) is still so.
local function describe_task(r, here)
  local head = "task " .. tostring(r.id) .. " (" .. tostring(r.where or "function at ?")
  if r.parent then head = head .. ", spawned by task " .. tostring(r.parent) end
  local parts = { head .. "): " .. tostring(r.kind or "a task") }
  if not r.worker or r.worker < 0 then
    parts[#parts + 1] = "not started yet"
  else
    parts[#parts + 1] = "on worker " .. tostring(r.worker)
    if r.worker ~= here then
      parts[#parts + 1] = "seen " .. tostring(r.state)
    else
      parts[#parts + 1] = r.wait and ("waiting " .. r.wait) or "ready to run"
    end
  end
  return table.concat(parts, ", ")
end

-- ------------------------------------------------------------- the body

-- The tasks still live besides the root: { count =, lines = { ... } },
-- or nil if none. knhk.tasks() lists a task from its spawn, not started
-- until a worker starts it (worker -1), and one whose outcome is out
-- (`ended`) until its worker has retired it. So the root lets the others
-- run (a checkpoint; a bounded number of times) while some have not
-- started: each is then named where it runs. (Not while some are queued:
-- a started task is queued again at each of its checkpoints, and one that
-- computes between them would have the root wait on it for that many
-- slices.) Checkpoints, not sleeps: a virtual clock must not move for this.
local function left_behind(root)
  local rows
  for _ = 1, 100000 do
    rows = knhk.tasks()
    local unstarted = false
    for _, r in ipairs(rows) do
      if r.worker < 0 and not r.ended then
        unstarted = true
        break
      end
    end
    if not unstarted then break end
    knhk.checkpoint()
  end
  local lines, here = {}, knhk.current().worker
  for _, r in ipairs(rows) do
    if r.id ~= root and not r.ended then lines[#lines + 1] = "  " .. describe_task(r, here) end
  end
  if #lines == 0 then return nil end
  return { count = #lines, lines = lines }
end

-- Whether an error is an assertion that failed (luassert's, as busted
-- raises them), as opposed to an error the code did not expect.
local function is_assertion(e)
  if errors.is_task_error(e) then e = e.value end
  local mt = type(e) == "table" and getmetatable(e)
  return type(mt) == "table" and rawget(mt, "__type") == "failure"
end

-- Where a body was written: its function's source and line, or its
-- __call's for a callable object.
local function body_info(fn) return debug.getinfo(check.called_function(fn), "S") end

-- Runs fn(...) as the root task of a fresh runtime. Returns nil when it
-- passed, else the failure, as text, and whether it is an assertion's
-- (or a task left behind) rather than an unexpected error.
local function run_body(fn, opts, seed, ...)
  local info = body_info(fn)
  local name = opts.name or string.format("test body at %s:%d", info.short_src, info.linedefined)
  local leftovers, asserted
  local run_opts = { workers = seed and 1 or opts.workers, seed = seed, clock = opts.clock,
                     name = name }
  local args = pack(...)
  local ok, err = pcall(knhk.run, function()
    local root = knhk.current().id
    -- The body's own scope: cancelling it ends whatever the body left
    -- running, so the runtime can be torn down.
    local _, res = knhk.cancel_scope(function(scope)
      -- capture: the error with the traceback of where it was raised
      local res = pack(xpcall(fn, R.capture, unpack(args, 1, args.n)))
      leftovers = left_behind(root)
      if leftovers then scope:cancel() end
      if not res[1] then asserted = is_assertion(res[2]) end
      return res
    end)
    if res and not res[1] then error(res[2], 0) end
  end, run_opts)
  local out = {}
  if not ok then out[#out + 1] = "the test body failed with " .. describe_error(err) end
  if leftovers then
    out[#out + 1] = string.format("the test body returned with %d task%s not ended "
      .. "(cancelled then; join what a test spawns, or run it in a nursery):\n%s",
      leftovers.count, leftovers.count == 1 and "" or "s", table.concat(leftovers.lines, "\n"))
  end
  if #out == 0 then return nil end
  return table.concat(out, "\n"), (ok or asserted) and true or false
end

-- Raises a test's failure: as an assertion's when busted is running (it
-- reports a failure, not an error), else as an error. The text starts
-- with the body's place, which busted shows as where the test failed.
local function raise(fn, text, assertion)
  local info = body_info(fn)
  text = string.format("%s:%d: %s", info.short_src, info.linedefined, text)
  if assertion then
    local ok, busted = pcall(require, "busted")
    local fail = ok and type(busted) == "table" and busted.fail
    if type(fail) == "function" then fail(text, 0) end
  end
  error(text, 0)
end

-- knhk.test.wrap(fn [, opts]) -> a function for busted's `it`. opts:
-- workers, seed (one worker, a seeded schedule; KNHK_SEED overrides it),
-- clock ("virtual"), name (of the root task).
-- Each body runs in a runtime of its own: not from inside another one
-- (inside knhk-lua, or a knhk.run).
local function outside_run(fname)
  if R.running() then
    check.error("knhk.test." .. fname .. ": its function must be called outside knhk.run (each body "
      .. "runs in a runtime of its own; run the spec with busted under luajit, not knhk-lua)", 3)
  end
end

function M.wrap(fn, opts)
  check.arg("callable", fn, 1, "wrap")
  opts = check_opts(opts, 2, "wrap")
  return function(...)
    outside_run("wrap")
    local seed = env_seed()
    if seed == nil then seed = opts.seed end
    local failure, assertion = run_body(fn, opts, seed, ...)
    if failure then
      if seed then failure = failure .. "\n(seed " .. string.format("%d", seed) .. ")" end
      raise(fn, failure, assertion)
    end
  end
end

-- ------------------------------------------------------------- explore

-- The busted test running now (for the replay command), once explore has
-- been used: a subscription to busted's 'test start'.
local current_test
local subscribed = false
local function follow_busted()
  if subscribed then return end
  subscribed = true
  local ok, busted = pcall(require, "busted")
  if not ok or type(busted) ~= "table" then return end
  local ok2, subscribe = pcall(function() return busted.subscribe end)
  if not ok2 or type(subscribe) ~= "function" then return end
  subscribe({ "test", "start" }, function(element)
    local names = { element.name or element.descriptor }
    local parent = busted.parent(element)
    while parent and (parent.name or parent.descriptor) and parent.descriptor ~= "file" do
      table.insert(names, 1, parent.name or parent.descriptor)
      parent = busted.parent(parent)
    end
    local trace = element.trace
    local file = trace and trace.source and trace.source:match("^@(.*)") or nil
    current_test = { name = table.concat(names, " "), file = file }
    return nil, true
  end)
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local function pattern_quote(s) return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end

-- How busted was started: the interpreter and the script, as the process
-- got them (`luajit /usr/bin/busted`), else plain `busted`.
local function busted_command()
  local a = rawget(_G, "arg")
  if type(a) == "table" and type(a[0]) == "string" and a[0]:match("busted[^/]*$") then
    if type(a[-1]) == "string" then return shell_quote(a[-1]) .. " " .. shell_quote(a[0]) end
    return shell_quote(a[0])
  end
  return "busted"
end

-- The one-line command that replays `seed`: the running busted test
-- alone, with KNHK_SEED set; outside busted, the Lua call.
local function replay_command(seed, fn)
  local s = string.format("%d", seed)
  local t = current_test
  if t and t.file then
    return "KNHK_SEED=" .. s .. " " .. busted_command() .. " " .. shell_quote(t.file)
      .. " --filter=" .. shell_quote("^" .. pattern_quote(t.name) .. "$")
  end
  local info = body_info(fn)
  return string.format("knhk.test.wrap(fn, { seed = %s })() -- fn: the body at %s:%d", s,
    info.short_src, info.linedefined)
end
M.replay_command = replay_command

-- knhk.test.explore(fn [, opts]) -> a function for busted's `it`: runs fn
-- under opts.runs (default 100) seeds from opts.seed (default 1) and fails
-- naming the first seed that fails, with the command that replays it.
-- With KNHK_SEED set, runs that seed only. opts: runs, seed, clock, name.
function M.explore(fn, opts)
  check.arg("callable", fn, 1, "explore")
  opts = check_opts(opts, 2, "explore")
  check.field("whole", opts, "runs", 2, "explore", 2, 1)
  if opts.workers ~= nil and opts.workers ~= 1 then
    check.error("bad argument #2 to 'explore' (workers: seeded schedules run on 1 worker, got "
      .. opts.workers .. ")", 2)
  end
  follow_busted()
  return function(...)
    outside_run("explore")
    local replay = env_seed()
    local first = replay or opts.seed or 1
    local runs = replay and 1 or opts.runs or 100
    for i = 0, runs - 1 do
      local seed = first + i
      local failure, assertion = run_body(fn, opts, seed, ...)
      if failure then
        raise(fn, string.format("knhk.test.explore: seed %d failed (run %d of %d)\n%s\nreplay: %s",
          seed, i + 1, runs, failure, replay_command(seed, fn)), assertion)
      end
    end
  end
end

-- --------------------------------------------------------- virtual time

-- knhk.test.advance(seconds): moves the virtual clock forward by hand
-- (knhk.clock.advance), firing the timers that become due.
function M.advance(seconds)
  check.arg("number", seconds, 1, "advance")
  return knhk.clock.advance(seconds)
end

-- ------------------------------------------------------------- waiting

-- knhk.test.until_waiting(h, ...) (task): returns once every task given
-- is waiting (blocked in a wait: a channel, a lock, a sleep, a join...),
-- letting the others run meanwhile. For a spec that must act once a task
-- has blocked, without sleeping for a while and hoping. Raises if one of
-- them ends instead.
function M.until_waiting(...)
  local hs = pack(...)
  for i = 1, hs.n do
    if not knhk.is_task(hs[i]) then check.fail(i, "until_waiting", "task", hs[i]) end
  end
  while true do
    local state = {}
    for _, r in ipairs(knhk.tasks()) do state[r.id] = r.state end
    local all = true
    for i = 1, hs.n do
      local h = hs[i]
      if h:done() then
        check.error("knhk.test.until_waiting: task " .. h:id() .. " ended instead of waiting", 2)
      end
      if state[h:id()] ~= "waiting" then all = false end
    end
    if all then return end
    knhk.checkpoint()
  end
end

-- ---------------------------------------------------------- assertions

require("knhk.test.assertions").register(describe_error)

-- A failed assertion in a portable task, reported by busted as a Failure
-- too (knhk/test/luassert.lua says how): busted's failure metatables travel
-- as classes, and luassert as the module that raises them on other workers.
local function carry_failures()
  local ok, busted = pcall(require, "busted")
  local fail = ok and type(busted) == "table" and busted.fail
  local luassert = package.loaded["luassert"]
  if type(fail) ~= "function" or type(luassert) ~= "table" then return end
  local _, with_string = pcall(fail, "x")
  local _, without = pcall(fail, {})
  if type(getmetatable(with_string)) ~= "table" or type(getmetatable(without)) ~= "table" then return end
  local codec = require "knhk.codec"
  codec.register_class("knhk.test.failure", getmetatable(with_string))
  codec.register_class("knhk.test.failure_nostring", getmetatable(without))
  package.loaded["knhk.test.luassert"] = luassert
  codec.register_module("knhk.test.luassert", luassert)
end
carry_failures()

return M
