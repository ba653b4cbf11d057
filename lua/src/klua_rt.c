/* klua_rt.c: runtime lifecycle, Lua task records, waits (see klua.h). */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <lualib.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "klua.h"
#include "knhk/errors.h"

static _Atomic uint64_t next_task_id = 1;

static int vm_open(klua_rt_t *rt, int index, char *err, size_t errlen);

/* ------------------------------------------------------------ task records */

static klua_task_t *task_new(klua_rt_t *rt, int kind, const char *snap, size_t len) {
  klua_task_t *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  if (len) {
    char *copy = malloc(len);
    if (!copy) {
      free(t);
      return NULL;
    }
    memcpy(copy, snap, len);
    t->pub.start = copy;
    t->pub.start_len = len;
  }
  t->rt = rt;
  t->pub.id = atomic_fetch_add(&next_task_id, 1);
  t->pub.kind = kind;
  atomic_init(&t->pub.home, -1);
  atomic_init(&t->pub.outcome, KLUA_RUNNING);
  atomic_init(&t->refs, 1);
  pthread_mutex_init(&t->m, NULL);
  return t;
}

void klua_task_retain(klua_task_t *t) {
  if (t) atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

void klua_task_release(klua_task_t *t) {
  if (!t || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) return;
  knhk_token_release(t->pub.token);
  free((char *)t->pub.start);
  free((char *)t->pub.result);
  pthread_mutex_destroy(&t->m);
  free(t);
}

uint32_t klua_task_wake_bits(klua_task_t *t) {
  return atomic_load_explicit(&t->wake_bits, memory_order_acquire);
}

knhk_task_t *klua_task_etask(klua_task_t *t) { return t->etask; }

void klua_wake(klua_task_t *t, uint32_t bits) {
  atomic_fetch_or_explicit(&t->wake_bits, bits, memory_order_release);
  knhk_executor_wake(&t->rt->ex, t->etask);
}

/* Runs in the worker's VM: step(task) returns an executor status. */
static int child_run(knhk_child_t *c) {
  klua_task_t *t = c->arg;
  klua_rt_t *rt = t->rt;
  int w = knhk_executor_worker_index(&rt->ex);
  if (!t->etask) t->etask = knhk_child_task(c);
  if (atomic_load_explicit(&t->pub.home, memory_order_relaxed) < 0)
    atomic_store_explicit(&t->pub.home, w, memory_order_relaxed); /* for :tasks only */
  klua_vm_t *vm = &rt->vms[w];
  if (!vm->L) { /* this worker's first Lua task: its VM is made here, lazily */
    char err[512] = "";
    if (vm_open(rt, w, err, sizeof err) != 0) {
      fprintf(stderr, "knhk: %s\n", err);
      klua_task_finish(t, KLUA_ERROR, NULL, 0);
      klua_task_release(t);
      return KNHK_EFAILED;
    }
  }
  lua_State *L = vm->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, vm->step_ref);
  lua_pushlightuserdata(L, t);
  int status;
  if (lua_pcall(L, 1, 1, 0) != 0) {
    /* The runtime's own step failed: a bug in knhk, never user code (user
     * errors are caught inside the task). Report it and fail the task. */
    fprintf(stderr, "knhk: internal error in task %llu: %s\n", (unsigned long long)t->pub.id,
            lua_tostring(L, -1));
    if (klua_task_outcome(t) == KLUA_RUNNING) klua_task_finish(t, KLUA_ERROR, NULL, 0);
    status = KNHK_EFAILED;
  } else {
    status = (int)lua_tointeger(L, -1);
  }
  lua_settop(L, top);
  if (status != KNHK_TASK_PENDING) klua_task_release(t); /* the running task's reference */
  return status;
}

/* kind KLUA_LOCAL runs on `worker` (the spawner's, or 0 for the root
 * task); a portable task on any worker (worker is ignored). */
