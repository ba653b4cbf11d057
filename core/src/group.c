/* group.c: join groups, and waiting for them.
 *
 * State: one 64-bit word. Low 32 bits: the count; high 32 bits: who waits
 * (0 nobody, 1 + worker index, or GROUP_WAITER_OUTSIDE for a thread that
 * sleeps on the futex of the low half).
 *
 * Invariants:
 *  - count >= live tasks of the group. It may be higher by slots a running
 *    spawner reserved, and by ends a worker has not subtracted yet; both are
 *    per-worker (knhk__worker_t.resv_*, pend_*) and are given back before
 *    that worker sleeps, waits, or moves to another group, and reserved
 *    slots at the end of every run of the task that reserved them.
 *    So count == 0 exactly when every task has ended and nobody holds any.
 *  - the decrement that reaches 0 is the last access to the group by the
 *    finisher: who to wake is read from the value it returned, because the
 *    waiter may return (and reuse the memory) as soon as it sees 0.
 *
 * Why batch: a counter shared by a spawner and a thief turns every spawn
 * and every stolen task into a cache-line transfer between cores.
 */
#include <limits.h>

#include "executor_impl.h"
#include "knhk/errors.h"

#define GROUP_COUNT(s) ((uint32_t)(s))
#define GROUP_WAITER(s) ((uint32_t)((s) >> 32))
#define GROUP_WAITER_OUTSIDE 0xffffffffu
#define GROUP_MAX_CHUNK 64     /* largest reservation */
#define GROUP_MAX_PENDING 4096 /* ends kept before subtracting anyway */

int knhk_group_init(knhk_group_t *g) {
  if (!g) return KNHK_EINVAL;
  atomic_init(&g->knhk__state, 0);
  atomic_init(&g->knhk__first_error, 0);
  atomic_init(&g->knhk__failed, 0);
  return 0;
}

uint32_t knhk_group_pending(const knhk_group_t *g) {
  return g ? GROUP_COUNT(ld_acquire(&((knhk_group_t *)g)->knhk__state)) : 0;
}

int knhk_group_status(const knhk_group_t *g) {
  return g ? ld_acquire(&((knhk_group_t *)g)->knhk__first_error) : KNHK_EINVAL;
}

static _Atomic uint32_t *group_futex(knhk_group_t *g) {
  _Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "group futex needs little-endian");
  return (_Atomic uint32_t *)(void *)&g->knhk__state; /* the count half */
}

static void group_sub(knhk__executor_t *ex, knhk_group_t *g, uint32_t k) {
  _Atomic uint32_t *futex = group_futex(g);
  uint64_t old = atomic_fetch_sub_explicit(&g->knhk__state, k, memory_order_acq_rel);
  if (GROUP_COUNT(old) != k) return;
  uint32_t waiter = GROUP_WAITER(old);
  if (waiter == GROUP_WAITER_OUTSIDE)
    knhk__futex_wake(futex, INT_MAX);
  else if (waiter != 0)
    knhk__worker_unpark(&ex->workers[waiter - 1]);
}

void knhk__group_drop_reservation(knhk__worker_t *w) {
  if (w->resv_n) group_sub(w->ex, w->resv_g, w->resv_n);
  w->resv_g = NULL;
  w->resv_n = 0;
}

void knhk__group_flush_ends(knhk__worker_t *w) {
  if (w->pend_n) group_sub(w->ex, w->pend_g, w->pend_n);
  w->pend_g = NULL;
  w->pend_n = 0;
}

void knhk__group_flush(knhk__worker_t *w) {
  knhk__group_drop_reservation(w);
  knhk__group_flush_ends(w);
}

/* A task was spawned into g (before it is published). Outside threads add
 * one; a worker adds reservations in growing chunks while the same task
 * keeps spawning into the same group. */
void knhk__group_spawned(knhk__worker_t *w, knhk_group_t *g) {
  if (!w) {
    atomic_fetch_add_explicit(&g->knhk__state, 1, memory_order_relaxed);
    return;
  }
  if (w->resv_g == g && w->resv_n > 0) {
    w->resv_n--;
    return;
  }
  if (w->resv_g != g) {
    knhk__group_drop_reservation(w);
    w->resv_g = g;
    w->resv_chunk = 1;
  } else if (w->resv_chunk < GROUP_MAX_CHUNK) {
    w->resv_chunk *= 2;
  }
  /* Relaxed: the task is published after this (deque release), and the
   * finisher's decrement follows its acquisition of the task. */
  atomic_fetch_add_explicit(&g->knhk__state, w->resv_chunk, memory_order_relaxed);
  w->resv_n = w->resv_chunk - 1;
}

