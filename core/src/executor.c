/* executor.c: worker threads, spawning, stealing, parking, helping waits,
 * shutdown and counters. See knhk/executor.h for the contract.
 *
 * Idle protocol (no lost wake-ups, no thundering herd):
 *  - A spawner publishes its task with a seq_cst RMW (deque bottom, injector
 *    head), then reads ex->idle with a seq_cst load. If nobody is searching
 *    and some worker sleeps, it wakes exactly one, counting it as unparked
 *    and searching on its behalf, so the next spawner sees a searcher and
 *    wakes nobody.
 *  - A worker that goes to sleep first decrements `unparked` (a seq_cst RMW
 *    under idle_lock), then looks at every queue once more. Either the
 *    spawner's load came after that decrement (and saw a sleeper to wake), or
 *    the worker's final look came after the spawn (and sees the task).
 *  - A searcher that finds work and was the last searcher wakes another
 *    sleeper, so work spreads one worker at a time.
 * Shutdown: once stopping, the last worker to register as sleeping (all
 * others asleep, so their counters are visible under idle_lock) checks that
 * no task is live and no outside spawn is in progress; it then marks the
 * executor done and wakes everybody to exit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "executor_impl.h"
#include "knhk/errors.h"

#define KNHK__MAGIC 0x6b6e686bu      /* "knhk" */
#define KNHK__FAIRNESS_TICKS 61      /* look at inbox + injector first every so often */
#define KNHK__MAX_HELP_DEPTH 128     /* deeper helping waits only pop their own deque */
#define KNHK__POOL_BATCH 256
#define KNHK__DEQUE_CAPACITY 256

static _Thread_local knhk__worker_t *tls_worker;

knhk__worker_t *knhk__current_worker(knhk__executor_t *ex) {
  knhk__worker_t *w = tls_worker;
  return (w && w->ex == ex) ? w : NULL;
}

static knhk__executor_t *impl_of(knhk_executor_t *ex) {
  if (!ex || ex->knhk__magic != KNHK__MAGIC) return NULL;
  return ex->knhk__impl;
}

/* ------------------------------------------------------------------ tasks */

int knhk_task_init(knhk_task_t *task, knhk_task_fn run, void *data) {
  if (!task || !run) return KNHK_EINVAL;
  task->run = run;
  task->on_end = NULL;
  task->data = data;
  task->group = NULL;
  task->flags = 0;
  task->knhk__home = -1;
  task->knhk__bits = 0;
  atomic_init(&task->knhk__state, KNHK__T_INIT);
  atomic_init(&task->knhk__next, NULL);
  return 0;
}

/* ---------------------------------------------------------------- parking */

void knhk__worker_unpark(knhk__worker_t *w) {
  if (atomic_exchange_explicit(&w->park, KNHK__P_NOTIFIED, memory_order_seq_cst) ==
      KNHK__P_PARKED)
    knhk__futex_wake(&w->park, 1);
}

/* Sleeps until the token is set. The caller announced itself (sleepers list
 * or group waiter) and re-checked its condition after announcing. Inbox
 * pushers only unpark a worker they see PARKED, so the inbox is looked at
 * once more after PARKED is published (Dekker with knhk__executor_enqueue). */
static void worker_park(knhk__worker_t *w) {
  uint32_t expected = KNHK__P_EMPTY;
  if (atomic_compare_exchange_strong_explicit(&w->park, &expected, KNHK__P_PARKED,
                                              memory_order_seq_cst, memory_order_acquire) &&
      !knhk__mpsc_maybe_nonempty(&w->inbox)) {
    while (ld_acquire(&w->park) == KNHK__P_PARKED) knhk__futex_wait(&w->park, KNHK__P_PARKED);
  }
  /* Consume the token. Acquire via the exchange: the unparker's writes
   * before its unpark are visible from here on. */
  atomic_exchange_explicit(&w->park, KNHK__P_EMPTY, memory_order_acq_rel);
}

/* Wakes one sleeping worker if nobody is searching. Any thread. */
static void notify_parked(knhk__executor_t *ex) {
  uint32_t s = ld_sc(&ex->idle);
  if (KNHK__IDLE_SEARCHING(s) != 0 || KNHK__IDLE_UNPARKED(s) >= (uint32_t)ex->n) return;
  knhk__worker_t *w = NULL;
  pthread_mutex_lock(&ex->idle_lock);
  s = ld_relaxed(&ex->idle);
  if (KNHK__IDLE_SEARCHING(s) == 0 && ex->nsleepers > 0) {
    w = &ex->workers[ex->sleepers[--ex->nsleepers]];
    w->in_sleepers = 0;
    w->woken_to_search = 1;
    atomic_fetch_add_explicit(&ex->idle, KNHK__IDLE_ONE_UNPARKED | KNHK__IDLE_ONE_SEARCHING,
                              memory_order_seq_cst);
  }
  pthread_mutex_unlock(&ex->idle_lock);
  if (w) knhk__worker_unpark(w);
}

/* ----------------------------------------------------------------- queues */

