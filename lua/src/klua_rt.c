/* klua_rt.c: a runtime's lifecycle, its workers' VMs, and its registries
 * (prototypes by id, places of task functions). See klua.h. */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "klua.h"
#include "knhk_modules.h"
#include "klua_ffi.h"
#include "knhk/errors.h"

_Thread_local klua_worker_t *klua__tls_worker KLUA_TLS_MODEL;

klua_worker_t *klua_worker_slow(klua_rt_t *rt) {
  int i = knhk_executor_worker_index(&rt->ex);
  if (i < 0) return NULL;
  klua__tls_worker = &rt->w[i];
  return klua__tls_worker;
}

/* ------------------------------------------------------ prototype registry */

KLUA_API uint32_t klua_proto_register(klua_rt_t *rt, const char *bc, size_t len) {
  char *copy = malloc(len);
  if (!copy) return 0;
  memcpy(copy, bc, len);
  pthread_mutex_lock(&rt->protos_m);
  if (rt->nprotos == rt->capprotos) {
    uint32_t cap = rt->capprotos ? rt->capprotos * 2 : 64;
    char **p = realloc(rt->protos, cap * sizeof *p);
    size_t *l = p ? realloc(rt->proto_lens, cap * sizeof *l) : NULL;
    if (p) rt->protos = p;
    if (!p || !l) {
      pthread_mutex_unlock(&rt->protos_m);
      free(copy);
      return 0;
    }
    rt->proto_lens = l;
    rt->capprotos = cap;
  }
  rt->protos[rt->nprotos] = copy;
  rt->proto_lens[rt->nprotos] = len;
  uint32_t id = ++rt->nprotos; /* ids start at 1; 0 means failure */
  pthread_mutex_unlock(&rt->protos_m);
  return id;
}

KLUA_API const char *klua_proto_get(klua_rt_t *rt, uint32_t id, size_t *len) {
  pthread_mutex_lock(&rt->protos_m);
  const char *p = NULL;
  if (id >= 1 && id <= rt->nprotos) {
    p = rt->protos[id - 1];
    *len = rt->proto_lens[id - 1];
  }
  pthread_mutex_unlock(&rt->protos_m);
  return p;
}

/* Any thread. `place` interned for the runtime's lifetime (records point at
 * it); NULL if out of memory. Called once per function place and VM. */
KLUA_API const char *klua_where(klua_rt_t *rt, const char *place) {
  const char *out = NULL;
  pthread_mutex_lock(&rt->where_m);
  for (size_t i = 0; i < rt->nwheres && !out; i++)
    if (strcmp(rt->wheres[i], place) == 0) out = rt->wheres[i];
  if (!out && rt->nwheres == rt->capwheres) {
    size_t cap = rt->capwheres ? rt->capwheres * 2 : 32;
    char **w = realloc(rt->wheres, cap * sizeof *w);
    if (w) rt->wheres = w, rt->capwheres = cap;
  }
  if (!out && rt->nwheres < rt->capwheres && (rt->wheres[rt->nwheres] = strdup(place)))
    out = rt->wheres[rt->nwheres++];
  pthread_mutex_unlock(&rt->where_m);
  return out;
}

/* ---------------------------------------------------------------- queries */

KLUA_API void klua_free(void *p) { free(p); }

/* Any thread. knhk_telemetry_start with the options as plain arguments. */
KLUA_API int klua_telemetry_start(const char *path, double interval_s, const char *service) {
  knhk_telemetry_options_t o = {path, interval_s > 0 ? (uint64_t)(interval_s * 1e9) : 0, service};
  return knhk_telemetry_start(&o);
}

static void counters_of(const knhk_worker_stats_t *s, klua_counters_t *c) {
  c->spawned = s->spawned;
  c->completed = s->completed;
  c->failed = s->failed;
  c->cancelled = s->cancelled;
  c->stolen = s->stolen;
  c->steal_attempts = s->steal_attempts;
  c->parks = s->parks;
  c->busy_ns = s->busy_ns;
}

/* Any thread. The executor's counters: summed, and per worker (up to n).
 * Returns the number of workers. */
