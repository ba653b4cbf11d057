/* klua_task.c: Lua task records: allocation, spawning, running (resuming
 * the task's coroutine from the worker's loop), ending, cancelling.
 *
 * A record's life:  alloc -> filled in by the spawner (klua_core.c) ->
 * klua_task_spawn (counted in its group, queued on the executor) -> run:
 * its coroutine resumed until its function returned and the results were
 * settled -> the outcome published (klua_task_publish, by core.finish or
 * the settle function) -> the executor ends it
 * (task_ended: its group counts it out) -> released by the last handle.
 *
 * References: each handle (a Lua userdata) holds one; the running task
 * holds one from spawn until the executor ended it; an ORDERED group holds
 * one until its owner took the child out of the ended list.
 */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "klua.h"
#include "klua_value.h"
#include "knhk/errors.h"

#define SLAB KLUA_TASK_SLAB /* records per slab: one shared batch */
#define BATCH 64          /* records a worker hands to the shared pool at once */
#define LOCAL_MAX (2 * BATCH) /* free records a worker keeps before sharing */

void klua_spin_lock(klua_spin_t *s) {
  for (unsigned n = 1;; n++) {
    if (!atomic_exchange_explicit(&s->held, 1, memory_order_acquire)) return;
    while (atomic_load_explicit(&s->held, memory_order_relaxed)) {
      if (n++ % 64 == 0) sched_yield();
    }
  }
}

/* ------------------------------------------------------------------ pool */

static _Atomic uint64_t next_id = 1;
enum { ID_BLOCK = 1024 }; /* ids a worker takes at a time (klua_worker_t) */

/* A task id, unique in the process: from w's block, or the counter. */
static uint64_t new_id(klua_worker_t *w) {
  if (!w) return atomic_fetch_add_explicit(&next_id, 1, memory_order_relaxed);
  if (w->id_next == w->id_end) {
    w->id_next = atomic_fetch_add_explicit(&next_id, ID_BLOCK, memory_order_relaxed);
    w->id_end = w->id_next + ID_BLOCK;
  }
  return w->id_next++;
}

static int task_run(knhk_task_t *et);
static void task_ended(knhk_task_t *et, int status);

/* Free records move between a worker and the shared pool in batches, so
 * the pool's lock is taken once per BATCH allocations or releases, and a
 * batch carries its length: nothing is ever counted by walking a list.
 * Invariant: every chain on rt->shared_free is linked through `link`,
 * ends in NULL, and its head's batch_n is its exact length. */

/* Under pool_m: a slab of records onto the shared pool, as one batch. What
 * never changes in a record is set here, once: a late waker (type-stable
 * memory) may read it at any time. */
static int grow_locked(klua_rt_t *rt) {
  if (rt->nslabs == rt->capslabs) {
    size_t cap = rt->capslabs ? rt->capslabs * 2 : 16;
    void **s = realloc(rt->slabs, cap * sizeof *s);
    if (!s) return KNHK_ENOMEM;
    rt->slabs = s;
    rt->capslabs = cap;
  }
  klua_task_t *slab = klua_arena_alloc(&rt->arena, SLAB * sizeof *slab);
  if (!slab) return KNHK_ENOMEM;
  rt->slabs[rt->nslabs++] = slab;
  for (int i = 0; i < SLAB; i++) {
    klua_task_t *t = &slab[i];
    t->rt = rt;
    knhk_task_init(&t->et, task_run, NULL);
    t->et.on_end = task_ended;
    t->et.flags = KNHK_TASK_STICKY;
    t->link = i + 1 < SLAB ? &slab[i + 1] : NULL;
  }
  slab[0].batch_n = SLAB;
  slab[0].batch_next = rt->shared_free;
  rt->shared_free = &slab[0];
  return 0;
}

/* Under pool_m: the chain head..(n records) onto the shared pool. */
static void share_batch_locked(klua_rt_t *rt, klua_task_t *head, uint32_t n) {
  head->batch_n = n;
  head->batch_next = rt->shared_free;
  rt->shared_free = head;
}

/* ------------------------------------------------------------ wait nodes */

/* A running task has a wait node: taken with its coroutine at its first
 * run (task_run), given back when it ends (task_ended), so only tasks that have
 * started hold one, and a worker that runs task after task hands each the
 * node the last one gave back, still in its cache. Nodes are carved from
 * the runtime's arena and never freed before it: type-stable, as records
 * are. A worker keeps at most NODES_KEEP free; the rest, and those given
 * back off a worker, go to the shared list under pool_m. */
#define NODES_SLAB 64
#define NODES_KEEP 4096

/* Under pool_m: up to NODES_SLAB free nodes, as a chain (free_next) from
 * the shared list, or a slab carved for them. Its length in *n. */