klua_task_t *klua_spawn(klua_rt_t *rt, knhk_nursery_t *n, int kind, int worker, const char *snap,
                        size_t len, uint64_t parent, const char *where, int *err) {
  *err = 0;
  if (!rt || !n || (kind != KLUA_PORTABLE && kind != KLUA_LOCAL) ||
      (kind == KLUA_LOCAL && (worker < 0 || worker >= rt->workers))) {
    *err = KNHK_EINVAL;
    return NULL;
  }
  klua_task_t *t = task_new(rt, kind, snap, len);
  if (!t) {
    *err = KNHK_ENOMEM;
    return NULL;
  }
  /* its own token, so that h:cancel() ends just this task */
  int rc = knhk_token_new(&t->pub.token, knhk_nursery_token(n));
  if (rc != 0) {
    klua_task_release(t);
    *err = rc;
    return NULL;
  }
  /* References: the caller's handle, the running task (child_run), and
   * the nursery's, handed to whoever takes the child out of the nursery's
   * ended list (klua_nursery_next_ended). Every field is set before the
   * record is published by the spawn. */
  atomic_store_explicit(&t->refs, 3, memory_order_relaxed);
  t->pub.parent = parent;
  t->pub.where = where ? where : "a function";
  t->pub.started_ns = knhk_reactor_now(rt->reactor);
  pthread_mutex_lock(&rt->live_m);
  t->live_next = rt->live;
  if (rt->live) rt->live->live_prev = t;
  rt->live = t;
  pthread_mutex_unlock(&rt->live_m);
  rc = knhk_nursery_spawn_ex(n, child_run, t, KNHK_TASK_STICKY,
                             kind == KLUA_LOCAL ? worker : -1, NULL);
  if (rc != 0) {
    klua_task_finish(t, KLUA_CANCELLED, NULL, 0); /* leaves the live list */
    klua_task_release(t);
    klua_task_release(t);
    klua_task_release(t);
    *err = rc;
    return NULL;
  }
  return t;
}

/* Rows of the live tasks (only_running: of those a worker is running
 * right now), at most max. Under live_m. */
static int list_tasks(klua_rt_t *rt, klua_task_row_t *rows, int max, int only_running) {
  int n = 0;
  pthread_mutex_lock(&rt->live_m);
  for (klua_task_t *t = rt->live; t && n < max; t = t->live_next) {
    int s = t->etask ? knhk_task_state(t->etask) : KNHK_TASK_QUEUED;
    if (only_running && s != KNHK_TASK_RUNNING) continue;
    rows[n++] = (klua_task_row_t){t->pub.id, t->pub.parent, t->pub.started_ns,
                                  atomic_load_explicit(&t->pub.home, memory_order_relaxed),
                                  s == KNHK_TASK_RUNNING ? 1 : s == KNHK_TASK_PARKED ? 2 : 0,
                                  t->pub.where};
  }
  pthread_mutex_unlock(&rt->live_m);
  return n;
}

/* Any thread. The live tasks, for :tasks. Returns how many rows it wrote. */
int klua_tasks_list(klua_rt_t *rt, klua_task_row_t *rows, int max) {
  return list_tasks(rt, rows, max, 0);
}

/* Any thread. The tasks a worker is running right now: when the root is
 * cancelled, those are the ones that have not reached a checkpoint. */
int klua_tasks_running(klua_rt_t *rt, klua_task_row_t *rows, int max) {
  return list_tasks(rt, rows, max, 1);
}

/* Any thread. `place` interned for the runtime's lifetime (task records
 * point at it); NULL if out of memory. Called once per function place. */
const char *klua_where(klua_rt_t *rt, const char *place) {
  const char *out = NULL;
  pthread_mutex_lock(&rt->live_m);
  for (size_t i = 0; i < rt->nwheres && !out; i++)
    if (strcmp(rt->wheres[i], place) == 0) out = rt->wheres[i];
  if (!out && rt->nwheres == rt->capwheres) {
    size_t cap = rt->capwheres ? rt->capwheres * 2 : 32;
    char **w = realloc(rt->wheres, cap * sizeof *w);
    if (w) rt->wheres = w, rt->capwheres = cap;
  }
  if (!out && rt->nwheres < rt->capwheres && (rt->wheres[rt->nwheres] = strdup(place)))
    out = rt->wheres[rt->nwheres++];
  pthread_mutex_unlock(&rt->live_m);
  return out;
}

