-- Real work under a virtual clock: knhk.exec is awaited in real time, and
-- virtual time stands still while a command runs (README.md, "Time and
-- the clock").
local knhk = require "knhk"

local waiting = require "waiting" -- tasks parked in a wait now

local function virtual(fn)
  return knhk.run(fn, { clock = "virtual", workers = 2 })
end

describe("knhk.exec under a virtual clock", function()
  it("is awaited in real time: no timer fires while the command runs", function()
    local order, after_exec, after_all = virtual(function()
      local ch = knhk.channel(4)
      local after_exec
      knhk.nursery(function(n)
        n:spawn(function()
          knhk.sleep(1) -- every task waits while the command runs: without
          ch:send "slept" -- the command holding the clock, this would fire
        end)
        -- the command's own duration is the subject here, not a synchronisation
        local r = assert(knhk.exec "sleep 0.2; echo done")
        after_exec = knhk.now()
        ch:send(r.stdout)
      end)
      local first = ch:recv()
      local second = ch:recv()
      return { first, second }, after_exec, knhk.now()
    end)
    assert.same({ "done\n", "slept" }, order)
    assert.equal(0, after_exec)
    assert.equal(1, after_all)
  end)

  it("counts exec's timeout in virtual time, which stands still while it runs", function()
    local r, now = virtual(function()
      local r, msg = knhk.exec("sleep 0.2; echo finished", { timeout = 0.01 })
      return r or msg, knhk.now()
    end)
    assert.equal("finished\n", r.stdout)
    assert.equal(0, now)
  end)

  it("stops a command when knhk.clock.advance takes its timeout past", function()
    local r, msg = virtual(function()
      local res
      knhk.nursery(function(n)
        n:spawn(function()
          -- until the root task waits for its command (time stands still:
          -- this task stays runnable), then past the command's 5 s timeout
          while waiting() < 1 do knhk.checkpoint() end
          knhk.clock.advance(10)
        end)
        res = { knhk.exec("sleep 30", { timeout = 5 }) }
      end)
      return res[1], res[2]
    end)
    assert.is_nil(r)
    assert.matches("timed out after 5 s", msg)
  end)
end)