KLUA_API int klua_stats(klua_rt_t *rt, klua_counters_t *total, uint64_t *live,
                        klua_counters_t *per, int n) {
  knhk_executor_stats_t s;
  knhk_worker_stats_t pw[KNHK_MAX_WORKERS];
  int k = knhk_executor_stats(&rt->ex, &s, pw, KNHK_MAX_WORKERS);
  if (k < 0) return k;
  counters_of(&s.total, total);
  *live = s.live;
  for (int i = 0; i < k && i < n; i++) counters_of(&pw[i], &per[i]);
  return k;
}

/* -------------------------------------------------------------- VMs */

int luaopen_knhk_core(lua_State *L); /* klua_core.c */

/* Any thread. The module paths worker VMs use from now on: the spawner's,
 * which it may have changed since the run began (a snapshot names a module
 * by the name its package.path finds). 0, or KNHK_ENOMEM. */
KLUA_API int klua_rt_set_paths(klua_rt_t *rt, const char *path, const char *cpath) {
  char *p = strdup(path), *c = strdup(cpath);
  pthread_mutex_lock(&rt->protos_m);
  char **old = p && c ? realloc(rt->old_paths, (rt->nold_paths + 2) * sizeof *old) : NULL;
  if (!old) {
    pthread_mutex_unlock(&rt->protos_m);
    free(p);
    free(c);
    return KNHK_ENOMEM;
  }
  rt->old_paths = old;
  old[rt->nold_paths++] = rt->lua_path;
  old[rt->nold_paths++] = rt->lua_cpath;
  rt->lua_path = p;
  rt->lua_cpath = c;
  pthread_mutex_unlock(&rt->protos_m);
  return 0;
}

/* Any thread. package.path (c = 0) or package.cpath (1) for worker VMs;
 * valid until the runtime is freed. */
KLUA_API const char *klua_rt_path(klua_rt_t *rt, int c) {
  pthread_mutex_lock(&rt->protos_m);
  const char *s = c ? rt->lua_cpath : rt->lua_path;
  pthread_mutex_unlock(&rt->protos_m);
  return s;
}

/* The module whose setup_vm() each worker VM of a run calls once it has
 * the runtime, before any task runs in it (knhk.runtime's setup_vms), or
 * NULL. A program sets up its own VM itself; this is for the others: a
 * script's modules that use what the program put in its globals (knhk-lua:
 * the global `knhk`) find it on every worker. Set by the thread that
 * starts runs, before any starts; read by the VMs as they open, without a
 * lock (as klua_exit.c's report). */
static char *vm_setup;

/* Names the module (NULL: none) for the runs that start from now on. 0, or
 * KNHK_ENOMEM. */
KLUA_API int klua_vm_setup_set(const char *module) {
  char *copy = NULL;
  if (module && !(copy = strdup(module))) return KNHK_ENOMEM;
  free(vm_setup);
  vm_setup = copy;
  return 0;
}

/* Any thread. The module klua_vm_setup_set named, or NULL. */
KLUA_API const char *klua_vm_setup(void) { return vm_setup; }

/* A worker VM: the standard libraries, the caller's module paths, and the
 * knhk runtime, which registers itself (core.register) and calls the
 * program's setup (klua_vm_setup). */
int klua_vm_open(klua_rt_t *rt, int index, char *err, size_t errlen) {
  lua_State *L = luaL_newstate();
  if (!L) {
    snprintf(err, errlen, "cannot create the Lua state of worker %d", index);
    return KNHK_ENOMEM;
  }
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushstring(L, klua_rt_path(rt, 0));
  lua_setfield(L, -2, "path");
  lua_pushstring(L, klua_rt_path(rt, 1));
  lua_setfield(L, -2, "cpath");
  /* the same knhk.core as the spawner's VM (this library), wherever
   * package.cpath would find one */
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_knhk_core);
  lua_setfield(L, -2, "knhk.core");
  lua_pop(L, 2);
  klua_worker_t *w = &rt->w[index];
  w->L = L;
  w->own = 1;
  lua_pushlightuserdata(L, rt);
  lua_setfield(L, LUA_REGISTRYINDEX, "knhk.rt");
  lua_pushinteger(L, index);
  lua_setfield(L, LUA_REGISTRYINDEX, "knhk.worker");
  klua_modules_install(L); /* knhk.runtime and what it requires, precompiled */
  lua_getglobal(L, "require");
  lua_pushstring(L, "knhk.runtime");
  if (lua_pcall(L, 1, 1, 0) != 0) {
    snprintf(err, errlen, "worker %d could not load knhk.runtime: %s", index, lua_tostring(L, -1));
    return KNHK_EIO;
  }
  lua_getfield(L, -1, "start_worker");
  if (lua_pcall(L, 0, 0, 0) != 0) {
    snprintf(err, errlen, "worker %d could not start: %s", index, lua_tostring(L, -1));
    return KNHK_EIO;
  }
  lua_pop(L, 1);
  if (w->settle == LUA_NOREF) {
    snprintf(err, errlen, "worker %d: knhk.runtime did not register itself", index);
    return KNHK_EIO;
  }
  return 0;
}

