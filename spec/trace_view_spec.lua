-- scripts/trace-view: a recording as one self-contained HTML page, loaded
-- in headless Chromium (Debian's chromium, installed by scripts/bootstrap):
-- what the browser draws is read back from its DOM.
local cjson = require "cjson"
local ROOT = debug.getinfo(1, "S").source:match "^@(.*)/spec/[^/]*$" or ".."
local KNHK_LUA = assert(os.getenv "KNHK_LUA", "KNHK_LUA must name the knhk-lua binary")

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local function slurp(path)
  local f = assert(io.open(path))
  local s = f:read "*a"
  f:close()
  return s
end

local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p " .. TMP)

-- The page as Chromium has drawn it (its DOM once the page's script ran).
local function rendered(html)
  local cmd = "timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-background-networking"
    .. " --disable-component-update --disable-sync --no-first-run --user-data-dir=" .. TMP .. "/profile"
    .. " --dump-dom file://" .. html .. " >" .. TMP .. "/dom 2>" .. TMP .. "/chromium.err"
  local rc = os.execute(cmd)
  assert(rc == 0, "chromium failed: " .. slurp(TMP .. "/chromium.err"):sub(-2000))
  return slurp(TMP .. "/dom")
end

describe("scripts/trace-view", function()
  local script = TMP .. "/flow.lua"
  local f = assert(io.open(script, "w"))
  f:write [[
knhk.telemetry.span("pack", nil, function()
  knhk.nursery(function(n)
    -- real time: spans are drawn on their real times, so the bars have width
    for _ = 1, 3 do n:spawn(function() knhk.sleep(0.005) end) end
  end)
end)
pcall(knhk.nursery, function(n)
  local started = knhk.event()
  -- fails once the other has started, which is cancelled then
  n:spawn(function(s) s:wait(); error("label printer jammed") end, started)
  n:spawn(function(s) s:set(); knhk.sleep(5) end, started)
end)
]]
  f:close()
  local rec, page = TMP .. "/rec.jsonl", TMP .. "/page.html"
  assert.equal(0, os.execute(q(KNHK_LUA) .. " -w 2 --telemetry " .. rec .. " " .. script))
  assert.equal(0, os.execute(q(ROOT .. "/scripts/trace-view") .. " " .. rec .. " " .. page))

  it("writes a page that needs nothing from the network", function()
    local html = slurp(page)
    assert.is_nil(html:find("<link", 1, true))
    assert.is_nil(html:find("src=", 1, true))
    assert.is_nil(html:find("@import", 1, true))
  end)

  it("draws one bar per task that ran, on its worker, labelled by what it ran for", function()
    local ran = 0
    for line in io.lines(rec) do
      for _, rs in ipairs(cjson.decode(line).resourceSpans or {}) do
        for _, s in ipairs(rs.scopeSpans[1].spans) do
          if s.name == "knhk.concurrency.nursery.spawn" then
            for _, kv in ipairs(s.attributes) do
              if kv.key == "knhk.worker.id" then ran = ran + 1 end
            end
          end
        end
      end
    end
    assert.equal(6, ran) -- the script's main chunk, 3 packers, 2 in the failing nursery
    local dom = rendered(page)
    local bars, labels, statuses = 0, {}, {}
    for attrs in dom:gmatch('<g class="task [^"]*"([^>]*)>') do
      bars = bars + 1
      local label = attrs:match('data%-label="([^"]*)"')
      labels[label] = (labels[label] or 0) + 1
      local status = attrs:match('data%-status="([^"]*)"')
      statuses[status] = (statuses[status] or 0) + 1
    end
    assert.equal(ran, bars)
    assert.equal(ran, select(2, dom:gsub('class="task%-bar"', "")))
    for i = 0, 2 do assert.equal(1, labels["pack #" .. i], "pack #" .. i) end
    assert.same({ completed = 4, failed = 1, cancelled = 1 }, statuses)
    assert.matches('<div class="sub" id="summary">6 tasks on %d workers, %d+ nurseries, %d+ cancellations, 1 errors', dom)
    assert.matches('<li class="error">nursery %d+ #0 at [^<]*: [^<]*label printer jammed', dom)
    assert.matches('<tr class="metric"><td>knhk.concurrency.executor.tasks.spawned</td><td>counter</td>', dom)
  end)
end)