static knhk_task_t *injector_pop(knhk__executor_t *ex, int *busy) {
  if (!knhk__mpsc_maybe_nonempty(&ex->injector)) return NULL;
  int unlocked = 0;
  if (!atomic_compare_exchange_strong_explicit(&ex->injector_lock, &unlocked, 1,
                                               memory_order_acquire, memory_order_relaxed)) {
    *busy = 1;
    return NULL;
  }
  knhk_task_t *t = NULL;
  knhk__mpsc_pop_t r = knhk__mpsc_pop(&ex->injector, &t);
  st_release(&ex->injector_lock, 0);
  if (r == KNHK__MPSC_BUSY) *busy = 1;
  return r == KNHK__MPSC_OK ? t : NULL;
}

static knhk_task_t *inbox_pop(knhk__worker_t *w, int *busy) {
  knhk_task_t *t = NULL;
  knhk__mpsc_pop_t r = knhk__mpsc_pop(&w->inbox, &t);
  if (r == KNHK__MPSC_BUSY) *busy = 1;
  return r == KNHK__MPSC_OK ? t : NULL;
}

static uint32_t rng_next(knhk__worker_t *w) {
  /* xorshift64*: a victim choice needs speed, not quality */
  uint64_t x = w->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  w->rng = x;
  return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

/* One pass over the other workers' deques from a random start. */
static knhk_task_t *steal_round(knhk__worker_t *w, int *busy) {
  knhk__executor_t *ex = w->ex;
  int n = ex->n;
  if (n == 1) return NULL;
  int start = (int)(rng_next(w) % (uint32_t)n);
  for (int i = 0; i < n; i++) {
    int v = start + i;
    if (v >= n) v -= n;
    if (v == w->index) continue;
    knhk_task_t *t;
    for (;;) {
      owner_inc(&w->c.steal_attempts);
      knhk__steal_t r = knhk__deque_steal(&ex->workers[v].deque, &t);
      if (r == KNHK__STEAL_OK) {
        owner_inc(&w->c.stolen);
        return t;
      }
      if (r == KNHK__STEAL_EMPTY) break;
      *busy = 1; /* lost a race: the victim still had work */
      break;
    }
  }
  return NULL;
}

/* Is there anything any worker could run? Used before sleeping. */
static int work_visible(knhk__worker_t *w) {
  knhk__executor_t *ex = w->ex;
  if (knhk__mpsc_maybe_nonempty(&w->inbox) || knhk__mpsc_maybe_nonempty(&ex->injector)) return 1;
  for (int i = 0; i < ex->n; i++)
    if (knhk__deque_size(&ex->workers[i].deque) > 0) return 1;
  return 0;
}

static void begin_searching(knhk__worker_t *w) {
  if (w->searching) return;
  w->searching = 1;
  atomic_fetch_add_explicit(&w->ex->idle, KNHK__IDLE_ONE_SEARCHING, memory_order_seq_cst);
}

static int may_search(knhk__worker_t *w) {
  if (w->searching) return 1;
  uint32_t s = ld_relaxed(&w->ex->idle);
  return 2 * KNHK__IDLE_SEARCHING(s) < (uint32_t)w->ex->n;
}

static void end_searching(knhk__worker_t *w) {
  if (!w->searching) return;
  w->searching = 0;
  uint32_t prev =
      atomic_fetch_sub_explicit(&w->ex->idle, KNHK__IDLE_ONE_SEARCHING, memory_order_seq_cst);
  if (KNHK__IDLE_SEARCHING(prev) == 1) notify_parked(w->ex);
}

/* ---------------------------------------------------------- task records */

/* Adds a slab of records to the shared pool. Under pool_lock. */
static int pool_grow_locked(knhk__executor_t *ex) {
  if (ex->nslabs == ex->cap_slabs) {
    size_t cap = ex->cap_slabs ? ex->cap_slabs * 2 : 16;
    void **slabs = realloc(ex->slabs, cap * sizeof *slabs);
    if (!slabs) return KNHK_ENOMEM;
    ex->slabs = slabs;
    ex->cap_slabs = cap;
  }
  knhk_task_t *slab = malloc(KNHK__POOL_BATCH * sizeof *slab);
  if (!slab) return KNHK_ENOMEM;
  ex->slabs[ex->nslabs++] = slab;
  for (int i = 0; i < KNHK__POOL_BATCH; i++)
    atomic_init(&slab[i].knhk__next, i + 1 < KNHK__POOL_BATCH ? &slab[i + 1] : NULL);
  ex->pool = slab;
  ex->pool_n = KNHK__POOL_BATCH;
  return 0;
}

static knhk_task_t *pool_refill(knhk__executor_t *ex, knhk__worker_t *w) {
  pthread_mutex_lock(&ex->pool_lock);
  if (!ex->pool && pool_grow_locked(ex) != 0) {
    pthread_mutex_unlock(&ex->pool_lock);
    return NULL;
  }
  knhk_task_t *t;
  if (!w) { /* an outside thread takes one record */
    t = ex->pool;
    ex->pool = ld_relaxed(&t->knhk__next);
    ex->pool_n--;
  } else { /* a worker takes a batch into its own list */
    uint32_t k = 0;
    knhk_task_t *head = ex->pool, *last = NULL;
    for (t = head; t && k < KNHK__POOL_BATCH; t = ld_relaxed(&t->knhk__next)) last = t, k++;
    ex->pool = t;
    ex->pool_n -= k;
    st_relaxed(&last->knhk__next, NULL);
    t = head;
    w->pool = ld_relaxed(&t->knhk__next);
    w->pool_n = k - 1;
  }
  pthread_mutex_unlock(&ex->pool_lock);
  return t;
}

static knhk_task_t *pool_get(knhk__executor_t *ex, knhk__worker_t *w) {
  if (w && w->pool) {
    knhk_task_t *t = w->pool;
    w->pool = ld_relaxed(&t->knhk__next);
    w->pool_n--;
    return t;
  }
  return pool_refill(ex, w);
}

static void pool_put(knhk__executor_t *ex, knhk__worker_t *w, knhk_task_t *t) {
  /* Records migrate: a producer's tasks end on a consumer. Past two batches
   * the surplus goes back to the shared pool so no worker hoards. */
  st_relaxed(&t->knhk__next, w->pool);
  w->pool = t;
  if (++w->pool_n < 2 * KNHK__POOL_BATCH) return;
  knhk_task_t *head = w->pool, *last = head;
  for (int i = 1; i < KNHK__POOL_BATCH; i++) last = ld_relaxed(&last->knhk__next);
  w->pool = ld_relaxed(&last->knhk__next);
  w->pool_n -= KNHK__POOL_BATCH;
  pthread_mutex_lock(&ex->pool_lock);
  st_relaxed(&last->knhk__next, ex->pool);
  ex->pool = head;
  ex->pool_n += KNHK__POOL_BATCH;
  pthread_mutex_unlock(&ex->pool_lock);
}

/* ------------------------------------------------------------ groups */

int knhk_group_init(knhk_group_t *g) {
  if (!g) return KNHK_EINVAL;
  atomic_init(&g->knhk__state, 0);
  atomic_init(&g->knhk__first_error, 0);
  atomic_init(&g->knhk__failed, 0);
  return 0;
}

uint32_t knhk_group_pending(const knhk_group_t *g) {
  return g ? (uint32_t)ld_acquire(&((knhk_group_t *)g)->knhk__state) : 0;
}

int knhk_group_status(const knhk_group_t *g) {
  return g ? ld_acquire(&((knhk_group_t *)g)->knhk__first_error) : KNHK_EINVAL;
}

/* The waiter id in the group's high 32 bits: 1 + worker index, or
 * GROUP_WAITER_OUTSIDE for threads that sleep on the futex of the low half. */
#define GROUP_COUNT(s) ((uint32_t)(s))
#define GROUP_WAITER(s) ((uint32_t)((s) >> 32))
#define GROUP_WAITER_OUTSIDE 0xffffffffu

static _Atomic uint32_t *group_futex(knhk_group_t *g) {
  /* the count: the low half of the state word on a little-endian machine */
  _Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "group futex needs little-endian");
  return (_Atomic uint32_t *)(void *)&g->knhk__state;
}

