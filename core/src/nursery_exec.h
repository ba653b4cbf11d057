/* nursery_exec.h: what nursery.c may use of the executor, and nothing
 * else. nursery.c sees no executor or worker struct: it waits and wakes
 * through two entry points (help until a wait is done; wake a waiter), and
 * builds its children from the executor's pooled records and its spawn of
 * a task prepared by the caller. executor.c, pool.c and idle.c implement
 * it. */
#ifndef KNHK_NURSERY_EXEC_H
#define KNHK_NURSERY_EXEC_H

#include <stddef.h>
#include <stdint.h>
#include "knhk/executor.h"
#include "knhk/task.h"

typedef struct knhk__executor knhk__executor_t;

/* Task states (knhk_task_t.knhk__state). Transitions:
 *   INIT/DONE --spawn--> QUEUED --worker pops--> RUNNING
 *   RUNNING --run returns PENDING--> PARKED, or QUEUED if NOTIFIED meanwhile
 *   RUNNING --wake--> NOTIFIED;  PARKED --wake--> QUEUED (the waker queues it)
 *   RUNNING/QUEUED(never started, prompt shutdown) --> DONE
 * Only the thread that moves a task into QUEUED pushes it, so a task is in
 * at most one queue, once. */
enum {
  KNHK__T_INIT = 0,
  KNHK__T_QUEUED = 1,
  KNHK__T_RUNNING = 2,
  KNHK__T_NOTIFIED = 3,
  KNHK__T_PARKED = 4,
  KNHK__T_DONE = 5
};

/* Any thread. The executor behind a handle, or NULL; its worker count. */
knhk__executor_t *knhk__impl_of(knhk_executor_t *handle);
int knhk__executor_workers(const knhk__executor_t *ex);

/* Any thread. Spawns a task the caller has just prepared, unchecked: state
 * QUEUED, knhk__bits and knhk__home set. Returns 0, or KNHK_ESHUTDOWN from
 * an outside thread once shutdown began (the task is then not queued). */
int knhk__spawn_queued(knhk__executor_t *ex, knhk_task_t *t);

/* Pooled records (pool.c): one pool per kind, sized by
 * knhk__nursery_pool_layout ({size, link offset} of a child record and of
 * a nursery, defined in nursery.c). Any thread: from and to the calling
 * worker's own list when it is a worker of ex. get: NULL when out of
 * memory. put_chain: a NULL-terminated chain of n records. */
enum { KNHK__POOL_TASK = 0, KNHK__POOL_CHILD = 1, KNHK__POOL_NURSERY = 2, KNHK__NPOOLS = 3 };
extern const size_t knhk__nursery_pool_layout[2][2];
void *knhk__record_get(knhk__executor_t *ex, int kind);
void knhk__record_put(knhk__executor_t *ex, int kind, void *rec);
void knhk__record_put_chain(knhk__executor_t *ex, int kind, void *chain, size_t n);

/* The two entry points for waiting.
 *
 * A wait: done says whether it holds; claim registers `waiter` as the one
 * to wake (with knhk__wake_waiter) before the worker sleeps, returning 0
 * or an error that ends the wait; release undoes a successful claim. */
typedef struct knhk__help knhk__help_t;
struct knhk__help {
  int (*done)(knhk__help_t *self);
  int (*claim)(knhk__help_t *self, uint32_t waiter);
  void (*release)(knhk__help_t *self, uint32_t waiter);
};
/* Help until this wait is done: on a worker of ex, runs other tasks until
 * h->done (sleeping, once claimed, until woken). Returns 0, claim's error,
 * or KNHK_EDEADLK without doing anything when the caller is not a worker
 * of ex (it must block some other way). */
int knhk__help_until(knhk__executor_t *ex, knhk__help_t *h);
/* Wake this waiter (an id a claim was given). Any thread. */
void knhk__wake_waiter(knhk__executor_t *ex, uint32_t waiter);

#endif
