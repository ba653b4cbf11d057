/* knhk-lua: runs a workflow script (or the REPL) on the knhk runtime.
 *
 * This file only embeds LuaJIT and finds the knhk modules. An installed
 * knhk-lua looks next to itself (../share/lua/5.1, ../lib/lua/5.1, the
 * layout of `cmake --install` and of a luarocks tree) and nowhere else for
 * knhk; the binary in the build tree looks in the source and build trees it
 * was built from instead. Either way LUA_PATH / LUA_CPATH and the usual
 * places follow, for the script's own modules. knhk.core is linked in, and
 * knhk's own Lua modules come precompiled (from it) when the file found is
 * the one compiled.
 * Everything else (options,
 * running the script as the root task, exit codes, the REPL) is knhk.cli
 * (Lua).
 */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void prepend(lua_State *L, const char *field, const char *dirs) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, field);
  lua_pushfstring(L, "%s;%s", dirs, lua_tostring(L, -1));
  lua_setfield(L, -3, field);
  lua_pop(L, 2);
}

/* 1 if `dir` (a real path) is the build tree's directory of this
 * executable. The same text is the same real path; else only a directory
 * with the same inode can have it: realpath, a readlink per component,
 * runs only then. */
static int in_build_tree(const char *dir) {
  if (strcmp(dir, KNHK_BUILD_CLI_DIR) == 0) return 1;
  struct stat a, b;
  if (stat(KNHK_BUILD_CLI_DIR, &a) != 0 || stat(dir, &b) != 0) return 0;
  if (a.st_ino != b.st_ino || a.st_dev != b.st_dev) return 0;
  char built[PATH_MAX];
  return realpath(KNHK_BUILD_CLI_DIR, built) != NULL && strcmp(built, dir) == 0;
}

static void set_paths(lua_State *L) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  char *slash = n > 0 ? (exe[n] = 0, strrchr(exe, '/')) : NULL;
  if (slash) *slash = 0; /* exe: the directory the executable is in */
  char buf[4 * PATH_MAX + 256];
  if (!slash || in_build_tree(exe)) {
    snprintf(buf, sizeof buf, "%s/?.lua;%s/?/init.lua", KNHK_SRC_LUA_DIR, KNHK_SRC_LUA_DIR);
    prepend(L, "path", buf);
    snprintf(buf, sizeof buf, "%s/?.so", KNHK_BUILD_LUA_DIR);
    prepend(L, "cpath", buf);
    return;
  }
  snprintf(buf, sizeof buf, "%s/../share/lua/5.1/?.lua;%s/../share/lua/5.1/?/init.lua", exe, exe);
  prepend(L, "path", buf);
  snprintf(buf, sizeof buf, "%s/../lib/lua/5.1/?.so", exe);
  prepend(L, "cpath", buf);
}

/* knhk.core first: it puts in the loader of knhk's precompiled modules
 * (lua/src/klua_modules.c), which the CLI's modules then come from. It is
 * linked into this program (core/cli/CMakeLists.txt says why): opened as
 * `require` would, its result in package.loaded, so that every require of
 * it, the runtime's worker VMs' included, has this one and never loads a
 * knhk/core.so that package.cpath may find. */
int luaopen_knhk_core(lua_State *L);
const char klua_core_in_program = 1; /* (klua_core.c says what it spares) */

static void load_core(lua_State *L) {
  int top = lua_gettop(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_pushcfunction(L, luaopen_knhk_core);
  lua_pushstring(L, "knhk.core");
  if (lua_pcall(L, 1, 1, 0) == 0) {
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushboolean(L, 1);
    }
    lua_setfield(L, -2, "knhk.core");
  }
  lua_settop(L, top);
}

/* The allocator of the state while it closes at exit: lua_close runs every
 * finalizer (files flushed, ffi.gc cleanups), then frees each object one
 * by one and unmaps the heap, which the process's exit does at once: it
 * took ~0.12 ms of `knhk-lua -e ''`, ~0.035 ms without the frees. Frees
 * are dropped; what a finalizer allocates still is. */
static lua_Alloc state_alloc;
static void *state_alloc_ud;
static void *alloc_at_exit(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) return NULL; /* the exit gives it back */
  return state_alloc(state_alloc_ud, ptr, osize, nsize);
}

static void close_at_exit(lua_State *L) {
  state_alloc = lua_getallocf(L, &state_alloc_ud);
  lua_setallocf(L, alloc_at_exit, NULL);
  lua_close(L);
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "knhk-lua: cannot create a Lua state (out of memory)\n");
    return 1;
  }
  /* No collection while the libraries and knhk's modules load, as luajit
   * does for its libraries: what they allocate stays, and the cycles the
   * growing heap set off were ~4 % of the start. From there on the
   * collector runs as usual (-1: its next cycle when the heap has grown by
   * its pause, as after a cycle). */
  lua_gc(L, LUA_GCSTOP, 0);
  luaL_openlibs(L);
  set_paths(L);
  load_core(L);
  lua_pushcfunction(L, traceback);
  lua_getglobal(L, "require");
  lua_pushstring(L, "knhk.cli");
  int rc = lua_pcall(L, 1, 1, -3);
  lua_gc(L, LUA_GCRESTART, -1);
  if (rc != 0) {
    fprintf(stderr, "knhk-lua: cannot load the knhk Lua modules: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  lua_getfield(L, -1, "main");
  lua_createtable(L, argc, 0);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  if (lua_pcall(L, 1, 1, 1) != 0) {
    fprintf(stderr, "knhk-lua: internal error: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  int code = (int)lua_tointeger(L, -1);
  /* As luajit ends: the state is closed, so every finalizer runs (a file a
   * script left open is flushed and closed; an ffi.gc cleanup runs).
   * knhk.run has closed its worker VMs and stopped its threads already. */
  close_at_exit(L);
  return code;
}