/* A task of `g` ended with `status`. The decrement is the last access to
 * *g: after it the waiter may return and reuse the memory, so whom to wake
 * is read from the value the decrement returned. */
static void group_task_ended(knhk__executor_t *ex, knhk_group_t *g, int status) {
  if (status != 0) {
    int zero = 0;
    atomic_compare_exchange_strong_explicit(&g->knhk__first_error, &zero, status,
                                            memory_order_relaxed, memory_order_relaxed);
    atomic_fetch_add_explicit(&g->knhk__failed, 1, memory_order_relaxed);
  }
  _Atomic uint32_t *futex = group_futex(g);
  uint64_t old = atomic_fetch_sub_explicit(&g->knhk__state, 1, memory_order_acq_rel);
  if (GROUP_COUNT(old) != 1) return;
  uint32_t waiter = GROUP_WAITER(old);
  if (waiter == GROUP_WAITER_OUTSIDE)
    knhk__futex_wake(futex, INT_MAX);
  else if (waiter != 0)
    knhk__worker_unpark(&ex->workers[waiter - 1]);
}

/* -------------------------------------------------------------- running */

static void end_task(knhk__worker_t *w, knhk_task_t *t, int status) {
  knhk_group_t *g = t->group;
  knhk_task_end_fn on_end = t->on_end;
  int pooled = (t->knhk__bits & KNHK__TB_POOLED) != 0;
  st_release(&t->knhk__state, KNHK__T_DONE);
  if (status == 0)
    owner_inc(&w->c.completed);
  else if (status == KNHK_ECANCELED)
    owner_inc(&w->c.cancelled);
  else
    owner_inc(&w->c.failed);
  if (on_end) on_end(t, status);
  if (pooled) pool_put(w->ex, w, t);
  if (g) group_task_ended(w->ex, g, status);
}