static klua_wait_t *nodes_batch_locked(klua_rt_t *rt, uint32_t *n) {
  klua_wait_t *head = rt->shared_nodes;
  if (head) {
    klua_wait_t *last = head;
    *n = 1;
    while (*n < NODES_SLAB && last->free_next) {
      last = last->free_next;
      ++*n;
    }
    rt->shared_nodes = last->free_next;
    last->free_next = NULL;
    return head;
  }
  klua_wait_t *slab = klua_arena_alloc(&rt->arena, NODES_SLAB * sizeof *slab); /* zero */
  if (!slab) return NULL;
  for (int i = 0; i < NODES_SLAB; i++) {
    atomic_init(&slab[i].timer_busy, 0);
    slab[i].free_next = i + 1 < NODES_SLAB ? &slab[i + 1] : NULL;
  }
  *n = NODES_SLAB;
  return slab;
}

/* t's node, taken by worker w as t first runs there; NULL if out of memory. */
static klua_wait_t *take_node(klua_worker_t *w, klua_task_t *t) {
  klua_wait_t *n = w->free_nodes;
  if (n) {
    w->free_nodes = n->free_next;
    w->nfree_nodes--;
  } else { /* a batch at a time: the lock once per NODES_SLAB nodes */
    uint32_t got = 0;
    pthread_mutex_lock(&t->rt->pool_m);
    n = nodes_batch_locked(t->rt, &got);
    pthread_mutex_unlock(&t->rt->pool_m);
    if (!n) return NULL;
    w->free_nodes = n->free_next;
    w->nfree_nodes = got - 1;
  }
  /* (timer_busy is left as it is: the timer may still be completing) */
  n->task = t;
  n->free_next = NULL;
  n->on = NULL;
  n->val = NULL;
  n->kind = KLUA_WAIT_NONE;
  n->queued = 0;
  n->val_owned = 0;
  n->handed = 0;
  n->ccb_on = 0;
  n->watch_on = 0;
  n->extra_timer = NULL;
  n->watch = NULL;
  return n;
}

/* Gives t's node back as t ends (its last wait has ended). */
static void put_node(klua_task_t *t) {
  klua_wait_t *n = t->w;
  t->w = NULL;
  klua_rt_t *rt = t->rt;
  klua_worker_t *w = klua_worker(rt);
  klua_wait_t *first = n, *last = n; /* what goes to the shared list */
  if (w) {
    n->free_next = w->free_nodes;
    w->free_nodes = n;
    if (++w->nfree_nodes < NODES_KEEP) return;
    /* Keep the NODES_SLAB given back last (warm in this cache); share the
     * rest, under one lock (a million sleepers cancelled at once give
     * theirs back in a burst). */
    klua_wait_t *keep_tail = n;
    for (int i = 1; i < NODES_SLAB; i++) keep_tail = keep_tail->free_next;
    first = last = keep_tail->free_next;
    keep_tail->free_next = NULL;
    while (last->free_next) last = last->free_next;
    w->nfree_nodes = NODES_SLAB;
  }
  pthread_mutex_lock(&rt->pool_m);
  last->free_next = rt->shared_nodes;
  rt->shared_nodes = first;
  pthread_mutex_unlock(&rt->pool_m);
}

klua_task_t *klua_task_alloc(klua_rt_t *rt) {
  klua_worker_t *w = klua_worker(rt);
  klua_task_t *t = NULL;
  if (w && w->free) {
    t = w->free;
    w->free = t->link;
    w->nfree--;
  } else {
    pthread_mutex_lock(&rt->pool_m);
    if (!rt->shared_free) grow_locked(rt);
    t = rt->shared_free;
    if (t) rt->shared_free = t->batch_next;
    if (t && w) { /* the rest of the batch becomes this worker's */
      w->free = t->link;
      w->nfree = t->batch_n - 1;
    } else if (t && t->link) { /* no worker to keep them: the rest goes back */
      share_batch_locked(rt, t->link, t->batch_n - 1);
    }
    pthread_mutex_unlock(&rt->pool_m);
    if (!t) return NULL;
  }
  /* Fields a reused record must not keep. Records are type-stable: what a
   * late waker may read (et, flags) stays a valid value throughout. The
   * fence: a reader of the listing (klua_tasks_each) that sees one of the
   * writes below sees the live_seq that ended the record's last use, and
   * drops what it read (the sequence lock's writer side; no instruction
   * on x86). */
  atomic_thread_fence(memory_order_release);
  t->link = NULL;
  atomic_store_explicit(&t->refs, 1, memory_order_relaxed);
  atomic_store_explicit(&t->outcome, KLUA_RUNNING, memory_order_relaxed);
  atomic_store_explicit(&t->flags, 0, memory_order_relaxed);
  atomic_store_explicit(&t->home, -1, memory_order_relaxed);
  atomic_store_explicit(&t->token, NULL, memory_order_relaxed);
  t->id = new_id(w);
  t->group = NULL;
  t->cancel_parent = NULL;
  t->parent = 0;
  t->where = "a function";
  t->pay = KLUA_PAY_NONE;
  t->proto = 0;
  t->start_len = 0;
  t->nvals = 0;
  t->fn_ref = LUA_NOREF;
  t->len = 0;
  t->data = t->buf;
  t->co = NULL;
  t->co_ref = LUA_NOREF;
  t->scope = NULL;
  t->implicit = NULL;
  t->joiners = NULL;
  t->recheck = 0;
  t->w = NULL;
  return t;
}

