-- Channels, semaphores, locks, events: across workers, cancellable.
local knhk = require "knhk"
local T = require "knhk.test"

local function run(fn, workers) return knhk.run(fn, { workers = workers or 2 }) end

-- For the cancellation specs: joins the receivers (each returns the values
-- it received) and adds a line to `bad` for each value 1..#sent that was
-- not received exactly once if its send returned (sent[i]), never if not.
local function not_received_once(receivers, sent, round, bad)
  local seen = {}
  for k = 1, #receivers do
    for _, v in ipairs(receivers[k]:join()) do seen[v] = (seen[v] or 0) + 1 end
  end
  for i = 1, #sent do
    if (seen[i] or 0) ~= (sent[i] and 1 or 0) then
      bad[#bad + 1] = string.format("round %d: value %d sent %s, received %d times", round, i,
        tostring(sent[i]), seen[i] or 0)
    end
  end
end

describe("knhk.channel", function()
  it("carries values between tasks, in order, by snapshot", function()
    local got = run(function()
      local ch = knhk.channel(4)
      local t = { 1, { 2 } }
      knhk.spawn(function(c, v) c:send(v); c:send("two"); c:close() end, ch, t)
      local out = {}
      for v in ch:values() do out[#out + 1] = v end
      return out
    end)
    assert.same({ { 1, { 2 } }, "two" }, got)
  end)

  it("recv on a closed, drained channel returns nil, false", function()
    run(function()
      local ch = knhk.channel()
      ch:send(1)
      ch:close()
      assert.same({ 1, true }, { ch:recv() })
      assert.same({ nil, false }, { ch:recv() })
      assert.is_true(ch:is_closed())
    end)
  end)

  it("send on a closed channel raises", function()
    run(function()
      local ch = knhk.channel()
      ch:close()
      assert.has_error(function() ch:send(1) end, "send: the channel is closed")
    end)
  end)

  it("a full channel makes the sender wait (backpressure)", function()
    local order = run(function()
      local ch, log = knhk.channel(1), {}
      knhk.nursery(function(n)
        local sender = n:spawn_local(function()
          for i = 1, 3 do ch:send(i); log[#log + 1] = "sent" .. i end
          ch:close()
        end)
        n:spawn_local(function()
          T.until_waiting(sender) -- blocked: the channel is full
          for v in ch:values() do log[#log + 1] = "got" .. v end
        end)
      end)
      return log
    end, 1)
    assert.equal("sent1", order[1])
    assert.equal("got1", order[2])
  end)

  it("capacity 0 is a rendezvous: send returns once received", function()
    local log = run(function()
      local ch, log = knhk.channel(0), {}
      knhk.nursery(function(n)
        local sender = n:spawn_local(function() ch:send("x"); log[#log + 1] = "send returned" end)
        n:spawn_local(function()
          T.until_waiting(sender) -- blocked until someone receives
          log[#log + 1] = "receiving"
          ch:recv()
        end)
      end)
      return log
    end, 1)
    assert.same({ "receiving", "send returned" }, log)
  end)

  it("a waiting recv is cancellable", function()
    run(function()
      local ch = knhk.channel()
      local scope = knhk.move_on_after(0.01, function() ch:recv() end)
      assert.is_true(scope.cancelled_caught)
    end)
  end)

  it("loses and duplicates nothing under stress (1M messages, 4 producers, 4 consumers)", function()
    local P, C, N = 4, 4, 250000
    local total, count = run(function()
      local ch = knhk.channel(1024)
      local sum, k = 0, 0
      knhk.nursery(function(outer)
        local consumers = {}
        for c = 1, C do
          consumers[c] = outer:spawn(function(cc)
            local s, n = 0, 0
            for v in cc:values() do s, n = s + v, n + 1 end
            return s, n
          end, ch)
        end
        knhk.nursery(function(inner)
          for p = 1, P do
            inner:spawn(function(c, base, n) for i = 1, n do c:send(base + i) end end,
              ch, (p - 1) * N, N)
          end
        end)
        ch:close() -- every producer is done
        for _, h in ipairs(consumers) do
          local s, n = h:join()
          sum, k = sum + s, k + n
        end
      end)
      return sum, k
    end, 2)
    assert.equal(P * N, count)
    assert.equal(P * N * (P * N + 1) / 2, total)
  end)

  it("refuses bad capacities and unsendable values", function()
    run(function()
      assert.has_error(function() knhk.channel(-1) end,
        "bad argument #1 to 'channel' (whole number in 0..16777216 expected, got -1)")
      -- a capacity past the largest is refused, not taken modulo 2^32 (2^32
      -- would have been a rendezvous, where a lone send waits for ever)
      for _, cap in ipairs { 2 ^ 24 + 1, 2 ^ 32, 2 ^ 32 + 3, 2 ^ 40, math.huge } do
        local ok, err = pcall(knhk.channel, cap)
        assert.is_false(ok)
        assert.matches("bad argument #1 to 'channel' (whole number in 0..16777216 expected", err, 1, true)
      end
      assert.equal(2 ^ 24, knhk.channel(2 ^ 24):capacity())
      local ch = knhk.channel()
      assert.has_error(function() ch:send(io.stdout) end, "send: the value sent is a userdata")
    end)
  end)
end)

describe("knhk.channel, closing and cancelling", function()
  local function on_one_and_many(name, fn)
    it(name .. " (1 worker)", function() run(fn, 1) end)
    it(name .. " (4 workers)", function() run(fn, 4) end)
  end

  on_one_and_many("closing a rendezvous channel releases a blocked sender with the closed error", function()
    local ch = knhk.channel(0)
    local started = knhk.event()
    local h = knhk.spawn(function(c, ev)
      ev:set()
      local ok, err = pcall(c.send, c, "never received")
      return ok, tostring(err)
    end, ch, started)
    started:wait()
    T.until_waiting(h) -- blocked in send
    ch:close()
    local ok, err = h:join()
    assert.is_false(ok)
    assert.matches("send: the channel is closed", err, 1, true)
    assert.same({ nil, false }, { ch:recv() }) -- and the value was not left behind
  end)

  on_one_and_many("closing releases every blocked sender and receiver", function()
    local full, empty = knhk.channel(1), knhk.channel(4)
    full:send("fills it")
    local hs = {}
    knhk.nursery(function(n)
      for i = 1, 3 do
        hs[#hs + 1] = n:spawn(function(c) return pcall(c.send, c, i) end, full)
        hs[#hs + 1] = n:spawn(function(c) return c:recv() end, empty)
      end
      T.until_waiting(unpack(hs)) -- every one of them blocked
      full:close()
      empty:close()
    end)
    for i = 1, #hs, 2 do
      assert.is_false((hs[i]:join()))
      assert.same({ nil, false }, { hs[i + 1]:join() })
    end
  end)

  on_one_and_many("a rendezvous send that was cancelled did not happen", function()
    local ch = knhk.channel(0)
    local scope = knhk.move_on_after(0.01, function() ch:send("withdrawn") end)
    assert.is_true(scope.cancelled_caught)
    -- a receiver that comes later gets the next value sent, not the withdrawn one
    knhk.nursery(function(n)
      n:spawn(function(c) c:send("kept") end, ch)
      assert.equal("kept", ch:recv())
    end)
    ch:close()
    assert.same({ nil, false }, { ch:recv() })
  end)

  on_one_and_many("#ch is the number of values waiting", function()
    local ch = knhk.channel(8)
    assert.equal(0, #ch)
    ch:send(1)
    ch:send({ 2 })
    assert.equal(2, #ch)
    ch:recv()
    assert.equal(1, #ch)
  end)
end)

describe("a rendezvous channel under cancellation", function()
  -- A wait woken by its deadline could be handed a value at that moment:
  -- the receiver dropped it (the sender's send had returned), or the
  -- sender raised Cancelled for a value that was received: in 6 runs of
  -- this spec in 10 before (500 rounds, 2 workers).
  it("delivers every send that returned exactly once, and no send that raised", function()
    local bad = run(function()
      local bad = {}
      for round = 1, 500 do
        local ch = knhk.channel(0)
        knhk.nursery(function(n)
          local rs = {}
          for r = 1, 3 do
            rs[r] = n:spawn(function(ch, d)
              local vals = {}
              while true do
                local scope, v, ok = knhk.move_on_after(d, function() return ch:recv() end)
                if not scope.cancelled_caught then
                  if ok == false then return vals end
                  vals[#vals + 1] = v
                end
              end
            end, ch, 0.00002 * r)
          end
          local sent = {}
          for i = 1, 200 do
            local scope = knhk.move_on_after(0.00003, function() ch:send(i) end)
            sent[i] = not scope.cancelled_caught
          end
          ch:close()
          not_received_once(rs, sent, round, bad)
        end)
      end
      return bad
    end)
    assert.same({}, bad)
  end)
end)

describe("knhk.recv_any", function()
  local here = debug.getinfo(1, "S").short_src

  -- knhk.select over functions that recv lost 24 to 46 values of these
  -- 100 (2 workers): the losing branch's recv completed before it was
  -- cancelled. recv_any takes one value per call, from one channel.
  it("takes each value from several channels exactly once", function()
    local bad = run(function()
      local bad = {}
      for round = 1, 100 do
        local a, b = knhk.channel(100), knhk.channel(100)
        for i = 1, 50 do a:send("a" .. i); b:send("b" .. i) end
        local seen, got = {}, 0
        for _ = 1, 50 do
          local i, v = knhk.recv_any(a, b)
          if seen[v] or v:sub(1, 1) ~= (i == 1 and "a" or "b") then
            bad[#bad + 1] = string.format("round %d: %s from channel %d", round, v, i)
          end
          seen[v], got = true, got + 1
        end
        if got + #a + #b ~= 100 then
          bad[#bad + 1] = string.format("round %d: %d received, %d left of 100", round, got, #a + #b)
        end
      end
      return bad
    end, 2)
    assert.same({}, bad)
  end)

  it("takes a list too, and returns the index of the channel the value came from", function()
    run(function()
      local a, b, c = knhk.channel(1), knhk.channel(1), knhk.channel(1)
      b:send({ "a table", 2 }) -- (a value that travels by snapshot)
      assert.same({ 2, { "a table", 2 } }, { knhk.recv_any{ a, b, c } })
      c:send(nil)
      assert.same({ 3, nil }, { knhk.recv_any(a, b, c) }) -- a nil value, told apart by its index
      a:send(1)
      -- a channel given twice: either of its indexes answers
      local i, v = knhk.recv_any{ a, a }
      assert.equal(1, v)
      assert.truthy(i == 1 or i == 2, "index " .. tostring(i))
    end)
  end)

  it("mixes rendezvous and buffered channels, with many senders and receivers", function()
    local seen, total = run(function()
      local chans = { knhk.channel(0), knhk.channel(4), knhk.channel(0), knhk.channel(1) }
      local seen, total = {}, 0
      knhk.nursery(function(n)
        for c = 1, #chans do
          n:spawn(function(ch, c)
            for i = 1, 500 do ch:send(c * 10000 + i) end
            ch:close()
          end, chans[c], c)
        end
        local rs = {}
        for r = 1, 3 do
          rs[r] = n:spawn(function(list)
            local got = {}
            while true do
              local i, v = knhk.recv_any(list)
              if not i then return got end
              assert(math.floor(v / 10000) == i, "a value from the wrong channel")
              got[#got + 1] = v
            end
          end, chans)
        end
        for r = 1, 3 do
          for _, v in ipairs(rs[r]:join()) do
            seen[v] = (seen[v] or 0) + 1
            total = total + 1
          end
        end
      end)
      return seen, total
    end, 2)
    assert.equal(2000, total)
    for c = 1, 4 do
      for i = 1, 500 do assert.equal(1, seen[c * 10000 + i], "value " .. (c * 10000 + i)) end
    end
  end)

  it("passes over closed, drained channels, and returns nil once all are", function()
    run(function()
      local a, b, r = knhk.channel(4), knhk.channel(4), knhk.channel(0)
      a:send("left in a")
      a:close()
      r:close()
      b:send("b")
      local got = {}
      for _ = 1, 2 do got[select(2, knhk.recv_any(a, b, r))] = true end
      assert.same({ ["left in a"] = true, b = true }, got)
      b:close()
      assert.same({}, { knhk.recv_any(a, b, r) })
      -- and a wait ends when the last one open closes
      local c = knhk.channel(0)
      local h = knhk.spawn(function(x, y) return knhk.recv_any(x, y) end, a, c)
      knhk.sleep(0.005)
      c:close()
      assert.is_nil(h:join())
    end)
  end)

  it("is a checkpoint: a cancelled scope raises Cancelled and takes nothing", function()
    run(function()
      local a = knhk.channel(1)
      a:send("kept")
      local scope = knhk.cancel_scope(function(s)
        s:cancel()
        knhk.recv_any(a)
      end)
      assert.is_true(scope.cancelled_caught)
      assert.equal(1, #a)
      local waited = knhk.move_on_after(0.005, function() knhk.recv_any(knhk.channel(0), knhk.channel()) end)
      assert.is_true(waited.cancelled_caught)
      assert.equal("kept", a:recv())
    end)
  end)

  -- Receivers on short deadlines over a rendezvous and a buffered channel,
  -- senders on deadlines too: every send that returned is received exactly
  -- once or is left in its channel, and no send that raised is received
  -- (a hand-off that completed as its receiver's deadline fired is kept).
  it("loses nothing to cancellation", function()
    local bad = run(function()
      local bad = {}
      for round = 1, 200 do
        local r, b = knhk.channel(0), knhk.channel(2)
        knhk.nursery(function(n)
          local rs = {}
          for k = 1, 3 do
            rs[k] = n:spawn(function(r, b, d)
              local vals = {}
              while true do
                local scope, i, v = knhk.move_on_after(d, function() return knhk.recv_any(r, b) end)
                if not scope.cancelled_caught then
                  if i == nil then return vals end
                  vals[#vals + 1] = v
                end
              end
            end, r, b, 0.00002 * k)
          end
          local sent = {}
          for i = 1, 100 do
            local ch = i % 2 == 0 and r or b
            local scope = knhk.move_on_after(0.00003, function() ch:send(i) end)
            sent[i] = not scope.cancelled_caught
          end
          r:close()
          b:close()
          not_received_once(rs, sent, round, bad)
        end)
      end
      return bad
    end, 2)
    assert.same({}, bad)
  end)

  it("is fair: with both channels always full, each gives its share", function()
    local wins = run(function()
      local a, b = knhk.channel(8), knhk.channel(8)
      for i = 1, 8 do a:send(i); b:send(i) end
      local wins = { 0, 0 }
      for _ = 1, 2000 do
        local i, v = knhk.recv_any(a, b)
        wins[i] = wins[i] + 1;
        (i == 1 and a or b):send(v) -- full again
      end
      return wins
    end, 1)
    assert.is_true(wins[1] > 800 and wins[2] > 800, string.format("%d to %d", wins[1], wins[2]))
  end)

  it("refuses what is not a channel, at the caller's line, before waiting", function()
    run(function()
      local ch, line = knhk.channel(), nil
      local function at() line = debug.getinfo(2, "l").currentline end
      local cases = {
        { "bad argument #2 to 'recv_any' (channel expected, got number)",
          function() at(); knhk.recv_any(ch, 3) end },
        { "bad argument #1 to 'recv_any' (channel expected, got table)",
          function() at(); knhk.recv_any({}, ch) end },
        { "bad argument #1 to 'recv_any' (channel expected at [2], got string)",
          function() at(); knhk.recv_any{ ch, "x" } end },
        { "bad argument #1 to 'recv_any' (channel expected, got no value)",
          function() at(); knhk.recv_any() end },
        { "bad argument #1 to 'recv_any' (channel expected, got an empty list)",
          function() at(); knhk.recv_any{} end },
        { "bad argument #1 to 'recv_any' (channel expected, got semaphore)",
          function() at(); knhk.recv_any(knhk.semaphore(1)) end },
      }
      for _, case in ipairs(cases) do
        local ok, err = pcall(case[2])
        assert.is_false(ok)
        assert.equal(here .. ":" .. line .. ": " .. case[1], err)
      end
    end)
  end)

  it("refuses to run outside a task, as recv does", function()
    local ch = knhk.channel(1)
    local _, recv_err = pcall(ch.recv, ch)
    local _, any_err = pcall(knhk.recv_any, ch)
    local function message(e) return (e:gsub("^[^:]*:%d+: ", "")) end
    assert.equal("recv: must be called inside a knhk task (inside knhk.run)", message(recv_err))
    assert.equal("recv_any: must be called inside a knhk task (inside knhk.run)", message(any_err))
  end)

  it("says it cannot wait inside a C function that called back, and leaves nothing queued", function()
    run(function()
      local a, b = knhk.channel(0), knhk.channel(1)
      local ok, err = pcall(table.sort, { 2, 1 }, function(x, y) knhk.recv_any(a, b); return x < y end)
      assert.is_false(ok)
      assert.matches("knhk: cannot wait here", tostring(err), 1, true)
      knhk.spawn(function(c) c:send("after") end, a)
      assert.same({ 1, "after" }, { knhk.recv_any(a, b) })
    end)
  end)
end)

describe("knhk.semaphore and knhk.lock", function()
  it("limits how many run at once", function()
    local max = run(function()
      local sem, now, max = knhk.semaphore(2), 0, 0
      knhk.nursery(function(n)
        for _ = 1, 8 do
          n:spawn_local(function()
            sem:with(function()
              now = now + 1
              if now > max then max = now end
              knhk.sleep(0.002)
              now = now - 1
            end)
          end)
        end
      end)
      return max
    end, 1)
    assert.equal(2, max)
  end)

  it("a lock serialises tasks on different workers", function()
    local counter = run(function()
      local lock = knhk.lock()
      local ch = knhk.channel(1)
      ch:send(0)
      knhk.nursery(function(n)
        for _ = 1, 4 do
          n:spawn(function(l, c)
            for _ = 1, 50 do
              l:with(function()
                local v = c:recv()
                knhk.sleep(0)
                c:send(v + 1)
              end)
            end
          end, lock, ch)
        end
      end)
      return ch:recv()
    end, 2)
    assert.equal(200, counter)
  end)

  it("a lock is unlocked only by the task that holds it, once", function()
    run(function()
      local lock = knhk.lock()
      local ok, err = pcall(lock.unlock, lock)
      assert.is_false(ok)
      assert.matches("sync_spec.lua:%d+: unlock: the lock is not held", err)
      lock:lock()
      local h = knhk.spawn(function(l) return pcall(l.unlock, l) end, lock)
      local ok2, err2 = h:join()
      assert.is_false(ok2)
      assert.matches("unlock: the lock is held by task %d+, not by this task %(task %d+%)", err2)
      -- locking it again from its holder would wait for ever: refused
      local ok3, err3 = pcall(lock.lock, lock)
      assert.is_false(ok3)
      assert.matches("sync_spec.lua:%d+: lock: this task holds the lock already", err3)
      lock:unlock()
      assert.has_error(function() lock:unlock() end)
      -- still one holder at a time afterwards
      local inside, max = 0, 0
      knhk.nursery(function(n)
        for _ = 1, 3 do
          n:spawn_local(function()
            lock:with(function()
              inside = inside + 1
              max = math.max(max, inside)
              knhk.sleep(0)
              inside = inside - 1
            end)
          end)
        end
      end)
      assert.equal(1, max)
      assert.equal(1, lock:permits())
    end, 2)
  end)

  it("release wakes a waiter; permits are counted", function()
    run(function()
      local sem = knhk.semaphore(0)
      assert.equal(0, sem:permits())
      local h = knhk.spawn(function(s) s:acquire(); return "acquired" end, sem)
      T.until_waiting(h)
      assert.is_false(h:done())
      sem:release()
      assert.equal("acquired", h:join())
    end)
  end)
end)

describe("knhk.event", function()
  it("wakes every waiter once set", function()
    local n = run(function()
      local ev = knhk.event()
      local hs = {}
      for i = 1, 6 do hs[i] = knhk.spawn(function(e) e:wait(); return 1 end, ev) end
      T.until_waiting(unpack(hs))
      assert.is_false(ev:is_set())
      ev:set()
      local c = 0
      for _, h in ipairs(hs) do c = c + h:join() end
      return c
    end, 2)
    assert.equal(6, n)
  end)
end)

describe("handles of channels, semaphores, locks, events and nurseries", function()
  it("are one value per object in a VM: what travels back is what was sent", function()
    knhk.run(function()
      local ch, s, l, e = knhk.channel(1), knhk.semaphore(1), knhk.lock(), knhk.event()
      knhk.nursery(function(n)
        local back = { n:spawn(function(...) return ... end, ch, s, l, e, n):join() }
        assert.is_true(rawequal(ch, back[1]))
        assert.is_true(rawequal(s, back[2]))
        assert.is_true(rawequal(l, back[3]))
        assert.is_true(rawequal(e, back[4]))
        assert.is_true(rawequal(n, back[5]))
      end)
    end, { workers = 1 })
  end)

  it("work as table keys across the tasks of one worker", function()
    local keys, sum = knhk.run(function()
      local ch = knhk.channel(4)
      local count = {}
      knhk.nursery(function(n)
        local hs = {}
        for i = 1, 3 do hs[i] = n:spawn(function(c, k) c:send(k) return c end, ch, i) end
        for i = 1, 3 do
          local c = hs[i]:join() -- a handle made in this VM from the task's result
          count[c] = (count[c] or 0) + c:recv()
        end
      end)
      local k = 0
      for _ in pairs(count) do k = k + 1 end
      return k, count[ch]
    end, { workers = 1 })
    assert.equal(1, keys)
    assert.equal(6, sum)
  end)

  it("keep their object alive while any of them lives, and let it go after", function()
    knhk.run(function()
      local ev = knhk.event()
      local got = knhk.spawn(function(x) return x end, ev):join()
      ev, got = nil, nil
      collectgarbage()
      collectgarbage()
      -- a new event may reuse the freed object's memory: its handle is new
      local ev2 = knhk.event()
      assert.is_false(ev2:is_set())
      ev2:set()
      assert.is_true(knhk.spawn(function(x) return x:is_set() end, ev2):join())
    end, { workers = 1 })
  end)
end)

describe("a channel's capacity", function()
  local function rss_mb()
    local f = assert(io.open("/proc/self/status"))
    local kb = tonumber(f:read("*a"):match("VmRSS:%s+(%d+)"))
    f:close()
    return kb / 1024
  end

  -- Its slots are 32 bytes each, outside the Lua heap: the collector sees
  -- only the small handle. They were all written when the channel was
  -- made (32 MB for 2^20); only those messages reach are now.
  it("costs memory as messages use it, not all when the channel is made", function()
    local grew, got = knhk.run(function()
      local before = rss_mb()
      local kept, sum = {}, 0
      for i = 1, 20 do
        local ch = knhk.channel(2 ^ 20)
        for k = 1, 3 do ch:send(i * k) end
        for _ = 1, 3 do sum = sum + ch:recv() end
        kept[i] = ch
      end
      return rss_mb() - before, sum
    end, { workers = 1 })
    assert.equal(6 * 210, got) -- (1 + 2 + 3) * (1 + ... + 20): every message came back
    -- (ThreadSanitizer's calloc writes every byte it gives: nothing to see there)
    if not (os.getenv("LD_PRELOAD") or ""):find("libtsan", 1, true) then
      assert.is_true(grew < 32, string.format("20 channels of capacity 2^20 took %.0f MB", grew))
    end
  end)

  it("still wraps around its ring, message after message", function()
    local out = knhk.run(function()
      local ch, seen = knhk.channel(3), {}
      for i = 1, 50 do
        ch:send(i)
        if i % 2 == 0 then ch:send(-i) end
        seen[#seen + 1] = ch:recv()
        if i % 2 == 0 then seen[#seen + 1] = ch:recv() end
      end
      return seen
    end, { workers = 1 })
    assert.equal(75, #out)
    assert.equal(1, out[1])
    assert.equal(2, out[2])
    assert.equal(-2, out[3])
    assert.equal(-50, out[75])
  end)
end)
