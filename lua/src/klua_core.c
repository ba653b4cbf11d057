/* klua_core.c: the knhk.core Lua C module: the few entry points that must
 * be classic lua_CFunctions, because they run Lua code (the worker loop
 * resumes task coroutines). Everything else is reached through the FFI. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <lauxlib.h>
#include <stdatomic.h>

#include "klua.h"
#include "knhk/errors.h"

static _Atomic int running; /* one knhk.run at a time in a process */

static klua_rt_t *check_rt(lua_State *L, int i) {
  klua_rt_t *rt = lua_touserdata(L, i);
  if (!rt) luaL_argerror(L, i, "runtime expected");
  return rt;
}

/* core.new(workers) -> rt | error */
static int l_new(lua_State *L) {
  int workers = (int)luaL_checkinteger(L, 1);
  if (workers < 1 || workers > KNHK_MAX_WORKERS)
    return luaL_error(L, "workers must be in 1..%d, got %d", KNHK_MAX_WORKERS, workers);
  int expected = 0;
  if (!atomic_compare_exchange_strong(&running, &expected, 1))
    return luaL_error(L, "knhk.run: a runtime is already running in this process");
  klua_rt_t *rt = NULL;
  char err[512] = "";
  int rc = klua_rt_new(L, workers, &rt, err, sizeof err);
  if (rc != 0) {
    atomic_store(&running, 0);
    return luaL_error(L, "knhk.run: %s", err[0] ? err : knhk_strerror(rc));
  }
  lua_pushlightuserdata(L, rt);
  return 1;
}

/* core.register(step): this VM's step function, called by the workers. */
static int l_register(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_getfield(L, LUA_REGISTRYINDEX, "knhk.rt");
  klua_rt_t *rt = lua_touserdata(L, -1);
  lua_getfield(L, LUA_REGISTRYINDEX, "knhk.worker");
  int index = (int)lua_tointeger(L, -1);
  lua_pop(L, 2);
  if (!rt || index < 0 || index >= rt->workers) return luaL_error(L, "no runtime in this VM");
  lua_pushvalue(L, 1);
  rt->vms[index].step_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* core.context() -> rt, worker index (or nil outside a runtime) */
static int l_context(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "knhk.rt");
  lua_getfield(L, LUA_REGISTRYINDEX, "knhk.worker");
  return 2;
}

/* core.enter(rt): the calling thread runs as worker 0 until shutdown. */
static int l_enter(lua_State *L) {
  klua_rt_t *rt = check_rt(L, 1);
  rt->vms[0].L = L; /* tasks of worker 0 are stepped from this thread */
  int rc = klua_rt_enter(rt);
  if (rc != 0) return luaL_error(L, "knhk.run: %s", knhk_strerror(rc));
  return 0;
}

/* core.free(rt) */
static int l_free(lua_State *L) {
  klua_rt_t *rt = check_rt(L, 1);
  klua_rt_free(rt);
  atomic_store(&running, 0);
  return 0;
}

/* core.path() -> the file this module was loaded from, for ffi.load */
static int l_path(lua_State *L) {
  Dl_info info;
  if (!dladdr((void *)l_path, &info) || !info.dli_fname) return 0;
  lua_pushstring(L, info.dli_fname);
  return 1;
}

KLUA_API int luaopen_knhk_core(lua_State *L) {
  static const luaL_Reg fns[] = {{"new", l_new},         {"register", l_register},
                                 {"context", l_context}, {"enter", l_enter},
                                 {"free", l_free},       {"path", l_path},
                                 {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  return 1;
}