void klua_payload_reset(klua_task_t *t) {
  if (t->data != t->buf) free(t->data);
  t->data = t->buf;
  t->len = 0;
  t->pay = KLUA_PAY_NONE;
  t->nvals = 0;
}

char *klua_payload_room(klua_task_t *t, uint32_t len) {
  klua_payload_reset(t);
  if (len > KLUA_INLINE) {
    char *p = malloc(len);
    if (!p) return NULL;
    t->data = p;
  }
  t->len = len;
  return t->data;
}

/* The references to handles t's payload holds (results: every join pushed
 * or decoded copies; a start that never ran): its inline values, or those
 * that follow a snapshot. A start that ran gave its own to its task. */
static void payload_drop_handles(klua_task_t *t, int foreign_only) {
  const char *p = t->data;
  uint32_t len = t->len;
  if (t->pay == KLUA_PAY_BLOB) {
    len = (uint32_t)t->nvals * KLUA_BLOB_HANDLE_BYTES;
    p += t->len - len;
  } else if (t->pay != KLUA_PAY_INLINE) {
    return;
  }
  klua_values_drop_kinds(p, len, foreign_only);
}

void klua_payload_drop_foreign(klua_task_t *t) { payload_drop_handles(t, 1); }

knhk_telemetry_task_t klua_no_tel;

/* The telemetry block a task had while recording, if any. */
void klua_task_drop_tel(klua_task_t *t) {
  if (t->tel && t->tel != &klua_no_tel) free(t->tel);
  t->tel = &klua_no_tel;
}

static void task_free(klua_task_t *t) {
  klua_rt_t *rt = t->rt;
  klua_task_drop_tel(t);
  payload_drop_handles(t, 0);
  klua_payload_reset(t);
  /* (no reference is left: nobody else makes its token now) */
  knhk_token_t *tok = atomic_load_explicit(&t->token, memory_order_relaxed);
  atomic_store_explicit(&t->token, NULL, memory_order_relaxed);
  if (tok) knhk_token_release(tok);
  knhk_token_release(t->cancel_parent);
  t->cancel_parent = NULL;
  klua_worker_t *w = klua_worker(rt);
  if (!w) {
    t->link = NULL;
    pthread_mutex_lock(&rt->pool_m);
    share_batch_locked(rt, t, 1);
    pthread_mutex_unlock(&rt->pool_m);
    return;
  }
  t->link = w->free;
  w->free = t;
  if (++w->nfree < LOCAL_MAX) return;
  /* Keep the BATCH released last (warm in this cache); share the rest. */
  klua_task_t *keep_tail = t;
  for (int i = 1; i < BATCH; i++) keep_tail = keep_tail->link;
  klua_task_t *head = keep_tail->link;
  keep_tail->link = NULL;
  w->nfree = BATCH;
  pthread_mutex_lock(&rt->pool_m);
  share_batch_locked(rt, head, LOCAL_MAX - BATCH);
  pthread_mutex_unlock(&rt->pool_m);
}

