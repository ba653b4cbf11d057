-- hello.lua: a first workflow. Run it with
--   scripts/run examples/hello.lua [name]    (or: knhk-lua examples/hello.lua [name])
-- The main chunk is the root task: spawn, sleep and nurseries work here.

-- a second argument is refused with the usage line (exit 2), not ignored
if arg and arg[2] ~= nil then
  io.stderr:write(arg[0]:match("[^/]*$"), ": too many arguments\nusage: knhk-lua ", arg[0],
    " [name]\n")
  os.exit(2)
end

-- 1. a task on any worker; its result comes back with join
local greeting = knhk.spawn(function(name) return "hello, " .. name end, arg[1] or "workflow")
print(greeting:join())

-- 2. a nursery: every child ends before it returns; results in spawn order
local shipped = knhk.nursery(function(n)
  for _, item in ipairs { "book", "lamp", "chair" } do
    n:spawn(function(what)
      knhk.sleep(0.01 * #what) -- pretend to pack it
      return what .. " packed"
    end, item)
  end
  return n:wait_all()
end)
for _, r in ipairs(shipped) do print(r[1]) end

-- 3. a timeout: the slow step is cancelled, the workflow moves on
local scope = knhk.move_on_after(0.05, function()
  knhk.sleep(10)
  print("never printed")
end)
print("slow step cancelled:", scope.cancelled_caught)

-- 4. a parallel map on every core
local squares = knhk.map({ 1, 2, 3, 4, 5, 6, 7, 8 }, function(x) return x * x end, { limit = 4 })
print("squares:", table.concat(squares, " "))
print(string.format("done on %d workers", knhk.stats().workers))
