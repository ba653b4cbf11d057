/* join.c: knhk_join, fork-join with the second side offered to thieves
 * (see knhk/join.h for the contract).
 *
 * The job: fb, its argument, its status and a latch, in the caller's stack
 * frame, with a knhk_task_t header so it can sit in a deque (and, if the
 * owner offloads its deque, in the injector) like any task. Its bits say
 * KNHK__TB_JOIN, so whichever worker takes it from a queue hands it to
 * knhk__join_run_taken() instead of running it as a task: no state
 * changes, no counters, no group.
 *
 * Protocol, on worker W:
 *   1. push the job on W's deque (bottom), and wake a sleeper if nobody is
 *      searching, as a spawn does;
 *   2. run fa inline;
 *   3. pop W's deque. Everything fa pushed has been popped again by fa's own
 *      joins, except tasks fa spawned without waiting for them, which sit
 *      above the job. So the pop gives
 *        - the job: nobody took it; run fb inline (the fast path: no
 *          atomic read-modify-write besides the deque's own);
 *        - nothing: the deque is empty, so the job was taken (thieves take
 *          from the top, so it went no later than anything below it);
 *        - another task: the job is below it or was taken. Put the task
 *          back and go to 4: the helping loop runs it, then finds the job
 *          (and runs it through the latch path) or waits for its taker.
 *   4. helping wait (knhk__worker_loop) until the latch is set.
 *
 * The latch (job.latch): LATCH_EMPTY, LATCH_SET, or LATCH_WAITER0 + W's
 * index once W has claimed it before sleeping. The taker stores the status,
 * then exchanges in LATCH_SET (release: the status and all fb wrote are
 * visible to W's acquire load) and, if it read a waiter, unparks W. That
 * exchange is the taker's last access to the job: W may return from
 * knhk_join, and the frame holding the job is gone, as soon as it reads
 * LATCH_SET. Which worker to wake comes from the exchanged value and the
 * executor comes from the taker's own worker record, never from the job.
 */
#include "executor_impl.h"
#include "knhk/errors.h"
#include "knhk/join.h"

enum { LATCH_EMPTY = 0, LATCH_SET = 1, LATCH_WAITER0 = 2 };

typedef struct {
  knhk_task_t task;            /* header for the queues; task.data = fb's argument */
  knhk_join_fn fn;
  int status;                  /* written by the taker before LATCH_SET */
  _Atomic uint32_t latch;
} join_job_t;

static join_job_t *job_of(knhk_task_t *t) {
  return (join_job_t *)(void *)((char *)t - offsetof(join_job_t, task));
}

/* Runs one side unless a prompt shutdown began before it started. */
static int run_side(knhk__executor_t *ex, knhk_join_fn fn, void *arg) {
  if (ld_relaxed(&ex->stopping) == 1 + KNHK_SHUTDOWN_PROMPT) return KNHK_ECANCELED;
  int s = fn(arg);
  return s > 0 ? KNHK_EFAILED : s;
}

void knhk__join_run_taken(knhk__worker_t *w, knhk_task_t *t) {
  join_job_t *j = job_of(t);
  int s = run_side(w->ex, j->fn, t->data);
  knhk__group_drop_reservation(w); /* fb's spawns are all published now */
  j->status = s;
  uint32_t prev = atomic_exchange_explicit(&j->latch, LATCH_SET, memory_order_acq_rel);
  /* j may be gone from here on */
  if (prev >= LATCH_WAITER0) knhk__worker_unpark(&w->ex->workers[prev - LATCH_WAITER0]);
}

/* --------------------------------------------- waiting for a taken job */

typedef struct {
  knhk__wait_t base;
  join_job_t *job;
} join_wait_t;

static int jw_done(knhk__worker_t *w, knhk__wait_t *wt) {
  (void)w;
  return ld_acquire(&((join_wait_t *)wt)->job->latch) == LATCH_SET;
}

/* From now on the taker unparks us. If it finished meanwhile (LATCH_SET),
 * there is nothing to claim and the loop sees it done at its next look. */
