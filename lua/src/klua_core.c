/* klua_core.c: the knhk.core Lua C module: every call Lua task code makes
 * into the runtime, as classic lua_CFunctions (see klua.h for why not the
 * FFI). Each function finds the calling task through its worker (klua_self),
 * never from an argument, and checks that it is called from that task's
 * coroutine.
 *
 * Calls that may wait are "tries" and return a status first:
 *   0 DONE (results follow)   1 WAIT (armed: yield, then try again)
 *   2 CLOSED   3 CANCELLED (reason follows)   4 BLOB (a snapshot follows)
 *   5 MESSAGE (an error message made in C follows)   6 SLOW (the value
 *   needs knhk.codec: call the _blob variant)
 * runtime.lua's await runs that loop, in one place.
 *
 * Every function gets the VM's shared tables as upvalues (see luaopen).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <lauxlib.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "klua.h"
#include "knhk_modules.h"
#include "klua_sync.h"
#include "klua_value.h"
#include "knhk/errors.h"

#define UP_ANCHOR lua_upvalueindex(1) /* refs: coroutines, local functions and arguments */
#define UP_PROTOS lua_upvalueindex(2) /* closure -> prototype info (weak) */
#define UP_POOLS lua_upvalueindex(3)  /* prototype id -> idle closures, or the shared one */
#define UP_PLACES lua_upvalueindex(4) /* function -> lightuserdata place (weak) */
#define UP_MTS lua_upvalueindex(5)    /* handle kind <-> metatable */
/* UP_MTS's slot of a detached task handle's metatable (set_task_mt) */
#define MT_TASK_DETACHED KLUA_H_KINDS
#define UP_HOOKS lua_upvalueindex(6)  /* runtime.lua's: proto_of, new_closure, capture */
/* A task handle's two metatables again (UP_MTS[KLUA_H_TASK] and
 * [MT_TASK_DETACHED]), as upvalues: every spawn and join reads them, and
 * an upvalue costs no table lookup. */
#define UP_MT_TASK lua_upvalueindex(7)
#define UP_MT_DETACHED lua_upvalueindex(8)
#define NUPVALUES 8

/* ST_DONE0, ST_DONE1: join_try's DONE with no result, and with exactly
 * one (h:join() returns them without a vararg call: task.lua). */
enum { ST_DONE = 0, ST_WAIT = 1, ST_CLOSED = 2, ST_CANCELLED = 3, ST_BLOB = 4, ST_MESSAGE = 5,
       ST_SLOW = 6, ST_REASON = 7, ST_NOT_HANDLE = 8, ST_DONE0 = 9, ST_DONE1 = 10 };

/* The status of a DONE with n results: counted (join_try's), or not. */
static int done_status(int counted, int n) {
  return !counted || n > 1 ? ST_DONE : n == 1 ? ST_DONE1 : ST_DONE0;
}

static _Atomic int running;            /* one knhk.run at a time in a process */
static _Atomic uint64_t live_gen;      /* the running runtime's generation, 0 if none */
static _Atomic uint64_t gen_counter;

void *klua_mark_wait(void);
void klua_sync_unwait(klua_wait_t *w);
KLUA_API const char *klua_where(klua_rt_t *rt, const char *place);

/* ---------------------------------------------------------------- helpers */

/* Where the stack of a task's own coroutine L goes on, once no frame of
 * the program is left on it (the program's frame went in a tail call, or
 * the task's function is knhk's own), pushed as "place: " or "": for the
 * root task, the place of the program's call of knhk.run (core.root's),
 * as if the root's function had been called there; for another task, the
 * line that defined its function, the nearest the record knows of the
 * call that went, unless that line is knhk's own (a runner of a workflow's
 * steps): the program did not write it. Nothing for a coroutine of the
 * program's own, or for a root that knhk's own code started. check.lua's
 * refusals ask core.place_below for it too. */
static void push_place_below(lua_State *L) {
  static const char fn_at[] = "function at ";
  klua_worker_t *w = klua_self();
  klua_task_t *t = w ? w->cur : NULL;
  const char *at;
  if (!t || t->co != L) {
    lua_pushliteral(L, "");
  } else if (t->id == t->rt->root_id) {
    lua_pushstring(L, t->rt->root_place ? t->rt->root_place : "");
  } else if (t->where && (at = strstr(t->where, fn_at)) != NULL && !strstr(at, "knhk/")) {
    /* "function at f.lua:3", or a callable's "callable table (__call
     * function at f.lua:3)"; knhk's own sources are passed over as
     * raise_at passes them over */
    at += sizeof fn_at - 1;
    lua_pushlstring(L, at, strcspn(at, ")"));
    lua_pushliteral(L, ": ");
    lua_concat(L, 2);
  } else {
    lua_pushliteral(L, "");
  }
}

/* Raises fmt (a, b) at the first frame of the program, outside knhk's own
 * modules (`level`: where to start looking): a mistake is reported where
 * the program made it. The message is kept as the VM's last refusal, as
 * check.lua keeps its own (knhk.nursery raises one from its body as is). */
static int raise_at(lua_State *L, int level, const char *fmt, const char *a, const char *b) {
  lua_Debug ar;
  for (int l = level;; l++) {
    if (!lua_getstack(L, l, &ar)) {
      push_place_below(L); /* (never a place inside knhk) */
      break;
    }
    lua_getinfo(L, "Sl", &ar);
    if (ar.currentline > 0 && !strstr(ar.source, "knhk/")) {
      lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
      break;
    }
  }
  lua_pushfstring(L, fmt, a, b);
  lua_concat(L, 2);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "knhk.refusal");
  return lua_error(L);
}

/* The calling task; raises if there is none, or if the caller is a
 * coroutine of the task's own (it cannot wait for the runtime). */
static klua_task_t *current(lua_State *L, const char *fname) {
  klua_worker_t *w = klua_self();
  klua_task_t *t = w ? w->cur : NULL;
  if (!t) raise_at(L, 2, "%s: must be called inside a knhk task (inside knhk.run)%s", fname, "");
  if (t->co != L)
    raise_at(L, 2, "%s: cannot wait from inside a coroutine of your own; call it from the task%s",
             fname, "");
  return t;
}

/* Handles are full userdata {object, generation}: tasks and nurseries
 * belong to one runtime, and a handle kept after it ended must not reach
 * its (freed) memory. */
typedef struct {
  void *p;
  uint64_t gen;
} handle_t;

/* A task handle is a handle_t and one word more. Once its task ended well
 * with no result, or one that is nil, a boolean or a number, a join keeps
 * that in the handle and lets go of the record (detach): the record goes
 * back to its pool warm, at the join, instead of cold when the handle is
 * collected, and the handle's finalizer has nothing left to do. A detached
 * handle that travels is given a record again (reattach). Detached, `p`
 * and `num` are a klua_kept_t's detached form (klua.h): the task's id and
 * what it returned in a word with its low bit set, and the number it
 * returned. (One word more, not room for any result: a million handles of
 * sleeping tasks are a million userdata.) */
typedef struct {
  handle_t h;
  double num;
} task_handle_t;

static int detached(const task_handle_t *th) { return ((uintptr_t)th->h.p & 1) != 0; }
static klua_task_t *task_of(const task_handle_t *th) { return detached(th) ? NULL : th->h.p; }
static uint64_t kept_id(const task_handle_t *th) { return klua_kept_id((uintptr_t)th->h.p); }
static int kept_what(const task_handle_t *th) { return klua_kept_what((uintptr_t)th->h.p); }

int klua_handle_kind(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  lua_rawget(L, UP_MTS);
  int kind = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return kind;
}

/* Whether the value at idx is a handle of this kind: its metatable is the
 * kind's (compared with UP_MTS[kind]: no hash lookup on the hot path), or
 * for a task handle, one of its two (upvalues: no lookup at all). */
static int is_kind(lua_State *L, int idx, int kind) {
  if (!lua_getmetatable(L, idx)) return 0;
  if (kind == KLUA_H_TASK) {
    int same = lua_rawequal(L, -1, UP_MT_TASK) || lua_rawequal(L, -1, UP_MT_DETACHED);
    lua_pop(L, 1);
    return same;
  }
  lua_rawgeti(L, UP_MTS, kind);
  int same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same;
}

/* is_kind(L, idx, KLUA_H_TASK), for a join: a handle of a task not
 * joined yet, the common case, is told by its metatable's address, which
 * this worker's VM noted (core.register), without two value compares. */
static int is_task_handle(lua_State *L, int idx) {
  klua_worker_t *w = klua_self();
  if (w && w->mt_task && lua_getmetatable(L, idx)) {
    int same = lua_topointer(L, -1) == w->mt_task;
    lua_pop(L, 1);
    if (same) return 1;
  }
  return is_kind(L, idx, KLUA_H_TASK);
}

/* Gives the task handle at idx the metatable its state asks for: without a
 * finalizer once detached (nothing to release: the collector then has no
 * call to make for it), with one while it holds a record. */
static void set_task_mt(lua_State *L, int idx, const task_handle_t *th) {
  lua_pushvalue(L, detached(th) ? UP_MT_DETACHED : UP_MT_TASK);
  lua_setmetatable(L, idx);
}

/* A task or nursery handle of a run that has ended is refused. */
static void check_live(lua_State *L, const handle_t *h, int kind, const char *what) {
  if ((kind == KLUA_H_TASK || kind == KLUA_H_NURSERY) &&
      h->gen != atomic_load_explicit(&live_gen, memory_order_acquire))
    raise_at(L, 1, "this %s belongs to a knhk.run that has ended%s", what, "");
}

static handle_t *check_handle(lua_State *L, int idx, int kind, const char *what) {
  handle_t *h = lua_touserdata(L, idx);
  if (!h || !is_kind(L, idx, kind)) {
    luaL_where(L, 1);
    lua_pushfstring(L, "bad argument #%d (%s expected, got %s)", idx, what, luaL_typename(L, idx));
    lua_concat(L, 2);
    lua_error(L);
  }
  check_live(L, h, kind, what);
  return h;
}

/* The task handle at i; its record, or NULL if it let go of it (detached). */
#define TASK_HANDLE(L, i) ((task_handle_t *)check_handle((L), (i), KLUA_H_TASK, "task handle"))
#define TASK_ARG(L, i) task_of(TASK_HANDLE((L), (i)))
#define GROUP_ARG(L, i) ((klua_group_t *)check_handle((L), (i), KLUA_H_NURSERY, "nursery")->p)
#define SYNC_ARG(L, i, k, w) ((klua_sync_t *)check_handle((L), (i), (k), (w))->p)
#define TOKEN_ARG(L, i) ((knhk_token_t *)check_handle((L), (i), KLUA_H_TOKEN, "token")->p)

/* A VM's handles of nurseries, tokens, channels, semaphores, locks and
 * events, by object (weak values, in the registry at &interned): one
 * userdata per object per VM, so that the handles a VM gets of one object
 * are equal (and work as table keys), and a channel given to a million
 * tasks is one userdata, not a million to collect and finalize. Task
 * handles are not interned: each spawn makes a new one, and seldom would
 * one be met again. */
static char interned;

static void push_interned_table(lua_State *L) {
  lua_pushlightuserdata(L, &interned);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_istable(L, -1)) return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 8);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushlightuserdata(L, &interned);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
}

/* Pushes a handle of `kind` owning one reference to p: the VM's handle of
 * p if it has one (the reference given is dropped: that handle holds its
 * own), else a new one. */
static void push_handle(lua_State *L, int kind, void *p) {
  uint64_t gen = atomic_load_explicit(&live_gen, memory_order_relaxed);
  int intern = kind != KLUA_H_TASK;
  if (intern) {
    push_interned_table(L);
    lua_pushlightuserdata(L, p);
    lua_rawget(L, -2);
    handle_t *old = lua_touserdata(L, -1);
    /* a handle being finalized, or one of a nursery at the same address
     * in an earlier run, is not this one */
    if (old && old->p == p && klua_handle_kind(L, -1) == kind &&
        (kind != KLUA_H_NURSERY || old->gen == gen)) {
      lua_remove(L, -2);
      klua_handle_drop(kind, p);
      return;
    }
    lua_pop(L, 1);
  }
  handle_t *h = lua_newuserdata(L, kind == KLUA_H_TASK ? sizeof(task_handle_t) : sizeof *h);
  h->p = p;
  h->gen = gen;
  if (kind == KLUA_H_TASK) lua_pushvalue(L, UP_MT_TASK);
  else lua_rawgeti(L, UP_MTS, kind);
  lua_setmetatable(L, -2);
  if (intern) {
    lua_pushlightuserdata(L, p);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
    lua_remove(L, -2);
  }
}

void klua_handle_push(lua_State *L, int kind, void *p) { push_handle(L, kind, p); }

/* Pushes a handle of a child as a nursery's list keeps it: of its record
 * (taking the reference given), or a detached one holding its result. */
static void push_kept_child(lua_State *L, klua_kept_t k) {
  /* (k by value: the allocation below may run a finalizer that spawns
   * into the nursery and moves its lists) */
  if (klua_kept_is_record(&k)) {
    push_handle(L, KLUA_H_TASK, (void *)k.p);
    return;
  }
  task_handle_t *th = lua_newuserdata(L, sizeof *th);
  th->h.p = (void *)k.p;
  th->h.gen = atomic_load_explicit(&live_gen, memory_order_relaxed);
  th->num = k.num;
  set_task_mt(L, lua_gettop(L), th);
}