void klua_task_finish(klua_task_t *t, int outcome, const char *result, size_t len) {
  klua_rt_t *rt = t->rt;
  pthread_mutex_lock(&rt->live_m);
  if (t->live_prev) t->live_prev->live_next = t->live_next;
  else if (rt->live == t) rt->live = t->live_next;
  if (t->live_next) t->live_next->live_prev = t->live_prev;
  t->live_prev = t->live_next = NULL;
  pthread_mutex_unlock(&rt->live_m);
  char *copy = NULL;
  if (len && (copy = malloc(len))) memcpy(copy, result, len);
  pthread_mutex_lock(&t->m);
  t->pub.result = copy;
  t->pub.result_len = copy ? len : 0;
  /* release: whoever reads the outcome (acquire) sees the result */
  atomic_store_explicit(&t->pub.outcome, outcome, memory_order_release);
  /* Each queued joiner holds a reference to itself (klua_join_arm): taken
   * over here, so a joiner that ends meanwhile is not freed under us. */
  klua_task_t *j = t->joiners;
  t->joiners = NULL;
  for (klua_task_t *x = j; x; x = x->join_next) atomic_store(&x->joining, NULL);
  pthread_mutex_unlock(&t->m);
  while (j) {
    klua_task_t *next = j->join_next;
    j->join_next = j->join_prev = NULL;
    klua_wake(j, KLUA_WAKE_JOIN);
    klua_task_release(j);
    j = next;
  }
}

/* ----------------------------------------------------------------- waits */

static void on_cancel(knhk_cancel_cb_t *cb, int reason) {
  (void)reason;
  klua_wake(cb->data, KLUA_WAKE_CANCEL);
}

/* Starts a wait: clears the hints and arms a wake-up on `token`'s
 * cancellation. Returns 1 if it is cancelled already (nothing armed). */
int klua_wait_begin(klua_task_t *t, knhk_token_t *token) {
  atomic_store_explicit(&t->wake_bits, 0, memory_order_relaxed);
  t->ccb_on = 0;
  if (!token) return 0;
  if (knhk_token_on_cancel(token, &t->ccb, on_cancel, t) == KNHK_ECANCELED) return 1;
  t->ccb_on = 1;
  return 0;
}

static void timer_done(knhk_timer_t *tm, int status) {
  klua_task_t *t = tm->data;
  pthread_mutex_lock(&t->m);
  if (t->timer == tm) t->timer = NULL;
  pthread_mutex_unlock(&t->m);
  if (status == 0) klua_wake(t, KLUA_WAKE_TIMER);
  free(tm);
  klua_task_release(t); /* held by the timer */
}

/* Arms a timer that wakes t at deadline_ns. Returns 0 or an error. */
int klua_sleep_arm(klua_task_t *t, uint64_t deadline_ns) {
  knhk_timer_t *tm = calloc(1, sizeof *tm);
  if (!tm) return KNHK_ENOMEM;
  klua_task_retain(t);
  pthread_mutex_lock(&t->m);
  knhk_timer_t *old = t->timer;
  t->timer = tm;
  if (old) knhk_timer_stop(old);
  pthread_mutex_unlock(&t->m);
  int rc = knhk_timer_start(t->rt->reactor, tm, deadline_ns, timer_done, t);
  if (rc != 0) {
    pthread_mutex_lock(&t->m);
    if (t->timer == tm) t->timer = NULL;
    pthread_mutex_unlock(&t->m);
    free(tm);
    klua_task_release(t);
  }
  return rc;
}

/* Registers waiter to be woken when target ends. Returns 1 if it has
 * ended already (nothing armed). */
int klua_join_arm(klua_task_t *waiter, klua_task_t *target) {
  pthread_mutex_lock(&target->m);
  if (klua_task_outcome(target) != KLUA_RUNNING) {
    pthread_mutex_unlock(&target->m);
    return 1;
  }
  klua_task_retain(waiter);
  waiter->join_prev = NULL;
  waiter->join_next = target->joiners;
  if (target->joiners) target->joiners->join_prev = waiter;
  target->joiners = waiter;
  atomic_store(&waiter->joining, target);
  pthread_mutex_unlock(&target->m);
  return 0;
}

/* Also wakes t when `token` (not its scope's) is cancelled. Returns 1 if
 * it is cancelled already. */
int klua_watch_arm(klua_task_t *t, knhk_token_t *token) {
  if (knhk_token_on_cancel(token, &t->watch, on_cancel, t) == KNHK_ECANCELED) return 1;
  t->watch_on = 1;
  return 0;
}

/* The next ended child of n not yet taken, in completion order, or NULL
 * (none has ended since). Never waits. The caller gets the nursery's
 * reference to the record: it must release it (a Lua handle does). */
klua_task_t *klua_nursery_next_ended(knhk_nursery_t *n) {
  knhk_child_t *c = NULL;
  if (knhk_nursery_try_next(n, &c) != 0) return NULL;
  return c->arg;
}

