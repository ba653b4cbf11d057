/* knhk/executor.h: the work-stealing executor.
 *
 * N worker threads, each with a Chase-Lev deque (owner LIFO, thieves FIFO), a
 * global FIFO injector for spawns from other threads, and a per-worker inbox
 * for wake-ups of sticky tasks. Idle workers steal from a random victim, then
 * the injector, then park on a futex; a spawn wakes a parked worker only when
 * no worker is already searching for work.
 *
 * Lifecycle:  knhk_executor_init -> spawn/wake/wait ... -> knhk_executor_shutdown
 *             -> knhk_executor_close. The handle is a struct the caller owns;
 *             a second close returns KNHK_EALREADY.
 * Accounting: every spawned task ends as completed, failed or cancelled, and
 *             once the executor is idle spawned == completed + failed + cancelled.
 */
#ifndef KNHK_EXECUTOR_H
#define KNHK_EXECUTOR_H

#include <stddef.h>
#include <stdint.h>
#include "knhk/task.h"

enum { KNHK_MAX_WORKERS = 256 };

enum knhk_shutdown_mode {
  KNHK_SHUTDOWN_GRACEFUL = 0, /* run every queued and running task to its end */
  KNHK_SHUTDOWN_PROMPT = 1    /* tasks that never started end as cancelled;
                                 started tasks still run to their end */
};

enum {
  /* The thread calling knhk_executor_enter() is worker 0; only workers
   * 1..N-1 get threads of their own. */
  KNHK_EXECUTOR_CALLER_IS_WORKER0 = 1u << 0,
  /* Reproducible schedules, for tests: with workers == 1 only (else
   * knhk_executor_init says KNHK_EINVAL). The worker holds every task that
   * is ready to run (its spawns, wake-ups, outside spawns) in one set and
   * runs the one a generator seeded with opts.seed picks, instead of LIFO
   * for its own spawns and FIFO for wake-ups. The same seed and the same
   * spawns and wake-ups give the same order of runs; a different seed
   * gives another interleaving. Wake-ups made by other threads (a
   * reactor's timers, processes, files) join the set when they arrive, so
   * where they fall among the worker's own runs is only as reproducible as
   * their arrival. */
  KNHK_EXECUTOR_SEEDED = 1u << 1,
  /* Worker threads start when they are first needed, not in
   * knhk_executor_init: a worker that was never woken counts as asleep,
   * and the spawn or wake-up that would wake it starts its thread instead
   * (knhk_executor_spawn_on starts the worker it names). A run that never
   * has work for them starts none: a short-lived process saves the
   * threads' start, stacks and joins, and their spinning while it sets up.
   * Without KNHK_EXECUTOR_CALLER_IS_WORKER0, worker 0 still starts in
   * knhk_executor_init, so an executor always has one worker. If a thread
   * cannot be started later, its worker stays asleep and the work it was
   * woken for is left to the others. */
  KNHK_EXECUTOR_LAZY_WORKERS = 1u << 2
};

typedef struct {
  int workers;        /* >= 1 and <= KNHK_MAX_WORKERS */
  uint32_t flags;     /* KNHK_EXECUTOR_* */
  uint64_t seed;      /* victim selection, and with KNHK_EXECUTOR_SEEDED
                         the order of runs; same seed, same choices */
  /* Called on a worker each time the last awake worker registers to
   * sleep: every task may now be waiting. A hint, for a virtual clock
   * (knhk_clock_idle_hint): check with knhk_executor_idle. It runs under
   * the executor's sleep lock and never once the executor is done, so
   * what it touches need only live until knhk_executor_enter or
   * knhk_executor_shutdown has returned; it must not block, spawn or wake.
   * NULL: none. */
  void (*on_idle)(void *arg);
  void *on_idle_arg;
} knhk_executor_options_t;

/* Any thread. With KNHK_EXECUTOR_SEEDED, between begin and end the worker
 * does not gather ready tasks: tasks made ready together (the timers a
 * virtual clock fires at one instant) are one choice for the seeded
 * generator, whatever the order they arrived in. Without it, nothing. Do
 * not wait for the executor in between. The handle is a knhk_executor_t*
 * (void *, to fit knhk_clock_batch). */
void knhk_executor_batch_begin(void *handle);
void knhk_executor_batch_end(void *handle);

typedef struct {
  uint64_t spawned;        /* tasks spawned by this worker */
  uint64_t completed;      /* tasks that ended on this worker, by status */
  uint64_t failed;
  uint64_t cancelled;
  uint64_t stolen;         /* successful steals by this worker */
  uint64_t steal_attempts; /* steals tried on a victim that looked non-empty
                              (won or lost the race); looking at an empty
                              deque is not an attempt */
  uint64_t parks;          /* times this worker went to sleep */
  uint64_t busy_ns;        /* time spent running tasks or looking for them
                              after waking, i.e. not parked */
} knhk_worker_stats_t;

typedef struct {
  int workers;
  knhk_worker_stats_t total;   /* sum over workers, plus outside spawns */
  uint64_t external_spawned;   /* spawns from threads that are not workers */
  uint64_t live;               /* spawned - ended, at the moment of reading */
} knhk_executor_stats_t;