/* A detached handle's result in klua_value form (<= 9 bytes); its count. */
static int kept_encode(const task_handle_t *th, char *buf, uint32_t *len) {
  static const char tags[] = {0, KLUA_V_NIL, KLUA_V_FALSE, KLUA_V_TRUE, KLUA_V_NUMBER};
  int what = kept_what(th);
  *len = 0;
  if (what == KLUA_KEPT_NONE) return 0;
  buf[0] = tags[what];
  *len = 1;
  if (what == KLUA_KEPT_NUMBER) {
    memcpy(buf + 1, &th->num, 8);
    *len = 9;
  }
  return 1;
}

/* A detached task handle gets a record again (it is going to another
 * task, which will want one); raises if out of memory. */
static void reattach(lua_State *L, task_handle_t *th) {
  klua_worker_t *w = klua_self();
  if (!detached(th)) return;
  if (!w) luaL_error(L, "knhk: a task handle cannot leave its knhk.run");
  char buf[9];
  uint32_t len;
  int n = kept_encode(th, buf, &len);
  klua_task_t *t = klua_task_remade(w->rt, kept_id(th), buf, len, n);
  if (!t) luaL_error(L, "knhk: out of memory");
  th->h.p = t;
}

void *klua_handle_export(lua_State *L, int idx) {
  handle_t *h = lua_touserdata(L, idx);
  int kind = klua_handle_kind(L, idx);
  if (kind == KLUA_H_TASK && detached((task_handle_t *)h)) {
    reattach(L, (task_handle_t *)h);
    set_task_mt(L, idx, (task_handle_t *)h); /* it holds a record again */
  }
  klua_handle_retain(kind, h->p);
  return h->p;
}

/* Whether the handle at idx, of kind `kind`, cannot go inline: a nursery
 * that has closed (or whose run has ended) cannot be given to a task. The
 * codec then refuses it, naming its place and the caller's line. */
int klua_handle_unfit(lua_State *L, int idx, int kind) {
  if (kind != KLUA_H_NURSERY) return 0;
  handle_t *h = lua_touserdata(L, idx);
  if (h->gen != atomic_load_explicit(&live_gen, memory_order_acquire)) return 1;
  return atomic_load(&((klua_group_t *)h->p)->closed) != 0;
}

void klua_handle_retain(int kind, void *p) {
  switch (kind) {
  case KLUA_H_TASK: klua_task_retain(p); break;
  case KLUA_H_NURSERY: klua_group_retain(p); break;
  case KLUA_H_TOKEN: knhk_token_retain(p); break;
  default: klua_sync_retain(p); break;
  }
}

void klua_handle_drop(int kind, void *p) {
  switch (kind) {
  case KLUA_H_TASK: klua_task_release(p); break;
  case KLUA_H_NURSERY: klua_group_release(p); break;
  case KLUA_H_TOKEN: knhk_token_release(p); break;
  default: klua_sync_release(p); break;
  }
}

static int handle_gc(lua_State *L) {
  handle_t *h = lua_touserdata(L, 1);
  /* every object's address is even: an odd p is a detached task handle's,
   * which holds no reference (most collected task handles: check first) */
  if (!h || !h->p || ((uintptr_t)h->p & 1)) return 0;
  int kind = klua_handle_kind(L, 1);
  if (!kind) return 0;
  if ((kind == KLUA_H_TASK || kind == KLUA_H_NURSERY) &&
      h->gen != atomic_load_explicit(&live_gen, memory_order_acquire))
    return 0; /* its runtime, and the memory, are gone */
  klua_handle_drop(kind, h->p);
  h->p = NULL;
  return 0;
}

/* runtime.lua's hooks (core.register gives them by name), found by these
 * integer keys of the hooks table: a lookup by name interns the name's
 * string at every call, on every spawn and start. */
enum {
  HOOK_PROTO_OF = 1, HOOK_NEW_CLOSURE, HOOK_PLACE_OF, HOOK_CAPTURE, HOOK_START_BLOB,
  HOOK_GLOBALS_NAMES, HOOK_GNAMES, HOOK_BASE_MT, HOOK_BASE_ENV, HOOK_NAMED, HOOK_NAMED_VALS,
  HOOK_RESOLVE_NAME, HOOK_NAMED_SAFE, HOOK_COUNT,
  HOOK_SHARED = HOOK_COUNT /* not a hook: the shared closures' cache (push_shared), new each run */
};
static const char *const hook_names[HOOK_COUNT - 1] = {
    "proto_of", "new_closure", "place_of", "capture", "start_blob", "globals_names",
    "gnames",   "base_mt",     "base_env", "named",   "named_vals", "resolve_name",
    "named_safe"};

#define PUSH_HOOK(L, h) lua_rawgeti((L), UP_HOOKS, (h))

/* Calls hook h with n arguments on the stack, r results. */
static void call_hook(lua_State *L, int h, int n, int r) {
  PUSH_HOOK(L, h);
  lua_insert(L, -n - 1);
  lua_call(L, n, r);
}

/* --------------------------------------------------------------- spawning */

/* Prototype info of the function at idx (a Lua function): id, upvalue
 * count, whether its code reads globals, its place. Cached per closure. */
typedef struct {
  uint32_t id, nuv;
  int slow;      /* an environment of its own: only the codec snapshots it */
  int globals;   /* its code reads globals */
  int shareable; /* its closures may be shared (knhk/codec.lua) */
} proto_t;

static void proto_info(lua_State *L, int idx, proto_t *p) {
  lua_pushvalue(L, idx);
  lua_rawget(L, UP_PROTOS);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    call_hook(L, HOOK_PROTO_OF, 1, 1); /* id + nuv*2^24 + slow*2^40 + globals*2^41 + shareable*2^42 */
    lua_pushvalue(L, idx);
    lua_pushvalue(L, -2);
    lua_rawset(L, UP_PROTOS);
  }
  double v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  uint64_t u = (uint64_t)v;
  p->id = (uint32_t)(u & 0xffffff);
  p->nuv = (uint32_t)((u >> 24) & 0xff);
  p->slow = (int)((u >> 40) & 1);
  p->globals = (int)((u >> 41) & 1);
  p->shareable = (int)((u >> 42) & 1);
}

/* ------------------------------------------------------------ named values */

static int abs_index(lua_State *L, int idx) {
  return idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
}

/* The id the value at idx travels under (klua_value.c's "named"), or 0.
 * hooks.named: value -> id, filled as the codec meets builtins and modules. */
uint32_t klua_named_id(lua_State *L, int idx) {
  idx = abs_index(L, idx);
  PUSH_HOOK(L, HOOK_NAMED);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  lua_pushvalue(L, idx);
  lua_rawget(L, -2);
  uint32_t id = (uint32_t)lua_tointeger(L, -1);
  lua_pop(L, 2);
  return id;
}

/* Pushes the value `id` names in this VM: hooks.named_vals caches it; the
 * first time, hooks.resolve_name finds it by its name. */
void klua_named_push(lua_State *L, uint32_t id) {
  PUSH_HOOK(L, HOOK_NAMED_VALS);
  lua_rawgeti(L, -1, (int)id);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushinteger(L, id);
    call_hook(L, HOOK_RESOLVE_NAME, 1, 1);
  }
  lua_remove(L, -2);
}

/* The globals a portable task's code reads, pushed as name, value pairs
 * (2 * count slots) for the inline encoder, from the environment at envidx.
 * Returns the count, or -1 when that environment needs the codec: not a
 * globals table (this VM's _G without a metatable, or a task's, whose
 * metatable puts the standard library under it), or names too many. */
static int push_globals(lua_State *L, int fnidx, uint32_t id) {
  int top = lua_gettop(L);
  lua_getfenv(L, fnidx);
  int env = lua_gettop(L);
  int base = 0; /* the table a task's environment falls back to */
  if (lua_rawequal(L, env, LUA_GLOBALSINDEX)) {
    if (lua_getmetatable(L, env)) goto slow; /* a strict or proxied _G */
  } else {
    if (!lua_getmetatable(L, env)) goto slow;
    PUSH_HOOK(L, HOOK_BASE_MT);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!same) goto slow;
    PUSH_HOOK(L, HOOK_BASE_ENV);
    base = lua_gettop(L);
  }
  PUSH_HOOK(L, HOOK_GNAMES);
  lua_rawgeti(L, -1, (int)id);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushinteger(L, id);
    lua_pushvalue(L, fnidx);
    call_hook(L, HOOK_GLOBALS_NAMES, 2, 1);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, (int)id);
  }
  int names = lua_gettop(L);
  int n = (int)lua_objlen(L, names);
  if (n > 60 || !lua_checkstack(L, 2 * n + 4)) goto slow;
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, names, i);
    lua_pushvalue(L, -1);
    lua_rawget(L, env);
    if (lua_isnil(L, -1) && base) {
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      lua_rawget(L, base);
    }
  }
  /* keep only the pairs, where the caller expects them */
  int first = top + 1;
  for (int i = 0; i < 2 * n; i++) {
    lua_pushvalue(L, names + 1 + i);
    lua_replace(L, first + i);
  }
  lua_settop(L, first + 2 * n - 1);
  return n;
slow:
  lua_settop(L, top);
  return -1;
}

/* The place of the function at idx, interned: cached per closure (weak
 * keys: the cache keeps no function alive). */
static const char *place_of(lua_State *L, klua_rt_t *rt, int idx) {
  lua_pushvalue(L, idx);
  lua_rawget(L, UP_PLACES);
  const char *w = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (w) return w;
  lua_pushvalue(L, idx);
  call_hook(L, HOOK_PLACE_OF, 1, 1);
  w = klua_where(rt, lua_tostring(L, -1));
  lua_pop(L, 1);
  if (!w) w = "a function";
  lua_pushvalue(L, idx);
  lua_pushlightuserdata(L, (void *)w);
  lua_rawset(L, UP_PLACES);
  return w;
}

/* The same for a local spawn: the place of the function of the run of
 * spawns pending (klua_ref_fn), which its anchor keeps alive so that its
 * address names it, without a lookup. */
static const char *local_place_of(lua_State *L, klua_rt_t *rt, klua_worker_t *self, int idx,
                                  const void *fn) {
  if (self->rep_n > 0 && self->rep_fn == fn) return self->rep_place;
  return place_of(L, rt, idx);
}

/* The same for a portable spawn, whose function's prototype id is known:
 * a place is its prototype's (source and line), so the worker keeps them
 * by id, without a lookup. */
static const char *portable_place_of(lua_State *L, klua_rt_t *rt, klua_worker_t *self, int idx,
                                     uint32_t id) {
  if (self && id < self->nplace_by_proto && self->place_by_proto[id])
    return self->place_by_proto[id];
  const char *w = place_of(L, rt, idx);
  if (!self) return w;
  if (id >= self->nplace_by_proto) {
    uint32_t n = self->nplace_by_proto ? self->nplace_by_proto : 64;
    while (n <= id) n *= 2;
    const char **a = realloc(self->place_by_proto, n * sizeof *a);
    if (!a) return w; /* (a cache: it can do without) */
    memset(a + self->nplace_by_proto, 0, (n - self->nplace_by_proto) * sizeof *a);
    self->place_by_proto = a;
    self->nplace_by_proto = n;
  }
  self->place_by_proto[id] = w;
  return w;
}

/* The task's own nursery (knhk.spawn), made on first use. Its token is a
 * child of the task's: cancelling the task reaches its children, and its
 * children can be cancelled without it. */
static klua_group_t *implicit_group(lua_State *L, klua_task_t *cur) {
  if (!cur->implicit) {
    knhk_token_t *own = klua_task_own_token(cur);
    if (own) cur->implicit = klua_group_new(cur->rt, own, KLUA_G_IMPLICIT | KLUA_G_SUPERVISE);
    if (!cur->implicit) luaL_error(L, "knhk: out of memory making a nursery");
  }
  return cur->implicit;
}

/* core.cancel_children(): cancels what the caller spawned, and the
 * caller itself (it is ending: the REPL's Ctrl-D). */
static int l_cancel_children(lua_State *L) {
  klua_task_t *t = current(L, "knhk");
  knhk_token_t *own = klua_task_own_token(t);
  if (own) knhk_token_cancel(own, KNHK_CANCEL_EXPLICIT);
  return 0;
}

/* What cancels a child spawned by cur into g: a nursery's children, its
 * token (wherever n:spawn was called); a task's own children, the scope it
 * spawned them in (its own token at least: cancelling the task reaches
 * them). A reference. */
static knhk_token_t *cancel_parent_for(klua_task_t *cur, klua_group_t *g) {
  knhk_token_t *tok = g->flags & KLUA_G_IMPLICIT ? (cur->scope ? cur->scope : klua_task_own_token(cur))
                                                 : g->token;
  return tok ? knhk_token_retain(tok) : knhk_token_retain(klua_task_checkpoint_token(cur));
}

/* A local task that never started: what it anchored, and the handles
 * among its arguments, go. */
static void undo_start(lua_State *L, klua_task_t *t) {
  klua_unref_fn(klua_self(), L, UP_ANCHOR, t->fn_ref);
  if (t->nvals < 0) klua_unref(klua_self(), L, UP_ANCHOR, (int)t->proto);
  else klua_values_drop(t->data, t->nvals);
  klua_payload_reset(t);
}