static void run_task(knhk__worker_t *w, knhk_task_t *t) {
  uint32_t bits = t->knhk__bits;
  if (!(bits & KNHK__TB_STARTED)) {
    if (ld_relaxed(&w->ex->stopping) == 1 + KNHK_SHUTDOWN_PROMPT) {
      end_task(w, t, KNHK_ECANCELED);
      return;
    }
    t->knhk__bits = bits | KNHK__TB_STARTED;
    if (t->flags & KNHK_TASK_STICKY) t->knhk__home = w->index;
  }
  st_release(&t->knhk__state, KNHK__T_RUNNING);
  int status = t->run(t);
  if (status == KNHK_TASK_PENDING) {
    uint32_t expected = KNHK__T_RUNNING;
    if (atomic_compare_exchange_strong_explicit(&t->knhk__state, &expected, KNHK__T_PARKED,
                                                memory_order_acq_rel, memory_order_acquire))
      return;
    /* NOTIFIED while running: its wake-up arrived before it parked */
    st_relaxed(&t->knhk__state, KNHK__T_QUEUED);
    knhk__executor_enqueue(w->ex, t);
    return;
  }
  if (status > 0) status = KNHK_EFAILED;
  end_task(w, t, status);
}

/* Local work first (LIFO), with inbox and injector looked at first every
 * KNHK__FAIRNESS_TICKS so neither starves behind a busy deque. */
static knhk_task_t *find_local(knhk__worker_t *w, int *busy) {
  knhk_task_t *t;
  if (++w->tick % KNHK__FAIRNESS_TICKS == 0 && w->help_depth <= KNHK__MAX_HELP_DEPTH) {
    if ((t = inbox_pop(w, busy)) || (t = injector_pop(w->ex, busy))) return t;
  }
  if ((t = knhk__deque_pop(&w->deque))) return t;
  return inbox_pop(w, busy);
}

static knhk_task_t *find_remote(knhk__worker_t *w, int *busy) {
  knhk_task_t *t = injector_pop(w->ex, busy);
  if (!t && may_search(w)) {
    begin_searching(w);
    t = steal_round(w, busy);
  }
  return t;
}

/* Shutdown completes when stopping, every worker is asleep (so, under
 * idle_lock, every counter they wrote is visible), no outside spawn is in
 * progress and spawned == ended. Under idle_lock; returns 1 if it marked the
 * executor done: the caller then calls finish_done() after unlocking. */
static int check_done_locked(knhk__executor_t *ex) {
  if (!ld_relaxed(&ex->stopping) || ld_relaxed(&ex->done)) return 0;
  if (KNHK__IDLE_UNPARKED(ld_relaxed(&ex->idle)) != 0) return 0;
  if (ld_sc(&ex->ext_entering) != 0) return 0;
  uint64_t ended = 0, spawned = ld_acquire(&ex->ext_spawned);
  for (int i = 0; i < ex->n; i++) {
    knhk__counters_t *c = &ex->workers[i].c;
    ended += ld_acquire(&c->completed) + ld_acquire(&c->failed) + ld_acquire(&c->cancelled);
  }
  for (int i = 0; i < ex->n; i++) spawned += ld_acquire(&ex->workers[i].c.spawned);
  if (spawned != ended) return 0;
  st_release(&ex->done, 1);
  return 1;
}

static void finish_done(knhk__executor_t *ex) {
  knhk__futex_wake(&ex->done, INT_MAX);
  for (int i = 0; i < ex->n; i++) knhk__worker_unpark(&ex->workers[i]);
}

/* Registers `w` as sleeping; returns 1 if it may sleep now, 0 if the
 * executor just became done. Called without idle_lock. */
static int register_sleep(knhk__worker_t *w) {
  knhk__executor_t *ex = w->ex;
  pthread_mutex_lock(&ex->idle_lock);
  uint32_t dec = KNHK__IDLE_ONE_UNPARKED | (w->searching ? KNHK__IDLE_ONE_SEARCHING : 0);
  w->searching = 0;
  atomic_fetch_sub_explicit(&ex->idle, dec, memory_order_seq_cst);
  ex->sleepers[ex->nsleepers++] = w->index;
  w->in_sleepers = 1;
  w->woken_to_search = 0;
  int done_now = check_done_locked(ex);
  pthread_mutex_unlock(&ex->idle_lock);
  if (done_now) finish_done(ex);
  return !done_now;
}

/* Undoes register_sleep after waking (or when work appeared before
 * sleeping). A notifier may have done it already, counting us as searching. */
static void unregister_sleep(knhk__worker_t *w) {
  knhk__executor_t *ex = w->ex;
  pthread_mutex_lock(&ex->idle_lock);
  if (w->in_sleepers) {
    for (int i = 0; i < ex->nsleepers; i++)
      if (ex->sleepers[i] == w->index) {
        ex->sleepers[i] = ex->sleepers[--ex->nsleepers];
        break;
      }
    w->in_sleepers = 0;
    atomic_fetch_add_explicit(&ex->idle, KNHK__IDLE_ONE_UNPARKED, memory_order_seq_cst);
  } else if (w->woken_to_search) {
    w->searching = 1;
  }
  w->woken_to_search = 0;
  pthread_mutex_unlock(&ex->idle_lock);
}

typedef int (*until_fn)(void *arg);

