/* executor_impl.h: the executor's internal types, shared by core/src files
 * that schedule (executor.c, group.c, later nursery/reactor). */
#ifndef KNHK_EXECUTOR_IMPL_H
#define KNHK_EXECUTOR_IMPL_H

#include <pthread.h>
#include "atomics.h"
#include "deque.h"
#include "mpsc.h"
#include "knhk/executor.h"

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

/* knhk_task_t.knhk__bits */
enum {
  KNHK__TB_STARTED = 1u << 0, /* run has been called at least once */
  KNHK__TB_POOLED = 1u << 1   /* record belongs to the executor's pool */
};

/* Worker parker (knhk__worker_t.park): a one-token semaphore. unpark leaves
 * the token (NOTIFIED); park consumes it or sleeps until it arrives. */
enum { KNHK__P_EMPTY = 0, KNHK__P_PARKED = 1, KNHK__P_NOTIFIED = 2 };

typedef struct {
  _Atomic uint64_t spawned, completed, failed, cancelled, stolen, steal_attempts, parks,
      busy_ns;
} knhk__counters_t;

typedef struct knhk__executor knhk__executor_t;

typedef struct knhk__worker {
  knhk__deque_t deque;
  knhk__mpsc_t inbox;                 /* wake-ups of tasks sticky to this worker */
  KNHK__ALIGNED _Atomic uint32_t park;
  KNHK__ALIGNED knhk__counters_t c;   /* written by the owner only */
  /* owner-only state */
  KNHK__ALIGNED knhk__executor_t *ex;
  int index;
  int searching;        /* counted in ex->idle as searching */
  int help_depth;       /* nesting of helping waits */
  uint32_t tick;
  uint64_t rng;
  uint64_t busy_since;
  knhk_task_t *pool;    /* free pooled task records */
  uint32_t pool_n;
  pthread_t thread;
  int has_thread;
  /* protected by ex->idle_lock */
  int in_sleepers;      /* in ex->sleepers: counted as parked */
  int woken_to_search;  /* a notifier counted it as unparked + searching */
} knhk__worker_t;

/* ex->idle packs (unparked << 16) | searching, so a spawner reads both with
 * one load. unparked: workers not registered as sleeping. */
#define KNHK__IDLE_SEARCHING(s) ((s) & 0xffffu)
#define KNHK__IDLE_UNPARKED(s) ((s) >> 16)
#define KNHK__IDLE_ONE_SEARCHING 1u
#define KNHK__IDLE_ONE_UNPARKED (1u << 16)

struct knhk__executor {
  int n;
  uint32_t flags;
  KNHK__ALIGNED _Atomic uint32_t idle;
  KNHK__ALIGNED knhk__mpsc_t injector;
  _Atomic int injector_lock;          /* one consumer at a time */
  KNHK__ALIGNED _Atomic uint32_t stopping;   /* 0, or 1 + knhk_shutdown_mode */
  _Atomic uint32_t done;              /* futex: 1 once shut down */
  _Atomic uint64_t ext_entering;      /* outside spawns in progress */
  _Atomic uint64_t ext_spawned;
  pthread_mutex_t idle_lock;          /* sleepers, in_sleepers, shutdown check */
  int *sleepers;
  int nsleepers;
  int worker0_entered;
  pthread_mutex_t pool_lock;          /* shared pool of task records */
  knhk_task_t *pool;
  uint64_t pool_n;
  void **slabs;
  size_t nslabs, cap_slabs;
  knhk__worker_t *workers;            /* n, cache-line aligned */
};

/* The calling thread's worker, if it is a worker of `ex`, else NULL. */
knhk__worker_t *knhk__current_worker(knhk__executor_t *ex);
/* Any thread. Puts a task that moved into QUEUED where it belongs. */
void knhk__executor_enqueue(knhk__executor_t *ex, knhk_task_t *t);
/* Any thread. Sets the token of `w` and wakes it if it sleeps. */
void knhk__worker_unpark(knhk__worker_t *w);

#endif