void klua_task_retain(klua_task_t *t) {
  atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

/* The last reference is seen with a load: no other holder is left to let
 * one go, nor to take one (only a holder makes another: a handle, a copy
 * of it, a group's list), and the acquire sees what the others did before
 * their release. So the common end, the join after the task ended, costs
 * no locked instruction. */
void klua_task_release(klua_task_t *t) {
  if (atomic_load_explicit(&t->refs, memory_order_acquire) == 1 ||
      atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
    task_free(t);
}

/* ------------------------------------------------------------- outcome */

int klua_task_outcome(const klua_task_t *t) {
  return atomic_load_explicit(&((klua_task_t *)t)->outcome, memory_order_acquire);
}

klua_task_t *klua_task_remade(klua_rt_t *rt, uint64_t id, const char *vals, uint32_t len,
                              int nvals) {
  klua_task_t *t = klua_task_alloc(rt);
  if (!t) return NULL;
  char *out = klua_payload_room(t, len);
  if (!out) {
    klua_task_release(t);
    return NULL;
  }
  memcpy(out, vals, len);
  t->id = id;
  t->pay = KLUA_PAY_INLINE;
  t->nvals = nvals;
  atomic_store_explicit(&t->flags, KLUA_T_JOINED, memory_order_relaxed);
  atomic_store_explicit(&t->outcome, KLUA_OK, memory_order_release);
  return t;
}

int klua_task_keepable(klua_task_t *t, klua_kept_t *k) {
  if (klua_task_outcome(t) != KLUA_OK || t->pay != KLUA_PAY_INLINE || t->nvals > 1) return 0;
  int what = KLUA_KEPT_NONE;
  k->num = 0;
  if (t->nvals == 1) {
    switch (t->data[0]) {
    case KLUA_V_NIL: what = KLUA_KEPT_NIL; break;
    case KLUA_V_FALSE: what = KLUA_KEPT_FALSE; break;
    case KLUA_V_TRUE: what = KLUA_KEPT_TRUE; break;
    case KLUA_V_NUMBER: what = KLUA_KEPT_NUMBER; memcpy(&k->num, t->data + 1, 8); break;
    default: return 0;
    }
  }
  k->p = klua_kept_word(t->id, what);
  return 1;
}

void klua_task_publish(klua_task_t *t, int outcome) {
  /* release: a joiner that reads the outcome (acquire) sees the payload */
  atomic_store_explicit(&t->outcome, outcome, memory_order_release);
  klua_wake_joiners(t);
}

/* -------------------------------------------------------------- tokens */

knhk_token_t *klua_task_own_token(klua_task_t *t) {
  knhk_token_t *tok = atomic_load_explicit(&t->token, memory_order_acquire);
  if (tok) return tok;
  knhk_token_t *mine = NULL;
  knhk_token_t *parent = t->cancel_parent;
  if (knhk_token_new(&mine, parent) != 0) return NULL;
  knhk_token_t *expected = NULL;
  /* acq_rel: whoever loses the race uses the winner's, fully made */
  if (atomic_compare_exchange_strong_explicit(&t->token, &expected, mine, memory_order_acq_rel,
                                              memory_order_acquire))
    return mine;
  knhk_token_release(mine);
  return expected;
}

knhk_token_t *klua_task_checkpoint_token(klua_task_t *t) {
  if (t->scope) return t->scope;
  knhk_token_t *tok = atomic_load_explicit(&t->token, memory_order_acquire);
  if (tok) return tok;
  return t->cancel_parent;
}

void klua_task_cancel(klua_task_t *t) {
  if (klua_task_outcome(t) != KLUA_RUNNING) return;
  knhk_token_t *tok = klua_task_own_token(t);
  if (tok) knhk_token_cancel(tok, KNHK_CANCEL_EXPLICIT);
  /* A task waiting with its wake-up on its group's token did not hear
   * its own (new) token: wake it, it looks again. */
  klua_wake(t);
}

/* ------------------------------------------------------------- running */

void klua_wake(klua_task_t *t) { knhk_executor_wake(&t->rt->ex, &t->et); }

/* The marker a task yields to wait (the runtime's waits: runtime.lua). */
static char mark_wait;

/* An idle coroutine of w's VM, or NULL. Made inside a protected call: an
 * allocation may raise (out of memory, or a finalizer). Its stack is
 * LuaJIT's first size: a task's function runs three slots from its base
 * (task_run), so a task that waits a frame or two deep fits in it, and a
 * million sleeping tasks do not each carry a grown stack. */
static int make_coroutine(lua_State *L) {
  klua_worker_t *w = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->anchor);
  lua_State *co = lua_newthread(L);
  int ref = klua_ref(w, L, -2);
  lua_pushlightuserdata(L, co);
  lua_pushinteger(L, ref);
  return 2;
}

static lua_State *take_coroutine(klua_worker_t *w, int *ref) {
  if (w->nco > 0) {
    w->nco--;
    *ref = w->co_refs[w->nco];
    return w->co_free[w->nco];
  }
  lua_State *L = w->L;
  int top = lua_gettop(L);
  if (w->make_co <= 0) { /* one C function per VM: pushing it anew made one per call */
    lua_pushcfunction(L, make_coroutine);
    w->make_co = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->make_co);
  lua_pushlightuserdata(L, w);
  lua_State *co = NULL;
  if (lua_pcall(L, 1, 2, 0) == 0) {
    co = lua_touserdata(L, -2);
    *ref = (int)lua_tointeger(L, -1);
  }
  lua_settop(L, top);
  return co;
}

static void unanchor(klua_worker_t *w, int ref);

/* A coroutine whose task ended, back to the pool: it ended its last
 * function (status ok, empty stack), and LuaJIT resumes such a coroutine
 * anew with the next function put on it. */
static void give_back_coroutine(klua_worker_t *w, lua_State *co, int ref) {
  lua_settop(co, 0);
  /* A task that set its thread's environment (setfenv(0, t)) must not
   * leave it to the next task on this coroutine: the chunks that task
   * loads would get it. */
  if (lua_topointer(co, LUA_GLOBALSINDEX) != w->globals) {
    lua_pushvalue(w->L, LUA_GLOBALSINDEX);
    lua_xmove(w->L, co, 1);
    lua_replace(co, LUA_GLOBALSINDEX);
  }
  if (w->nco == w->capco) {
    int cap = w->capco ? w->capco * 2 : 64;
    lua_State **c = realloc(w->co_free, (size_t)cap * sizeof *c);
    int *r = c ? realloc(w->co_refs, (size_t)cap * sizeof *r) : NULL;
    if (c) w->co_free = c;
    if (!c || !r) { /* no room to pool it: let the GC have it */
      unanchor(w, ref);
      return;
    }
    w->co_refs = r;
    w->capco = cap;
  }
  w->co_free[w->nco] = co;
  w->co_refs[w->nco] = ref;
  w->nco++;
}

static int abs_index(lua_State *L, int t) {
  return t < 0 && t > LUA_REGISTRYINDEX ? lua_gettop(L) + t + 1 : t;
}

int klua_ref(klua_worker_t *w, lua_State *L, int t) {
  t = abs_index(L, t);
  int ref = w->anchor_free;
  if (ref > 0) {
    lua_rawgeti(L, t, ref);
    w->anchor_free = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
  } else {
    ref = ++w->anchor_top;
  }
  lua_rawseti(L, t, ref);
  return ref;
}

void klua_unref(klua_worker_t *w, lua_State *L, int t, int ref) {
  if (ref <= 0) return;
  t = abs_index(L, t);
  lua_pushinteger(L, w->anchor_free);
  lua_rawseti(L, t, ref);
  w->anchor_free = ref;
}

int klua_ref_fn(klua_worker_t *w, lua_State *L, int t, int fnidx, const void *fn) {
  t = abs_index(L, t);
  if (w->rep_n > 0 && w->rep_fn == fn && w->rep_n < UINT32_MAX) {
    w->rep_n++; /* (the slot holds it: its address names it meanwhile) */
    return KLUA_REF_REPEAT;
  }
  lua_pushvalue(L, fnidx);
  if (w->rep_n > 0) return klua_ref(w, L, t); /* another function's run pends */
  /* counted before the slot is written: a spawn nested in the write (none
   * can run there today) would count itself in, or take a ref of its own */
  w->rep_fn = fn;
  w->rep_n = 1;
  lua_rawseti(L, t, KLUA_REF_REPEAT);
  return KLUA_REF_REPEAT;
}

void klua_unref_fn(klua_worker_t *w, lua_State *L, int t, int ref) {
  if (ref != KLUA_REF_REPEAT) {
    klua_unref(w, L, t, ref);
    return;
  }
  if (--w->rep_n > 0) return;
  t = abs_index(L, t);
  lua_pushnil(L); /* the run ended: the function is not kept alive by it */
  lua_rawseti(L, t, KLUA_REF_REPEAT);
  w->rep_fn = NULL;
}

/* A local start's function, its error handler and its arguments, pushed
 * on L from the VM's anchor table (at stack index `anchor`), which lets
 * them go; returns how many. core.start's local case, and task_run's for
 * arguments that are only nils, booleans and numbers: then nothing here
 * allocates. */
int klua_push_local_start(klua_worker_t *w, lua_State *L, int anchor, klua_task_t *t) {
  anchor = abs_index(L, anchor);
  lua_rawgeti(L, anchor, t->fn_ref);
  klua_unref_fn(w, L, anchor, t->fn_ref);
  t->fn_ref = LUA_NOREF;
  lua_rawgeti(L, anchor, KLUA_ANCHOR_CAPTURE);
  int n = 2;
  if (t->nvals >= 0) {
    klua_values_push(L, t->data, t->nvals, 0);
    n += t->nvals;
  } else { /* (a table of them, anchored too) */
    int ref = (int)t->proto;
    lua_rawgeti(L, anchor, ref);
    klua_unref(w, L, anchor, ref);
    int tab = lua_gettop(L);
    lua_getfield(L, tab, "n");
    int nargs = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    luaL_checkstack(L, nargs, "too many arguments");
    for (int i = 1; i <= nargs; i++) lua_rawgeti(L, tab, i);
    lua_remove(L, tab);
    n += nargs;
  }
  t->proto = 0;
  klua_payload_reset(t);
  return n;
}

char *klua_payload_encode(klua_task_t *t, lua_State *L, int first, int n) {
  /* The commonest: they fit the record, written there in one pass (a
   * failed try leaves bytes in buf that the general path overwrites). */
  klua_payload_reset(t);
  int len = klua_values_encode_plain(L, first, n, t->buf, KLUA_INLINE);
  if (len >= 0) {
    t->len = (uint32_t)len;
    return t->buf;
  }
  int64_t size = klua_values_size(L, first, n, NULL);
  char *out = size >= 0 ? klua_payload_room(t, (uint32_t)size) : NULL;
  if (out) klua_values_encode(L, first, n, out, NULL);
  return out;
}

/* Keeps the n values at `first` on L as t's results, inline, if they can
 * be (klua_payload_encode); 1 if kept (not published yet). */
int klua_task_keep_results(klua_task_t *t, lua_State *L, int first, int n) {
  if (!klua_payload_encode(t, L, first, n)) return 0;
  t->pay = KLUA_PAY_INLINE;
  t->nvals = n;
  return 1;
}

/* Lets go of what w's anchor table holds at ref (a coroutine, a closure). */
static void unanchor(klua_worker_t *w, int ref) {
  lua_State *L = w->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->anchor);
  klua_unref(w, L, -1, ref);
  lua_pop(L, 1);
}

