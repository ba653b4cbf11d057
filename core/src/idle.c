/* idle.c: how workers go to sleep and are woken, and when shutdown is done.
 *
 * No lost wake-ups, no thundering herd:
 *  - A spawner publishes its task (deque bottom, injector head), then reads
 *    ex->nsleeping. If some worker sleeps and nobody is searching, it wakes
 *    exactly one, counting it as unparked and searching on its behalf, so
 *    the next spawner sees a searcher and wakes nobody.
 *  - A worker that goes to sleep first counts itself in `nsleeping` (under
 *    idle_lock), then looks at every queue once more. Either the spawner's
 *    read came after that decrement (and it wakes a sleeper), or the
 *    worker's last look came after the spawn (and it sees the task).
 *  - That "publish, then read" needs a store-load barrier on both sides.
 *    Spawning is the hot path and sleeping the cold one, so where Linux
 *    offers membarrier(PRIVATE_EXPEDITED) the spawner pays nothing (plain
 *    store, plain load) and the sleeper issues the barrier on every running
 *    thread of the process between its decrement and its last look
 *    ("asymmetric fence"). Elsewhere, and under ThreadSanitizer (which does
 *    not model membarrier), both sides use seq_cst operations.
 *  - A searcher that finds work and was the last searcher wakes another
 *    sleeper, so work spreads one worker at a time.
 * Shutdown: once stopping, whoever registers the last worker as sleeping
 * (all others asleep, so their counters are visible under idle_lock) checks
 * that no task is live and no outside spawn is in progress; it then marks
 * the executor done and wakes everybody to exit.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <pthread.h>
#include <linux/membarrier.h>

#include "executor_impl.h"

/* Registering for membarrier(PRIVATE_EXPEDITED) costs a kernel grace
 * period (milliseconds: more than the rest of knhk-lua's start-up) when
 * the process already has several threads, and almost nothing while it has
 * one. So it is done once, when the library is loaded (a process usually
 * has one thread then), and every executor reads the outcome. */
#ifndef KNHK_TSAN
static _Atomic int membarrier_state; /* 0 not asked, 1 registered, -1 not available */

static int membarrier_registered(void) {
  int st = atomic_load_explicit(&membarrier_state, memory_order_acquire);
  if (st == 0) {
    st = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 ? 1 : -1;
    atomic_store_explicit(&membarrier_state, st, memory_order_release);
  }
  return st == 1;
}

__attribute__((constructor)) static void register_membarrier_early(void) {
  (void)membarrier_registered();
}
#endif

void knhk__idle_init(knhk__executor_t *ex) {
#ifdef KNHK_TSAN
  ex->asymmetric = 0;
#else
  ex->asymmetric = membarrier_registered();
#endif
}

/* A worker whose thread was never started (KNHK_EXECUTOR_LAZY_WORKERS)
 * reads PARKED: waking it starts its thread, which takes the token as a
 * worker back from park_counted would. */
void knhk__worker_unpark(knhk__worker_t *w) {
  if (atomic_exchange_explicit(&w->park, KNHK__P_NOTIFIED, memory_order_seq_cst) !=
      KNHK__P_PARKED)
    return;
  if (ld_acquire(&w->started))
    knhk__futex_wake(&w->park, 1);
  else
    (void)knhk__worker_start(w);
}

/* Sleeps until the token is set. The caller announced itself (sleepers list
 * or group waiter) and re-checked its condition after announcing. Inbox
 * pushers only unpark a worker they see PARKED, so the inbox is looked at
 * once more after PARKED is published (Dekker with knhk__executor_enqueue). */
