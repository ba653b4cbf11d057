/* clock.c: the runtime's clock, real or virtual (see knhk/clock.h).
 *
 * A virtual clock is a number, vnow, that only grows: by a jump (the
 * reactor thread, in knhk__clock_settle) or an advance (any thread). Both
 * are read-modify-writes, so neither loses the other's move.
 *
 * When may it jump? The invariant, which makes "time never moves while a
 * task is runnable" hold:
 *
 *   The reactor jumps only after it has, on its own thread, taken in every
 *   request queue and fired every due timer, and then seen, in this order,
 *   (1) no hold (no process, file operation or outside hold in flight) and
 *   (2) the idle watch say that every worker is registered asleep with no
 *   task queued anywhere.
 *
 * Why that is enough: tasks are made runnable only by workers (which do
 * it while counted as awake), by the reactor (timer, process and file
 * completions: all on this thread, which is busy jumping), or by threads
 * outside the runtime. A worker registered asleep leaves that state only
 * when somebody queued work and woke it, so once (2) holds and the reactor
 * queues nothing, nothing inside the runtime can change until the reactor
 * fires the timer it jumped to: the jump happens while no task is
 * runnable. The race that matters, a worker about to park while the
 * reactor fires, is the ordinary one the executor already handles (a
 * worker registers, looks at every queue once more, then parks; a waker
 * queues, then wakes a registered sleeper): the reactor is just a waker.
 * Holds are taken before the request is queued and dropped after its
 * completion woke its task, on the reactor thread, so the reactor never
 * sees real work unheld. Threads outside the runtime are unordered with
 * the jump by nature: what they do happens before the check (seen) or
 * after the jump (as if it came later), never "during".
 *
 * (1) is read before (2). Process and file holds are dropped on this
 * thread only; an outside hold is released after the thread woke its task
 * (knhk/clock.h asks for that order), so a release the reactor sees in (1)
 * has its woken task visible to (2).
 *
 * The executor reports "every worker may be asleep" (knhk_clock_idle_hint)
 * each time its last awake worker registers to sleep; a hint is only a
 * reason to look: the reactor checks (2) itself, here, every time.
 */
#include "clock.h"

#include "knhk/errors.h"
#include "reactor_impl.h"

uint64_t knhk_clock_real_ns(void) { return knhk__mono_ns(); }

uint64_t knhk__clock_now(const knhk_reactor_t *r) {
  if (r->clock == KNHK_CLOCK_VIRTUAL)
    return atomic_load_explicit(&((knhk_reactor_t *)r)->vnow, memory_order_acquire);
  return knhk__mono_ns();
}

uint64_t knhk_reactor_now(const knhk_reactor_t *r) { return knhk__clock_now(r); }

int knhk_clock_kind(const knhk_reactor_t *r) { return r ? r->clock : KNHK_EINVAL; }

int knhk_clock_watch_idle(knhk_reactor_t *r, knhk_idle_fn fn, void *arg) {
  if (!r || r->clock != KNHK_CLOCK_VIRTUAL) return KNHK_EINVAL;
  /* arg before fn (release): the reactor reads fn (acquire), then arg */
  atomic_store_explicit(&r->idle_arg, arg, memory_order_relaxed);
  atomic_store_explicit(&r->idle_fn, fn, memory_order_release);
  knhk__reactor_poke(r);
  return 0;
}

int knhk_clock_batch(knhk_reactor_t *r, knhk_batch_fn begin, knhk_batch_fn end, void *arg) {
  if (!r || r->clock != KNHK_CLOCK_VIRTUAL || !begin != !end) return KNHK_EINVAL;
  atomic_store_explicit(&r->batch_arg, arg, memory_order_relaxed);
  atomic_store_explicit(&r->batch_end, end, memory_order_relaxed);
  atomic_store_explicit(&r->batch_begin, begin, memory_order_release);
  return 0;
}

int knhk_clock_on_stall(knhk_reactor_t *r, knhk_stall_fn fn, void *arg) {
  if (!r || r->clock != KNHK_CLOCK_VIRTUAL) return KNHK_EINVAL;
  atomic_store_explicit(&r->stall_arg, arg, memory_order_relaxed);
  atomic_store_explicit(&r->stall_fn, fn, memory_order_release);
  return 0;
}

void knhk_clock_idle_hint(void *reactor) {
  knhk_reactor_t *r = reactor;
  if (r && r->clock == KNHK_CLOCK_VIRTUAL) knhk__reactor_poke(r);
}

