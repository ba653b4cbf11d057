-- document-review.lua: a document waits for its reviewer's verdict or for
-- a deadline, whichever comes first (deferred choice with a timeout).
--   knhk-lua examples/document-review.lua            the reviewer answers
--   knhk-lua examples/document-review.lua silent     nobody answers in time
local P = require "knhk.patterns"

-- the argument, checked before anything runs: a bad one is refused with
-- the usage line (exit 2), rather than taken for the default
local args = arg or {}
if (args[1] ~= nil and args[1] ~= "silent") or args[2] ~= nil then
  local me = args[0] or "document-review.lua"
  io.stderr:write(me:match("[^/]*$"), ": ", args[2] ~= nil and "too many arguments"
    or ("unknown argument '" .. args[1] .. "'"), "\nusage: knhk-lua ", me, " [silent]\n")
  os.exit(2)
end
local silent = args[1] == "silent"
local verdict = P.persistent_trigger("verdict")

local wf = P.workflow(P.sequence{
  P.task("submit", function(v) return { title = v.title, version = 1 } end),
  P.deferred_choice{
    { on = verdict, into = "verdict",
      run = P.task("record verdict", function(v) return { outcome = "reviewed: " .. v.verdict } end) },
    { on = P.timer(silent and 0.05 or 30),
      run = P.task("escalate", function() return { outcome = "no review in time: escalated" } end) },
  },
  P.simple_merge(),
  P.task("archive", function(v) return { archived = v.title .. " v" .. v.version } end),
})

-- the reviewer, outside the case: its answer comes in through ctx.signals
local inbox = knhk.channel(1)
if not silent then knhk.spawn(function(ch) ch:send("approved") end, inbox) end

local result = wf:execute{ vars = { title = "design.md" }, signals = { verdict = inbox } }
if result.status ~= "completed" then
  error(string.format("the case %s at '%s': %s", result.status, tostring(result.step),
    tostring(result.error)), 0)
end
print(result.vars.outcome)
print("archived " .. result.vars.archived)