/* Spawns t (made, ours) and, if g's owner is spawning it, keeps it in g's
 * list (wait_all). Room in the list is made here, just before the spawn:
 * nothing between that and the keep runs Lua code (an allocation of the
 * VM's could run a finalizer that spawns into g and takes the room). */
static int spawn_kept(klua_task_t *t, int worker) {
  int keep = klua_group_keep_room(t->group, klua_self());
  if (keep < 0) return KNHK_ENOMEM;
  int rc = klua_task_spawn(t, worker);
  if (rc == 0 && keep) klua_group_keep(t->group, t, keep);
  else if (keep) klua_group_unkeep(t->group, keep);
  return rc;
}

/* Why a spawn into g was refused as closed: a nursery that closed, or,
 * for knhk.spawn, the spawning task's own children already waited for (it
 * is ending: only a finalizer run while it settles can spawn then). */
static const char *closed_why(const klua_group_t *g) {
  return g->flags & KLUA_G_IMPLICIT ? "the task is ending: its own children were already waited for"
                                    : "the nursery is closed";
}

/* Raises a spawn into g that spawn_kept refused with rc. The caller read g
 * before it let go of the task's record, which may be reused after. */
static int raise_refused(lua_State *L, int level, const char *fname, int rc,
                         const klua_group_t *g) {
  return raise_at(L, level, "%s: %s", fname, rc == KNHK_ECLOSED ? closed_why(g) : knhk_strerror(rc));
}

static int finish_spawn(lua_State *L, klua_task_t *t, int worker, const char *fname) {
  int rc = spawn_kept(t, worker);
  if (rc != 0) {
    klua_group_t *g = t->group;
    klua_task_release(t); /* ours; the spawn dropped its own */
    return raise_refused(L, 1, fname, rc, g);
  }
  push_handle(L, KLUA_H_TASK, t);
  return 1;
}

/* The commonest start: upvalues, globals' pairs and arguments that are all
 * nils, booleans, numbers and short strings, written into t's record in
 * one pass each. 1 if they fit (their first two parts' sizes in *uvsize,
 * *gsize), else 0: the general encoder measures and writes them. */
static int put_start_plain(lua_State *L, klua_task_t *t, int uvidx, int nuv, int gidx, int ng2,
                           int argidx, int nargs, int64_t *uvsize, int64_t *gsize) {
  char *b = t->buf;
  int cap = KLUA_INLINE;
  int u = klua_values_encode_plain(L, uvidx, nuv, b, cap);
  int gl = u < 0 ? -1 : klua_values_encode_plain(L, gidx, ng2, b + u, cap - u);
  int a = gl < 0 ? -1 : klua_values_encode_plain(L, argidx, nargs, b + u + gl, cap - u - gl);
  if (a < 0) return 0;
  t->len = (uint32_t)(u + gl + a);
  *uvsize = u;
  *gsize = gl;
  return 1;
}

/* A table or userdata whose metatable's __call is a function: Lua calls it
 * as it calls a function (knhk/check.lua's check.callable says the same). */
static int is_callable(lua_State *L, int idx) {
  int type = lua_type(L, idx);
  if ((type != LUA_TTABLE && type != LUA_TUSERDATA) || !lua_getmetatable(L, idx)) return 0;
  lua_pushliteral(L, "__call");
  lua_rawget(L, -2);
  int callable = lua_type(L, -1) == LUA_TFUNCTION;
  lua_pop(L, 2);
  return callable;
}

/* Raises the refusal of a task function that is neither. */
static int refuse_fn(lua_State *L, int fnidx, const char *fname) {
  return raise_at(L, 1, "bad argument #1 to '%s' (function or callable object expected, got %s)",
                  fname, luaL_typename(L, fnidx));
}

/* spawn(fn, ...) into g (NULL: the caller's own nursery), first at fnidx. */
static int spawn_portable(lua_State *L, int fnidx, klua_group_t *g, const char *api,
                          const char *fname) {
  klua_task_t *cur = current(L, api);
  if (lua_type(L, fnidx) != LUA_TFUNCTION) {
    if (!is_callable(L, fnidx)) return refuse_fn(L, fnidx, fname);
    lua_pushinteger(L, ST_SLOW); /* the codec sends it, as it would an argument */
    return 1;
  }
  if (lua_iscfunction(L, fnidx)) { lua_pushinteger(L, ST_SLOW); return 1; }
  int top = lua_gettop(L), nargs = top - fnidx;
  proto_t p;
  proto_info(L, fnidx, &p);
  if (p.slow || p.nuv > 60) { lua_pushinteger(L, ST_SLOW); return 1; }
  /* the stack above top: the upvalues, then the globals' name-value pairs */
  int ng = p.globals ? push_globals(L, fnidx, p.id) : 0;
  if (ng < 0) { lua_pushinteger(L, ST_SLOW); return 1; }
  for (uint32_t i = 1; i <= p.nuv; i++) lua_getupvalue(L, fnidx, (int)i);
  int uvidx = top + 1 + 2 * ng;
  if (!g) g = implicit_group(L, cur); /* (these two may raise: before the record is ours) */
  const char *where = portable_place_of(L, cur->rt, klua_self(), fnidx, p.id);
  klua_task_t *t = klua_task_alloc(cur->rt);
  if (!t) return luaL_error(L, "%s: out of memory", fname);
  /* payload: upvalues, the globals' pairs, the arguments */
  int64_t uvsize, gsize;
  if (!put_start_plain(L, t, uvidx, (int)p.nuv, top + 1, 2 * ng, fnidx + 1, nargs, &uvsize,
                       &gsize)) {
    const void *self = lua_topointer(L, fnidx);
    uvsize = klua_values_size(L, uvidx, (int)p.nuv, self);
    gsize = uvsize < 0 ? -1 : klua_values_size(L, top + 1, 2 * ng, self);
    int64_t argsize = gsize < 0 ? -1 : klua_values_size(L, fnidx + 1, nargs, NULL);
    if (uvsize < 0 || gsize < 0 || argsize < 0 || uvsize + gsize + argsize > 0x7fffffff) {
      klua_task_release(t);
      lua_settop(L, top);
      lua_pushinteger(L, ST_SLOW);
      return 1;
    }
    char *out = klua_payload_room(t, (uint32_t)(uvsize + gsize + argsize));
    if (!out) {
      klua_task_release(t);
      return luaL_error(L, "%s: out of memory", fname);
    }
    klua_values_encode(L, uvidx, (int)p.nuv, out, self);
    klua_values_encode(L, top + 1, 2 * ng, out + uvsize, self);
    klua_values_encode(L, fnidx + 1, nargs, out + uvsize + gsize, NULL);
  }
  if (uvsize + gsize <= 0xffff) t->start_len = (uint16_t)(uvsize + gsize);
  lua_settop(L, top);
  t->kind = KLUA_PORTABLE;
  t->pay = KLUA_PAY_INLINE;
  t->proto = (int32_t)(p.id | (uint32_t)ng << KLUA_PROTO_GLOBALS_SHIFT |
                       (p.shareable ? KLUA_PROTO_SHAREABLE : 0));
  t->nvals = nargs;
  t->group = g;
  t->cancel_parent = cancel_parent_for(cur, g);
  t->parent = cur->id;
  t->where = where;
  return finish_spawn(L, t, -1, fname);
}

static int spawn_local(lua_State *L, int fnidx, klua_group_t *g, const char *api,
                       const char *fname) {
  klua_task_t *cur = current(L, api);
  /* a callable object is kept and called as a function is: it never leaves this VM */
  if (lua_type(L, fnidx) != LUA_TFUNCTION && !is_callable(L, fnidx))
    return refuse_fn(L, fnidx, fname);
  int top = lua_gettop(L), nargs = top - fnidx;
  klua_worker_t *self = klua_self();
  if (!g) g = implicit_group(L, cur); /* (these two may raise: before the record is ours) */
  const void *fn = lua_topointer(L, fnidx);
  const char *where = local_place_of(L, cur->rt, self, fnidx, fn);
  klua_task_t *t = klua_task_alloc(cur->rt);
  if (!t) return luaL_error(L, "%s: out of memory", fname);
  t->kind = KLUA_LOCAL;
  t->group = g;
  t->cancel_parent = cancel_parent_for(cur, g);
  t->parent = cur->id;
  t->where = where;
  char *out = klua_payload_encode(t, L, fnidx + 1, nargs);
  t->pay = KLUA_PAY_REFS; /* (after the encode, which resets it) */
  if (out) {
    t->nvals = nargs;
  } else { /* arguments that are not inline: a table of them, in the home VM */
    lua_createtable(L, nargs, 1);
    for (int i = 1; i <= nargs; i++) {
      lua_pushvalue(L, fnidx + i);
      lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, nargs);
    lua_setfield(L, -2, "n");
    t->proto = klua_ref(self, L, UP_ANCHOR);
    t->nvals = -1;
  }
  t->fn_ref = klua_ref_fn(self, L, UP_ANCHOR, fnidx, fn);
  if (t->fn_ref == KLUA_REF_REPEAT) self->rep_place = t->where;
  int rc = spawn_kept(t, self->index);
  if (rc != 0) {
    undo_start(L, t);
    klua_task_release(t);
    return raise_refused(L, 1, fname, rc, g);
  }
  push_handle(L, KLUA_H_TASK, t);
  return 1;
}

/* core.spawn(fn, ...) -> handle | SLOW */
static int l_spawn(lua_State *L) { return spawn_portable(L, 1, NULL, "knhk.spawn", "spawn"); }
/* core.spawn_local(fn, ...) -> handle */
static int l_spawn_local(lua_State *L) {
  return spawn_local(L, 1, NULL, "knhk.spawn_local", "spawn_local");
}
/* core.nursery_spawn(n, fn, ...) -> handle | SLOW */
static int l_nursery_spawn(lua_State *L) {
  return spawn_portable(L, 2, GROUP_ARG(L, 1), "spawn", "spawn");
}
static int l_nursery_spawn_local(lua_State *L) {
  return spawn_local(L, 2, GROUP_ARG(L, 1), "spawn_local", "spawn_local");
}

/* t's payload: a snapshot and, after it, the handles it holds references
 * to (the list at index hidx: knhk.codec's encode gives it), as nvals
 * inline values, so that whoever never decodes it (a start that never ran)
 * or decodes it many times (results: every join decodes copies) can drop
 * them. 0 if out of memory. */
static int blob_payload(lua_State *L, klua_task_t *t, const char *snap, size_t len, int hidx) {
  int nh = lua_istable(L, hidx) ? (int)lua_objlen(L, hidx) : 0;
  char *out = klua_payload_room(t, (uint32_t)(len + (size_t)nh * KLUA_BLOB_HANDLE_BYTES));
  if (!out) return 0;
  memcpy(out, snap, len);
  char *p = out + len;
  int kept = 0;
  for (int i = 1; i <= nh; i++) {
    lua_rawgeti(L, hidx, i);
    handle_t *h = lua_touserdata(L, -1);
    int kind = h ? klua_handle_kind(L, -1) : 0;
    lua_pop(L, 1);
    if (!kind) continue; /* a kind registered by others: theirs to own */
    /* the codec exported it: a handle with its object (reattached) */
    p = klua_value_put_handle(p, kind, h->p);
    kept++;
  }
  t->len = (uint32_t)(len + (size_t)kept * KLUA_BLOB_HANDLE_BYTES);
  t->pay = KLUA_PAY_BLOB;
  t->nvals = kept;
  return 1;
}

/* The snapshot of a BLOB payload, without the handles after it. */
static uint32_t blob_len(const klua_task_t *t) {
  return t->len - (uint32_t)t->nvals * KLUA_BLOB_HANDLE_BYTES;
}

/* core.spawn_blob(nursery|nil, snapshot, place [, handles]) -> handle: a
 * start the codec made (the function's globals, tables, ...). */
static int l_spawn_blob(lua_State *L) {
  klua_task_t *cur = current(L, "spawn");
  klua_group_t *g = lua_isnil(L, 1) ? implicit_group(L, cur) : GROUP_ARG(L, 1);
  size_t len;
  const char *snap = luaL_checklstring(L, 2, &len);
  const char *place = luaL_checkstring(L, 3);
  klua_task_t *t = klua_task_alloc(cur->rt);
  if (!t || !blob_payload(L, t, snap, len, 4)) {
    if (t) klua_task_release(t);
    return luaL_error(L, "spawn: out of memory");
  }
  t->kind = KLUA_PORTABLE;
  t->group = g;
  t->cancel_parent = cancel_parent_for(cur, g);
  t->parent = cur->id;
  t->where = klua_where(cur->rt, place);
  if (!t->where) t->where = "a function";
  int rc = spawn_kept(t, -1);
  if (rc != 0) {
    klua_task_release(t);
    return raise_refused(L, 2, "spawn", rc, g);
  }
  push_handle(L, KLUA_H_TASK, t);
  return 1;
}

/* core.place_below() -> push_place_below's place for the calling coroutine, or "". */
static int l_place_below(lua_State *L) {
  push_place_below(L);
  return 1;
}

/* core.set_root_place(place): where the root task's stack goes on below
 * its frames from now on, "file:line: " or "" (none), in place of the
 * place core.root was given. For knhk-lua, which runs each chunk of the
 * program (an -e, the script) from knhk's own code: a chunk whose frame
 * went in a tail call leaves none of the program's to name. The root
 * only (it alone reads it); raises otherwise. */