typedef struct {
  uint32_t knhk__magic;
  void *knhk__impl;
} knhk_executor_t;

/* Any thread. Fills `opts` with defaults: workers from the KNHK_WORKERS
 * environment variable if set, else the number of online CPUs; flags 0;
 * seed 0; no on_idle. Returns 0, or KNHK_EINVAL if KNHK_WORKERS is not a number in
 * 1..KNHK_MAX_WORKERS (opts then holds the CPU count). */
int knhk_executor_options_init(knhk_executor_options_t *opts);

/* Any thread. Starts an executor; `opts` may be NULL for the defaults.
 * Returns 0, KNHK_EINVAL (NULL handle, workers out of range, an unknown
 * flag, KNHK_EXECUTOR_SEEDED with workers != 1), or KNHK_ENOMEM. */
int knhk_executor_init(knhk_executor_t *ex, const knhk_executor_options_t *opts);

/* Any thread. Queues a caller-owned task (prepared with knhk_task_init): on a
 * worker of `ex` it goes to the front of that worker's deque, elsewhere to
 * the injector. If task->group is set, the group counts it until it ends.
 * Returns 0; KNHK_EINVAL (NULL, uninitialised task, task still live);
 * KNHK_ESHUTDOWN from a thread that is not a worker once shutdown began. */
int knhk_executor_spawn(knhk_executor_t *ex, knhk_task_t *task);

/* Any thread. Like spawn, but the task runs only on worker `worker` (its
 * inbox): never stolen, from its first run on. Returns as spawn, or
 * KNHK_EINVAL for a worker index out of range. */
int knhk_executor_spawn_on(knhk_executor_t *ex, knhk_task_t *task, int worker);

/* Any thread. Like spawn, for fire-and-forget work: the task record comes
 * from the executor's pool and returns to it when the task ends; `run`
 * receives it with ->data == data. Returns as knhk_executor_spawn, or
 * KNHK_ENOMEM. */
int knhk_executor_submit(knhk_executor_t *ex, knhk_task_fn run, void *data,
                         knhk_group_t *group);

/* Any thread. Queues again a task whose run returned KNHK_TASK_PENDING.
 * Waking a task that is queued, or running (it is queued again when it
 * returns), or that has ended, does nothing. Returns 0 or KNHK_EINVAL. */
int knhk_executor_wake(knhk_executor_t *ex, knhk_task_t *task);

/* Any thread. Returns when every task of `group` has ended. On a worker of
 * `ex` the wait helps: it runs other tasks meanwhile (to a bounded nesting
 * depth), so fork-join never deadlocks, even with one worker. Returns
 * knhk_group_status(group), or KNHK_EINVAL. */
int knhk_executor_wait(knhk_executor_t *ex, knhk_group_t *group);

/* Any thread. Begins shutdown without waiting: spawns from outside threads
 * fail from now on, spawns from running tasks are still accepted (and, in
 * prompt mode, end as cancelled without running). Returns 0, KNHK_EINVAL,
 * or KNHK_EALREADY if shutdown had begun (the mode may only escalate from
 * graceful to prompt, which this call does). */
int knhk_executor_stop(knhk_executor_t *ex, enum knhk_shutdown_mode mode);

/* Not from a worker of `ex` (KNHK_EDEADLK). stop(mode), then waits until no
 * task is live and every worker thread has exited. Returns 0 (also when
 * already shut down) or an error. */
int knhk_executor_shutdown(knhk_executor_t *ex, enum knhk_shutdown_mode mode);

/* Only with KNHK_EXECUTOR_CALLER_IS_WORKER0, from the thread that will be
 * worker 0: runs worker 0's loop until `group` has no live task (NULL: until
 * shutdown completes). Returns knhk_group_status(group) or 0;
 * KNHK_EINVAL otherwise. */
int knhk_executor_enter(knhk_executor_t *ex, knhk_group_t *group);

/* Not from a worker. Shuts down gracefully if that has not happened, then
 * frees everything. Returns 0, or KNHK_EALREADY if already closed,
 * KNHK_EINVAL for a handle that was never initialised. */
int knhk_executor_close(knhk_executor_t *ex);

/* Any thread. Sums the per-worker counters into `out` and copies up to
 * `n` per-worker records into `per_worker` (may be NULL). Returns the number
 * of workers or KNHK_EINVAL. Counters are read without stopping workers;
 * they reconcile exactly once the executor is idle. */
int knhk_executor_stats(knhk_executor_t *ex, knhk_executor_stats_t *out,
                        knhk_worker_stats_t *per_worker, int n);

/* Any thread. 1 if no task can run now: every worker is registered asleep
 * (a worker in a helping wait nested deeper than the executor helps counts
 * as awake), no task is queued anywhere and no outside spawn is in
 * progress; else 0 (also once shut down, or for NULL). From such a state
 * only a thread outside the workers (a reactor's completion, an outside
 * spawn or wake) can make a task runnable. Its type fits knhk_idle_fn
 * (knhk/clock.h). */
int knhk_executor_idle(void *ex);

/* Any thread. Index of the calling thread's worker in `ex`, or -1. */
int knhk_executor_worker_index(knhk_executor_t *ex);

#endif