/* Ends a wait: whatever is still armed is taken back. */
void klua_wait_end(klua_task_t *t) {
  if (t->ccb_on) {
    knhk_token_off(&t->ccb);
    t->ccb_on = 0;
  }
  if (t->watch_on) {
    knhk_token_off(&t->watch);
    t->watch_on = 0;
  }
  pthread_mutex_lock(&t->m);
  knhk_timer_t *tm = t->timer;
  if (tm) knhk_timer_stop(tm); /* timer_done frees it */
  pthread_mutex_unlock(&t->m);
  klua_task_t *target = atomic_load(&t->joining);
  if (target) {
    /* target outlives this: the waiter holds a handle to what it joins */
    pthread_mutex_lock(&target->m);
    if (atomic_load(&t->joining) == target) {
      if (t->join_prev) t->join_prev->join_next = t->join_next;
      else target->joiners = t->join_next;
      if (t->join_next) t->join_next->join_prev = t->join_prev;
      t->join_next = t->join_prev = NULL;
      atomic_store(&t->joining, NULL);
      pthread_mutex_unlock(&target->m);
      klua_task_release(t); /* still queued: its own reference comes back */
    } else {
      pthread_mutex_unlock(&target->m);
    }
  }
}

/* -------------------------------------------------------------- accessors */

uint64_t klua_task_id(const klua_task_t *t) { return t->pub.id; }
int klua_task_kind(const klua_task_t *t) { return t->pub.kind; }
knhk_token_t *klua_task_token(const klua_task_t *t) { return t->pub.token; }

/* Whoever joins a task handles its error (in any VM): its nursery does
 * not report it again when it closes. */
void klua_task_set_joined(klua_task_t *t) {
  atomic_store_explicit(&t->joined, 1, memory_order_relaxed);
}
int klua_task_joined(const klua_task_t *t) {
  return atomic_load_explicit(&((klua_task_t *)t)->joined, memory_order_relaxed);
}

/* acquire: pairs with klua_task_finish's release */
int klua_task_outcome(const klua_task_t *t) {
  return atomic_load_explicit(&((klua_task_t *)t)->pub.outcome, memory_order_acquire);
}

/* Once klua_task_outcome said it ended: its encoded results or error. */
const char *klua_task_result(const klua_task_t *t, size_t *len) {
  *len = t->pub.result_len;
  return t->pub.result;
}

/* Its start snapshot (portable) or key (local), set before it was spawned. */
const char *klua_task_start(const klua_task_t *t, size_t *len) {
  *len = t->pub.start_len;
  return t->pub.start;
}

/* --------------------------------------------------------------- nurseries */

klua_nursery_t *klua_nursery_new(klua_rt_t *rt, knhk_token_t *parent, int supervise, int *err) {
  klua_nursery_t *kn = malloc(sizeof *kn);
  if (!kn) {
    *err = KNHK_ENOMEM;
    return NULL;
  }
  *err = knhk_nursery_new(&kn->n, &rt->ex, parent, supervise ? KNHK_NURSERY_SUPERVISE : 0);
  if (*err != 0) {
    free(kn);
    return NULL;
  }
  atomic_init(&kn->refs, 1);
  return kn;
}

klua_nursery_t *klua_nursery_retain(klua_nursery_t *kn) {
  atomic_fetch_add_explicit(&kn->refs, 1, memory_order_relaxed);
  return kn;
}

/* The last reference frees it: by then its owner closed it, so no child
 * is live and none can be spawned. */
void klua_nursery_release(klua_nursery_t *kn) {
  if (!kn || atomic_fetch_sub_explicit(&kn->refs, 1, memory_order_acq_rel) != 1) return;
  knhk_nursery_free(kn->n);
  free(kn);
}

/* ------------------------------------------------------ prototype registry */