static int l_set_root_place(lua_State *L) {
  const char *place = luaL_checkstring(L, 1);
  klua_task_t *t = current(L, "set_root_place");
  if (t->id != t->rt->root_id) return luaL_error(L, "set_root_place: called from a task not the root");
  t->rt->root_place = *place ? klua_where(t->rt, place) : NULL; /* (out of memory: no place) */
  return 0;
}

/* core.root(rt, fn, name [, place]) -> handle: the root task of a run, on
 * worker 0. place: the program's call of knhk.run, "file:line: " (or ""). */
static int l_root(lua_State *L) {
  klua_rt_t *rt = lua_touserdata(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  klua_task_t *t = klua_task_alloc(rt);
  if (!t) return luaL_error(L, "knhk.run: out of memory");
  t->kind = KLUA_LOCAL;
  t->pay = KLUA_PAY_REFS;
  t->nvals = 0;
  t->group = rt->root_group;
  t->cancel_parent = knhk_token_retain(rt->root_token);
  const char *w = klua_where(rt, luaL_checkstring(L, 3));
  t->where = w ? w : "the main task";
  const char *place = luaL_optstring(L, 4, "");
  rt->root_place = *place ? klua_where(rt, place) : NULL; /* (out of memory: no place) */
  rt->root_id = t->id;
  lua_pushvalue(L, 2);
  klua_worker_t *w0 = &rt->w[0]; /* this VM's: not running yet */
  t->fn_ref = klua_ref(w0, L, UP_ANCHOR);
  if (rt->signals) klua_signals_wait(); /* before any task code can run */
  int rc = klua_task_spawn(t, 0);
  if (rc != 0) {
    klua_unref(w0, L, UP_ANCHOR, t->fn_ref);
    klua_task_release(t);
    return luaL_error(L, "knhk.run: %s", knhk_strerror(rc));
  }
  push_handle(L, KLUA_H_TASK, t);
  return 1;
}

/* ------------------------------------------------------ starting, ending */

/* The closure to run prototype id: the shared one (no upvalues), an idle
 * one from the pool, or a new one. Pushes it. */
static void closure_for(lua_State *L, uint32_t id) {
  lua_rawgeti(L, UP_POOLS, (int)id);
  if (lua_isfunction(L, -1)) return; /* shared: nothing of a task is in it */
  if (lua_istable(L, -1)) {
    int n = (int)lua_objlen(L, -1);
    if (n > 0) {
      lua_rawgeti(L, -1, n);
      lua_pushnil(L);
      lua_rawseti(L, -3, n);
      lua_remove(L, -2);
      return;
    }
  }
  lua_pop(L, 1);
  lua_pushinteger(L, id);
  call_hook(L, HOOK_NEW_CLOSURE, 1, 2); /* -> closure, its prototype number */
  lua_pushvalue(L, -2);
  lua_insert(L, -2);
  lua_rawset(L, UP_PROTOS); /* so that it finds its way back to the pool */
}

/* Closures of a task's own function shared by content, as the codec
 * shares helpers (knhk/codec.lua, "Shared closures"): when the function
 * may be shared (the codec's flag) and its upvalues and globals are values
 * the same in every copy, one closure per VM serves every start with that
 * content: its traces stay, and no closure or environment is made per
 * task. Found in a weak cache (HOOK_SHARED) by the prototype id and the
 * bytes of those values. */
enum { SHARED_KEY_MAX = 256 };

/* Whether the value at p may be given to a shared closure: a builtin or
 * a module only if the codec says it is harmless (hooks.named_safe). */
static int safe_value(lua_State *L, const char *p) {
  if (*p != KLUA_V_NAMED) return 1;
  uint32_t id;
  memcpy(&id, p + 1, 4);
  PUSH_HOOK(L, HOOK_NAMED_SAFE);
  lua_rawgeti(L, -1, (int)id);
  int ok = lua_toboolean(L, -1);
  lua_pop(L, 2);
  return ok;
}

/* Pushes t's key in the cache, or returns 0 (no key: pushes nothing). Its
 * upvalues must hold no handle (a task's own) and harmless values, the
 * globals it reads only harmless builtins or modules (a number or a string
 * could change in its task's globals, as knhk/codec.lua says), and its
 * arguments no builtin that is not harmless (it could reach the closure). */
static int push_start_key(lua_State *L, const klua_task_t *t, uint32_t id, int ng) {
  uint32_t len = t->start_len;
  if (len == 0 || len > SHARED_KEY_MAX) return 0;
  const char *vals[SHARED_KEY_MAX];
  int n = 0;
  for (const char *p = t->data, *end = p + len; p < end; p = klua_values_skip(p, 1))
    vals[n++] = p; /* (each value takes a byte at least) */
  int nuv = n - 2 * ng;
  if (nuv < 0) return 0;
  for (int i = 0; i < nuv; i++)
    if (*vals[i] == KLUA_V_HANDLE || !safe_value(L, vals[i])) return 0;
  for (int i = nuv + 1; i < n; i += 2)
    if (*vals[i] != KLUA_V_NAMED || !safe_value(L, vals[i])) return 0;
  const char *arg = t->data + len;
  for (int i = 0; i < t->nvals; i++, arg = klua_values_skip(arg, 1))
    if (!safe_value(L, arg)) return 0;
  char key[4 + SHARED_KEY_MAX];
  memcpy(key, &id, 4);
  memcpy(key + 4, t->data, len);
  lua_pushlstring(L, key, 4 + len);
  return 1;
}

/* The shared closure for key (at index k), or nothing (returns 0). */
static int push_shared(lua_State *L, int k) {
  PUSH_HOOK(L, HOOK_SHARED);
  lua_pushvalue(L, k);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  if (lua_isfunction(L, -1)) return 1;
  lua_pop(L, 1);
  return 0;
}

/* core.start() -> fn, capture, args...: what task_run puts under xpcall.
 * A codec start gives runtime.lua's start_blob and the snapshot. A
 * closure of its prototype's pool is anchored (t->fn_ref) while the task
 * runs, and goes back to the pool when the task has ended (retire_fn). */
static int l_start(lua_State *L) {
  klua_task_t *t = current(L, "knhk.runtime");
  int pay = t->pay;
  if (pay == KLUA_PAY_BLOB) {
    PUSH_HOOK(L, HOOK_START_BLOB);
    PUSH_HOOK(L, HOOK_CAPTURE);
    lua_pushlstring(L, t->data, blob_len(t)); /* its handles' references: the decode's */
    klua_payload_reset(t);
    return 3;
  }
  if (pay == KLUA_PAY_INLINE) {
    uint32_t id = (uint32_t)t->proto & KLUA_PROTO_ID_MASK;
    int ng = (int)(((uint32_t)t->proto >> KLUA_PROTO_GLOBALS_SHIFT) & KLUA_PROTO_GLOBALS_MASK);
    int key = ((uint32_t)t->proto & KLUA_PROTO_SHAREABLE) && push_start_key(L, t, id, ng)
                  ? lua_gettop(L) : 0;
    if (key && push_shared(L, key)) {
      PUSH_HOOK(L, HOOK_CAPTURE);
      klua_values_push(L, t->data + t->start_len, t->nvals, 0);
      int n = 2 + t->nvals;
      klua_payload_reset(t);
      return n;
    }
    closure_for(L, id);
    int fn = lua_gettop(L);
    int nuv = 0;
    while (lua_getupvalue(L, fn, nuv + 1)) {
      lua_pop(L, 1);
      nuv++;
    }
    /* the shared closure for it, from now on: nothing of a task is in it
     * (never for code that reads globals: its environment is the task's) */
    if (nuv == 0 && !ng) {
      lua_pushvalue(L, fn);
      lua_rawseti(L, UP_POOLS, (int)id);
    } else if (key) { /* shared from now on: never back to the pool */
      PUSH_HOOK(L, HOOK_SHARED);
      lua_pushvalue(L, key);
      lua_pushvalue(L, fn);
      lua_rawset(L, -3);
      lua_pop(L, 1);
    } else {
      lua_pushvalue(L, fn);
      t->fn_ref = klua_ref(klua_self(), L, UP_ANCHOR);
    }
    PUSH_HOOK(L, HOOK_CAPTURE);
    /* upvalues first, then the globals, then the arguments */
    klua_values_push(L, t->data, nuv, fn);
    for (int i = nuv; i >= 1; i--) lua_setupvalue(L, fn, i);
    const char *rest = klua_values_skip(t->data, nuv);
    if (ng) {
      /* a fresh table of the globals it reads, over the standard library,
       * as the codec's decoder would make */
      lua_createtable(L, 0, ng);
      int env = lua_gettop(L);
      klua_values_push(L, rest, 2 * ng, fn);
      for (int i = 0; i < ng; i++) lua_rawset(L, env);
      PUSH_HOOK(L, HOOK_BASE_MT);
      lua_setmetatable(L, env);
      lua_setfenv(L, fn);
      rest = klua_values_skip(rest, 2 * ng);
    }
    klua_values_push(L, rest, t->nvals, 0);
    int n = 2 + t->nvals;
    klua_payload_reset(t);
    return n;
  }
  /* local: its function and arguments, anchored in this VM */
  return klua_push_local_start(klua_self(), L, UP_ANCHOR, t);
}

/* The closure a portable task ran goes back to its prototype's pool
 * (unless it is the shared one): the next task of that function gets the
 * same object, and the traces LuaJIT specialised on it. */
static void give_back_closure(lua_State *L, int fn) {
  if (!lua_isfunction(L, fn) || lua_iscfunction(L, fn)) return;
  lua_pushvalue(L, fn);
  lua_rawget(L, UP_PROTOS);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  uint64_t u = (uint64_t)lua_tonumber(L, -1);
  lua_pop(L, 1);
  int id = (int)(u & 0xffffff);
  /* Only a closure without upvalues is given to another task (its
   * environment is set anew). One with upvalues is not: LuaJIT's traces
   * take an upvalue that is never assigned as a constant of the closure
   * they were recorded with, so a closure re-armed with other values ran
   * the old ones once its loop was compiled. */
  if ((u >> 24) & 0xff) return;
  lua_rawgeti(L, UP_POOLS, id);
  if (lua_isfunction(L, -1)) { /* shared */
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_createtable(L, 4, 0);
    lua_pushvalue(L, -1);
    lua_rawseti(L, UP_POOLS, id);
  }
  lua_pushvalue(L, fn);
  lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
  lua_pop(L, 1);
}

/* The closure t ran goes back to its pool once t has ended (its code may
 * still run until then: a nursery's close). */
static void retire_fn(lua_State *L, klua_task_t *t) {
  if (t->fn_ref == LUA_NOREF) return;
  lua_rawgeti(L, UP_ANCHOR, t->fn_ref);
  give_back_closure(L, lua_gettop(L));
  lua_pop(L, 1);
  klua_unref(klua_self(), L, UP_ANCHOR, t->fn_ref);
  t->fn_ref = LUA_NOREF;
}

/* core.finish(ok, ...): records how the task ended (ok, then its results
 * or its error) and returns nothing, when it can; else returns how it
 * must be settled, then its arguments: 1 (its own nursery has children:
 * close it first) or 2 (the results or the error need the codec). */
static int finish_later(lua_State *L, int how) {
  lua_pushinteger(L, how);
  lua_insert(L, 1);
  return lua_gettop(L);
}

static int l_finish(lua_State *L) {
  klua_task_t *t = current(L, "knhk.runtime");
  if (t->implicit) return finish_later(L, 1);
  if (!lua_toboolean(L, 1) || !klua_task_keep_results(t, L, 2, lua_gettop(L) - 1))
    return finish_later(L, 2);
  retire_fn(L, t);
  klua_task_publish(t, KLUA_OK);
  return 0;
}

/* core.finish_blob(outcome, snapshot [, handles]) */
static int l_finish_blob(lua_State *L) {
  klua_task_t *t = current(L, "knhk.runtime");
  int outcome = (int)luaL_checkinteger(L, 1);
  size_t len;
  const char *snap = luaL_checklstring(L, 2, &len);
  if (!blob_payload(L, t, snap, len, 3)) return luaL_error(L, "knhk: out of memory");
  retire_fn(L, t);
  klua_task_publish(t, outcome);
  return 0;
}

/* core.finish_cancelled(reason): a task that a plain Cancelled ended
 * keeps only the reason code; its joiners make the TaskError. The common
 * way for a task to end under cancellation, so it skips the codec. */
static int l_finish_cancelled(lua_State *L) {
  klua_task_t *t = current(L, "knhk.runtime");
  int reason = (int)luaL_optinteger(L, 1, 0);
  klua_payload_reset(t);
  t->pay = KLUA_PAY_REASON;
  t->nvals = reason;
  retire_fn(L, t);
  klua_task_publish(t, KLUA_CANCELLED);
  return 0;
}

/* core.wait_mark(): what a task yields to wait (task_run knows it) */
static int l_wait_mark(lua_State *L) {
  lua_pushlightuserdata(L, klua_mark_wait());
  return 1;
}

/* ------------------------------------------------------------------ joins */

/* Pushes a task's results: 0, values... | 4, outcome, snapshot |
 * 5, outcome, message | 6, outcome (no payload) | 7, outcome, reason.
 * counted (join_try's): DONE says how many results (done_status), and
 * comes alone when there are more than one: task.lua takes them all with
 * core.outcome, rather than from a call that copied them for nothing. */
static int push_outcome(lua_State *L, klua_task_t *t, int oc, int counted) {
  switch (t->pay) {
  case KLUA_PAY_INLINE:
    if (oc == KLUA_OK) {
      int st = done_status(counted, t->nvals);
      lua_pushinteger(L, st);
      if (counted && st == ST_DONE) return 1;
      luaL_checkstack(L, t->nvals, "too many results");
      return 1 + klua_values_push_copies(L, t->data, t->nvals);
    }
    break;
  case KLUA_PAY_BLOB:
    lua_pushinteger(L, ST_BLOB);
    lua_pushinteger(L, oc);
    lua_pushlstring(L, t->data, blob_len(t));
    return 3;
  case KLUA_PAY_MESSAGE:
    lua_pushinteger(L, ST_MESSAGE);
    lua_pushinteger(L, oc);
    lua_pushlstring(L, t->data, t->len);
    return 3;
  case KLUA_PAY_REASON:
    lua_pushinteger(L, ST_REASON);
    lua_pushinteger(L, oc);
    lua_pushinteger(L, t->nvals);
    return 3;
  default: break;
  }
  lua_pushinteger(L, 6);
  lua_pushinteger(L, oc);
  return 2;
}

static int push_cancelled(lua_State *L, knhk_token_t *tok) {
  lua_pushinteger(L, ST_CANCELLED);
  lua_pushinteger(L, knhk_token_reason(tok));
  return 2;
}

/* A wait from inside a C function that called back into Lua cannot be
 * suspended: said where the program waited, rather than LuaJIT's "attempt
 * to yield across C-call boundary". */
static int cannot_wait_here(lua_State *L, klua_task_t *t) {
  klua_wait_end(t);
  t->recheck = 0; /* no wait is under way: a later one must not find it */
  return raise_at(L, 1, "%s%s",
                  "knhk: cannot wait here: this wait runs inside a C function that called back "
                  "into Lua (a table.sort comparator, a string.gsub callback, a __gc, or another "
                  "metamethod called from C), which cannot be suspended; wait outside it", "");
}

/* A try whose wake-up is armed suspends the task from here, yielding the
 * runtime's wait mark: resumed, the try's call returns nothing, and the
 * wait loop (runtime.lua's await and waiter, the channel's send and
 * take, join) calls it again to look. Yielding from the C function rather
 * than returning WAIT to a Lua loop that yields saves the loop's two calls (coroutine.isyieldable and
 * coroutine.yield) and the stack they take: a task that waits a frame or
 * two below its function stays within LuaJIT's first coroutine stack
 * (40 slots, 20 of them kept free at each call of a C function, and 3
 * more for the continuation of a trace that stitches around one); a
 * stack that outgrows it is reallocated at twice the size, a million
 * sleeping tasks' worth of memory. */
static int yield_wait(lua_State *L, klua_task_t *t) {
  if (!lua_isyieldable(L)) return cannot_wait_here(L, t);
  lua_pushlightuserdata(L, klua_mark_wait());
  return lua_yield(L, 1);
}

/* The end of every try that has to wait: its cancellation armed on tok,
 * then the task suspended (yield_wait); or, cancelled meanwhile, what it
 * armed taken back and CANCELLED. recheck: the task's next step looks at
 * the token before anything else (it may then be ended without being
 * resumed). */
static int wait_unless_cancelled(lua_State *L, klua_task_t *t, knhk_token_t *tok, int recheck) {
  if (klua_wait_arm_cancel(t, tok)) {
    klua_wait_end(t);
    return push_cancelled(L, tok);
  }
  if (recheck) t->recheck = 1;
  return yield_wait(L, t);
}

/* A detached handle's results, as push_outcome gives a joined task's. */
static int push_kept(lua_State *L, const task_handle_t *th, int counted) {
  int none = kept_what(th) == KLUA_KEPT_NONE;
  lua_pushinteger(L, done_status(counted, !none));
  switch (kept_what(th)) {
  case KLUA_KEPT_NONE: return 1;
  case KLUA_KEPT_NIL: lua_pushnil(L); break;
  case KLUA_KEPT_FALSE: lua_pushboolean(L, 0); break;
  case KLUA_KEPT_TRUE: lua_pushboolean(L, 1); break;
  default: lua_pushnumber(L, th->num); break;
  }
  return 2;
}

/* After a join of th's task, which ended well: keeps its result in the
 * handle and lets go of the record, if the result fits. */
static int detach(task_handle_t *th, klua_task_t *t) {
  klua_kept_t k;
  if (!klua_task_keepable(t, &k)) return 0;
  th->h.p = (void *)k.p;
  th->num = k.num;
  klua_task_release(t);
  return 1;
}

/* core.join_try(h) */
static int l_join_try(lua_State *L) {
  /* Not a task handle: the Lua side raises, naming the method, so that
   * h:join() checks its self here, once, and not before the call too. */
  task_handle_t *th = lua_touserdata(L, 1);
  if (!th || !is_task_handle(L, 1)) {
    lua_pushinteger(L, ST_NOT_HANDLE);
    return 1;
  }
  check_live(L, &th->h, KLUA_H_TASK, "task handle");
  klua_task_t *target = task_of(th);
  klua_task_t *t = current(L, "join");
  if (target == t) return raise_at(L, 2, "join: a task cannot join itself%s%s", "", "");
  klua_wait_end(t);
  /* a checkpoint: a cancelled scope raises, whether or not it has ended */
  knhk_token_t *tok = klua_task_checkpoint_token(t);
  if (knhk_token_is_cancelled(tok)) return push_cancelled(L, tok);
  if (!target) return push_kept(L, th, 1);
  int oc = klua_task_outcome(target);
  if (oc == KLUA_RUNNING) {
    if (!klua_wait_arm_join(t, target)) return wait_unless_cancelled(L, t, tok, 1);
    klua_wait_end(t);
    oc = klua_task_outcome(target);
  }
  atomic_store_explicit(&target->flags, KLUA_T_JOINED, memory_order_relaxed);
  int n = push_outcome(L, target, oc, 1);
  if (oc == KLUA_OK && detach(th, target)) set_task_mt(L, 1, th);
  return n;
}

/* core.outcome(h) -> outcome code, and the results as join_try gives
 * them (for a task known to have ended: a nursery's failures). */
static int l_outcome(lua_State *L) {
  task_handle_t *th = TASK_HANDLE(L, 1);
  klua_task_t *t = task_of(th);
  if (!t) return push_kept(L, th, 0);
  int oc = klua_task_outcome(t);
  if (oc == KLUA_RUNNING) {
    lua_pushinteger(L, ST_WAIT);
    return 1;
  }
  return push_outcome(L, t, oc, 0);
}

static int l_task_id(lua_State *L) {
  task_handle_t *th = TASK_HANDLE(L, 1);
  klua_task_t *t = task_of(th);
  lua_pushnumber(L, (double)(t ? t->id : kept_id(th)));
  return 1;
}

/* A detached handle's task ended and was joined: done, joined, and
 * cancelling it does nothing (as for any task that ended). */
static int l_task_done(lua_State *L) {
  klua_task_t *t = TASK_ARG(L, 1);
  lua_pushboolean(L, !t || klua_task_outcome(t) != KLUA_RUNNING);
  return 1;
}

static int l_task_cancel(lua_State *L) {
  klua_task_t *t = TASK_ARG(L, 1);
  if (t) klua_task_cancel(t);
  return 0;
}

/* ----------------------------------------------------- waits, cancellation */

/* core.cancelled() -> reason, or nil: the caller's scope is not cancelled */
static int l_cancelled(lua_State *L) {
  klua_task_t *t = current(L, "knhk.checkpoint");
  knhk_token_t *tok = klua_task_checkpoint_token(t);
  if (!knhk_token_is_cancelled(tok)) return 0;
  lua_pushinteger(L, knhk_token_reason(tok));
  return 1;
}

/* core.reschedule() -> true, queued again at once (a checkpoint lets the
 * others run), or false inside a C function that called back into Lua (a
 * table.sort comparator, ...), which cannot be suspended: there a
 * checkpoint is a cancellation point only. */
static int l_reschedule(lua_State *L) {
  klua_task_t *t = current(L, "knhk.checkpoint");
  if (!lua_isyieldable(L)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  t->recheck = 1; /* knhk.checkpoint looks at the token again */
  klua_wake(t);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.wait_end(): takes back what the last wait armed (a wait left early) */
static int l_wait_end(lua_State *L) {
  klua_task_t *t = current(L, "knhk.runtime");
  klua_wait_end(t);
  return 0;
}

/* core.sleep_try(deadline_ns) */
static int l_sleep_try(lua_State *L) {
  klua_task_t *t = current(L, "knhk.sleep");
  double deadline = luaL_checknumber(L, 1);
  klua_wait_end(t);
  knhk_token_t *tok = klua_task_checkpoint_token(t);
  if (knhk_token_is_cancelled(tok)) return push_cancelled(L, tok);
  if ((double)knhk_reactor_now(t->rt->reactor) >= deadline) {
    lua_pushinteger(L, ST_DONE);
    return 1;
  }
  int rc = klua_wait_arm_sleep(t, deadline >= KLUA_NEVER_NS ? UINT64_MAX : (uint64_t)deadline);
  if (rc != 0) return raise_at(L, 2, "knhk.sleep: %s%s", knhk_strerror(rc), "");
  return wait_unless_cancelled(L, t, tok, 1);
}

/* core.wait_try(uncancellable): a wait whose wake-up someone else arms
 * (exec, the REPL's lines): only its cancellation is armed here. */
static int l_wait_try(lua_State *L) {
  klua_task_t *t = current(L, "wait");
  klua_wait_end(t);
  if (!lua_toboolean(L, 1)) {
    knhk_token_t *tok = klua_task_checkpoint_token(t);
    if (klua_wait_arm_cancel(t, tok)) {
      klua_wait_end(t);
      return push_cancelled(L, tok);
    }
  }
  /* WAIT, not a yield: the caller arms the wake-up, then yields */
  if (!lua_isyieldable(L)) return cannot_wait_here(L, t);
  lua_pushinteger(L, ST_WAIT);
  return 1;
}

/* core.scope_token([own]) -> lightuserdata of the token the caller's
 * checkpoints look at (for the FFI calls that stop on cancellation: exec).
 * With own, outside any scope of its, the task's own token, made now if it
 * had none: a call that watches a token for its whole length must hear
 * h:cancel(), which cancels that token (made then, it would be one the
 * call never watched). */
static int l_scope_token(lua_State *L) {
  klua_task_t *t = current(L, "knhk");
  knhk_token_t *tok = NULL;
  if (lua_toboolean(L, 1) && !t->scope) tok = klua_task_own_token(t);
  lua_pushlightuserdata(L, tok ? tok : klua_task_checkpoint_token(t));
  return 1;
}

/* core.current_ptr() -> lightuserdata of the running task (for the FFI
 * calls that wake it: exec, line input) */
static int l_current_ptr(lua_State *L) {
  lua_pushlightuserdata(L, current(L, "knhk"));
  return 1;
}

/* core.current_local() -> whether the running task is local (spawn_local,
 * the root): it shares its VM with whoever spawned it. */
static int l_current_local(lua_State *L) {
  lua_pushboolean(L, current(L, "knhk")->kind == KLUA_LOCAL);
  return 1;
}

/* --------------------------------------------------------------- scopes */

/* core.scope_enter(deadline_ns or nil, shield) -> token, previous scope,
 * deadline (lightuserdata, or nil) for scope_exit. A deadline of 0 is a
 * real one (a virtual clock starts at 0): it is due at once. */
static int l_scope_enter(lua_State *L) {
  klua_task_t *t = current(L, "knhk.cancel_scope");
  int has_deadline = !lua_isnoneornil(L, 1);
  double deadline = has_deadline ? luaL_checknumber(L, 1) : 0;
  int shield = lua_toboolean(L, 2);
  knhk_token_t *parent = NULL;
  if (!shield) parent = t->scope ? t->scope : klua_task_own_token(t);
  knhk_token_t *tok = NULL;
  if (knhk_token_new(&tok, parent) != 0) return luaL_error(L, "knhk: out of memory");
  knhk_deadline_t *dl = NULL;
  if (has_deadline) {
    uint64_t at = deadline >= KLUA_NEVER_NS ? UINT64_MAX : deadline <= 0 ? 0 : (uint64_t)deadline;
    int rc = knhk_deadline_start(&dl, t->rt->reactor, tok, at);
    if (rc != 0) {
      knhk_token_release(tok);
      return luaL_error(L, "knhk.cancel_scope: cannot arm the deadline: %s", knhk_strerror(rc));
    }
  }
  push_handle(L, KLUA_H_TOKEN, tok); /* owns the token's reference */
  if (t->scope) lua_pushlightuserdata(L, t->scope);
  else lua_pushnil(L);
  if (dl) lua_pushlightuserdata(L, dl);
  else lua_pushnil(L);
  t->scope = tok;
  return 3;
}

/* core.scope_exit(token, previous, deadline) -> reason (0: not cancelled),
 * whether the scope around it is cancelled too */
static int l_scope_exit(lua_State *L) {
  klua_task_t *t = current(L, "knhk.cancel_scope");
  knhk_token_t *tok = TOKEN_ARG(L, 1);
  t->scope = lua_touserdata(L, 2);
  knhk_deadline_t *dl = lua_touserdata(L, 3);
  if (dl) knhk_deadline_stop(dl);
  lua_pushinteger(L, knhk_token_reason(tok));
  lua_pushboolean(L, knhk_token_is_cancelled(klua_task_checkpoint_token(t)));
  return 2;
}

/* ----------------------------------------------------------------- tokens */

static int l_token_new(lua_State *L) {
  knhk_token_t *parent = lua_isnoneornil(L, 1) ? NULL : TOKEN_ARG(L, 1);
  knhk_token_t *tok = NULL;
  int rc = knhk_token_new(&tok, parent);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, knhk_strerror(rc));
    lua_pushinteger(L, rc);
    return 3;
  }
  push_handle(L, KLUA_H_TOKEN, tok);
  return 1;
}

static int l_token_cancel(lua_State *L) {
  knhk_token_cancel(TOKEN_ARG(L, 1), KNHK_CANCEL_EXPLICIT);
  return 0;
}

static int l_token_is_cancelled(lua_State *L) {
  lua_pushboolean(L, knhk_token_is_cancelled(TOKEN_ARG(L, 1)));
  return 1;
}

static int l_token_reason(lua_State *L) {
  lua_pushinteger(L, knhk_token_reason(TOKEN_ARG(L, 1)));
  return 1;
}

/* core.token_wait_try(token) */
static int l_token_wait_try(lua_State *L) {
  knhk_token_t *watched = TOKEN_ARG(L, 1);
  klua_task_t *t = current(L, "token:wait");
  klua_wait_end(t);
  if (knhk_token_is_cancelled(watched)) {
    lua_pushinteger(L, ST_DONE);
    return 1;
  }
  knhk_token_t *tok = klua_task_checkpoint_token(t);
  if (knhk_token_is_cancelled(tok)) return push_cancelled(L, tok);
  int armed = klua_wait_arm_watch(t, watched);
  if (armed < 0) return luaL_error(L, "token:wait: out of memory");
  if (armed || klua_wait_arm_cancel(t, tok)) {
    klua_wait_end(t);
    if (knhk_token_is_cancelled(watched)) {
      lua_pushinteger(L, ST_DONE);
      return 1;
    }
    return push_cancelled(L, tok);
  }
  return yield_wait(L, t);
}

/* --------------------------------------------------------------- nurseries */

/* core.nursery_open(supervise) -> nursery, previous scope: the body runs
 * in the nursery's scope (a failing child or n:cancel() reaches it). */
static int l_nursery_open(lua_State *L) {
  klua_task_t *t = current(L, "knhk.nursery");
  knhk_token_t *parent = t->scope ? t->scope : klua_task_own_token(t);
  knhk_token_t *tok = NULL;
  if (!parent || knhk_token_new(&tok, parent) != 0) return luaL_error(L, "knhk: out of memory");
  klua_group_t *g =
      klua_group_new(t->rt, tok, KLUA_G_ORDERED | (lua_toboolean(L, 1) ? KLUA_G_SUPERVISE : 0));
  knhk_token_release(tok); /* the group holds it */
  if (!g) return luaL_error(L, "knhk: out of memory");
  g->owner_worker = klua_self()->index;
  push_handle(L, KLUA_H_NURSERY, g);
  if (t->scope) lua_pushlightuserdata(L, t->scope);
  else lua_pushnil(L);
  t->scope = g->token;
  return 2;
}

/* core.nursery_body_done(n, previous scope) */
static int l_nursery_body_done(lua_State *L) {
  (void)GROUP_ARG(L, 1);
  klua_task_t *t = current(L, "knhk.nursery");
  t->scope = lua_touserdata(L, 2);
  return 0;
}

/* core.nursery_fail(n): the body failed: the children are cancelled */
static int l_nursery_fail(lua_State *L) {
  klua_group_t *g = GROUP_ARG(L, 1);
  atomic_store(&g->sibling_cancelled, 1);
  knhk_token_cancel(g->token, KNHK_CANCEL_SIBLING);
  return 0;
}

static int l_nursery_cancel(lua_State *L) {
  knhk_token_cancel(GROUP_ARG(L, 1)->token, KNHK_CANCEL_EXPLICIT);
  return 0;
}

static int l_nursery_closed(lua_State *L) {
  lua_pushboolean(L, atomic_load(&GROUP_ARG(L, 1)->closed));
  return 1;
}

static int l_nursery_cancelled(lua_State *L) {
  lua_pushboolean(L, knhk_token_is_cancelled(GROUP_ARG(L, 1)->token));
  return 1;
}

/* core.nursery_children(n) -> how many children were spawned into it so
 * far, from any worker (wait_all's; its owner's call) */
static int l_nursery_children(lua_State *L) {
  klua_group_t *g = GROUP_ARG(L, 1);
  int owner = klua_group_owned_by(g, klua_self());
  if (owner) klua_group_take_foreign(g);
  lua_pushinteger(L, owner ? (lua_Integer)g->nkept : 0);
  return 1;
}

/* core.nursery_child(n, i) -> a handle of the i-th of those */
static int l_nursery_child(lua_State *L) {
  klua_group_t *g = GROUP_ARG(L, 1);
  lua_Integer i = luaL_checkinteger(L, 2);
  if (!klua_group_owned_by(g, klua_self()) || i < 1 || i > (lua_Integer)g->nkept)
    return luaL_error(L, "nursery_child: no child %d", (int)i);
  klua_kept_t k = g->kept[i - 1]; /* (a copy: see push_kept_child) */
  if (klua_kept_is_record(&k)) klua_task_retain((klua_task_t *)k.p); /* the handle's */
  push_kept_child(L, k);
  return 1;
}

/* g, or the calling task's own nursery (nil) */
static klua_group_t *group_or_own(lua_State *L, int idx, klua_task_t *t) {
  if (lua_isnoneornil(L, idx)) return t->implicit;
  return GROUP_ARG(L, idx);
}

/* core.next_ended_try(n) -> 0, handle | 0 (none live, none left) | 1 */
static int l_next_ended_try(lua_State *L) {
  klua_task_t *t = current(L, "join_next");
  klua_group_t *g = group_or_own(L, 1, t);
  klua_wait_end(t);
  /* a checkpoint, as every wait: a cancelled scope (the nursery's own, or
   * one around it) raises Cancelled here, rather than the wait returning
   * whatever its children left when they were cancelled */
  knhk_token_t *tok = klua_task_checkpoint_token(t);
  if (klua_group_owned_by(g, klua_self())) klua_group_tidy(g);
  for (;;) {
    if (knhk_token_is_cancelled(tok)) return push_cancelled(L, tok);
    klua_kept_t c;
    if (klua_group_next_ended(g, &c)) {
      lua_pushinteger(L, ST_DONE);
      push_kept_child(L, c); /* takes the group's reference */
      return 2;
    }
    if (klua_group_live(g) == 0) {
      /* A child that ended between the look above and this one pushed
       * itself on the ended list before it stopped counting as live
       * (klua_group_child_ended): seeing it not live, we see it there.
       * Answering "none left" dropped it: join_next returned nil, and
       * wait_any raised "no child", for a child that had completed. */
      if (klua_group_has_ended(g)) continue;
      lua_pushinteger(L, ST_DONE);
      return 1;
    }
    uint64_t seen = atomic_load_explicit(&g->ends, memory_order_seq_cst);
    /* one that ended meanwhile is taken at the top (a look, not a pop:
     * popping it here dropped it, and a wait_any then missed its winner) */
    if (klua_group_has_ended(g)) continue;
    if (klua_group_notify(g, t, seen) == KNHK_EALREADY) {
      klua_group_unnotify(g, t);
      continue;
    }
    t->w->kind = KLUA_WAIT_GROUP;
    t->w->on = g;
    return wait_unless_cancelled(L, t, tok, 0);
  }
}

/* core.close_try(n|nil [, close]): waits (not cancellable) until no
 * child is live, then (unless close is false) closes it, in one step with
 * that check -> 0 | 1 */
static int l_close_try(lua_State *L) {
  klua_task_t *t = current(L, "knhk.nursery");
  klua_group_t *g = group_or_own(L, 1, t);
  int close = lua_isnoneornil(L, 2) || lua_toboolean(L, 2);
  klua_wait_end(t);
  for (;;) {
    if (close ? klua_group_close_if_idle(g) == 0 : klua_group_live(g) == 0) {
      if (close) klua_group_closed(g);
      lua_pushinteger(L, ST_DONE);
      return 1;
    }
    if (klua_group_notify(g, t, UINT64_MAX) == KNHK_EALREADY) {
      klua_group_unnotify(g, t);
      continue;
    }
    t->w->kind = KLUA_WAIT_GROUP;
    t->w->on = g;
    return yield_wait(L, t);
  }
}

/* core.stalled(rt) -> whether a virtual clock found every task waiting
 * with nothing left to wake one (and cancelled the run), and those tasks
 * ("\n  task N (...) waiting <for what>, on worker W" each) */
static int l_stalled(lua_State *L) {
  klua_rt_t *rt = lua_touserdata(L, 1);
  int stalled = rt && atomic_load(&rt->stalled);
  lua_pushboolean(L, stalled);
  lua_pushstring(L, stalled && rt->stall_text ? rt->stall_text : "");
  return 2;
}

/* core.nursery_failed(n) -> whether a child failed (its failure may have been joined since) */
static int l_nursery_failed(lua_State *L) {
  lua_pushboolean(L, klua_group_any_failed(GROUP_ARG(L, 1)));
  return 1;
}

/* core.failures(n|nil) -> { handles of failed children nobody joined } */
static int l_failures(lua_State *L) {
  klua_task_t *t = current(L, "knhk.nursery");
  klua_group_t *g = group_or_own(L, 1, t);
  uint32_t n = 0;
  klua_task_t **f = klua_group_take_failures(g, &n);
  lua_createtable(L, (int)n, 0);
  int k = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (klua_task_joined(f[i])) {
      klua_task_release(f[i]);
    } else {
      push_handle(L, KLUA_H_TASK, f[i]);
      lua_rawseti(L, -2, ++k);
    }
  }
  free(f);
  return 1;
}