static int loop_should_end(knhk__worker_t *w, until_fn until, void *arg) {
  return until ? until(arg) : ld_acquire(&w->ex->done) != 0;
}

static void park_counted(knhk__worker_t *w) {
  owner_add(&w->c.busy_ns, knhk__mono_ns() - w->busy_since);
  owner_inc(&w->c.parks);
  worker_park(w);
  w->busy_since = knhk__mono_ns();
}

/* The worker loop: runs tasks until until(arg) holds (a helping wait) or,
 * with until == NULL, until the executor is done.
 * A `deep` helping wait (nested past KNHK__MAX_HELP_DEPTH) only runs its own
 * deque and inbox, where the tasks it waits for most likely are, and sleeps
 * outside the sleepers list: it could not act on a notification to steal. */
static void worker_loop(knhk__worker_t *w, until_fn until, void *arg, int deep) {
  for (;;) {
    if (loop_should_end(w, until, arg)) return;
    int busy = 0;
    knhk_task_t *t = find_local(w, &busy);
    if (!t && !deep) t = find_remote(w, &busy);
    if (t) {
      end_searching(w);
      run_task(w, t);
      continue;
    }
    if (busy) { /* a push or steal in flight: it will be visible soon */
      knhk__cpu_relax();
      continue;
    }
    if (deep) {
      if (!until(arg)) park_counted(w);
      continue;
    }
    if (!register_sleep(w)) continue;
    if (work_visible(w)) {
      unregister_sleep(w);
      begin_searching(w);
      continue;
    }
    if (loop_should_end(w, until, arg)) {
      unregister_sleep(w);
      return;
    }
    park_counted(w);
    unregister_sleep(w);
  }
}

/* --------------------------------------------------------------- enqueue */

void knhk__executor_enqueue(knhk__executor_t *ex, knhk_task_t *t) {
  if (t->knhk__home >= 0) {
    knhk__worker_t *home = &ex->workers[t->knhk__home];
    knhk__mpsc_push(&home->inbox, t);
    if (ld_sc(&home->park) == KNHK__P_PARKED) knhk__worker_unpark(home);
    return;
  }
  knhk__worker_t *w = knhk__current_worker(ex);
  if (w && knhk__deque_push(&w->deque, t) == 0) {
    notify_parked(ex);
    return;
  }
  knhk__mpsc_push(&ex->injector, t); /* outside thread, or deque out of memory */
  notify_parked(ex);
}

static int spawn_impl(knhk__executor_t *ex, knhk_task_t *t) {
  knhk__worker_t *w = knhk__current_worker(ex);
  if (w) {
    if (t->group) atomic_fetch_add_explicit(&t->group->knhk__state, 1, memory_order_relaxed);
    owner_inc(&w->c.spawned);
    if (knhk__deque_push(&w->deque, t) != 0) knhk__mpsc_push(&ex->injector, t);
    notify_parked(ex);
    return 0;
  }
  /* Outside thread: announce, then check for shutdown (Dekker with
   * check_done_locked, which reads ext_entering after `stopping` is set). */
  atomic_fetch_add_explicit(&ex->ext_entering, 1, memory_order_seq_cst);
  int rc = 0;
  if (ld_sc(&ex->stopping)) {
    rc = KNHK_ESHUTDOWN;
  } else {
    if (t->group) atomic_fetch_add_explicit(&t->group->knhk__state, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ex->ext_spawned, 1, memory_order_relaxed);
    knhk__mpsc_push(&ex->injector, t);
    notify_parked(ex);
  }
  if (atomic_fetch_sub_explicit(&ex->ext_entering, 1, memory_order_seq_cst) == 1 &&
      ld_sc(&ex->stopping)) {
    /* The last worker to fall asleep may have seen us in progress and so
     * not finished the shutdown: run its check again. */
    pthread_mutex_lock(&ex->idle_lock);
    int done_now = check_done_locked(ex);
    pthread_mutex_unlock(&ex->idle_lock);
    if (done_now) finish_done(ex);
  }
  return rc;
}

int knhk_executor_spawn(knhk_executor_t *handle, knhk_task_t *t) {
  knhk__executor_t *ex = impl_of(handle);
  if (!ex || !t || !t->run) return KNHK_EINVAL;
  uint32_t s = ld_acquire(&t->knhk__state);
  if (s != KNHK__T_INIT && s != KNHK__T_DONE) return KNHK_EINVAL; /* live, or garbage */
  if (!atomic_compare_exchange_strong_explicit(&t->knhk__state, &s, KNHK__T_QUEUED,
                                               memory_order_acq_rel, memory_order_relaxed))
    return KNHK_EINVAL; /* spawned twice at once */
  t->knhk__bits &= KNHK__TB_POOLED;
  t->knhk__home = -1;
  int rc = spawn_impl(ex, t);
  if (rc != 0) st_release(&t->knhk__state, s);
  return rc;
}

