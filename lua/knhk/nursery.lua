-- knhk.nursery: structured concurrency. knhk.nursery(fn) runs fn(n) in a
-- scope bound to the nursery; n:spawn starts children; it returns once
-- every child has ended. The first failing child cancels the others and
-- the body (unless it supervises); then the errors are raised: one as is,
-- several as an ErrorGroup.
--
-- A nursery handle travels to tasks: any task holding one can spawn into
-- it (and cancel it) while it is open, which it is until its body has
-- returned and no child is live; only the task that opened it waits on it.
local core = require "knhk.core"
local codec = require "knhk.codec"
local check = require "knhk.check"
local errors = require "knhk.errors"
local R = require "knhk.runtime"
local T = require "knhk.task"
local getmetatable = debug.getmetatable -- (why: knhk/check.lua)

local select, unpack, xpcall = select, unpack, xpcall
local await, pack = R.await, R.pack

local M = {}

local mts = core.metatables()
local Nursery = check.no_missing_methods({}, "nursery")
M.Nursery = Nursery
mts.nursery.__index = Nursery
check.name_kind(mts.nursery, "nursery")
local nursery_mt = mts.nursery
local function check_self(n, fname)
  if getmetatable(n) ~= nursery_mt then check.bad_self(fname, "nursery", n) end
end
mts.nursery.__tostring = function(n)
  return "knhk.nursery" .. (core.nursery_closed(n) and " (closed)" or "")
end
codec.register_handle("nursery", mts.nursery, function(h)
  local live, closed = pcall(core.nursery_closed, h)
  if not live then error("a nursery of a knhk.run that has ended", 0) end
  if closed then error("a nursery that has closed (it cannot be given to a task)", 0) end
  return select(2, core.export(h))
end, function(n, copy) return core.import(7, n, copy) end)

function M.is_nursery(v) return getmetatable(v) == mts.nursery end

-- What the task that opened a nursery keeps of it (in its VM): who it is,
-- and its children's handles by id, weakly (join_next gives back the
-- handle the spawner got while the program still holds it). The children
-- themselves, in spawn order, are kept by the nursery in C (wait_all): a
-- handle held here for each would cost a userdata, a slot and a finalizer
-- per child for as long as the nursery lives.
local owned = setmetatable({}, { __mode = "k" })
local weak_values = { __mode = "v" }

local function owner_state(n, where)
  local st = owned[n]
  if st == nil or st.owner ~= core.current() then
    R.raise(where .. ": only the task that opened the nursery can wait on it")
  end
  return st
end

local spawn_into = T.spawn_into

local task_id = core.task_id

local function keep(self, h)
  local st = owned[self]
  if st then st.by_id[task_id(h)] = h end
  return h
end

-- n:spawn(fn, ...) -> handle
function Nursery:spawn(fn, ...)
  check_self(self, "spawn")
  return keep(self, spawn_into(self, fn, ...))
end

-- n:spawn_local(fn, ...) -> handle
function Nursery:spawn_local(fn, ...)
  check_self(self, "spawn_local")
  return keep(self, core.nursery_spawn_local(self, fn, ...))
end

-- A child taken out of the ended list: the handle its spawner got, when
-- the owner spawned it and it is still held (else the one the C side made).
local function ended(st, h)
  if h == nil then return nil end
  return st.by_id[task_id(h)] or h
end

-- n:cancel(): ends the children (not an error)
Nursery.cancel = check.self_method({ [nursery_mt] = true }, "nursery", "cancel", core.nursery_cancel)

-- n:join_next() -> handle of the next child to end (completion order), or
-- nil when none is live and all were taken.
function Nursery:join_next()
  check_self(self, "join_next")
  if core.nursery_closed(self) then R.raise("join_next: the nursery is closed") end
  local st = owner_state(self, "join_next")
  local _, h = await(core.next_ended_try, self)
  return ended(st, h)
end

