/* knhk/task.h: the unit of work the executor schedules, and join groups.
 *
 * A task is a struct the caller owns (like a libuv handle): initialise it with
 * knhk_task_init(), hand it to knhk_executor_spawn(), and keep it alive until
 * it has ended (its on_end callback ran, or the group it belongs to was
 * waited for). The executor never allocates on behalf of a caller-owned task.
 *
 * A task's run function returns its status:
 *   0                  completed
 *   KNHK_TASK_PENDING  not finished: it parked itself and will be queued again
 *                      by knhk_executor_wake() (a state machine, e.g. a Lua
 *                      coroutine waiting for a timer)
 *   KNHK_ECANCELED     ended as cancelled
 *   any other value    failed (negative codes are kept as the failure status;
 *                      positive values other than KNHK_TASK_PENDING are
 *                      reported as KNHK_EFAILED)
 * Every spawned task ends exactly once, as completed, failed or cancelled.
 */
#ifndef KNHK_TASK_H
#define KNHK_TASK_H

#include <stdint.h>

#ifndef KNHK_ATOMIC
#define KNHK_ATOMIC(T) _Atomic(T)
#endif

enum { KNHK_TASK_PENDING = 1 };

/* Task flags. */
enum {
  /* Once started, the task stays on the worker that started it: its
   * wake-ups go to that worker's inbox and it is never stolen again. */
  KNHK_TASK_STICKY = 1u << 0
};

typedef struct knhk_task_s knhk_task_t;

/* An intrusive link for the executor's and reactor's lock-free queues. */
typedef struct knhk_link_s {
  KNHK_ATOMIC(struct knhk_link_s *) next;
} knhk_link_t;
typedef struct knhk_group_s knhk_group_t;

typedef int (*knhk_task_fn)(knhk_task_t *self);
/* Runs once, after the task ended with `status`, on the thread that ended it.
 * May free the task. A task dropped without running (prompt shutdown) ends
 * with KNHK_ECANCELED and its on_end still runs. */
typedef void (*knhk_task_end_fn)(knhk_task_t *self, int status);

struct knhk_task_s {
  /* public: set by knhk_task_init, may be changed before spawn */
  knhk_task_fn run;
  knhk_task_end_fn on_end;       /* may be NULL */
  void *data;                    /* for the caller */
  knhk_group_t *group;           /* may be NULL: see knhk_group_t */
  uint32_t flags;                /* KNHK_TASK_* */
  /* private to the executor */
  int32_t knhk__home;            /* worker a sticky task lives on, or -1 */
  KNHK_ATOMIC(uint32_t) knhk__state;
  uint32_t knhk__bits;
  knhk_link_t knhk__link;        /* in an injector, an inbox, or a free list */
};

/* A join group counts the live tasks spawned into it; knhk_group_wait()
 * returns when none is left. Caller-owned; initialise with knhk_group_init(). */
struct knhk_group_s {
  /* private: count of live tasks (low 32 bits) and waiter (high 32 bits) */
  KNHK_ATOMIC(uint64_t) knhk__state;
  KNHK_ATOMIC(int32_t) knhk__first_error;  /* first failure status, or 0 */
  KNHK_ATOMIC(uint32_t) knhk__failed;      /* how many tasks did not complete */
};

/* Any thread. Prepares `task` to run `run(task)`; data and flags are zeroed,
 * set them after. Returns 0, or KNHK_EINVAL for a NULL task or function. */
int knhk_task_init(knhk_task_t *task, knhk_task_fn run, void *data);

/* What a task is doing, as knhk_task_state() reports it. */
enum knhk_task_state {
  KNHK_TASK_IDLE = 0,    /* not spawned yet, or ended (reusable) */
  KNHK_TASK_QUEUED = 1,  /* waiting for a worker to run it */
  KNHK_TASK_RUNNING = 2, /* a worker is running it */
  KNHK_TASK_PARKED = 3   /* its run returned KNHK_TASK_PENDING; waiting for a wake-up */
};

/* Any thread. A snapshot of what `task` is doing (enum knhk_task_state);
 * it may change as soon as it is read. */
int knhk_task_state(const knhk_task_t *task);

/* Any thread. Returns 0, or KNHK_EINVAL for NULL. */
int knhk_group_init(knhk_group_t *group);
/* Any thread. Number of tasks of the group that have not ended yet. */
uint32_t knhk_group_pending(const knhk_group_t *group);
/* Any thread, after the wait: the first failure status of a task of the
 * group (KNHK_ECANCELED or a failure code), or 0 if every task completed. */
int knhk_group_status(const knhk_group_t *group);

#endif