/* core.tel_wait_begin(n|nil) -> a span (0: not recording): the owner
 * waits for the nursery's children. core.tel_wait_end(span). */
static int l_tel_wait_begin(lua_State *L) {
  klua_task_t *t = current(L, "knhk.nursery");
  klua_group_t *g = group_or_own(L, 1, t);
  uint64_t span = g ? knhk_telemetry_group_wait_begin(&g->tel, klua_group_live(g)) : 0;
  if (!span) return 0;
  lua_pushlstring(L, (const char *)&span, sizeof span); /* 64 bits: more than a number holds */
  return 1;
}

static int l_tel_wait_end(lua_State *L) {
  size_t len;
  const char *s = lua_tolstring(L, 1, &len);
  uint64_t span = 0;
  if (s && len == sizeof span) memcpy(&span, s, sizeof span);
  if (span) knhk_telemetry_nursery_wait_end(span);
  return 0;
}

/* core.tel_enabled() -> whether telemetry is being recorded: asked before
 * knhk.telemetry (and the FFI's cdef it loads) is needed at all */
static int l_tel_enabled(lua_State *L) {
  lua_pushboolean(L, knhk_telemetry_enabled());
  return 1;
}

/* core.tel_task_error(message): the running task fails with it */
static int l_tel_task_error(lua_State *L) {
  if (knhk_telemetry_enabled()) knhk_telemetry_task_error(luaL_checkstring(L, 1));
  return 0;
}

