/* knhk/nursery.h: structured concurrency in C.
 *
 * A nursery owns the children spawned into it (children may spawn more into
 * the same nursery while it is open), and waiting for it returns only when
 * every child has ended: no child outlives its nursery. Policy:
 *   - the first child that fails (any status but 0 and KNHK_ECANCELED)
 *     cancels the nursery (reason KNHK_CANCEL_SIBLING), unless the nursery
 *     was made with KNHK_NURSERY_SUPERVISE (failures are reported and
 *     siblings go on);
 *   - every failure is kept, first one first, and reported once every child
 *     has ended; a body failure (knhk_nursery_fail) counts as one and also
 *     cancels the children;
 *   - cancelling the nursery ends its children and is not an error;
 *   - a child that has not started when the nursery is cancelled ends as
 *     cancelled without running.
 * Waits called on a worker help (run other tasks meanwhile), so nested
 * nurseries work on one worker. Waits called elsewhere block.
 *
 * What a child costs: a child is an executor task plus a record from the
 * executor's pool (knhk_nursery_spawn) or the caller's memory
 * (knhk_nursery_spawn_ex), counted in one atomic word of the nursery; no
 * lock, no allocation. The nursery's cancel token exists only once
 * something asks for it (knhk_nursery_token, a cancellation, a failure);
 * until then children check the parent token. Records of ended children
 * are kept only when asked for: a KNHK_NURSERY_JOIN nursery queues them for
 * join_next, and the first child to complete is kept for wait_any; the
 * others go back to the pool as they end.
 *
 * State machine:
 *   OPEN --close, close_if_idle with no live child, wait_all / wait_any
 *   returning--> CLOSED (spawn: KNHK_ECLOSED; children still running go on).
 *   Children: spawned (live) --> ended (status set, counted in ends). One
 *   waiter at a time (a wait, or a task registered by notify): a second
 *   gets KNHK_EBUSY.
 *
 * Lifetime: nurseries come from their executor's pool: free every nursery
 * (knhk_nursery_free) before closing its executor.
 */
#ifndef KNHK_NURSERY_H
#define KNHK_NURSERY_H

#include <stddef.h>
#include <stdint.h>
#include "knhk/cancel.h"
#include "knhk/executor.h"
#include "knhk/task.h"

typedef struct knhk_nursery_s knhk_nursery_t;
typedef struct knhk_child_s knhk_child_t;
/* A child's code: runs with its record, returns its status as a task does
 * (knhk/task.h): 0, KNHK_ECANCELED, a failure, or KNHK_TASK_PENDING after
 * arranging a knhk_executor_wake(ex, knhk_child_task(self)); it then runs
 * again with the same record. */
typedef int (*knhk_child_fn)(knhk_child_t *self);

enum {
  KNHK_NURSERY_SUPERVISE = 1u << 0, /* a failure does not cancel siblings */
  KNHK_NURSERY_JOIN = 1u << 1       /* ended children queue for join_next */
};

/* A child record. From the pool (knhk_nursery_spawn): valid while the child
 * runs, and after it ended only where this header says so (join_next,
 * wait_any). Caller-owned (knhk_nursery_spawn_ex): zeroed before its first
 * use (= {0}, calloc). Once the nursery said the child ended (a wait
 * returned, join_next or try_next gave the record) the caller reads it, and
 * may spawn it again; it must stay valid until knhk_nursery_free(n)
 * returns, or, in a JOIN nursery, until join_next or try_next returned it.
 * The fields below `private` are the nursery's. */
struct knhk_child_s {
  knhk_task_t knhk__task;  /* private: the task that runs the child */
  knhk_child_fn knhk__fn;  /* private */
  knhk_nursery_t *nursery; /* set at spawn */
  void *arg;               /* as given to spawn */
  void *result;            /* NULL at spawn; for fn to set */
  int status;              /* once ended: 0, KNHK_ECANCELED, or a failure;
                              0 before */
  /* private */
  uint32_t knhk__bits;
  knhk_child_t *knhk__next;
  uint64_t knhk__tel[7];   /* telemetry: its span, until it ends (telemetry_impl.h) */
};

/* Any thread. A nursery on `ex` whose cancellation follows `parent` (NULL:
 * none; retained until knhk_nursery_free). flags: KNHK_NURSERY_*. Returns 0,
 * KNHK_EINVAL (NULL out, ex not an executor, unknown flags) or KNHK_ENOMEM. */
int knhk_nursery_new(knhk_nursery_t **out, knhk_executor_t *ex, knhk_token_t *parent,
                     uint32_t flags);
/* Any thread. Spawns fn(child) as a child, with a record from the pool.
 * Returns 0; KNHK_ECLOSED; KNHK_EINVAL (NULL n or fn); KNHK_ENOMEM; or the
 * executor's refusal (KNHK_ESHUTDOWN from an outside thread once shutdown
 * began): then the child never existed. */
int knhk_nursery_spawn(knhk_nursery_t *n, knhk_child_fn fn, void *arg);
/* Any thread. Like spawn, with options: `record` a caller-owned record (see
 * knhk_child_t; NULL: one from the pool); `task_flags` (KNHK_TASK_*) go to
 * the child's task; with worker >= 0 the child runs only on that worker.
 * Returns as spawn, and KNHK_EINVAL for a record still in use or a worker
 * out of range. On a refusal a caller-owned record's status says why. */