static int jw_claim(knhk__worker_t *w, knhk__wait_t *wt) {
  uint32_t expected = LATCH_EMPTY;
  atomic_compare_exchange_strong_explicit(&((join_wait_t *)wt)->job->latch, &expected,
                                          LATCH_WAITER0 + (uint32_t)w->index,
                                          memory_order_acq_rel, memory_order_acquire);
  return 0;
}

/* The loop releases only after jw_done saw LATCH_SET, which the taker
 * wrote over our claim: nothing is left to undo. */
static void jw_release(knhk__worker_t *w, knhk__wait_t *wt) {
  (void)w;
  (void)wt;
}

static int wait_taken(knhk__worker_t *w, join_job_t *j) {
  join_wait_t jw = {{jw_done, jw_claim, jw_release}, j};
  knhk__worker_loop(w, &jw.base); /* returns only once jw_done holds */
  return j->status;
}

/* ------------------------------------------------------------ on a worker */

static inline __attribute__((always_inline)) int join_on_worker(knhk__worker_t *w,
                                                                knhk_join_fn fa, void *a,
                                                                knhk_join_fn fb, void *b) {
  knhk__executor_t *ex = w->ex;
  /* Only the task fields a queue or a worker reads before handing the job
   * to knhk__join_run_taken (the queues write the link themselves). */
  join_job_t j;
  j.task.data = b;
  j.task.group = NULL;
  j.task.knhk__home = -1;
  j.task.knhk__bits = KNHK__TB_JOIN;
  j.fn = fb;
  atomic_init(&j.latch, LATCH_EMPTY);
  if (knhk__deque_push(&w->deque, &j.task, !ex->asymmetric) != 0) {
    /* No memory to grow the deque: no parallelism, same result. */
    int sa = run_side(ex, fa, a), sb = run_side(ex, fb, b);
    return sa != 0 ? sa : sb;
  }
  knhk__notify_parked_inline(ex);
  int sa = run_side(ex, fa, a);
  int sb;
  knhk_task_t *t = knhk__deque_pop(&w->deque);
  if (t == &j.task) {
    sb = run_side(ex, fb, b);
  } else {
    /* Put back what fa left queued: it was on top and goes on top again,
     * into the slot it just left (so the push does not grow the ring). */
    if (t && knhk__deque_push(&w->deque, t, !ex->asymmetric) != 0) {
      knhk__mpsc_push(&ex->injector, &t->knhk__link);
      knhk__notify_parked(ex);
    }
    sb = wait_taken(w, &j);
  }
  return sa != 0 ? sa : sb;
}

/* ---------------------------------------------------- from elsewhere */

typedef struct {
  knhk_executor_t *ex;
  knhk_join_fn fa, fb;
  void *a, *b;
} outside_join_t;

static int outside_run(knhk_task_t *t) {
  outside_join_t *o = t->data;
  return knhk_join(o->ex, o->fa, o->a, o->fb, o->b);
}

static int join_outside(knhk_executor_t *handle, knhk_join_fn fa, void *a, knhk_join_fn fb,
                        void *b) {
  outside_join_t o = {handle, fa, fb, a, b};
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, outside_run, &o);
  t.group = &g;
  int rc = knhk_executor_spawn(handle, &t);
  if (rc != 0) return rc;
  /* The task's status is the join's (never positive); a task cancelled
   * before it started (prompt shutdown) ends as KNHK_ECANCELED. */
  return knhk_executor_wait(handle, &g);
}

/* Not on a worker of the handle's executor (or bad arguments). */
static __attribute__((noinline)) int join_elsewhere(knhk_executor_t *handle, knhk_join_fn fa,
                                                    void *a, knhk_join_fn fb, void *b) {
  if (!knhk__impl_of(handle) || !fa || !fb) return KNHK_EINVAL;
  return join_outside(handle, fa, a, fb, b);
}

int knhk_join(knhk_executor_t *handle, knhk_join_fn fa, void *a, knhk_join_fn fb, void *b) {
  /* On a worker of this executor the handle points to our executor's
   * record, which is all the validation it needs: compare, no call. */
  knhk__worker_t *w = knhk__tls_worker;
  if (__builtin_expect(w && handle && w->ex == handle->knhk__impl && fa && fb, 1))
    return join_on_worker(w, fa, a, fb, b);
  return join_elsewhere(handle, fa, a, fb, b);
}
