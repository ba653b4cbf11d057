-- Multiple instances created while others run (15, 36): an instance on
-- any worker starts more instances in the running nursery (P.add_instance),
-- so nursery handles must travel to portable tasks as tokens and channels
-- do. That is a runtime feature; until the runtime has it, these specs fail
-- (the step fails at its first spawn with the codec's refusal of a nursery).
-- Run on two workers; each checks the instances ran on both.
local H = require "patterns.helpers"
local knhk, P = H.knhk, H.P

local WORKERS = 2

local function workers_of(list, field)
  local ws = {}
  for i, r in ipairs(list) do ws[i] = field and r[field] or r end
  return H.distinct(ws)
end

describe("15 Multiple Instances without a priori Run-Time Knowledge", function()
  it("lets instances add instances while they run, and waits for every one", function()
    local r = H.run(function()
      local spread = H.spreader(WORKERS)
      return P.sequence{
        P.mi{ name = "crawl", count = 2, dynamic = true, into = "pages",
              run = function(_, i, item, mi)
                local w = spread()
                if i <= 2 then P.add_instance(mi, "child of " .. i) end
                return { item or ("root " .. i), w }
              end },
        P.task("d", function(v) return { n = #v.pages } end),
      }:execute()
    end, WORKERS)
    assert.equal("completed", r.status, r.error)
    assert.equal(4, r.vars.n) -- the step waited for the two added ones too
    local names = {}
    for i, p in ipairs(r.vars.pages) do names[i] = p[1] end
    table.sort(names)
    assert.same({ "child of 1", "child of 2", "root 1", "root 2" }, names)
    assert.is_true(workers_of(r.vars.pages, 2) > 1, "instances ran on one worker only")
  end)
end)

describe("36 Dynamic Partial Join for Multiple Instances", function()
  it("takes a condition string over the case variables, with `results` the results so far", function()
    local by_var, by_results = H.virtual(function()
      local function mi(cond)
        return P.workflow(P.mi{ name = "m", count = 3, dynamic = true, into = "o",
          join = P.complete_when(cond), run = function(_, i) knhk.sleep(i) return i end })
      end
      return mi("enough"):execute{ vars = { enough = true } }, mi("#results >= 2"):execute{}
    end, 1)
    assert.equal("completed", by_var.status, by_var.error)
    assert.same({ 1 }, by_var.vars.o) -- a variable that holds: done at the first
    assert.equal("completed", by_results.status, by_results.error)
    assert.same({ 1, 2 }, by_results.vars.o)
  end)

  it("continues once its completion condition holds; no instance can be added after", function()
    local late
    local r = H.run(function()
      local obs = H.observer()
      local done = obs:after("search")
      local d_done = obs:after("d") -- the late instance ends after what follows ran
      local spread = H.spreader(WORKERS)
      local out = knhk.channel(16)
      local r = P.sequence{
        P.mi{ name = "search", count = 3, dynamic = true, into = "hits",
              join = P.complete_when(function(results) return #results >= 3 end),
              run = function(_, i, item, mi)
                local w = spread()
                if i == 1 then P.add_instance(mi, "late") end
                if item == "late" then
                  done:wait() -- once the step completed, adding is refused
                  d_done:wait()
                  local j, msg = P.add_instance(mi, "too late")
                  out:send({ j = j, msg = msg, w = w })
                end
                return w
              end },
        P.task("d", function(v) return { n = #v.hits } end),
      }:execute{ telemetry = obs }
      late = H.drain(out)
      return r
    end, WORKERS)
    assert.equal("completed", r.status, r.error)
    assert.equal(3, r.vars.n)
    assert.is_true(H.pos(r, "search") < H.pos(r, "d"))
    assert.is_true(H.pos(r, "d") < H.pos(r, "search", "ended"))
    assert.equal(1, #late)
    assert.is_nil(late[1].j)
    assert.matches("no more instances can be added", late[1].msg, 1, true)
    local ws = { late[1].w }
    for _, w in ipairs(r.vars.hits) do ws[#ws + 1] = w end
    assert.is_true(H.distinct(ws) > 1, "instances ran on one worker only")
  end)
end)

describe("P.add_instance given an item that cannot travel", function()
  it("refuses it at the line of the call, named once, and adds no instance", function()
    local r = H.run(function()
      return P.mi{ name = "m", count = 1, dynamic = true, into = "out",
        run = function(_, i, item, mi)
          local line = debug.getinfo(1, "l").currentline + 1
          local ok, err = pcall(function() P.add_instance(mi, io.stdout) end)
          return { ok = ok, err = err, line = line }
        end }:execute()
    end, 1)
    assert.equal("completed", r.status, r.error)
    assert.equal(1, #r.vars.out)
    local got = r.vars.out[1]
    assert.is_false(got.ok)
    assert.equal(debug.getinfo(1, "S").short_src .. ":" .. got.line .. ": add_instance: the item is a userdata",
      got.err)
  end)
end)