/* core.drop_own(): the task's own nursery is closed: it goes */
static int l_drop_own(lua_State *L) {
  klua_task_t *t = current(L, "knhk.runtime");
  klua_group_release(t->implicit);
  t->implicit = NULL;
  return 0;
}

/* --------------------------------------------------------------- channels */

/* core.channel(capacity) -> channel | nil, message, code (sync.lua checked
 * the capacity: a whole number in 0..core.CHAN_MAX) */
static int l_channel(lua_State *L) {
  double cap = luaL_checknumber(L, 1);
  klua_sync_t *s = cap >= 0 && cap <= KLUA_CHAN_MAX ? klua_chan_new((uint32_t)cap) : NULL;
  if (!s) {
    lua_pushnil(L);
    lua_pushfstring(L, "channel: cannot make one of capacity %f: %s", cap,
                    knhk_strerror(KNHK_ENOMEM));
    lua_pushinteger(L, KNHK_ENOMEM);
    return 3;
  }
  push_handle(L, KLUA_H_CHANNEL, s);
  return 1;
}

static int sync_status(lua_State *L, int st, klua_task_t *t) {
  if (st == KLUA_SYNC_CANCELLED) return push_cancelled(L, klua_task_checkpoint_token(t));
  if (st < 0) return raise_at(L, 2, "knhk: %s%s", knhk_strerror(st), "");
  if (st == KLUA_SYNC_WAIT) return yield_wait(L, t);
  lua_pushinteger(L, st == KLUA_SYNC_DONE ? ST_DONE : ST_CLOSED);
  return 1;
}