/* -------------------------------------------------------------- lifecycle */

/* The executor's on_idle under a virtual clock (on a worker, under its
 * sleep lock). */
static void idle_hint(void *arg) {
  klua_rt_t *rt = arg;
  pthread_mutex_lock(&rt->clock_m);
  if (rt->hints_on) knhk_clock_idle_hint(rt->reactor);
  pthread_mutex_unlock(&rt->clock_m);
}

/* t's listed fields as one consistent view, or 0 if it is not listed.
 * A sequence lock's reader: live_seq odd before and the same after, and
 * nothing read in between came from the record's next use (klua_task_alloc
 * fences before it writes). The fields are read without the sanitizer's
 * eye and through volatile: a record being reused meanwhile is a race
 * that the check after discards, not one ThreadSanitizer should report. */
__attribute__((no_sanitize("thread"))) static int view_of(klua_task_t *t, klua_task_view_t *v) {
  uint32_t s1 = atomic_load_explicit(&t->live_seq, memory_order_acquire);
  if (!(s1 & 1u)) return 0;
  const volatile klua_task_t *vt = t;
  v->t = t;
  v->id = vt->id;
  v->parent = vt->parent;
  v->started_ns = vt->started_ns;
  v->where = vt->where;
  v->kind = vt->kind;
  v->home = atomic_load_explicit(&t->home, memory_order_relaxed);
  v->state = knhk_task_state(&t->et);
  v->outcome = klua_task_outcome(t);
  atomic_thread_fence(memory_order_acquire);
  return atomic_load_explicit(&t->live_seq, memory_order_relaxed) == s1;
}

void klua_tasks_each(klua_rt_t *rt, void (*fn)(void *ud, const klua_task_view_t *v), void *ud) {
  /* The slabs' list, copied: fn may run Lua code, whose finalizers may let
   * go of records, which takes pool_m. Slabs are never freed before the
   * runtime. */
  pthread_mutex_lock(&rt->pool_m);
  size_t n = rt->nslabs;
  void **slabs = n ? malloc(n * sizeof *slabs) : NULL;
  if (slabs) memcpy(slabs, rt->slabs, n * sizeof *slabs);
  pthread_mutex_unlock(&rt->pool_m);
  if (!slabs) return; /* (out of memory: nothing to list) */
  for (size_t i = 0; i < n; i++) {
    klua_task_t *slab = slabs[i];
    for (int k = 0; k < KLUA_TASK_SLAB; k++) {
      klua_task_view_t v;
      if (view_of(&slab[k], &v)) fn(ud, &v);
    }
  }
  free(slabs);
}

/* The tasks waiting for ever, for the deadlock's message: one line each
 * (the first STUCK_SHOWN), as knhk.test names a task left behind. Every
 * task waits meanwhile: the records hold still. */
enum { STUCK_SHOWN = 10, STUCK_TEXT = 2048 };
/* The STUCK_SHOWN newest tasks still waiting (newest first: what is
 * blocked, then what waits for it, up to the root), and how many wait in
 * all: a deadlock among a million tasks copies ten of them. */
typedef struct {
  klua_task_view_t top[STUCK_SHOWN];
  size_t ntop, n;
} stuck_t;

static void stuck_add(void *ud, const klua_task_view_t *v) {
  stuck_t *s = ud;
  if (v->outcome != KLUA_RUNNING) return;
  s->n++;
  if (s->ntop == STUCK_SHOWN && s->top[STUCK_SHOWN - 1].id > v->id) return;
  size_t i = s->ntop < STUCK_SHOWN ? s->ntop++ : STUCK_SHOWN - 1;
  for (; i > 0 && s->top[i - 1].id < v->id; i--) s->top[i] = s->top[i - 1];
  s->top[i] = *v;
}