int knhk_clock_advance(knhk_reactor_t *r, uint64_t ns) {
  if (!r || r->clock != KNHK_CLOCK_VIRTUAL) return KNHK_EINVAL;
  uint64_t cur = atomic_load_explicit(&r->vnow, memory_order_relaxed), next;
  do {
    next = cur + ns < cur ? UINT64_MAX : cur + ns; /* saturates: "forever" stays forever */
    /* seq_cst: a timer start that reads vnow after its push either sees
     * this time (and wakes the reactor) or was pushed before it (and the
     * poke below makes the reactor take it in) */
  } while (!atomic_compare_exchange_weak_explicit(&r->vnow, &cur, next, memory_order_seq_cst,
                                                  memory_order_relaxed));
  knhk__reactor_poke(r); /* fire what is due now */
  return 0;
}

int knhk_clock_hold(knhk_reactor_t *r) {
  if (!r) return KNHK_EINVAL;
  atomic_fetch_add_explicit(&r->holds, 1, memory_order_seq_cst);
  return 0;
}

int knhk_clock_release(knhk_reactor_t *r) {
  if (!r) return KNHK_EINVAL;
  uint64_t before = atomic_fetch_sub_explicit(&r->holds, 1, memory_order_seq_cst);
  /* The last hold gone: look again whether the clock may jump (a release
   * on the reactor thread is followed by its own turn's end anyway). */
  if (before == 1 && r->clock == KNHK_CLOCK_VIRTUAL) knhk__reactor_poke(r);
  return 0;
}

/* (1) and (2) of the invariant above. */
static int every_task_waits(knhk_reactor_t *r) {
  if (atomic_load_explicit(&r->holds, memory_order_seq_cst) != 0) return 0;
  knhk_idle_fn fn = atomic_load_explicit(&r->idle_fn, memory_order_acquire);
  return fn && fn(atomic_load_explicit(&r->idle_arg, memory_order_relaxed));
}

/* Moves vnow to `to` unless an advance already took it further. */
static void jump_to(knhk_reactor_t *r, uint64_t to) {
  uint64_t cur = atomic_load_explicit(&r->vnow, memory_order_relaxed);
  while (cur < to && !atomic_compare_exchange_weak_explicit(&r->vnow, &cur, to,
                                                            memory_order_seq_cst,
                                                            memory_order_relaxed)) {
  }
}

/* Jumps in one turn before the loop gets its turn back (a timer that
 * re-arms itself while every task waits would jump forever; shutdown and
 * other requests must still get through). */
enum { JUMPS_PER_TURN = 1024 };

void knhk__clock_settle(knhk_reactor_t *r) {
  if (r->clock != KNHK_CLOCK_VIRTUAL || r->shutting_down) return;
  for (int jumps = 0;; jumps++) {
    if (jumps == JUMPS_PER_TURN) {
      knhk__reactor_poke(r); /* go on at the next turn */
      return;
    }
    /* Read before the idle watch: a stall callback set once the runtime's
     * first task was queued (the runtime's business) means that "every
     * task waits" below is about that task and those after it, never
     * about a runtime whose first task an outside thread has yet to queue. */
    knhk_stall_fn stall = atomic_load_explicit(&r->stall_fn, memory_order_acquire);
    if (!every_task_waits(r)) return;
    /* Every task waits: the timers they started before waiting are queued
     * by now (a worker pushes, then registers asleep, which the idle watch
     * saw), even those pushed after this turn took in its queues: take
     * them, or the earliest deadline would be missed. */
    knhk__timers_take(r);
    uint64_t next = knhk__timers_next(r);
    if (next == UINT64_MAX) { /* nothing can move the clock, nor wake a task */
      if (stall) stall(atomic_load_explicit(&r->stall_arg, memory_order_relaxed));
      return;
    }
    knhk_batch_fn begin = atomic_load_explicit(&r->batch_begin, memory_order_acquire);
    void *barg = atomic_load_explicit(&r->batch_arg, memory_order_relaxed);
    if (begin) begin(barg);
    jump_to(r, next);
    /* What it fires usually wakes a task: every_task_waits is then false
     * (a task is queued) and we stop. A timer whose firing woke nobody (a
     * deadline of a scope nobody waits in) leaves them waiting: jump on. */
    knhk__timers_fire_due(r);
    if (begin) atomic_load_explicit(&r->batch_end, memory_order_relaxed)(barg);
  }
}