/* core.send_try(ch, v) -> 0 | 1 | 2 (closed) | 3, reason | 6 (needs the codec) */
static int l_send_try(lua_State *L) {
  klua_sync_t *s = SYNC_ARG(L, 1, KLUA_H_CHANNEL, "channel");
  klua_task_t *t = current(L, "send");
  lua_settop(L, 2);
  int64_t size = klua_values_size(L, 2, 1, NULL);
  if (size < 0) {
    lua_pushinteger(L, ST_SLOW);
    return 1;
  }
  char small[64];
  char *buf = size <= (int64_t)sizeof small ? small : malloc((size_t)size);
  if (!buf) return luaL_error(L, "send: out of memory");
  klua_values_encode(L, 2, 1, buf, NULL);
  klua_val_t v = {KLUA_VAL_INLINE, buf, (uint32_t)size};
  int st = klua_chan_try_send(s, t, &v, klua_task_checkpoint_token(t));
  /* The references the encoding took on handles belong to the copy the
   * channel keeps: sent, or waiting in a rendezvous sender's node. Else
   * they go now. */
  int kept = st == KLUA_SYNC_DONE || (st == KLUA_SYNC_WAIT && klua_chan_capacity(s) == 0);
  if (!kept) klua_values_drop(buf, 1);
  if (buf != small) free(buf);
  return sync_status(L, st, t);
}

/* core.send_blob_try(ch, snapshot) */
static int l_send_blob_try(lua_State *L) {
  klua_sync_t *s = SYNC_ARG(L, 1, KLUA_H_CHANNEL, "channel");
  klua_task_t *t = current(L, "send");
  size_t len;
  const char *snap = luaL_checklstring(L, 2, &len);
  klua_val_t v = {KLUA_VAL_BLOB, snap, (uint32_t)len};
  return sync_status(L, klua_chan_try_send(s, t, &v, klua_task_checkpoint_token(t)), t);
}

/* Pushes a value received, from the index'th channel (0: one channel,
 * no index): 0, [index,] value | 4, [index,] snapshot. */
static inline int push_received(lua_State *L, klua_val_t *v, int index) {
  int blob = v->kind == KLUA_VAL_BLOB;
  lua_pushinteger(L, blob ? ST_BLOB : ST_DONE);
  if (index > 0) lua_pushinteger(L, index);
  if (blob) lua_pushlstring(L, v->p, v->len);
  else if (v->len) klua_values_push(L, v->p, 1, 0);
  else lua_pushnil(L);
  klua_val_free(v);
  return index > 0 ? 3 : 2;
}

/* core.recv_try(ch) -> 0, value | 4, snapshot | 1 | 2 | 3, reason */
static int l_recv_try(lua_State *L) {
  klua_sync_t *s = SYNC_ARG(L, 1, KLUA_H_CHANNEL, "channel");
  klua_task_t *t = current(L, "recv");
  klua_val_t v;
  int st = klua_chan_try_recv(s, t, &v, klua_task_checkpoint_token(t));
  if (st != KLUA_SYNC_DONE) return sync_status(L, st, t);
  return push_received(L, &v, 0);
}

/* core.recv_any_try(list) -> 0, i, value | 4, i, snapshot | 1 | 2 (every
 * channel closed and drained) | 3, reason. list: 1..n channels (sync.lua
 * checked them: here a wrong one is only refused) */
static int l_recv_any_try(lua_State *L) {
  enum { SMALL = 16 };
  luaL_checktype(L, 1, LUA_TTABLE);
  uint32_t n = (uint32_t)lua_objlen(L, 1);
  if (n == 0) return raise_at(L, 2, "recv_any: no channels to receive from%s%s", "", "");
  klua_task_t *t = current(L, "recv_any");
  klua_sync_t *small[SMALL];
  klua_sync_t **chs = n <= SMALL ? small : malloc(n * sizeof *chs);
  if (!chs) return luaL_error(L, "recv_any: out of memory");
  for (uint32_t i = 0; i < n; i++) {
    lua_rawgeti(L, 1, (int)i + 1);
    handle_t *h = lua_touserdata(L, -1);
    if (!h || !is_kind(L, -1, KLUA_H_CHANNEL)) {
      const char *got = luaL_typename(L, -1);
      if (chs != small) free(chs);
      return raise_at(L, 2, "recv_any: channel expected at [%s], got %s",
                      lua_pushfstring(L, "%d", (int)i + 1), got);
    }
    lua_pop(L, 1);
    chs[i] = h->p;
  }
  klua_val_t v;
  uint32_t which = 0;
  int st = klua_chan_try_recv_any(chs, n, t, &v, &which, klua_task_checkpoint_token(t));
  if (chs != small) free(chs);
  if (st != KLUA_SYNC_DONE) return sync_status(L, st, t);
  return push_received(L, &v, (int)which + 1);
}

static int l_chan_close(lua_State *L) {
  lua_pushboolean(L, klua_chan_close(SYNC_ARG(L, 1, KLUA_H_CHANNEL, "channel")) == 0);
  return 1;
}

static int l_chan_closed(lua_State *L) {
  lua_pushboolean(L, klua_chan_closed(SYNC_ARG(L, 1, KLUA_H_CHANNEL, "channel")));
  return 1;
}

static int l_chan_len(lua_State *L) {
  lua_pushinteger(L, klua_chan_count(SYNC_ARG(L, 1, KLUA_H_CHANNEL, "channel")));
  return 1;
}

static int l_chan_capacity(lua_State *L) {
  lua_pushinteger(L, klua_chan_capacity(SYNC_ARG(L, 1, KLUA_H_CHANNEL, "channel")));
  return 1;
}

/* ----------------------------------------------------- semaphores, events */

static int l_semaphore(lua_State *L) {
  klua_sync_t *s = klua_sem_new((int64_t)luaL_checknumber(L, 1));
  if (!s) return 0;
  if (lua_toboolean(L, 2)) klua_sem_make_lock(s);
  push_handle(L, lua_toboolean(L, 2) ? KLUA_H_LOCK : KLUA_H_SEMAPHORE, s);
  return 1;
}

static klua_sync_t *sem_arg(lua_State *L) {
  handle_t *h = lua_touserdata(L, 1);
  int k = klua_handle_kind(L, 1);
  if (!h || (k != KLUA_H_SEMAPHORE && k != KLUA_H_LOCK))
    return SYNC_ARG(L, 1, KLUA_H_SEMAPHORE, "semaphore");
  return h->p;
}

static int l_acquire_try(lua_State *L) {
  klua_sync_t *s = sem_arg(L);
  klua_task_t *t = current(L, "acquire");
  if (klua_handle_kind(L, 1) == KLUA_H_LOCK && klua_lock_owner(s) == t->id)
    return raise_at(L, 1, "lock: this task holds the lock already (a lock is not re-entrant)%s%s",
                    "", "");
  return sync_status(L, klua_sem_try_acquire(s, t, klua_task_checkpoint_token(t)), t);
}

static int l_release(lua_State *L) {
  klua_sync_t *s = sem_arg(L);
  if (klua_handle_kind(L, 1) != KLUA_H_LOCK) {
    klua_sem_release(s, NULL);
    return 0;
  }
  klua_task_t *t = current(L, "unlock");
  if (klua_sem_release(s, t) == 0) return 0;
  uint64_t owner = klua_lock_owner(s);
  if (!owner) return raise_at(L, 1, "unlock: the lock is not held%s%s", "", "");
  char who[64];
  snprintf(who, sizeof who, "%llu, not by this task (task %llu)", (unsigned long long)owner,
           (unsigned long long)t->id);
  return raise_at(L, 1, "unlock: the lock is held by task %s%s", who, "");
}

static int l_permits(lua_State *L) {
  lua_pushnumber(L, (double)klua_sem_permits(sem_arg(L)));
  return 1;
}

static int l_event(lua_State *L) {
  klua_sync_t *s = klua_event_new();
  if (!s) return 0;
  push_handle(L, KLUA_H_EVENT, s);
  return 1;
}

static int l_event_wait_try(lua_State *L) {
  klua_sync_t *s = SYNC_ARG(L, 1, KLUA_H_EVENT, "event");
  klua_task_t *t = current(L, "wait");
  return sync_status(L, klua_event_try_wait(s, t, klua_task_checkpoint_token(t)), t);
}

static int l_event_set(lua_State *L) {
  klua_event_set(SYNC_ARG(L, 1, KLUA_H_EVENT, "event"));
  return 0;
}

static int l_event_is_set(lua_State *L) {
  lua_pushboolean(L, klua_event_is_set(SYNC_ARG(L, 1, KLUA_H_EVENT, "event")));
  return 1;
}

/* ---------------------------------------------------------------- queries */

static klua_rt_t *rt_of_vm(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "knhk.rt");
  klua_rt_t *rt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return rt;
}

/* core.now() -> nanoseconds on the runtime's clock, or nil outside a run */
static int l_now(lua_State *L) {
  klua_rt_t *rt = rt_of_vm(L);
  if (!rt || !atomic_load(&live_gen)) return 0;
  lua_pushnumber(L, (double)knhk_reactor_now(rt->reactor));
  return 1;
}

/* core.current() -> id, worker of the running task, or nothing */
/* core.place() -> where the running task's function is ("function at
 * file:line"), for messages about the task as a whole */
static int l_place(lua_State *L) {
  klua_task_t *t = current(L, "knhk.runtime");
  lua_pushstring(L, t->where ? t->where : "a function");
  return 1;
}

static int l_current(lua_State *L) {
  klua_worker_t *w = klua_self();
  if (!w || !w->cur || w->cur->co != L) return 0;
  lua_pushnumber(L, (double)w->cur->id);
  lua_pushinteger(L, w->index);
  return 2;
}

/* core.tasks(rt, only_running) -> { {id, parent, started_ns, worker,
 * state, where, kind [, wait] [, ended]}, ... } of the tasks spawned and
 * not retired (worker -1: queued, not started yet); kind: "local"
 * (spawn_local: it runs on its spawner's worker) or "portable";
 * `wait`: what it waits for, as a deadlock's report says it, only for a
 * task that waits on the caller's own worker: no other thread runs it, so
 * its wait holds still while the caller reads it (a task of another worker
 * may end its wait and begin another meanwhile: `state` is all there is
 * of it, as it was at one instant);
 * `ended`: its outcome is published (joiners have it), the record not
 * retired yet */

static void push_row(void *ud, const klua_task_view_t *v) {
  lua_State *L = ud;
  int state = v->state;
  /* The executor marks a task running as a worker takes it, and the
   * task's first run (task_run) records that worker only after, having
   * opened the worker's VM the first time: a task seen in between has
   * not started, and is listed as such (queued, on no worker), never as
   * running on worker -1. */
  int worker = v->home;
  if (worker < 0) state = KNHK_TASK_QUEUED;
  klua_worker_t *self = klua_self();
  lua_createtable(L, 0, 8);
  lua_pushnumber(L, (double)v->id);
  lua_setfield(L, -2, "id");
  if (v->parent) {
    lua_pushnumber(L, (double)v->parent);
    lua_setfield(L, -2, "parent");
  }
  lua_pushnumber(L, (double)v->started_ns);
  lua_setfield(L, -2, "started_ns");
  lua_pushinteger(L, worker);
  lua_setfield(L, -2, "worker");
  lua_pushstring(L, state == KNHK_TASK_RUNNING ? "running" : state == KNHK_TASK_PARKED ? "waiting"
                                                                                       : "queued");
  lua_setfield(L, -2, "state");
  lua_pushstring(L, v->where);
  lua_setfield(L, -2, "where");
  lua_pushstring(L, v->kind == KLUA_LOCAL ? "local" : "portable");
  lua_setfield(L, -2, "kind");
  if (state == KNHK_TASK_PARKED && self && v->t != self->cur && worker == self->index) {
    char what[96];
    klua_wait_describe(v->t, what, sizeof what);
    lua_pushstring(L, what);
    lua_setfield(L, -2, "wait");
  }
  if (v->outcome != KLUA_RUNNING) { /* its outcome is out; it is being retired */
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "ended");
  }
  lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
}

static int l_tasks(lua_State *L) {
  klua_rt_t *rt = rt_of_vm(L);
  lua_newtable(L);
  if (!rt) return 1;
  klua_tasks_each(rt, push_row, L);
  return 1;
}

/* ------------------------------------------------------- the runtime */

/* core.new(workers [, seed [, clock [, signals]]]) -> rt | error. A seed
 * (a whole number in 0..2^53) asks for a seeded schedule, which needs
 * workers == 1; clock: 0 real (default), 1 virtual (knhk/clock.h);
 * signals: SIGINT and SIGTERM cancel the run (klua_signals.c). */