int knhk_executor_submit(knhk_executor_t *handle, knhk_task_fn run, void *data,
                         knhk_group_t *group) {
  knhk__executor_t *ex = impl_of(handle);
  if (!ex || !run) return KNHK_EINVAL;
  knhk__worker_t *w = knhk__current_worker(ex);
  knhk_task_t *t = pool_get(ex, w);
  if (!t) return KNHK_ENOMEM;
  t->run = run;
  t->on_end = NULL;
  t->data = data;
  t->group = group;
  t->flags = 0;
  t->knhk__home = -1;
  t->knhk__bits = KNHK__TB_POOLED;
  atomic_store_explicit(&t->knhk__state, KNHK__T_QUEUED, memory_order_relaxed);
  int rc = spawn_impl(ex, t);
  if (rc != 0) {
    pthread_mutex_lock(&ex->pool_lock);
    st_relaxed(&t->knhk__next, ex->pool);
    ex->pool = t;
    ex->pool_n++;
    pthread_mutex_unlock(&ex->pool_lock);
  }
  return rc;
}

int knhk_executor_wake(knhk_executor_t *handle, knhk_task_t *t) {
  knhk__executor_t *ex = impl_of(handle);
  if (!ex || !t) return KNHK_EINVAL;
  uint32_t s = ld_acquire(&t->knhk__state);
  for (;;) {
    if (s == KNHK__T_PARKED) {
      if (atomic_compare_exchange_weak_explicit(&t->knhk__state, &s, KNHK__T_QUEUED,
                                                memory_order_acq_rel, memory_order_acquire)) {
        knhk__executor_enqueue(ex, t);
        return 0;
      }
    } else if (s == KNHK__T_RUNNING) {
      if (atomic_compare_exchange_weak_explicit(&t->knhk__state, &s, KNHK__T_NOTIFIED,
                                                memory_order_acq_rel, memory_order_acquire))
        return 0;
    } else {
      return 0; /* queued, notified, not spawned, or ended: nothing to do */
    }
  }
}

/* --------------------------------------------------------------- waiting */

static int group_is_done(void *g) {
  return GROUP_COUNT(ld_acquire(&((knhk_group_t *)g)->knhk__state)) == 0;
}

/* Worker waiting on a group: claim the waiter slot, so the last task to end
 * unparks us. Returns 0, or KNHK_EBUSY if another thread waits already. */
static int group_claim(knhk_group_t *g, uint32_t id) {
  uint64_t s = ld_acquire(&g->knhk__state);
  for (;;) {
    if (GROUP_COUNT(s) == 0 || GROUP_WAITER(s) == id) return 0;
    if (GROUP_WAITER(s) != 0) return KNHK_EBUSY;
    if (atomic_compare_exchange_weak_explicit(&g->knhk__state, &s, s | ((uint64_t)id << 32),
                                              memory_order_acq_rel, memory_order_acquire))
      return 0;
  }
}

static void group_release(knhk_group_t *g) {
  uint64_t s = ld_acquire(&g->knhk__state);
  while (GROUP_WAITER(s) != 0 &&
         !atomic_compare_exchange_weak_explicit(&g->knhk__state, &s, s & 0xffffffffu,
                                                memory_order_acq_rel, memory_order_acquire)) {
  }
}

int knhk_executor_wait(knhk_executor_t *handle, knhk_group_t *g) {
  knhk__executor_t *ex = impl_of(handle);
  if (!ex || !g) return KNHK_EINVAL;
  knhk__worker_t *w = knhk__current_worker(ex);
  if (group_is_done(g)) return knhk_group_status(g);
  if (w) {
    int rc = group_claim(g, (uint32_t)w->index + 1);
    if (rc != 0) return rc;
    w->help_depth++;
    worker_loop(w, group_is_done, g, w->help_depth > KNHK__MAX_HELP_DEPTH);
    end_searching(w);
    w->help_depth--;
    group_release(g);
    return knhk_group_status(g);
  }
  _Atomic uint32_t *futex = group_futex(g);
  int rc = group_claim(g, GROUP_WAITER_OUTSIDE);
  if (rc != 0) return rc;
  for (;;) {
    uint64_t s = ld_acquire(&g->knhk__state);
    if (GROUP_COUNT(s) == 0) break;
    knhk__futex_wait(futex, GROUP_COUNT(s));
  }
  group_release(g);
  return knhk_group_status(g);
}

/* ------------------------------------------------------------- lifecycle */

static void *worker_main(void *arg) {
  knhk__worker_t *w = arg;
  tls_worker = w;
  w->busy_since = knhk__mono_ns();
  worker_loop(w, NULL, NULL, 0);
  owner_add(&w->c.busy_ns, knhk__mono_ns() - w->busy_since);
  tls_worker = NULL;
  return NULL;
}

static int env_workers(int *out) {
  const char *s = getenv("KNHK_WORKERS");
  if (!s || !*s) return 0;
  char *end;
  long v = strtol(s, &end, 10);
  if (*end || v < 1 || v > KNHK_MAX_WORKERS) return KNHK_EINVAL;
  *out = (int)v;
  return 1;
}

int knhk_executor_options_init(knhk_executor_options_t *o) {
  if (!o) return KNHK_EINVAL;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  o->workers = cpus < 1 ? 1 : cpus > KNHK_MAX_WORKERS ? KNHK_MAX_WORKERS : (int)cpus;
  o->flags = 0;
  o->seed = 0;
  int rc = env_workers(&o->workers);
  return rc < 0 ? rc : 0;
}