static char *stuck_tasks(klua_rt_t *rt) {
  char *text = malloc(STUCK_TEXT);
  if (!text) return NULL;
  text[0] = 0;
  stuck_t s = {.ntop = 0, .n = 0};
  klua_tasks_each(rt, stuck_add, &s);
  size_t len = 0, shown = 0;
  for (; shown < s.ntop && len < STUCK_TEXT - 1; shown++) {
    const klua_task_view_t *v = &s.top[shown];
    char parent[48] = "", what[96];
    if (v->parent) snprintf(parent, sizeof parent, ", spawned by task %llu", (unsigned long long)v->parent);
    klua_wait_describe(v->t, what, sizeof what); /* (every task waits: it holds still) */
    int k = snprintf(text + len, STUCK_TEXT - len, "\n  task %llu (%s%s) waiting %s, on worker %d",
                     (unsigned long long)v->id, v->where, parent, what, v->home);
    if (k > 0) len += (size_t)k < STUCK_TEXT - len ? (size_t)k : STUCK_TEXT - 1 - len;
  }
  if (shown < s.n && len < STUCK_TEXT - 1)
    snprintf(text + len, STUCK_TEXT - len, "\n  and %zu more", s.n - shown);
  return text;
}

/* A task still waiting once the run was cancelled waits in a shielded
 * scope (only a shield keeps the root's cancellation out), and nothing
 * can ever wake it: its innermost scope is cancelled, shield or not. The
 * scope catches that as its own cancellation, and the task goes on. */
static void break_shield(void *ud, const klua_task_view_t *v) {
  int *broken = ud;
  klua_task_t *t = v->t; /* (every task waits: it holds still) */
  if (v->outcome == KLUA_RUNNING && t->scope && !knhk_token_is_cancelled(t->scope)) {
    knhk_token_cancel(t->scope, KNHK_CANCEL_SHUTDOWN);
    (*broken)++;
  }
}

/* Cancels the innermost scope of every task still waiting after a
 * cancellation (break_shield), and has the clock look again if that woke
 * any. */
static void break_shields(klua_rt_t *rt) {
  int broken = 0;
  klua_tasks_each(rt, break_shield, &broken);
  if (broken) knhk_clock_idle_hint(rt->reactor);
}

/* The reactor's stall callback under a virtual clock (on its thread):
 * every task waits, and neither time nor the runtime will ever wake one.
 * The run is cancelled, once (a REPL line: only it); knhk.run then
 * reports the deadlock. The clock looks again at its next turn: a task
 * the cancellation woke makes the runtime busy, and its next wait hints
 * anew; if it woke none, that look is a stall after the cancellation,
 * and only shielded waits are left: break_shields. */
static void stalled(void *arg) {
  klua_rt_t *rt = arg;
  knhk_executor_stats_t s;
  /* no task at all (the root not spawned yet, or every one ended): idle */
  if (knhk_executor_stats(&rt->ex, &s, NULL, 0) < 0 || s.live == 0) return;
  if (klua_signals_cancel_line()) { /* a REPL line: only it is cancelled */
    atomic_store(&rt->line_stalled, 1);
    knhk_clock_idle_hint(rt->reactor);
    return;
  }
  /* the cancelled line (not ended yet), or the run, still waits */
  if (atomic_load(&rt->line_stalled) || atomic_exchange(&rt->stalled, 1)) {
    break_shields(rt);
    return;
  }
  rt->stall_text = stuck_tasks(rt);
  knhk_token_cancel(rt->root_token, KNHK_CANCEL_SHUTDOWN);
  knhk_clock_idle_hint(rt->reactor);
}

/* Whether a REPL line was cancelled because every task waited for ever
 * under a virtual clock (and forgets it). */
KLUA_API int klua_rt_take_line_stall(klua_rt_t *rt) { return atomic_exchange(&rt->line_stalled, 0); }

/* Once the root task is queued (core.enter): from then on, a virtual clock
 * that finds every task waiting with nothing to wake one reports it. */
void klua_rt_watch_stalls(klua_rt_t *rt) {
  if (knhk_clock_kind(rt->reactor) == KNHK_CLOCK_VIRTUAL) knhk_clock_on_stall(rt->reactor, stalled, rt);
}