/* A task that ended without finishing (its coroutine is dropped): the
 * closure it ran is let go, not pooled. */
static void drop_fn(klua_worker_t *w, klua_task_t *t) {
  if (t->fn_ref == LUA_NOREF) return;
  unanchor(w, t->fn_ref);
  t->fn_ref = LUA_NOREF;
}

/* The runtime's own bookkeeping failed while it ran t (the coroutine died
 * outside the task's own protected call: a finalizer raised, or memory
 * ran out): t fails with that message, so nothing waits for ever. */
static void fail_in_runtime(klua_task_t *t, const char *why) {
  if (klua_task_outcome(t) != KLUA_RUNNING) return;
  char msg[512];
  int n = snprintf(msg, sizeof msg, "knhk: task %llu failed in the runtime's own bookkeeping: %s",
                   (unsigned long long)t->id, why ? why : "(an error that is not a string)");
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof msg) n = sizeof msg - 1;
  char *p = klua_payload_room(t, (uint32_t)n);
  if (p) {
    memcpy(p, msg, (size_t)n);
    t->pay = KLUA_PAY_MESSAGE;
  }
  klua_task_publish(t, KLUA_ERROR);
}

/* A task is listed (knhk.tasks(), a stall's report) from its spawn to its
 * end: its live_seq is odd meanwhile (klua_tasks_each reads it as a
 * sequence lock). This was a list per spawner's worker under a spinlock,
 * and a task that ran and ended on another worker took that lock there:
 * with 2 workers the portable spawn's p50 went from ~300 to ~400 ns with
 * that lock's line going back and forth. Only the record's owner writes
 * live_seq: the spawner here, the worker that ends it below. */
