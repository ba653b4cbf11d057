-- The wait that someone outside the runtime arms through the FFI (the
-- REPL's line input, a child process's end): knhk.runtime.wait(cond, arm).
local knhk = require "knhk"
local R = require "knhk.runtime"

describe("a wait armed from outside", function()
  it("takes what arrived between its look and its arming once, and does not wait again", function()
    -- the REPL's case: cond takes the line it finds; the line arrives while
    -- the wait arms, so the look after arming finds it
    local box, taken, armed = nil, {}, 0
    local got = knhk.run(function()
      local value
      R.wait(function()
        if box == nil then return false end
        value, box = box, nil
        taken[#taken + 1] = value
        return true
      end, function()
        armed = armed + 1
        -- one line, arriving now: nobody will wake the task for it
        if armed == 1 then box = "line 1" end
        return false
      end)
      return value
    end, { workers = 1, clock = "virtual" })
    assert.equal("line 1", got)
    assert.same({ "line 1" }, taken) -- taken once: not lost to a second look
    assert.equal(1, armed) -- and no second request was made
  end)

  it("does not look again once arm says the condition holds", function()
    local looks = 0
    knhk.run(function()
      local ready = false
      R.wait(function()
        looks = looks + 1
        return ready
      end, function()
        ready = true
        return true
      end)
    end, { workers = 1 })
    assert.equal(2, looks) -- the first look, then the one that finds it
  end)

  it("is a checkpoint: a cancelled scope ends it with Cancelled", function()
    local caught = knhk.run(function()
      return knhk.move_on_after(1, function()
        R.wait(function() return false end, function() return false end)
      end).cancelled_caught
    end, { workers = 1, clock = "virtual" })
    assert.is_true(caught)
  end)
end)
