-- require "knhk" from a plain luajit (a child process: this spec forks).
describe("require \"knhk\" from plain luajit", function()
  local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
  -- this process's module paths, as shell words
  local PATHS = "LUA_PATH=" .. sh_quote(package.path) .. " LUA_CPATH=" .. sh_quote(package.cpath)
  -- What `luajit -e code` prints (stdout and stderr) when run after the
  -- shell words env (PATHS, and what else it needs); then "exit=N", its
  -- status, if `status`.
  local function luajit_e(env, code, status)
    local f = assert(io.popen(env .. " timeout 20 luajit -e " .. sh_quote(code) .. " 2>&1"
      .. (status and '; echo "exit=$?"' or "")))
    local out = f:read("*a")
    f:close()
    return out
  end

  it("finds knhk/core.so through $KNHK_LIB when package.cpath does not", function()
    local lib = assert(package.searchpath("knhk.core", package.cpath))
    local out = luajit_e("KNHK_LIB=" .. sh_quote(lib) .. " LUA_CPATH='/nonexistent/?.so' LUA_PATH="
      .. sh_quote(package.path), [[
        local knhk = require "knhk"
        io.write(knhk.run(function() return knhk.spawn(function() return 6 * 7 end):join() end,
          { workers = 2 }))]])
    assert.equal("42", out)
  end)

  -- A run puts an os.exit of its own in front of each VM's, so that two
  -- tasks' exits do not run exit() side by side; one the program had put
  -- in place of os.exit (a spec's stub) is called as it is, and its call
  -- leaves the next task's real exit free to end the process.
  it("leaves a program's stub of os.exit a stub, and a later real exit on another worker works", function()
    -- (an exit amid the run leaves what the live tasks hold allocated, as
    -- exit() does: under AddressSanitizer, not a leak to report)
    local out = luajit_e('ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" ' .. PATHS, [[
        local knhk = require "knhk"
        os.exit = function(status) print("stubbed " .. tostring(status)) return "stub" end
        knhk.run(function()
          print(os.exit(3))
          os.exit(true) -- (as given: not read as a status)
          require "two_workers"(function()
            if knhk.current().worker == 1 then os.exit(7) end -- the worker VM's own
            knhk.sleep(10)
          end)
        end, { workers = 2 })
        print("not reached")]], true)
    assert.equal("stubbed 3\nstub\nstubbed true\nexit=7\n", out)
  end)

  -- luajit runs a chunk with a SIGINT handler of its own, which raises
  -- "interrupted!" in the chunk. A run that watched signals put libuv's
  -- in its place, and libuv leaves the default action at its end (which
  -- ends the process): the run puts back what was there before it.
  it("gives SIGINT back to luajit's own handler after a run that watched signals", function()
    local out = luajit_e(PATHS, [[
        local knhk = require "knhk"
        local ffi = require "ffi"
        ffi.cdef "int getpid(void); int kill(int pid, int sig);"
        jit.off() -- (luajit's handler stops the chunk at a call: interpreted code makes calls)
        knhk.run(function() end, { signals = true })
        local ok, err = pcall(function()
          ffi.C.kill(ffi.C.getpid(), 2)
          for _ = 1, 1e8 do tostring(1) end
          return "not interrupted"
        end)
        io.write(tostring(ok), " ", tostring(err), "\n")]], true)
    assert.matches("^false [^\n]*interrupted!\nexit=0\n$", out)
  end)

  -- knhk/core.so carries knhk's modules precompiled and puts a loader of
  -- them into the VM that loads it and into every worker VM
  -- (lua/src/klua_modules.c): they load from bytecode where the file found
  -- has the text compiled, from the file where it was edited.
  it("loads knhk's modules precompiled in the program's VM and in worker VMs", function()
    local out = luajit_e(PATHS, [[
        local knhk = require "knhk"
        local two = require "two_workers"
        -- the loader: one more in package.loaders (LuaJIT has 4 of its own),
        -- before Lua's own file searcher
        local function loader() return #package.loaders end
        local function source() return debug.getinfo(require("knhk.runtime").await, "S").source end
        local a, b = knhk.run(function() return two(function() return loader(), source() end) end,
          { workers = 2 })
        print(loader(), source() == "@" .. package.searchpath("knhk.runtime", package.path))
        print(a[1], b[1], a[2] == source(), b[2] == source())]])
    assert.equal("5\ttrue\n5\t5\ttrue\ttrue\n", out)
  end)

  -- knhk.telemetry and knhk.exec load the FFI's cdef and the registry's
  -- names: a program that reads neither field does not pay for them.
  it("loads knhk.telemetry and knhk.exec at the first read of their fields", function()
    local out = luajit_e(PATHS, [[
        local knhk = require "knhk"
        print(knhk.run(function() return knhk.spawn(function() return 6 * 7 end):join() end),
          package.loaded["knhk.telemetry"], package.loaded["knhk.exec"], rawget(knhk, "telemetry"))
        local tel, exec = knhk.telemetry, knhk.exec
        print(tel == require "knhk.telemetry", exec == require("knhk.exec").exec,
          rawget(knhk, "telemetry") == tel, rawget(knhk, "exec") == exec, knhk.no_such_field)]])
    assert.equal("42\tnil\tnil\tnil\ntrue\ttrue\ttrue\ttrue\tnil\n", out)
  end)

  -- A run that spawns nothing, sleeps not, opens no nursery (`knhk-lua -e
  -- ''`, a short script) does not load them; a VM that meets one of their
  -- handles first (an argument, a result) loads its module then.
  it("loads knhk.task, knhk.scope and knhk.nursery at their first use, in every VM", function()
    local out = luajit_e(PATHS, [[
        local knhk = require "knhk"
        local function loaded()
          return tostring(package.loaded["knhk.task"] ~= nil) .. tostring(package.loaded["knhk.scope"] ~= nil)
            .. tostring(package.loaded["knhk.nursery"] ~= nil)
        end
        print(knhk.run(function() return loaded() end))
        print(knhk.run(function()
          local tok = knhk.token()
          return knhk.nursery(function(n)
            local h = n:spawn_local(function() return 5 end)
            h:join()
            -- a fresh worker VM gets a token, a nursery and a task handle
            local t = knhk.spawn(function(tok, n, h)
              local seen = loaded()
              tok:cancel()
              return seen, tostring(tok), h:join(), knhk.is_nursery(n), tok, h
            end, tok, n, h)
            local seen, text, five, is_n, tok2, h2 = t:join()
            return seen, text, five, is_n, tok2 == tok, h2:join(), tok:is_cancelled()
          end)
        end, { workers = 2 }))]])
    assert.equal("falsefalsefalse\ntruetruetrue\tknhk.token (cancelled)\t5\ttrue\ttrue\t5\ttrue\n", out)
  end)

  it("says what $KNHK_LIB named when it cannot load it", function()
    local out = luajit_e("KNHK_LIB=/nonexistent/core.so LUA_CPATH='/nonexistent/?.so' LUA_PATH="
      .. sh_quote(package.path), 'require "knhk"')
    assert.matches("knhk: cannot load $KNHK_LIB (/nonexistent/core.so)", out, 1, true)
  end)
end)