static void listed(klua_task_t *t) {
  uint32_t s = atomic_load_explicit(&t->live_seq, memory_order_relaxed);
  /* release: who reads it odd (acquire) sees the fields written before */
  atomic_store_explicit(&t->live_seq, s | 1u, memory_order_release);
}

static void unlisted(klua_task_t *t) {
  uint32_t s = atomic_load_explicit(&t->live_seq, memory_order_relaxed);
  if (s & 1u) atomic_store_explicit(&t->live_seq, s + 1, memory_order_relaxed);
}

/* A start that will never be used: its handles' references, and what a
 * local start anchored in this (its home) VM, go. */
static void drop_start(klua_worker_t *w, klua_task_t *t) {
  if (t->pay == KLUA_PAY_INLINE) {
    klua_values_drop_len(t->data, t->len); /* upvalues and arguments */
  } else if (t->pay == KLUA_PAY_BLOB) {
    payload_drop_handles(t, 0); /* the handles after the snapshot */
  } else if (t->pay == KLUA_PAY_REFS) {
    lua_State *L = w->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->anchor);
    klua_unref_fn(w, L, -1, t->fn_ref);
    if (t->nvals < 0) klua_unref(w, L, -1, t->proto);
    lua_pop(L, 1);
    if (t->nvals > 0) klua_values_drop(t->data, t->nvals);
  }
  klua_payload_reset(t);
}

static int status_of(int outcome) {
  return outcome == KLUA_OK ? 0 : outcome == KLUA_CANCELLED ? KNHK_ECANCELED : KNHK_EFAILED;
}

/* Whether t, woken in a wait whose next step raises Cancelled, can be
 * ended without resuming it: nothing between that wait and the task's
 * own protected call could catch the error (only Lua frames; no pcall,
 * no C function), and the task has no nursery of its own to close. Then
 * unwinding would run no code of the task's: ending it here is the same,
 * without the unwinder's cost, which dominates cancelling many tasks.
 * The bottom frame is the xpcall that runs the task's function (task_run);
 * while the task's results are settled, it is the settle function. */
static int cancel_unwinds_nothing(klua_worker_t *w, klua_task_t *t) {
  if (t->implicit) return 0;
  lua_State *co = t->co;
  lua_Debug ar;
  /* Level 0 is the C function the wait yielded from (a try's yield_wait,
   * or coroutine.yield; the recheck flag is set just before it). The
   * first C frame above it must be the task's xpcall, and the bottom one. */
  if (!lua_checkstack(co, 2)) return 0;
  int level = 1;
  for (;; level++) {
    if (level > 200 || !lua_getstack(co, level, &ar)) return 0;
    lua_getinfo(co, "f", &ar); /* not "S": that formats the source's name */
    if (lua_iscfunction(co, -1)) break; /* pcall, xpcall, or another C function */
    lua_pop(co, 1);
  }
  int bottom = !lua_getstack(co, level + 1, &ar);
  lua_rawgeti(co, LUA_REGISTRYINDEX, w->xpcall_fn);
  int is_xpcall = lua_rawequal(co, -1, -2);
  lua_pop(co, 2);
  return bottom && is_xpcall;
}

/* Ends t, cancelled, without resuming it (cancel_unwinds_nothing said
 * so): its coroutine, stopped mid-wait, cannot be pooled again. */
static int end_cancelled_unresumed(klua_worker_t *w, klua_task_t *t, knhk_token_t *tok) {
  klua_wait_end(t);
  klua_payload_reset(t);
  t->pay = KLUA_PAY_REASON;
  t->nvals = knhk_token_reason(tok);
  klua_task_publish(t, KLUA_CANCELLED);
  drop_fn(w, t);
  unanchor(w, t->co_ref);
  t->co = NULL;
  t->co_ref = LUA_NOREF;
  return KNHK_ECANCELED;
}