static int l_new(lua_State *L) {
  int workers = (int)luaL_checkinteger(L, 1);
  int clock = (int)luaL_optinteger(L, 3, KNHK_CLOCK_REAL);
  if (workers < 1 || workers > KNHK_MAX_WORKERS)
    return luaL_error(L, "workers must be in 1..%d, got %d", KNHK_MAX_WORKERS, workers);
  klua_rt_opts_t opts = {workers, 0, 0, clock, lua_toboolean(L, 4)};
  if (!lua_isnoneornil(L, 2)) {
    lua_Number seed = luaL_checknumber(L, 2);
    if (!(seed >= 0 && seed <= 9007199254740992.0 && seed == (lua_Number)(uint64_t)seed))
      return luaL_error(L, "seed must be a whole number in 0..2^53, got %f", seed);
    if (workers != 1) return luaL_error(L, "a seeded schedule runs on 1 worker, got %d", workers);
    opts.seeded = 1;
    opts.seed = (uint64_t)seed;
  }
  int expected = 0;
  if (!atomic_compare_exchange_strong(&running, &expected, 1))
    return luaL_error(L, "knhk.run: a runtime is already running in this process");
  klua_rt_t *rt = NULL;
  char err[512] = "";
  int rc = klua_rt_new(L, &opts, &rt, err, sizeof err);
  if (rc != 0) {
    atomic_store(&running, 0);
    return luaL_error(L, "knhk.run: %s", err[0] ? err : knhk_strerror(rc));
  }
  atomic_store(&live_gen, atomic_fetch_add(&gen_counter, 1) + 1);
  lua_pushlightuserdata(L, rt);
  return 1;
}

/* core.register(settle, hooks): runtime.lua's hooks for this module, and
 * what task_run puts on a task's coroutine (klua_task.c): hooks.xpcall
 * under the start that hooks.start (core.start) gives, then hooks.finish
 * (core.finish) on what it returned, and `settle` when that could not
 * record it. */
static int l_register(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TTABLE);
  klua_rt_t *rt = rt_of_vm(L);
  lua_getfield(L, LUA_REGISTRYINDEX, "knhk.worker");
  int index = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (!rt || index < 0 || index >= rt->workers) return luaL_error(L, "no runtime in this VM");
  /* the hooks go into this module's shared hooks table */
  for (int h = 1; h < HOOK_COUNT; h++) {
    lua_getfield(L, 2, hook_names[h - 1]);
    if (lua_isnil(L, -1)) return luaL_error(L, "core.register: no hook '%s'", hook_names[h - 1]);
    lua_rawseti(L, UP_HOOKS, h);
  }
  static const char *const edges[] = {"capture", "xpcall", "start", "finish"};
  for (int i = 0; i < 4; i++) {
    lua_getfield(L, 2, edges[i]);
    if (!lua_isfunction(L, -1)) return luaL_error(L, "core.register: no function '%s'", edges[i]);
  }
  lua_createtable(L, 0, 4); /* its keys name prototypes by this run's ids */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawseti(L, UP_HOOKS, HOOK_SHARED);
  klua_worker_t *w = &rt->w[index];
  w->finish_fn = luaL_ref(L, LUA_REGISTRYINDEX);
  w->start_fn = luaL_ref(L, LUA_REGISTRYINDEX);
  w->xpcall_fn = luaL_ref(L, LUA_REGISTRYINDEX);
  w->capture_fn = luaL_ref(L, LUA_REGISTRYINDEX);
  w->globals = lua_topointer(w->L ? w->L : L, LUA_GLOBALSINDEX);
  w->mt_task = lua_topointer(L, UP_MT_TASK);
  lua_pushvalue(L, 1);
  w->settle = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, UP_ANCHOR);
  w->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
  /* Every local start pushes xpcall and the error handler: from the
   * anchor table's array part, not the registry's hash part. */
  if (w->anchor_top != 0) return luaL_error(L, "core.register: the anchor table is in use");
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->xpcall_fn);
  lua_rawseti(L, UP_ANCHOR, KLUA_ANCHOR_XPCALL);
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->capture_fn);
  lua_rawseti(L, UP_ANCHOR, KLUA_ANCHOR_CAPTURE);
  w->anchor_top = KLUA_ANCHOR_CAPTURE;
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
  klua_rt_t *rt = lua_touserdata(L, 1);
  if (!rt) return luaL_argerror(L, 1, "runtime expected");
  rt->w[0].L = L;
  klua_rt_watch_stalls(rt); /* the root is queued by now (core.root) */
  int rc = klua_rt_enter(rt);
  if (rc != 0) return luaL_error(L, "knhk.run: %s", knhk_strerror(rc));
  return 0;
}

static void clear_table(lua_State *L, int idx) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_pushnil(L);
    lua_rawset(L, idx);
  }
}

/* core.free(rt) */
static int l_free(lua_State *L) {
  klua_rt_t *rt = lua_touserdata(L, 1);
  if (!rt) return luaL_argerror(L, 1, "runtime expected");
  atomic_store(&live_gen, 0); /* handles still held go stale, not dangling */
  /* What this VM (the caller's, which outlives the run) cached of this
   * runtime: prototype ids, pooled closures, places interned in it. */
  clear_table(L, UP_PROTOS);
  clear_table(L, UP_POOLS);
  clear_table(L, UP_PLACES);
  clear_table(L, UP_ANCHOR);
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

/* core.metatables() -> { [kind name] = metatable }: runtime.lua gives
 * each kind of handle its methods. */
static int l_metatables(lua_State *L) {
  static const char *names[] = {NULL, "task", "channel", "semaphore", "lock", "event", "token",
                                "nursery", "task_detached"};
  lua_newtable(L);
  for (int k = 1; k <= MT_TASK_DETACHED; k++) {
    lua_rawgeti(L, UP_MTS, k);
    lua_setfield(L, -2, names[k]);
  }
  return 1;
}

/* core.handle_ptr(handle) -> lightuserdata of the object (for the FFI) */
static int l_handle_ptr(lua_State *L) {
  handle_t *h = lua_touserdata(L, 1);
  int kind = h ? klua_handle_kind(L, 1) : 0;
  if (!kind) return luaL_argerror(L, 1, "knhk handle expected");
  lua_pushlightuserdata(L, kind == KLUA_H_TASK ? (void *)task_of((task_handle_t *)h) : h->p);
  return 1;
}

/* core.export(handle) -> number, core.import(kind, number) -> handle: the
 * codec's way to carry a handle inside a snapshot. */
static int l_export(lua_State *L) {
  int kind = klua_handle_kind(L, 1);
  if (!kind) return luaL_argerror(L, 1, "knhk handle expected");
  lua_pushinteger(L, kind);
  lua_pushnumber(L, (double)(uintptr_t)klua_handle_export(L, 1));
  return 2;
}

/* core.import(kind, number [, copy]): copy, a snapshot read more than once
 * (results): the handle takes a reference of its own. */
static int l_import(lua_State *L) {
  int kind = (int)luaL_checkinteger(L, 1);
  void *p = (void *)(uintptr_t)luaL_checknumber(L, 2);
  if (lua_toboolean(L, 3)) klua_handle_retain(kind, p);
  push_handle(L, kind, p);
  return 1;
}

/* Defined by a program that has knhk.core linked in (knhk-lua), so the
 * code is the program's own: nothing to pin, and its symbols are the
 * global ones. In knhk/core.so the weak reference is NULL. (dladdr, which
 * pin_library needs, walks every symbol of the program: ~0.06 ms of a
 * knhk-lua start.) */
extern const char klua_core_in_program __attribute__((weak));

/* Keeps this library loaded until the process ends: its threads and
 * process-wide state (the telemetry's) must not lose their code when a
 * VM that required it closes. */
static void pin_library(void) {
  if (&klua_core_in_program) return;
  Dl_info info;
  if (dladdr((void *)pin_library, &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* core.global: whether the program's global symbols are these (knhk-lua,
 * which has knhk.core linked in, or a host that loaded knhk/core.so with
 * RTLD_GLOBAL): knhk.ffi binds ffi.C then, and never opens a second copy
 * of the library, whose state would not be this one's. Asked through the
 * program's handle (RTLD_DEFAULT from here would search this library's own
 * scope too, and find it wherever it was loaded); once per process, not
 * per VM. */
static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int in_global_scope;
static void find_global(void) {
  if (&klua_core_in_program) { /* knhk-lua: no need to ask */
    in_global_scope = 1;
    return;
  }
  void *program = dlopen(NULL, RTLD_LAZY);
  in_global_scope = program && dlsym(program, "luaopen_knhk_core") == (void *)luaopen_knhk_core;
  if (program) dlclose(program);
}

KLUA_API int luaopen_knhk_core(lua_State *L) {
  pin_library();
  klua_modules_install(L); /* the rest of knhk loads as bytecode */
  static const luaL_Reg fns[] = {
      {"spawn", l_spawn},
      {"spawn_local", l_spawn_local},
      {"nursery_spawn", l_nursery_spawn},
      {"nursery_spawn_local", l_nursery_spawn_local},
      {"nursery_children", l_nursery_children},
      {"nursery_child", l_nursery_child},
      {"spawn_blob", l_spawn_blob},
      {"root", l_root},
      {"place_below", l_place_below},
      {"set_root_place", l_set_root_place},
      {"start", l_start},
      {"finish", l_finish},
      {"place", l_place},
      {"finish_blob", l_finish_blob},
      {"finish_cancelled", l_finish_cancelled},
      {"wait_mark", l_wait_mark},
      {"join_try", l_join_try},
      {"outcome", l_outcome},
      {"task_id", l_task_id},
      {"task_done", l_task_done},
      {"task_cancel", l_task_cancel},
      {"cancelled", l_cancelled},
      {"reschedule", l_reschedule},
      {"wait_end", l_wait_end},
      {"sleep_try", l_sleep_try},
      {"wait_try", l_wait_try},
      {"current_ptr", l_current_ptr},
      {"current_local", l_current_local},
      {"scope_token", l_scope_token},
      {"scope_enter", l_scope_enter},
      {"scope_exit", l_scope_exit},
      {"token_new", l_token_new},
      {"token_cancel", l_token_cancel},
      {"token_is_cancelled", l_token_is_cancelled},
      {"token_reason", l_token_reason},
      {"token_wait_try", l_token_wait_try},
      {"nursery_open", l_nursery_open},
      {"nursery_body_done", l_nursery_body_done},
      {"nursery_fail", l_nursery_fail},
      {"nursery_cancel", l_nursery_cancel},
      {"nursery_closed", l_nursery_closed},
      {"nursery_cancelled", l_nursery_cancelled},
      {"next_ended_try", l_next_ended_try},
      {"close_try", l_close_try},
      {"failures", l_failures},
      {"nursery_failed", l_nursery_failed},
      {"stalled", l_stalled},
      {"drop_own", l_drop_own},
      {"tel_wait_begin", l_tel_wait_begin},
      {"tel_wait_end", l_tel_wait_end},
      {"tel_task_error", l_tel_task_error},
      {"tel_enabled", l_tel_enabled},
      {"cancel_children", l_cancel_children},
      {"channel", l_channel},
      {"send_try", l_send_try},
      {"send_blob_try", l_send_blob_try},
      {"recv_try", l_recv_try},
      {"recv_any_try", l_recv_any_try},
      {"chan_close", l_chan_close},
      {"chan_closed", l_chan_closed},
      {"chan_len", l_chan_len},
      {"chan_capacity", l_chan_capacity},
      {"semaphore", l_semaphore},
      {"acquire_try", l_acquire_try},
      {"release", l_release},
      {"permits", l_permits},
      {"event", l_event},
      {"event_wait_try", l_event_wait_try},
      {"event_set", l_event_set},
      {"event_is_set", l_event_is_set},
      {"now", l_now},
      {"current", l_current},
      {"tasks", l_tasks},
      {"new", l_new},
      {"register", l_register},
      {"context", l_context},
      {"enter", l_enter},
      {"free", l_free},
      {"path", l_path},
      {"metatables", l_metatables},
      {"handle_ptr", l_handle_ptr},
      {"export", l_export},
      {"import", l_import},
      {NULL, NULL}};
  lua_newtable(L); /* the module */
  lua_newtable(L); /* 1 anchor */
  lua_newtable(L); /* 2 protos: weak keys */
  lua_newtable(L);
  lua_pushstring(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_newtable(L); /* 3 pools */
  lua_newtable(L); /* 4 places: weak keys */
  lua_getmetatable(L, -3);
  lua_setmetatable(L, -2);
  lua_newtable(L); /* 5 metatables, both ways */
  for (int k = 1; k < KLUA_H_KINDS; k++) {
    lua_newtable(L);
    lua_pushcfunction(L, handle_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, k);
    lua_pushinteger(L, k);
    lua_rawset(L, -3);
  }
  lua_newtable(L); /* a detached task handle's: no finalizer (detach) */
  lua_pushvalue(L, -1);
  lua_rawseti(L, -3, MT_TASK_DETACHED);
  lua_pushinteger(L, KLUA_H_TASK);
  lua_rawset(L, -3);
  lua_newtable(L); /* 6 hooks */
  lua_rawgeti(L, -2, KLUA_H_TASK); /* 7 */
  lua_rawgeti(L, -3, MT_TASK_DETACHED); /* 8 */
  /* the metatables' __gc need the kinds table (UP_MTS) too */
  for (int k = 1; k < KLUA_H_KINDS; k++) {
    lua_rawgeti(L, -4, k);
    for (int i = 0; i < NUPVALUES; i++) lua_pushvalue(L, -1 - NUPVALUES); /* anchor .. */
    lua_pushcclosure(L, handle_gc, NUPVALUES);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
  }
  luaL_openlib(L, NULL, fns, NUPVALUES);
  pthread_once(&global_once, find_global);
  lua_pushboolean(L, in_global_scope);
  lua_setfield(L, -2, "global");
  lua_pushinteger(L, KLUA_CHAN_MAX);
  lua_setfield(L, -2, "CHAN_MAX");
  return 1;
}