static void free_impl(knhk__executor_t *ex) {
  if (ex->workers) {
    for (int i = 0; i < ex->n; i++) knhk__deque_destroy(&ex->workers[i].deque);
    free(ex->workers);
  }
  for (size_t i = 0; i < ex->nslabs; i++) free(ex->slabs[i]);
  free(ex->slabs);
  free(ex->sleepers);
  pthread_mutex_destroy(&ex->idle_lock);
  pthread_mutex_destroy(&ex->pool_lock);
  free(ex);
}

int knhk_executor_init(knhk_executor_t *handle, const knhk_executor_options_t *opts) {
  if (!handle) return KNHK_EINVAL;
  knhk_executor_options_t o;
  if (opts) {
    o = *opts;
  } else if (knhk_executor_options_init(&o) != 0) {
    return KNHK_EINVAL;
  }
  if (o.workers < 1 || o.workers > KNHK_MAX_WORKERS) return KNHK_EINVAL;
  if (o.flags & ~(uint32_t)KNHK_EXECUTOR_CALLER_IS_WORKER0) return KNHK_EINVAL;
  handle->knhk__magic = 0;
  handle->knhk__impl = NULL;

  knhk__executor_t *ex = aligned_alloc(KNHK__CACHELINE, (sizeof *ex + 63) & ~(size_t)63);
  if (!ex) return KNHK_ENOMEM;
  memset(ex, 0, sizeof *ex);
  ex->n = o.workers;
  ex->flags = o.flags;
  pthread_mutex_init(&ex->idle_lock, NULL);
  pthread_mutex_init(&ex->pool_lock, NULL);
  knhk__mpsc_init(&ex->injector);
  int caller0 = (o.flags & KNHK_EXECUTOR_CALLER_IS_WORKER0) != 0;
  /* Every worker starts counted as unparked, except a worker 0 that the
   * caller has not entered yet. */
  atomic_init(&ex->idle, (uint32_t)(ex->n - caller0) << 16);
  ex->sleepers = calloc((size_t)ex->n, sizeof *ex->sleepers);
  ex->workers = aligned_alloc(KNHK__CACHELINE, (size_t)ex->n * sizeof *ex->workers);
  if (!ex->sleepers || !ex->workers) {
    free_impl(ex);
    return KNHK_ENOMEM;
  }
  memset(ex->workers, 0, (size_t)ex->n * sizeof *ex->workers);
  for (int i = 0; i < ex->n; i++) {
    knhk__worker_t *w = &ex->workers[i];
    if (knhk__deque_init(&w->deque, KNHK__DEQUE_CAPACITY) != 0) {
      for (int j = 0; j < i; j++) knhk__deque_destroy(&ex->workers[j].deque);
      free(ex->workers);
      ex->workers = NULL;
      free_impl(ex);
      return KNHK_ENOMEM;
    }
    knhk__mpsc_init(&w->inbox);
    w->ex = ex;
    w->index = i;
    w->rng = (o.seed ^ 0x9E3779B97F4A7C15ull) * (uint64_t)(i + 1) | 1;
  }
  handle->knhk__impl = ex;
  handle->knhk__magic = KNHK__MAGIC;

  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 8u << 20); /* helping waits nest task frames */
  for (int i = caller0; i < ex->n; i++) {
    knhk__worker_t *w = &ex->workers[i];
    if (pthread_create(&w->thread, &attr, worker_main, w) != 0) {
      pthread_attr_destroy(&attr);
      /* Threads already started exit once the executor is done. */
      knhk_executor_shutdown(handle, KNHK_SHUTDOWN_GRACEFUL);
      knhk_executor_close(handle);
      return KNHK_ENOMEM;
    }
    w->has_thread = 1;
  }
  pthread_attr_destroy(&attr);
  return 0;
}

int knhk_executor_stop(knhk_executor_t *handle, enum knhk_shutdown_mode mode) {
  knhk__executor_t *ex = impl_of(handle);
  if (!ex || (mode != KNHK_SHUTDOWN_GRACEFUL && mode != KNHK_SHUTDOWN_PROMPT)) return KNHK_EINVAL;
  int rc = 0;
  pthread_mutex_lock(&ex->idle_lock);
  uint32_t cur = ld_relaxed(&ex->stopping), want = 1 + (uint32_t)mode;
  if (cur) rc = KNHK_EALREADY;
  if (want > cur) atomic_store_explicit(&ex->stopping, want, memory_order_seq_cst);
  int done_now = check_done_locked(ex);
  pthread_mutex_unlock(&ex->idle_lock);
  if (done_now) finish_done(ex);
  return rc;
}

static int join_threads(knhk__executor_t *ex) {
  while (!ld_acquire(&ex->done)) knhk__futex_wait(&ex->done, 0);
  for (int i = 0; i < ex->n; i++) {
    knhk__worker_t *w = &ex->workers[i];
    if (w->has_thread) {
      pthread_join(w->thread, NULL);
      w->has_thread = 0;
    }
  }
  return 0;
}