/* What core.start does for a local start whose arguments are only nils,
 * booleans and numbers (the commonest), done here without a protected call
 * into Lua: nothing in it allocates (the function comes from the anchor
 * table, whose slot keeps the free list's number; the coroutine's first
 * stack has room), so nothing can raise. */
static int put_plain_local_start(klua_worker_t *w, lua_State *co, klua_task_t *t) {
  lua_rawgeti(co, LUA_REGISTRYINDEX, w->anchor);
  lua_rawgeti(co, 1, KLUA_ANCHOR_XPCALL);
  int n = klua_push_local_start(w, co, 1, t);
  lua_remove(co, 1);
  return n;
}

/* Puts t's start on its fresh coroutine: xpcall, then what core.start
 * gives it (the function, the error handler, the arguments), so that the
 * task's function runs three slots from the coroutine's base, under no
 * frame of the runtime's but the xpcall: its waits fit in LuaJIT's first
 * stack. core.start decodes, and may raise: a protected call. Returns the
 * number of values to resume with, or -1 with the message on top. */
static int put_start(klua_worker_t *w, lua_State *co, klua_task_t *t) {
  if (t->pay == KLUA_PAY_REFS && t->nvals >= 0 && t->nvals <= LUA_MINSTACK - 4 &&
      klua_values_plain(t->data, t->nvals))
    return put_plain_local_start(w, co, t);
  lua_rawgeti(co, LUA_REGISTRYINDEX, w->start_fn);
  if (lua_pcall(co, 0, LUA_MULTRET, 0) != 0) return -1;
  lua_rawgeti(co, LUA_REGISTRYINDEX, w->xpcall_fn);
  lua_insert(co, 1);
  return lua_gettop(co) - 1;
}

/* What xpcall returned, recorded here, with no call into Lua, when that is
 * what core.finish would do and needs no lookup in the VM's tables: the
 * task ended well, has no nursery of its own and no pooled closure to give
 * back, and returned only nils, booleans, numbers and strings (the most
 * common end of all). 1 if recorded. */
static int finish_plain(lua_State *co, klua_task_t *t) {
  if (t->implicit || t->fn_ref != LUA_NOREF || !lua_toboolean(co, 1)) return 0;
  int n = lua_gettop(co) - 1;
  for (int i = 2; i <= n + 1; i++) {
    int type = lua_type(co, i);
    if (type != LUA_TNIL && type != LUA_TBOOLEAN && type != LUA_TNUMBER && type != LUA_TSTRING)
      return 0;
  }
  if (!klua_task_keep_results(t, co, 2, n)) return 0;
  klua_task_publish(t, KLUA_OK);
  lua_settop(co, 0);
  return 1;
}

/* t's function returned: its coroutine holds what xpcall returned (ok,
 * then the results or the error). core.finish records it if it can (no
 * nursery of its own to close, results the record holds inline) and
 * returns nothing; else it returns how to settle it and its arguments,
 * which the settle function (runtime.lua) is resumed with, in the same
 * coroutine: it may wait (its nursery's children). Returns what to resume
 * with: 0 if recorded, -1 with the message on top if core.finish raised. */
static int put_settle(klua_worker_t *w, lua_State *co) {
  if (finish_plain(co, w->cur)) return 0;
  lua_rawgeti(co, LUA_REGISTRYINDEX, w->finish_fn);
  lua_insert(co, 1);
  if (lua_pcall(co, lua_gettop(co) - 1, LUA_MULTRET, 0) != 0) return -1;
  int n = lua_gettop(co);
  if (n == 0) return 0;
  lua_rawgeti(co, LUA_REGISTRYINDEX, w->settle);
  lua_insert(co, 1);
  return n;
}

