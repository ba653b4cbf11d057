/* knhk/nursery.h: structured concurrency in C.
 *
 * A nursery owns the tasks spawned into it (children may spawn more into
 * the same nursery while it is open) and waiting for it returns only when
 * every child has ended: no task outlives its nursery. Its token is a child
 * of the parent token given at creation; children read it to see
 * cancellation. Policy:
 *   - the first child that fails (any status but 0 and KNHK_ECANCELED)
 *     cancels the nursery's token (reason KNHK_CANCEL_SIBLING), unless the
 *     nursery was made with KNHK_NURSERY_SUPERVISE (failures are reported
 *     per child and siblings go on);
 *   - every failure is kept, first one first, and reported once every child
 *     has ended; a body failure (knhk_nursery_fail) counts as one and also
 *     cancels the children;
 *   - cancelling the nursery ends its children and is not an error;
 *   - a child that has not started when the token is cancelled ends as
 *     cancelled without running.
 * Waits called on a worker help (run other tasks meanwhile), so nested
 * nurseries work on one worker. Waits called elsewhere block.
 *
 * State machine:  OPEN --wait_all / wait_any returns, or close--> CLOSED
 *   spawn: OPEN only (KNHK_ECLOSED after). Only one thread may wait at a
 *   time (KNHK_EBUSY).
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
typedef int (*knhk_child_fn)(knhk_child_t *self);

enum { KNHK_NURSERY_SUPERVISE = 1u << 0 };

/* A child record, made by the nursery and valid until knhk_nursery_free. */
struct knhk_child_s {
  knhk_nursery_t *nursery;
  knhk_token_t *token;   /* the nursery's token: check it at checkpoints */
  void *arg;             /* as given to spawn */
  void *result;          /* for fn to set */
  int status;            /* once ended: 0, KNHK_ECANCELED, or a failure */
  uint32_t index;        /* spawn order, from 0 */
  /* private */
  knhk_task_t knhk__task;
  knhk_child_fn knhk__fn;
  knhk_child_t *knhk__done_next;
  int knhk__started;
  uint64_t knhk__tel[4];   /* telemetry: span, current span, trace, ran */
};

/* Any thread. A nursery on `ex` whose token is a child of `parent` (NULL: a
 * root token). flags: KNHK_NURSERY_*. Returns 0, KNHK_EINVAL or ENOMEM. */
int knhk_nursery_new(knhk_nursery_t **out, knhk_executor_t *ex, knhk_token_t *parent,
                     uint32_t flags);
/* Any thread. Spawns fn(child) as a child. *out (may be NULL) gets the
 * record. Returns 0, KNHK_ECLOSED, KNHK_EINVAL, KNHK_ENOMEM, or the
 * executor's error (KNHK_ESHUTDOWN). */
int knhk_nursery_spawn(knhk_nursery_t *n, knhk_child_fn fn, void *arg, knhk_child_t **out);
/* Any thread. Like spawn; `task_flags` (KNHK_TASK_*) go to the child's
 * task, and with worker >= 0 the child runs only on that worker. */
int knhk_nursery_spawn_ex(knhk_nursery_t *n, knhk_child_fn fn, void *arg, uint32_t task_flags,
                          int worker, knhk_child_t **out);
/* Any thread. The executor task that runs `child`: the one to pass to
 * knhk_executor_wake when a child parked itself (KNHK_TASK_PENDING). */
knhk_task_t *knhk_child_task(knhk_child_t *child);
/* Any thread. The nursery's token (not retained). */
knhk_token_t *knhk_nursery_token(const knhk_nursery_t *n);
/* Any thread. Cancels every child (reason KNHK_CANCEL_EXPLICIT). */
int knhk_nursery_cancel(knhk_nursery_t *n);
/* Any thread. The code that opened the nursery failed with `status`: it is
 * recorded (before any child's later failure) and the children cancelled. */
int knhk_nursery_fail(knhk_nursery_t *n, int status);

/* Waits until every child has ended, then closes the nursery. Returns 0,
 * or the first failure (a body failure recorded first stays first). */
int knhk_nursery_wait_all(knhk_nursery_t *n);
/* Waits for the first child to complete (status 0): *winner gets it, the
 * others are cancelled and waited for, the nursery closes, and it returns
 * 0; exactly one winner even when several complete at once. If none
 * completes: *winner = NULL and the first failure, or KNHK_ECANCELED. */
int knhk_nursery_wait_any(knhk_nursery_t *n, knhk_child_t **winner);
/* Waits for the next child to end, in completion order. Returns 0 with
 * *next set, or KNHK_ENOENT when no child is live and all were joined. */
int knhk_nursery_join_next(knhk_nursery_t *n, knhk_child_t **next);
/* Any thread, never waits. The next ended child not yet joined (0, *next
 * set); KNHK_EAGAIN if none has ended since but some are live;
 * KNHK_ENOENT if none is live and all were joined. */
int knhk_nursery_try_next(knhk_nursery_t *n, knhk_child_t **next);
/* Any thread. No more spawns (KNHK_ECLOSED); children still run. */
int knhk_nursery_close(knhk_nursery_t *n);
/* Any thread. Closes n if no child is live, in one step with that check,
 * so that no spawn (a child's own, say) can slip in between: returns 0
 * (closed), or KNHK_EBUSY if some child is still live (n stays open). */
int knhk_nursery_close_if_idle(knhk_nursery_t *n);

/* Any thread. Children spawned so far; child i in spawn order, or NULL. */
uint32_t knhk_nursery_count(const knhk_nursery_t *n);
knhk_child_t *knhk_nursery_child(const knhk_nursery_t *n, uint32_t i);
/* Any thread. Live (not ended) children. */
uint32_t knhk_nursery_live(const knhk_nursery_t *n);
/* Any thread. Copies up to `max` failures, first one first, into
 * statuses[] (may be NULL); returns how many there are in all. */
int knhk_nursery_failures(const knhk_nursery_t *n, int *statuses, int max);

/* Any thread but a child of n. Waits for every child if any is live, then
 * frees the nursery, its children's records and its token reference.
 * Returns 0 or KNHK_EINVAL. */
int knhk_nursery_free(knhk_nursery_t *n);

/* Any thread. How many children have ended so far. */
uint64_t knhk_nursery_ends(const knhk_nursery_t *n);
/* For runtimes built on top (the Lua layer), which wait by parking a task
 * rather than blocking: if knhk_nursery_ends(n) still equals `seen`,
 * registers `task` to be woken (knhk_executor_wake) at the next child end,
 * once, and returns 0; otherwise returns KNHK_EALREADY (a child ended since
 * you looked: look again). KNHK_EBUSY if another waiter is registered. */
int knhk_nursery_notify(knhk_nursery_t *n, knhk_task_t *task, uint64_t seen);

#endif