int knhk_executor_shutdown(knhk_executor_t *handle, enum knhk_shutdown_mode mode) {
  knhk__executor_t *ex = impl_of(handle);
  if (!ex) return KNHK_EINVAL;
  if (tls_worker && tls_worker->ex == ex) return KNHK_EDEADLK;
  int rc = knhk_executor_stop(handle, mode);
  if (rc != 0 && rc != KNHK_EALREADY) return rc;
  return join_threads(ex);
}

int knhk_executor_enter(knhk_executor_t *handle, knhk_group_t *g) {
  knhk__executor_t *ex = impl_of(handle);
  if (!ex || !(ex->flags & KNHK_EXECUTOR_CALLER_IS_WORKER0) || tls_worker) return KNHK_EINVAL;
  knhk__worker_t *w = &ex->workers[0];
  pthread_mutex_lock(&ex->idle_lock);
  int busy = ex->worker0_entered;
  ex->worker0_entered = 1;
  if (!busy) atomic_fetch_add_explicit(&ex->idle, KNHK__IDLE_ONE_UNPARKED, memory_order_seq_cst);
  pthread_mutex_unlock(&ex->idle_lock);
  if (busy) return KNHK_EBUSY;
  tls_worker = w;
  w->busy_since = knhk__mono_ns();
  if (g && group_claim(g, 1) != 0) {
    tls_worker = NULL;
    pthread_mutex_lock(&ex->idle_lock);
    ex->worker0_entered = 0;
    atomic_fetch_sub_explicit(&ex->idle, KNHK__IDLE_ONE_UNPARKED, memory_order_seq_cst);
    pthread_mutex_unlock(&ex->idle_lock);
    return KNHK_EBUSY;
  }
  if (g) {
    worker_loop(w, group_is_done, g, 0);
    end_searching(w);
    group_release(g);
  } else {
    worker_loop(w, NULL, NULL, 0);
  }
  owner_add(&w->c.busy_ns, knhk__mono_ns() - w->busy_since);
  tls_worker = NULL;
  pthread_mutex_lock(&ex->idle_lock);
  ex->worker0_entered = 0;
  if (!ld_relaxed(&ex->done))
    atomic_fetch_sub_explicit(&ex->idle, KNHK__IDLE_ONE_UNPARKED, memory_order_seq_cst);
  pthread_mutex_unlock(&ex->idle_lock);
  return g ? knhk_group_status(g) : 0;
}

int knhk_executor_close(knhk_executor_t *handle) {
  if (!handle) return KNHK_EINVAL;
  if (handle->knhk__magic != KNHK__MAGIC) return handle->knhk__impl ? KNHK_EINVAL : KNHK_EALREADY;
  knhk__executor_t *ex = handle->knhk__impl;
  if (tls_worker && tls_worker->ex == ex) return KNHK_EDEADLK;
  int rc = knhk_executor_shutdown(handle, KNHK_SHUTDOWN_GRACEFUL);
  if (rc != 0) return rc;
  handle->knhk__magic = 0;
  handle->knhk__impl = NULL;
  free_impl(ex);
  return 0;
}

int knhk_executor_stats(knhk_executor_t *handle, knhk_executor_stats_t *out,
                        knhk_worker_stats_t *per, int n) {
  knhk__executor_t *ex = impl_of(handle);
  if (!ex || !out || n < 0 || (n > 0 && !per)) return KNHK_EINVAL;
  memset(out, 0, sizeof *out);
  out->workers = ex->n;
  uint64_t ended = 0;
  for (int i = 0; i < ex->n; i++) {
    knhk__counters_t *c = &ex->workers[i].c;
    knhk_worker_stats_t s = {
        .completed = ld_acquire(&c->completed),
        .failed = ld_acquire(&c->failed),
        .cancelled = ld_acquire(&c->cancelled),
        .stolen = ld_acquire(&c->stolen),
        .steal_attempts = ld_acquire(&c->steal_attempts),
        .parks = ld_acquire(&c->parks),
        .busy_ns = ld_acquire(&c->busy_ns),
    };
    ended += s.completed + s.failed + s.cancelled;
    out->total.completed += s.completed;
    out->total.failed += s.failed;
    out->total.cancelled += s.cancelled;
    out->total.stolen += s.stolen;
    out->total.steal_attempts += s.steal_attempts;
    out->total.parks += s.parks;
    out->total.busy_ns += s.busy_ns;
    if (i < n) per[i] = s;
  }
  /* spawned after ended (see check_done_locked), so live never underflows */
  out->external_spawned = ld_acquire(&ex->ext_spawned);
  out->total.spawned = out->external_spawned;
  for (int i = 0; i < ex->n; i++) {
    uint64_t sp = ld_acquire(&ex->workers[i].c.spawned);
    out->total.spawned += sp;
    if (i < n) per[i].spawned = sp;
  }
  out->live = out->total.spawned - ended;
  return ex->n;
}

int knhk_executor_worker_index(knhk_executor_t *handle) {
  knhk__executor_t *ex = impl_of(handle);
  knhk__worker_t *w = ex ? knhk__current_worker(ex) : NULL;
  return w ? w->index : -1;
}