int klua_rt_new(lua_State *caller, const klua_rt_opts_t *opts, klua_rt_t **out, char *err,
                size_t errlen) {
  int workers = opts->workers, clock = opts->clock;
  klua_rt_t *rt = calloc(1, sizeof *rt);
  if (!rt) return KNHK_ENOMEM;
  pthread_mutex_init(&rt->clock_m, NULL);
  pthread_mutex_init(&rt->protos_m, NULL);
  pthread_mutex_init(&rt->where_m, NULL);
  pthread_mutex_init(&rt->pool_m, NULL);
  rt->workers = workers;
  rt->w = calloc((size_t)workers, sizeof *rt->w);
  int rc = rt->w ? 0 : KNHK_ENOMEM;
  for (int i = 0; i < workers && rt->w; i++) {
    klua_worker_t *w = &rt->w[i];
    w->rt = rt;
    w->index = i;
    w->anchor = LUA_NOREF;
    w->settle = w->xpcall_fn = w->start_fn = w->finish_fn = w->capture_fn = LUA_NOREF;
  }
  if (rc == 0) {
    knhk_reactor_options_t ro = {clock};
    rc = knhk_reactor_new_with(&rt->reactor, &ro);
  }
  if (rc == 0) rc = knhk_token_new(&rt->root_token, NULL);
  if (rc == 0) {
    rt->root_group = klua_group_new(rt, rt->root_token, 0);
    if (!rt->root_group) rc = KNHK_ENOMEM;
  }
  /* As soon as there is a root token to cancel: the reactor's thread
   * installs the handlers while the executor and the VM are set up, and
   * core.root waits for them (klua_signals_wait) only then. */
  rt->signals = opts->signals;
  if (rc == 0 && rt->signals) {
    rc = klua_signals_start(rt);
    if (rc != 0) snprintf(err, errlen, "cannot watch signals: %s", knhk_strerror(rc));
  }
  if (rc == 0) {
    rt->w[0].L = caller;
    lua_pushlightuserdata(caller, rt);
    lua_setfield(caller, LUA_REGISTRYINDEX, "knhk.rt");
    lua_pushinteger(caller, 0);
    lua_setfield(caller, LUA_REGISTRYINDEX, "knhk.worker");
  }
  if (rc == 0) { /* worker VMs get the caller's module paths, when they are made */
    lua_getglobal(caller, "package");
    lua_getfield(caller, -1, "path");
    lua_getfield(caller, -2, "cpath");
    rt->lua_path = strdup(lua_tostring(caller, -2) ? lua_tostring(caller, -2) : "");
    rt->lua_cpath = strdup(lua_tostring(caller, -1) ? lua_tostring(caller, -1) : "");
    lua_pop(caller, 3);
    if (!rt->lua_path || !rt->lua_cpath) rc = KNHK_ENOMEM;
  }
  if (rc == 0) {
    knhk_executor_options_t o;
    knhk_executor_options_init(&o);
    o.workers = workers;
    /* Worker threads start when a task is first there for them: a run
     * that never spawns a portable task (a short script) starts none. */
    o.flags = KNHK_EXECUTOR_CALLER_IS_WORKER0 | KNHK_EXECUTOR_LAZY_WORKERS;
    if (opts->seeded) {
      o.flags |= KNHK_EXECUTOR_SEEDED;
      o.seed = opts->seed;
    }
    if (clock == KNHK_CLOCK_VIRTUAL) { /* the executor tells the clock when all wait */
      o.on_idle = idle_hint;
      o.on_idle_arg = rt;
      rt->hints_on = 1;
    }
    rc = knhk_executor_init(&rt->ex, &o);
    if (rc != 0) snprintf(err, errlen, "cannot start %d workers: %s", workers, knhk_strerror(rc));
    else if (clock == KNHK_CLOCK_VIRTUAL) {
      rc = knhk_clock_watch_idle(rt->reactor, knhk_executor_idle, &rt->ex);
      /* a seeded schedule sees the timers of one instant as one choice */
      if (rc == 0 && opts->seeded)
        rc = knhk_clock_batch(rt->reactor, knhk_executor_batch_begin, knhk_executor_batch_end,
                              &rt->ex);
    }
  } else if (!err[0]) {
    snprintf(err, errlen, "cannot start the runtime: %s", knhk_strerror(rc));
  }
  if (rc != 0) {
    klua_rt_free(rt);
    return rc;
  }
  *out = rt;
  return 0;
}

