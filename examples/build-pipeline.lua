-- build-pipeline.lua: a small C program built by real commands (knhk.exec):
-- the sources are compiled in parallel, then linked and run. A compile
-- step that fails fails the build, and cancels the steps still running
-- (their processes are killed): here a slow documentation step.
--   knhk-lua examples/build-pipeline.lua            builds and runs
--   knhk-lua examples/build-pipeline.lua broken     b.c does not compile
local P = require "knhk.patterns"

-- the argument, checked before anything runs: a bad one is refused with
-- the usage line (exit 2), rather than taken for the default
local args = arg or {}
if (args[1] ~= nil and args[1] ~= "broken") or args[2] ~= nil then
  local me = args[0] or "build-pipeline.lua"
  io.stderr:write(me:match("[^/]*$"), ": ", args[2] ~= nil and "too many arguments"
    or ("unknown argument '" .. args[1] .. "'"), "\nusage: knhk-lua ", me, " [broken]\n")
  os.exit(2)
end
local broken = args[1] == "broken"

local sources = {
  ["a.c"] = 'const char *a(void) { return "hello"; }\n',
  ["b.c"] = broken and 'const char *b(void) { return "world" }\n' -- missing ';'
                   or 'const char *b(void) { return "world"; }\n',
  ["main.c"] = '#include <stdio.h>\nconst char *a(void); const char *b(void);\n'
            .. 'int main(void) { printf("%s, %s\\n", a(), b()); return 0; }\n',
}

-- a step that runs a command in the build directory; a failure raises
local function run(name, argv)
  return P.task(name, function(v)
    local r, err = knhk.exec(argv, { cwd = v.dir })
    if not r then error(name .. ": " .. err, 0) end
    if not r.ok then error(name .. " failed (status " .. r.status .. ")", 0) end
    return { [name] = r.stdout }
  end)
end

local wf = P.workflow(P.sequence{
  P.task("prepare", function(v)
    local r = knhk.exec({ "mktemp", "-d" })
    local dir = r.stdout:gsub("%s+$", "")
    for file, text in pairs(v.sources) do
      local f = assert(io.open(dir .. "/" .. file, "w"))
      f:write(text)
      f:close()
    end
    return { dir = dir }
  end),
  P.parallel_split{
    run("compile a.c", { "cc", "-c", "a.c" }),
    run("compile b.c", { "cc", "-c", "b.c" }),
    run("compile main.c", { "cc", "-c", "main.c" }),
    run("docs", { "sleep", broken and "30" or "0" }), -- slow, when it gets the chance
  },
  P.synchronization(),
  run("link", { "cc", "-o", "hello", "a.o", "b.o", "main.o" }),
  run("test", { "./hello" }),
})

local result = wf:execute{ vars = { sources = sources } }
if result.vars.dir then knhk.exec({ "rm", "-rf", result.vars.dir }) end
if result.status == "completed" then
  io.write("built; ./hello says: ", result.vars.test)
else
  local docs = "not run"
  for _, t in ipairs(result.trace) do
    if t.step == "docs" then docs = t.event end
  end
  print("build " .. result.status .. " at '" .. result.step .. "': " .. result.error)
  print("docs: " .. docs) -- still running when compile b.c failed: its process was killed
  error("the build failed", 0)
end