void knhk__group_task_ended(knhk__worker_t *w, knhk_group_t *g, int status) {
  if (status != 0) { /* recorded now: the count still holds the group open */
    int zero = 0;
    atomic_compare_exchange_strong_explicit(&g->knhk__first_error, &zero, status,
                                            memory_order_relaxed, memory_order_relaxed);
    atomic_fetch_add_explicit(&g->knhk__failed, 1, memory_order_relaxed);
  }
  if (w->pend_g == g && w->pend_n < GROUP_MAX_PENDING) {
    w->pend_n++;
    return;
  }
  knhk__group_flush_ends(w);
  w->pend_g = g;
  w->pend_n = 1;
}

/* Returns 0 after claiming the waiter slot for `id` (or if the group is
 * already done), KNHK_EBUSY if another thread holds it. */
int knhk__group_claim(knhk_group_t *g, uint32_t id) {
  uint64_t s = ld_acquire(&g->knhk__state);
  for (;;) {
    if (GROUP_COUNT(s) == 0 || GROUP_WAITER(s) == id) return 0;
    if (GROUP_WAITER(s) != 0) return KNHK_EBUSY;
    if (atomic_compare_exchange_weak_explicit(&g->knhk__state, &s, s | ((uint64_t)id << 32),
                                              memory_order_acq_rel, memory_order_acquire))
      return 0;
  }
}

void knhk__group_release(knhk_group_t *g) {
  uint64_t s = ld_acquire(&g->knhk__state);
  while (GROUP_WAITER(s) != 0 &&
         !atomic_compare_exchange_weak_explicit(&g->knhk__state, &s, s & 0xffffffffu,
                                                memory_order_acq_rel, memory_order_acquire)) {
  }
}

/* A worker's view: the group is done when what is left is what this worker
 * holds itself (reserved slots, ends not yet subtracted); it then gives
 * those back, which brings the count to 0. */
static int group_done_for(knhk__worker_t *w, knhk_group_t *g) {
  uint32_t mine = 0;
  if (w->pend_g == g) mine += w->pend_n;
  if (w->resv_g == g) mine += w->resv_n;
  if (GROUP_COUNT(ld_acquire(&g->knhk__state)) != mine) return 0;
  knhk__group_flush(w);
  return 1;
}

typedef struct {
  knhk__wait_t base;
  knhk_group_t *g;
} group_wait_t;

static int gw_done(knhk__worker_t *w, knhk__wait_t *wt) {
  return group_done_for(w, ((group_wait_t *)wt)->g);
}
static int gw_claim(knhk__worker_t *w, knhk__wait_t *wt) {
  return knhk__group_claim(((group_wait_t *)wt)->g, (uint32_t)w->index + 1);
}
static void gw_release(knhk__worker_t *w, knhk__wait_t *wt) {
  (void)w;
  knhk__group_release(((group_wait_t *)wt)->g);
}

int knhk__group_wait_on_worker(knhk__worker_t *w, knhk_group_t *g) {
  if (!g) return knhk__worker_loop(w, NULL);
  group_wait_t gw = {{gw_done, gw_claim, gw_release}, g};
  return knhk__worker_loop(w, &gw.base);
}

int knhk_executor_wait(knhk_executor_t *handle, knhk_group_t *g) {
  knhk__executor_t *ex = knhk__impl_of(handle);
  if (!ex || !g) return KNHK_EINVAL;
  knhk__worker_t *w = knhk__current_worker(ex);
  if (w) {
    /* Helping wait: the worker loop runs tasks until the group is done,
     * claiming the waiter slot only if it has to sleep. */
    int rc = knhk__group_wait_on_worker(w, g);
    return rc != 0 ? rc : knhk_group_status(g);
  }
  _Atomic uint32_t *futex = group_futex(g);
  int rc = knhk__group_claim(g, GROUP_WAITER_OUTSIDE);
  if (rc != 0) return rc;
  for (;;) {
    uint64_t s = ld_acquire(&g->knhk__state);
    if (GROUP_COUNT(s) == 0) break;
    knhk__futex_wait(futex, GROUP_COUNT(s));
  }
  knhk__group_release(g);
  return knhk_group_status(g);
}