int knhk_nursery_spawn_ex(knhk_nursery_t *n, knhk_child_t *record, knhk_child_fn fn, void *arg,
                          uint32_t task_flags, int worker);
/* Any thread. The executor task that runs `child`: the one to pass to
 * knhk_executor_wake when a child parked itself (KNHK_TASK_PENDING). */
knhk_task_t *knhk_child_task(knhk_child_t *child);

/* Any thread. The nursery's token (not retained; valid until
 * knhk_nursery_free), a child of the parent token, made on the first call.
 * NULL only when n is NULL or out of memory. */
knhk_token_t *knhk_nursery_token(knhk_nursery_t *n);
/* Any thread. 1 if the nursery was cancelled (itself, or through its
 * parent token), else 0: one or two atomic loads, no token made. */
int knhk_nursery_cancelled(const knhk_nursery_t *n);
/* Any thread. Cancels every child (reason KNHK_CANCEL_EXPLICIT). Returns 0,
 * KNHK_EINVAL, or KNHK_ENOMEM (no token could be made). */
int knhk_nursery_cancel(knhk_nursery_t *n);
/* Any thread. The code that opened the nursery failed with `status`: it is
 * recorded (before any child's later failure) and the children cancelled
 * (reason KNHK_CANCEL_SIBLING). Returns 0, or KNHK_EINVAL (NULL n,
 * status 0). */
int knhk_nursery_fail(knhk_nursery_t *n, int status);

/* Any thread but a child of n (it would wait for itself). Waits until every
 * child has ended and closes the nursery in the same step (a spawn that
 * slipped in is waited for too). Returns 0, the first failure (a body
 * failure recorded first stays first), KNHK_EBUSY (another waiter),
 * KNHK_EINVAL. */
int knhk_nursery_wait_all(knhk_nursery_t *n);
/* As wait_all for threads. Waits for the first child to complete (status
 * 0): *winner gets its record (valid until knhk_nursery_free, also from the
 * pool), the others are cancelled (KNHK_CANCEL_EXPLICIT) and waited for,
 * the nursery closes, and it returns 0; exactly one winner even when
 * several complete at once: the first in completion order. If none
 * completes: *winner = NULL and the first failure, or KNHK_ECANCELED.
 * KNHK_EBUSY, KNHK_EINVAL (no winner pointer) as wait_all. */
int knhk_nursery_wait_any(knhk_nursery_t *n, knhk_child_t **winner);
/* JOIN nurseries only; as wait_all for threads. Waits for the next child to
 * end, in completion order. Returns 0 with *next set (a record from the
 * pool stays valid until knhk_nursery_free), KNHK_ENOENT when no child is
 * live and all were joined, KNHK_EBUSY, or KNHK_EINVAL (NULL, or not a
 * JOIN nursery). */
int knhk_nursery_join_next(knhk_nursery_t *n, knhk_child_t **next);
/* JOIN nurseries only. Any thread, never waits. The next ended child not
 * yet joined (0, *next set, as join_next); KNHK_EAGAIN if none has ended
 * since but some are live; KNHK_ENOENT if none is live and all were
 * joined; KNHK_EINVAL as join_next. */
int knhk_nursery_try_next(knhk_nursery_t *n, knhk_child_t **next);
/* Any thread. No more spawns (KNHK_ECLOSED); children still run. Returns 0
 * or KNHK_EINVAL. */
int knhk_nursery_close(knhk_nursery_t *n);
/* Any thread. Closes n if no child is live, in one step with that check,
 * so that no spawn (a child's own, say) can slip in between: returns 0
 * (closed), or KNHK_EBUSY if some child is still live (n stays open). */
int knhk_nursery_close_if_idle(knhk_nursery_t *n);

/* Any thread. Live (spawned, not ended) children, exact at the moment of
 * reading. At most 2^26 - 1 at once: a spawn beyond gets KNHK_ENOMEM. */
uint32_t knhk_nursery_live(const knhk_nursery_t *n);
/* Any thread. Copies up to `max` failures, first one first, into
 * statuses[] (may be NULL); returns how many there are in all, or
 * KNHK_EINVAL. */
int knhk_nursery_failures(const knhk_nursery_t *n, int *statuses, int max);

/* Any thread but a child of n, before the executor is closed. Waits for
 * every child if any is live, then gives the nursery and the pool records
 * it kept back to the pool and drops its token references. Returns 0 or
 * KNHK_EINVAL. */
int knhk_nursery_free(knhk_nursery_t *n);

/* Any thread. A count of the children that have ended so far, modulo 2^26:
 * compare it for equality only (knhk_nursery_notify). */
uint64_t knhk_nursery_ends(const knhk_nursery_t *n);
/* Any thread. For runtimes built on top, which wait by parking a task
 * rather than blocking: if knhk_nursery_ends(n) still equals `seen` and a
 * child is live, registers `task` to be woken (knhk_executor_wake) at the
 * next child end, once, and returns 0; the task must stay valid until then.
 * Otherwise returns KNHK_EALREADY (a child ended since you looked, or none
 * is live: look again). KNHK_EBUSY if another waiter is registered (the
 * same task registering again is fine), KNHK_EINVAL for NULL. */
int knhk_nursery_notify(knhk_nursery_t *n, knhk_task_t *task, uint64_t seen);

#endif
