-- luarocks make rockspec/knhk-scm-1.rockspec [--tree DIR]
-- Builds with CMake (no download: the source is this checkout) and installs
-- the knhk Lua modules, knhk/core.so (the C runtime) and the knhk-lua command
-- as any rock's, and libknhk (.so, .a) with its headers under the tree's lib/
-- and include/, for C programs.
package = "knhk"
version = "scm-1"
source = {
  url = "git+https://example.invalid/knhk-lua.git", -- unused by `luarocks make`
}
description = {
  summary = "A Lua-scriptable workflow runtime: structured concurrency on every core",
  detailed = [[
Workflows are Lua scripts run by LuaJIT on a C work-stealing executor, with
Trio-style nurseries and cancel scopes, channels, timers, child processes,
the 43 workflow control-flow patterns (knhk.patterns), and a `knhk-lua`
command with a REPL.]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1, < 5.2", -- LuaJIT
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "RelWithDebInfo",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    KNHK_LUADIR = "$(LUADIR)",
    KNHK_LIBDIR = "$(LIBDIR)",
    -- The C library and its headers go to the tree's lib/ and include/, not
    -- with the Lua C modules: PREFIX is <tree>/lib/luarocks/rocks-5.1/knhk/<version>.
    KNHK_C_LIBDIR = "$(PREFIX)/../../../../../lib",
    KNHK_C_INCLUDEDIR = "$(PREFIX)/../../../../../include",
    KNHK_TESTS = "OFF",
    KNHK_BENCH = "OFF",
  },
}