-- n:wait_any() -> the results of the first child to complete; the others
-- are cancelled, and their cleanup has run before it returns. If every
-- child failed (or was cancelled), nothing: the nursery raises the failures.
function Nursery:wait_any()
  check_self(self, "wait_any")
  if core.nursery_closed(self) then R.raise("wait_any: the nursery is closed") end
  owner_state(self, "wait_any")
  while true do
    local _, h = await(core.next_ended_try, self)
    if h == nil then
      -- every child ended without completing: when some failed, the
      -- nursery raises their errors as it closes, with nothing of ours
      if core.nursery_failed(self) or core.nursery_cancelled(self) then return end
      R.raise("wait_any: no child to wait for (none was spawned, or every one was already taken)")
    end
    local st, outcome = core.outcome(h)
    if st == R.DONE or outcome == R.OK then
      core.nursery_cancel(self)
      await(core.close_try, self, false) -- the others end (and clean up) first
      return R.results(h) -- not a join: the nursery (our scope) is cancelled now
    end
    -- a failure cancels the rest (unless it supervises): keep waiting
  end
end

-- n:wait_all() -> { {results...}, ... } in spawn order, for the children
-- spawned so far. Once all of them have ended it raises the first error,
-- in spawn order: a supervising nursery's other children run to their
-- end, rather than being cancelled by the body's error while wait_all
-- still waited. Cancelled (a checkpoint) raises at once.
function Nursery:wait_all()
  check_self(self, "wait_all")
  if core.nursery_closed(self) then R.raise("wait_all: the nursery is closed") end
  owner_state(self, "wait_all")
  local out, first_err = {}, nil
  local function keep(i, ok, ...)
    if ok then
      out[i] = { ... }
    elseif first_err == nil then
      first_err = (...)
    end
    -- this task's own cancellation (not a child's): it stops waiting
    if not ok and getmetatable((...)) == errors.Cancelled then error((...), 0) end
  end
  for i = 1, core.nursery_children(self) do
    local h = core.nursery_child(self, i)
    keep(i, pcall(h.join, h))
  end
  if first_err ~= nil then error(first_err, 0) end
  return out
end

-- What the body raised, as the nursery raises it: a refusal of a
-- caller's mistake (check.is_refusal) as it was raised, at the caller's
-- line, as it would be outside a nursery; any other error with the
-- traceback of where it was raised (R.capture).
local function capture_body(e)
  if check.is_refusal(e) then return e end
  return R.capture(e)
end

-- knhk.nursery(fn [, opts]) -> fn's results
function M.nursery(fn, opts)
  check.arg("callable", fn, 1, "nursery")
  opts = check.opts(opts, 2, "nursery", 2, { "supervise" })
  check.field("boolean", opts, "supervise", 2, "nursery")
  if core.now() == nil then R.raise("knhk.nursery: must be called inside a knhk task (inside knhk.run)") end
  local n, prev = core.nursery_open(opts.supervise and true or false)
  owned[n] = { owner = core.current(), by_id = setmetatable({}, weak_values) }
  local res = pack(xpcall(fn, capture_body, n))
  core.nursery_body_done(n, prev)
  local ok, err = res[1], res[2]
  local failed = not ok and not errors.is_signal(err)
  -- the errors in the order they happened: the children's failures before
  -- the body's error (one may be its cause), the body's, then the rest
  local errs = failed and R.failures_of(n) or {}
  if failed then core.nursery_fail(n) end -- cancels the children
  local span = core.tel_wait_begin(n)
  await(core.close_try, n, true)
  core.tel_wait_end(span)
  if failed then errs[#errs + 1] = err end
  for _, e in ipairs(R.failures_of(n)) do errs[#errs + 1] = e end
  if #errs > 0 then error(errors.group(errs), 0) end
  -- A Cancelled from the body is this nursery's own (n:cancel, a failing
  -- child) unless the scope around it is cancelled too: then it unwinds on.
  if not ok and core.cancelled() then error(err, 0) end
  if not ok then return end -- caught here, as a cancel scope does: no results
  -- Its end is a checkpoint, as Trio's: the scope around it cancelled while
  -- the children ended (their end was its cause) unwinds on from here, so
  -- the code after the nursery does not run.
  local reason = core.cancelled()
  if reason then R.raise_cancelled(reason) end
  return unpack(res, 2, res.n)
end

return M