void knhk__worker_park(knhk__worker_t *w) {
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

/* Wakes one sleeping worker if nobody is searching. Any thread, after
 * publishing work. */
void knhk__notify_parked(knhk__executor_t *ex) {
  /* nsleeping is what sleepers publish before their last look; it changes
   * only when a worker really sleeps or wakes, so on a busy executor this
   * load hits the spawner's own cache. */
  uint32_t sleeping;
  if (ex->asymmetric) {
    atomic_signal_fence(memory_order_seq_cst); /* the sleeper's membarrier orders us */
    sleeping = ld_relaxed(&ex->nsleeping);
  } else {
    sleeping = ld_sc(&ex->nsleeping);
  }
  if (sleeping == 0) return;
  uint32_t s = ld_relaxed(&ex->idle);
  if (KNHK__IDLE_SEARCHING(s) != 0) return;
  knhk__worker_t *w = NULL;
  pthread_mutex_lock(&ex->idle_lock);
  s = ld_relaxed(&ex->idle);
  if (KNHK__IDLE_SEARCHING(s) == 0 && ex->nsleepers > 0) {
    w = &ex->workers[ex->sleepers[--ex->nsleepers]];
    atomic_fetch_sub_explicit(&ex->nsleeping, 1, memory_order_seq_cst);
    w->in_sleepers = 0;
    w->woken_to_search = 1;
    atomic_fetch_add_explicit(&ex->idle, KNHK__IDLE_ONE_UNPARKED | KNHK__IDLE_ONE_SEARCHING,
                              memory_order_seq_cst);
  }
  pthread_mutex_unlock(&ex->idle_lock);
  if (w) knhk__worker_unpark(w);
}

/* Is there anything this worker could run, or steal? */
int knhk__work_visible(knhk__worker_t *w) {
  knhk__executor_t *ex = w->ex;
  if (knhk__mpsc_maybe_nonempty(&w->inbox) || knhk__mpsc_maybe_nonempty(&ex->injector)) return 1;
  for (int i = 0; i < ex->n; i++)
    if (knhk__deque_size(&ex->workers[i].deque) > 0) return 1;
  return 0;
}

int knhk__check_done_locked(knhk__executor_t *ex) {
  if (!ld_relaxed(&ex->stopping) || ld_relaxed(&ex->done)) return 0;
  if (KNHK__IDLE_UNPARKED(ld_relaxed(&ex->idle)) != 0) return 0;
  if (ld_sc(&ex->ext_entering) != 0) return 0;
  /* ended first, then spawned: a task counted as ended was spawned before,
   * so it is counted as spawned too and live never reads negative. */
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

void knhk__finish_done(knhk__executor_t *ex) {
  knhk__futex_wake(&ex->done, INT_MAX);
  /* A worker never started has no thread to wake, and none is starting:
   * one being started counts as unparked, which done excludes. */
  for (int i = 0; i < ex->n; i++)
    if (ld_acquire(&ex->workers[i].started)) knhk__worker_unpark(&ex->workers[i]);
}

/* Registers `w` as sleeping; returns 1 if it may sleep now (after one more
 * look at the queues), 0 if the executor just became done. */
int knhk__register_sleep(knhk__worker_t *w) {
  knhk__executor_t *ex = w->ex;
  pthread_mutex_lock(&ex->idle_lock);
  uint32_t dec = KNHK__IDLE_ONE_UNPARKED | (w->searching ? KNHK__IDLE_ONE_SEARCHING : 0);
  w->searching = 0;
  uint32_t before = atomic_fetch_sub_explicit(&ex->idle, dec, memory_order_seq_cst);
  ex->sleepers[ex->nsleepers++] = w->index;
  atomic_fetch_add_explicit(&ex->nsleeping, 1, memory_order_seq_cst);
  w->in_sleepers = 1;
  w->woken_to_search = 0;
  int done_now = knhk__check_done_locked(ex);
  /* The last awake worker: every task may be waiting. After the decrement,
   * so whoever acts on the hint sees us registered; under idle_lock and
   * never once done (which is set under it), so every hint happens before
   * the owner learns that the executor is done and frees what the hint
   * touches (a runtime frees its reactor then). */
  if (ex->on_idle && KNHK__IDLE_UNPARKED(before) == 1 && !ld_relaxed(&ex->done))
    ex->on_idle(ex->on_idle_arg);
  pthread_mutex_unlock(&ex->idle_lock);
  if (done_now) {
    knhk__finish_done(ex);
    return 0;
  }
  if (ex->asymmetric) syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
  return 1;
}

/* Every worker registered asleep (their queue writes happened before their
 * seq_cst decrement of `idle`, which this load reads), then every queue
 * empty. Only a non-worker can change that (see knhk_executor_idle in
 * knhk/executor.h), so the two reads need not be atomic together. */
int knhk_executor_idle(void *handle) {
  knhk__executor_t *ex = knhk__impl_of(handle);
  if (!ex || ld_acquire(&ex->done)) return 0;
  if (KNHK__IDLE_UNPARKED(ld_sc(&ex->idle)) != 0) return 0;
  if (ld_sc(&ex->ext_entering) != 0) return 0;
  if (knhk__mpsc_maybe_nonempty(&ex->injector)) return 0;
  for (int i = 0; i < ex->n; i++) {
    knhk__worker_t *w = &ex->workers[i];
    if (knhk__mpsc_maybe_nonempty(&w->inbox) || knhk__deque_size(&w->deque) > 0) return 0;
  }
  /* Seeded: the tasks a worker drained into its ready set are queued too
   * (without this look a virtual clock saw a woken task's worker idle, and
   * jumped or reported a deadlock: test_spec, under ThreadSanitizer). */
  if (ex->flags & KNHK_EXECUTOR_SEEDED) {
    int held = 0;
    pthread_mutex_lock(&ex->batch_m);
    for (int i = 0; i < ex->n && !held; i++) held = ex->workers[i].nready > 0;
    pthread_mutex_unlock(&ex->batch_m);
    if (held) return 0;
  }
  return 1;
}

/* Undoes register_sleep after waking (or when work appeared before
 * sleeping). A notifier may have done it already, counting us as searching. */
void knhk__unregister_sleep(knhk__worker_t *w) {
  knhk__executor_t *ex = w->ex;
  pthread_mutex_lock(&ex->idle_lock);
  if (w->in_sleepers) {
    for (int i = 0; i < ex->nsleepers; i++)
      if (ex->sleepers[i] == w->index) {
        ex->sleepers[i] = ex->sleepers[--ex->nsleepers];
        atomic_fetch_sub_explicit(&ex->nsleeping, 1, memory_order_seq_cst);
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