int klua_rt_enter(klua_rt_t *rt) {
  int rc = knhk_executor_enter(&rt->ex, NULL);
  klua__tls_worker = NULL;
  return rc;
}

void klua_rt_free(klua_rt_t *rt) {
  if (!rt) return;
  /* The reactor first: its last timer and process completions may still
   * wake tasks (late wake-ups of ended tasks), which needs the executor. */
  pthread_mutex_lock(&rt->clock_m);
  rt->hints_on = 0;
  pthread_mutex_unlock(&rt->clock_m);
  if (rt->reactor) knhk_reactor_free(rt->reactor);
  if (rt->signals) klua_signals_restore(); /* (libuv left the default actions) */
  knhk_executor_close(&rt->ex); /* a handle never initialised reports EALREADY */
  if (rt->root_group) klua_group_release(rt->root_group);
  if (rt->w) {
    for (int i = 0; i < rt->workers; i++) {
      klua_worker_t *w = &rt->w[i];
      if (w->own && w->L) {
        lua_close(w->L);
      } else if (w->L) { /* the caller's: drop what we anchored in it */
        if (w->anchor != LUA_NOREF) luaL_unref(w->L, LUA_REGISTRYINDEX, w->anchor);
        luaL_unref(w->L, LUA_REGISTRYINDEX, w->settle); /* (LUA_NOREF: nothing) */
        luaL_unref(w->L, LUA_REGISTRYINDEX, w->xpcall_fn);
        luaL_unref(w->L, LUA_REGISTRYINDEX, w->start_fn);
        luaL_unref(w->L, LUA_REGISTRYINDEX, w->finish_fn);
        luaL_unref(w->L, LUA_REGISTRYINDEX, w->capture_fn);
        if (w->make_co > 0) luaL_unref(w->L, LUA_REGISTRYINDEX, w->make_co);
        lua_pushnil(w->L);
        lua_setfield(w->L, LUA_REGISTRYINDEX, "knhk.rt");
      }
      free(w->co_free);
      free(w->place_by_proto);
      free(w->co_refs);
    }
  }
  free(rt->stall_text);
  knhk_token_release(rt->root_token);
  free(rt->lua_path);
  free(rt->lua_cpath);
  for (size_t i = 0; i < rt->nold_paths; i++) free(rt->old_paths[i]);
  free(rt->old_paths);
  for (uint32_t i = 0; i < rt->nprotos; i++) free(rt->protos[i]);
  free(rt->protos);
  free(rt->proto_lens);
  for (size_t i = 0; i < rt->nwheres; i++) free(rt->wheres[i]);
  free(rt->wheres);
  /* Records and groups are type-stable until now: what is left of them
   * (a payload, a failure list) goes with their slabs. */
  for (size_t i = 0; i < rt->nslabs; i++) {
    klua_task_t *slab = rt->slabs[i];
    for (int k = 0; k < KLUA_TASK_SLAB; k++) {
      klua_payload_drop_foreign(&slab[k]);
      if (slab[k].data && slab[k].data != slab[k].buf) free(slab[k].data);
      knhk_token_t *tok = atomic_load(&slab[k].token);
      if (tok) knhk_token_release(tok);
      if (slab[k].cancel_parent) knhk_token_release(slab[k].cancel_parent);
      if (slab[k].w) free(slab[k].w->watch); /* a task still waiting when the run ended */
      klua_task_drop_tel(&slab[k]);
    }
  }
  free(rt->slabs);
  for (size_t i = 0; i < rt->ngslabs; i++) {
    for (int k = 0; k < KLUA_GROUP_SLAB; k++) { /* a nursery whose handle outlived the run */
      klua_group_t *g = &rt->group_slabs[i][k];
      if (g->token) knhk_token_release(g->token);
      free(g->failures);
      /* (the records they name go with the arena) */
      free(g->kept);
      free(g->held);
      free(g->ring);
    }
  }
  free(rt->group_slabs);
  klua_arena_free(&rt->arena); /* the slabs of both */
  free(rt->w);
  pthread_mutex_destroy(&rt->protos_m);
  pthread_mutex_destroy(&rt->where_m);
  pthread_mutex_destroy(&rt->pool_m);
  pthread_mutex_destroy(&rt->clock_m);
  free(rt);
}
