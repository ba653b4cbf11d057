-- knhk.patterns.termination: how a case ends (11, 43).
--
-- 11 Implicit Termination is how every case ends: when nothing is left to
-- do (no step runs and no token can move), wf:execute returns, with the
-- status "completed". No end step is needed; branches may end on their
-- own. A case that stops with tokens left waiting at a join that can no
-- longer fire is deadlocked, which the pattern excludes: its status is
-- "deadlocked", and result.unfinished lists those joins.
--
--   P.terminate()   43  reaching it ends the case at once: everything still
--                       running is cancelled; the case ends "completed",
--                       with result.ended_by naming this step
local S = require "knhk.patterns.step"
local engine = require "knhk.patterns.engine"

local M = {}

S.define("terminate", {
  role = "node",
  compile = function(ctx, step, src)
    local node = ctx:node(step, {
      label = "end", shape = "stop",
      action = function(frame, node)
        local case = frame.case
        case.end_step = node.name
        engine.stop(case)
      end,
    })
    ctx:link(src, node.id)
    return node.id
  end,
})

-- P.terminate([{ name = }]): 43.
function M.terminate(t)
  return S.new("terminate", 43, { name = S.name_opt(t, "terminate", 1) })
end

return M
