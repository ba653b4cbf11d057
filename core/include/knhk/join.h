/* knhk/join.h: fork-join of two functions (Cilk's spawn + sync, Rayon's join).
 *
 *   static int fib(void *p) {
 *     fib_t *f = p;
 *     if (f->n < 2) { f->r = f->n; return 0; }
 *     fib_t a = {f->ex, f->n - 1}, b = {f->ex, f->n - 2};
 *     int rc = knhk_join(f->ex, fib, &a, fib, &b);
 *     f->r = a.r + b.r;
 *     return rc;
 *   }
 *
 * On a worker, knhk_join offers fb to other workers (as a job that lives in
 * the caller's stack frame, pushed on the worker's deque), runs fa, then
 * takes fb back and runs it itself, unless an idle worker stole it
 * meanwhile. A join nobody steals from costs one deque push and one pop: no
 * allocation, no task record, no shared counter. Only a stolen fb costs a
 * latch; the caller then helps (runs other tasks, as knhk_executor_wait
 * does on a worker) until the thief has finished fb, so joins nest to any
 * depth and never deadlock, even on one worker.
 *
 * The two sides are not tasks: they do not appear in knhk_executor_stats
 * (except as steals), cannot return KNHK_TASK_PENDING, and are never
 * cancelled once started. A side's status reads as a task's (task.h):
 *   0                 completed
 *   KNHK_ECANCELED    cancelled
 *   other negative    that failure
 *   positive          KNHK_EFAILED (KNHK_TASK_PENDING included: a side
 *                     cannot park)
 */
#ifndef KNHK_JOIN_H
#define KNHK_JOIN_H

#include "knhk/executor.h"

/* One side of a join: runs once with the argument given to knhk_join and
 * returns its status. */
typedef int (*knhk_join_fn)(void *arg);

/* Runs fa(a) and fb(b), possibly at the same time on two workers, and
 * returns when both have ended.
 *
 * Threads: any thread.
 *   - On a worker of `ex` (inside a task or another join's side): fa runs
 *     at once on the calling thread; fb runs on the calling thread after
 *     fa, or on the worker that stole it. Nothing is allocated; the worker
 *     runs other tasks while it waits for a stolen fb (to a bounded nesting
 *     depth, as knhk_executor_wait).
 *   - Elsewhere (an outside thread, or a worker of another executor): the
 *     join runs as one task on `ex` (spawned and counted as a task) and the
 *     calling thread blocks until it has ended.
 *
 * Returns, as a group reports its tasks (task.h), with one difference: the
 * order is fixed, so the result never depends on which side was stolen:
 *   0                 both sides completed
 *   fa's status       if fa did not complete
 *   fb's status       if fa completed and fb did not
 * Both sides always run to their end: a failing side does not stop or
 * cancel the other (as in a group; cancel through a token when that is
 * wanted). Errors of the call itself, where neither side ran:
 *   KNHK_EINVAL       ex not an initialised executor, fa or fb NULL
 *   KNHK_ESHUTDOWN    from outside a worker, once shutdown has begun
 *
 * Shutdown: a side is started when a worker takes it up (fa when the call
 * begins; fb after fa, or when it is stolen). A side that would start after
 * a prompt shutdown began does not run and reports KNHK_ECANCELED, as a
 * queued task would; a side that had started runs to its end. So a prompt
 * shutdown unwinds a tree of joins quickly, every side runs at most once,
 * none is lost (the join returns only when both have ended or been
 * cancelled), and the executor finishes shutting down once the task
 * holding the outermost join returns. A graceful shutdown changes nothing
 * for joins on workers. From outside a worker, a join whose task had not
 * started when a prompt shutdown began returns KNHK_ECANCELED with neither
 * side run.
 *
 * Neither side may wait for the other to make progress (spin on a flag
 * the other sets, say): on one worker they run one after the other, and a
 * worker waiting for a stolen side may run parts of the other side nested
 * in its own stack. Waiting for tasks, groups and joins is fine.
 *
 * Stack: fa, fb and the functions they call run on the worker's stack
 * (8 MiB), plus one frame for each stolen join the worker helps through. */
int knhk_join(knhk_executor_t *ex, knhk_join_fn fa, void *a, knhk_join_fn fb, void *b);

#endif