static int task_run(knhk_task_t *et) {
  klua_task_t *t = klua_task_of(et);
  klua_rt_t *rt = t->rt;
  klua_worker_t *w = klua_worker(rt);
  if (!w->L) {
    char err[512] = "";
    if (klua_vm_open(rt, w->index, err, sizeof err) != 0) {
      fail_in_runtime(t, err);
      return KNHK_EFAILED;
    }
  }
  int nargs = 0, first = !t->co; /* to resume with; its first run */
  if (first) { /* (cancelled or not: as in Trio, a task runs until its
                  * first checkpoint, so its cleanup runs) */
    atomic_store_explicit(&t->home, w->index, memory_order_relaxed);
    /* before t is current: a finalizer that runs in the making of a
     * coroutine runs in no task */
    t->co = take_coroutine(w, &t->co_ref);
    if (!t->co || !(t->w = take_node(w, t))) {
      fail_in_runtime(t, "out of memory making its coroutine");
      return KNHK_EFAILED;
    }
  }
  if (!first && t->recheck) { /* (not current yet either: see above) */
    t->recheck = 0;
    knhk_token_t *tok = klua_task_checkpoint_token(t);
    if (knhk_token_is_cancelled(tok) && cancel_unwinds_nothing(w, t))
      return end_cancelled_unresumed(w, t, tok);
  }
  klua_task_t *prev = w->cur;
  w->cur = t;
  uint64_t *tel = knhk_telemetry_task_enter(t->tel, &rt->ex);
  if (first) nargs = put_start(w, t->co, t);
  lua_State *co = t->co;
  int rc = nargs < 0 ? LUA_ERRRUN : lua_resume(co, nargs);
  /* The task's function returned (xpcall's ok and results on the stack):
   * settled here, or by the settle function, resumed in its place. A
   * coroutine that ended with nothing on it ended the settle function. */
  if (rc == 0 && lua_gettop(co) > 0) {
    nargs = put_settle(w, co);
    rc = nargs < 0 ? LUA_ERRRUN : nargs > 0 ? lua_resume(co, nargs) : 0;
  }
  knhk_telemetry_task_leave(tel);
  w->cur = prev;
  if (rc == LUA_YIELD) {
    int waits = lua_gettop(co) == 1 && lua_touserdata(co, 1) == &mark_wait;
    lua_settop(co, 0);
    /* A yield that is not the runtime's: the task's code yielded its own
     * coroutine. It goes on at once, after the others. */
    if (!waits) klua_wake(t);
    return KNHK_TASK_PENDING;
  }
  if (rc == 0) {
    drop_fn(w, t); /* (its finish let it go already) */
    give_back_coroutine(w, co, t->co_ref);
  } else {
    /* The coroutine died of an error raised outside the task's own
     * protected call (its start, or the settling of its results). */
    const char *why = lua_type(co, -1) == LUA_TSTRING ? lua_tostring(co, -1) : NULL;
    klua_wait_end(t);
    fail_in_runtime(t, why);
    drop_fn(w, t);
    unanchor(w, t->co_ref);
  }
  t->co = NULL;
  t->co_ref = LUA_NOREF;
  return status_of(klua_task_outcome(t));
}

/* The executor ended t (it ran to its end, or never ran: prompt shutdown). */
static void task_ended(knhk_task_t *et, int status) {
  klua_task_t *t = klua_task_of(et);
  unlisted(t); /* however it ended: ran, failed to start, or never ran */
  if (klua_task_outcome(t) == KLUA_RUNNING) { /* dropped without running */
    klua_worker_t *w = klua_worker(t->rt);
    if (w && (t->pay != KLUA_PAY_REFS || w->L)) drop_start(w, t);
    else klua_payload_reset(t);
    klua_task_publish(t, status == KNHK_ECANCELED ? KLUA_CANCELLED : KLUA_ERROR);
  }
  if (t->w) {
    klua_wait_end(t); /* (its last wait ended before it did: this only makes sure) */
    put_node(t);
  }
  klua_group_t *g = t->group;
  klua_rt_t *rt = t->rt;
  int root = g == rt->root_group;
  knhk_telemetry_task_end(t->tel, status, &rt->ex);
  klua_group_child_ended(g, t); /* the last touch of g by this child */
  klua_task_release(t);          /* the running task's reference */
  /* The root task ended (its children had, before it): the run is over
   * once what is still queued has ended. */
  if (root) knhk_executor_stop(&rt->ex, KNHK_SHUTDOWN_GRACEFUL);
}

/* When a task was spawned, for knhk.tasks()'s ages: on the real clock a
 * coarse reading (a few ms of resolution, a fraction of the precise one's
 * cost, paid on every spawn); a virtual clock's time as it is. */
static uint64_t spawn_time(klua_rt_t *rt) {
  if (knhk_clock_kind(rt->reactor) == KNHK_CLOCK_VIRTUAL) return knhk_reactor_now(rt->reactor);
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int klua_task_spawn(klua_task_t *t, int worker) {
  klua_rt_t *rt = t->rt;
  int rc = klua_group_enter(t->group);
  if (rc != 0) return rc;
  /* the running task's reference, until task_ended, and the ended list's
   * for an ordered group: stored, as nothing else sees t yet */
  int32_t more = 1 + ((t->group->flags & KLUA_G_ORDERED) != 0);
  atomic_store_explicit(&t->refs, atomic_load_explicit(&t->refs, memory_order_relaxed) + more,
                        memory_order_relaxed);
  t->started_ns = spawn_time(rt);
  t->tel = &klua_no_tel;
  if (knhk_telemetry_enabled()) {
    knhk_telemetry_task_t *tel = calloc(1, sizeof *tel);
    if (tel) { /* (else: this task is not recorded) */
      t->tel = tel;
      knhk_telemetry_task_spawn(tel, &t->group->tel,
                                atomic_fetch_add_explicit(&t->group->spawned, 1, memory_order_relaxed));
    }
  }
  listed(t); /* while queued too */
  rc = worker >= 0 ? knhk_executor_spawn_on(&rt->ex, &t->et, worker)
                   : knhk_executor_spawn(&rt->ex, &t->et);
  if (rc != 0) { /* it never ran: it ends here, as cancelled */
    unlisted(t);
    klua_payload_reset(t);
    klua_task_publish(t, KLUA_CANCELLED);
    klua_group_child_ended(t->group, t);
    klua_task_release(t);
  }
  return rc;
}

/* The marker, for runtime.lua's waits (klua_core.c pushes it). */
void *klua_mark_wait(void) { return &mark_wait; }