uint32_t klua_proto_register(klua_rt_t *rt, const char *bc, size_t len) {
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

const char *klua_proto_get(klua_rt_t *rt, uint32_t id, size_t *len) {
  pthread_mutex_lock(&rt->protos_m);
  const char *p = NULL;
  if (id >= 1 && id <= rt->nprotos) {
    p = rt->protos[id - 1];
    *len = rt->proto_lens[id - 1];
  }
  pthread_mutex_unlock(&rt->protos_m);
  return p;
}

/* ---------------------------------------------------------------- queries */

uint64_t klua_now(klua_rt_t *rt) { return knhk_reactor_now(rt->reactor); }
int klua_worker_index(klua_rt_t *rt) { return knhk_executor_worker_index(&rt->ex); }
int klua_workers(klua_rt_t *rt) { return rt->workers; }
knhk_executor_t *klua_executor(klua_rt_t *rt) { return &rt->ex; }
knhk_reactor_t *klua_reactor(klua_rt_t *rt) { return rt->reactor; }
knhk_token_t *klua_root_token(klua_rt_t *rt) { return rt->root_token; }

/* -------------------------------------------------------------- lifecycle */

/* A worker VM: the standard libraries, the caller's module paths, and the
 * knhk runtime, which registers its step function (core.register). */
static int vm_open(klua_rt_t *rt, int index, char *err, size_t errlen) {
  lua_State *L = luaL_newstate();
  if (!L) {
    snprintf(err, errlen, "cannot create the Lua state of worker %d", index);
    return KNHK_ENOMEM;
  }
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushstring(L, rt->lua_path);
  lua_setfield(L, -2, "path");
  lua_pushstring(L, rt->lua_cpath);
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  rt->vms[index].L = L;
  rt->vms[index].own = 1;
  lua_pushlightuserdata(L, rt);
  lua_setfield(L, LUA_REGISTRYINDEX, "knhk.rt");
  lua_pushinteger(L, index);
  lua_setfield(L, LUA_REGISTRYINDEX, "knhk.worker");
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
  if (rt->vms[index].step_ref == LUA_NOREF) {
    snprintf(err, errlen, "worker %d: knhk.runtime did not register its step function", index);
    return KNHK_EIO;
  }
  return 0;
}

int klua_rt_new(lua_State *caller, int workers, klua_rt_t **out, char *err, size_t errlen) {
  klua_rt_t *rt = calloc(1, sizeof *rt);
  if (!rt) return KNHK_ENOMEM;
  pthread_mutex_init(&rt->protos_m, NULL);
  pthread_mutex_init(&rt->live_m, NULL);
  rt->workers = workers;
  rt->vms = calloc((size_t)workers, sizeof *rt->vms);
  int rc = rt->vms ? 0 : KNHK_ENOMEM;
  for (int i = 0; i < workers && rt->vms; i++) rt->vms[i].step_ref = LUA_NOREF;
  if (rc == 0) rc = knhk_reactor_new(&rt->reactor);
  if (rc == 0) rc = knhk_token_new(&rt->root_token, NULL);
  if (rc == 0) {
    rt->vms[0].L = caller;
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
    o.flags = KNHK_EXECUTOR_CALLER_IS_WORKER0;
    rc = knhk_executor_init(&rt->ex, &o);
    if (rc != 0) snprintf(err, errlen, "cannot start %d workers: %s", workers, knhk_strerror(rc));
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

int klua_rt_enter(klua_rt_t *rt) { return knhk_executor_enter(&rt->ex, NULL); }

void klua_rt_free(klua_rt_t *rt) {
  if (!rt) return;
  knhk_executor_close(&rt->ex); /* a handle never initialised reports EALREADY */
  if (rt->reactor) knhk_reactor_free(rt->reactor);
  if (rt->vms) {
    for (int i = 0; i < rt->workers; i++) {
      if (rt->vms[i].own && rt->vms[i].L) lua_close(rt->vms[i].L);
      else if (rt->vms[i].L && rt->vms[i].step_ref != LUA_NOREF)
        luaL_unref(rt->vms[i].L, LUA_REGISTRYINDEX, rt->vms[i].step_ref);
    }
    if (rt->vms[0].L) {
      lua_pushnil(rt->vms[0].L);
      lua_setfield(rt->vms[0].L, LUA_REGISTRYINDEX, "knhk.rt");
    }
  }
  knhk_token_release(rt->root_token);
  free(rt->lua_path);
  free(rt->lua_cpath);
  for (uint32_t i = 0; i < rt->nprotos; i++) free(rt->protos[i]);
  free(rt->protos);
  free(rt->proto_lens);
  free(rt->vms);
  pthread_mutex_destroy(&rt->protos_m);
  for (size_t i = 0; i < rt->nwheres; i++) free(rt->wheres[i]);
  free(rt->wheres);
  pthread_mutex_destroy(&rt->live_m);
  free(rt);
}
