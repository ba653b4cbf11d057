/* executor_impl.h: the executor's internal types and the functions its
 * files share (executor.c: loop and lifecycle; idle.c: sleeping and waking;
 * pool.c: records; group.c: join groups; join.c: knhk_join). nursery.c
 * does not include it: it gets nursery_exec.h only. */
#ifndef KNHK_EXECUTOR_IMPL_H
#define KNHK_EXECUTOR_IMPL_H

#include <pthread.h>
#include <stddef.h>
#include "atomics.h"
#include "deque.h"
#include "mpsc.h"
#include "knhk/executor.h"
#include "nursery_exec.h" /* task states, pool kinds, and what nursery.c gets */

/* knhk_task_t.knhk__bits */
enum {
  KNHK__TB_STARTED = 1u << 0, /* run has been called at least once */
  KNHK__TB_POOLED = 1u << 1,  /* record belongs to the executor's pool */
  KNHK__TB_JOIN = 1u << 2     /* not a task: the second side of a knhk_join,
                                 run by knhk__join_run_taken (join.c) */
};

/* Worker parker (knhk__worker_t.park): a one-token semaphore. unpark leaves
 * the token (NOTIFIED); park consumes it or sleeps until it arrives. */
enum { KNHK__P_EMPTY = 0, KNHK__P_PARKED = 1, KNHK__P_NOTIFIED = 2 };

static inline knhk_task_t *knhk__task_of(knhk_link_t *l) {
  return (knhk_task_t *)(void *)((char *)l - offsetof(knhk_task_t, knhk__link));
}

typedef struct {
  _Atomic uint64_t spawned, completed, failed, cancelled, stolen, steal_attempts, parks,
      busy_ns;
} knhk__counters_t;


/* Pools of fixed-size records (pool.c): one per kind (nursery_exec.h:
 * tasks for knhk_executor_submit, children and nurseries), per executor. */
typedef struct {
  void *head;             /* a NULL-terminated list of free records */
  size_t n;               /* how many */
} knhk__pool_batch_t;
typedef struct {
  size_t size, link;      /* bytes per record; offset of its free-list pointer */
  pthread_mutex_t lock;   /* the shared part: whole batches of records */
  knhk__pool_batch_t *batches;
  size_t nbatches, cap_batches;
  void **slabs;
  size_t nslabs, cap_slabs;
} knhk__pool_t;
/* A worker's free records of one pool: the list in use, and one full batch
 * in reserve; counts exact. */
typedef struct {
  void *list;
  uint32_t n;
  void *spare;
  uint32_t spare_n;
} knhk__pool_cache_t;

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
  /* KNHK_EXECUTOR_SEEDED (executor.c, "seeded schedules"): the ready
   * tasks drained from the deque, inbox and injector, and the generator
   * that picks the next one to run. nready changes under ex->batch_m only,
   * where knhk_executor_idle reads it: a task moved from the inbox to the
   * ready set stays visible as queued. */
  knhk_task_t **ready;
  uint32_t nready, ready_cap;
  uint64_t pick_rng;
  knhk__pool_cache_t pools[KNHK__NPOOLS]; /* free pooled records */
  /* Group counting without a shared cache line per task (group.c):
   * slots reserved in a group by the running task's spawns, and ends of
   * tasks of one group not yet subtracted from it. */
  knhk_group_t *resv_g;
  uint32_t resv_n, resv_chunk;
  knhk_group_t *pend_g;
  uint32_t pend_n;
  int pend_status;      /* first failure among the pending ends */
  pthread_t thread;
  int has_thread;       /* under ex->start_m */
  /* 1 once its thread runs or is being started (KNHK_EXECUTOR_LAZY_WORKERS:
   * until then the worker is a sleeper whose park word reads PARKED, and
   * knhk__worker_unpark starts it) */
  _Atomic uint32_t started;
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
  int asymmetric;                     /* membarrier available: see idle.c */
  KNHK__ALIGNED _Atomic uint32_t idle;
  KNHK__ALIGNED _Atomic uint32_t nsleeping;  /* == nsleepers; its own line,
                                                read by every spawn */
  KNHK__ALIGNED knhk__mpsc_t injector;
  _Atomic int injector_lock;          /* one consumer at a time */
  KNHK__ALIGNED _Atomic uint32_t stopping;   /* 0, or 1 + knhk_shutdown_mode */
  _Atomic uint32_t done;              /* futex: 1 once shut down */
  _Atomic uint64_t ext_entering;      /* outside spawns in progress */
  _Atomic uint64_t ext_spawned;
  pthread_mutex_t idle_lock;          /* sleepers, in_sleepers, shutdown check */
  pthread_mutex_t batch_m;            /* seeded: held while a batch of wake-ups arrives */
  pthread_mutex_t start_m;            /* starting worker threads; has_thread */
  int *sleepers;
  int nsleepers;
  int worker0_entered;
  void (*on_idle)(void *arg);         /* knhk_executor_options_t's */
  void *on_idle_arg;
  knhk__pool_t pools[KNHK__NPOOLS];
  knhk__worker_t *workers;            /* n, cache-line aligned */
};

/* executor.c */
/* initial-exec: one %fs-relative load wherever the library is, where the
 * default model of position-independent code calls __tls_get_addr on every
 * access in the shared library (the Lua module loads it with dlopen, which
 * serves one pointer from glibc's static TLS reserve). */
#define KNHK__TLS_MODEL __attribute__((tls_model("initial-exec")))
/* The calling thread's worker record (of whichever executor), or NULL.
 * Read directly only where a call to knhk__current_worker would show
 * (knhk_join's fast path). */
extern _Thread_local knhk__worker_t *knhk__tls_worker KNHK__TLS_MODEL;
knhk__worker_t *knhk__current_worker(knhk__executor_t *ex);
/* Any thread. Puts a task that moved into QUEUED where it belongs. */
void knhk__executor_enqueue(knhk__executor_t *ex, knhk_task_t *t);
/* What a helping wait waits for. done: the condition (may give back what the
 * worker holds, see group.c); claim: register the worker as the waiter to
 * wake before it sleeps (0, or an error that ends the wait); release: undo
 * claim (called only after a successful claim). */
typedef struct knhk__wait knhk__wait_t;
struct knhk__wait {
  int (*done)(knhk__worker_t *w, knhk__wait_t *self);
  int (*claim)(knhk__worker_t *w, knhk__wait_t *self);
  void (*release)(knhk__worker_t *w, knhk__wait_t *self);
};
/* Worker only. Runs tasks until wt->done (a helping wait) or, with
 * wt == NULL, until the executor is done. Returns 0 or claim's error. */
int knhk__worker_loop(knhk__worker_t *w, knhk__wait_t *wt);

/* idle.c: parking, waking, the shutdown check */
void knhk__idle_init(knhk__executor_t *ex);
void knhk__worker_unpark(knhk__worker_t *w);
/* executor.c. Starts the thread of a worker that has none yet
 * (KNHK_EXECUTOR_LAZY_WORKERS); 0 once it has one, or KNHK_ENOMEM. */
int knhk__worker_start(knhk__worker_t *w);
void knhk__worker_park(knhk__worker_t *w);
void knhk__notify_parked(knhk__executor_t *ex);
/* knhk__notify_parked's first look, inline, for paths where the call
 * itself shows (knhk_join): on a busy executor nobody sleeps and this is
 * one load. Same ordering as there (see idle.c). */
static inline void knhk__notify_parked_inline(knhk__executor_t *ex) {
  uint32_t sleeping;
  if (ex->asymmetric) {
    atomic_signal_fence(memory_order_seq_cst); /* the sleeper's membarrier orders us */
    sleeping = ld_relaxed(&ex->nsleeping);
  } else {
    sleeping = ld_sc(&ex->nsleeping);
  }
  if (sleeping != 0) knhk__notify_parked(ex);
}
int knhk__register_sleep(knhk__worker_t *w);
void knhk__unregister_sleep(knhk__worker_t *w);
int knhk__check_done_locked(knhk__executor_t *ex);
void knhk__finish_done(knhk__executor_t *ex);
int knhk__work_visible(knhk__worker_t *w);

/* The calling thread's worker of ex, or NULL: knhk__current_worker, inline. */
static inline knhk__worker_t *knhk__worker_of(knhk__executor_t *ex) {
  knhk__worker_t *w = knhk__tls_worker;
  return w && w->ex == ex ? w : NULL;
}

/* pool.c. w: the calling thread's worker of ex, or NULL (the shared part,
 * under its lock). get returns NULL when out of memory; put_shared gives
 * back a NULL-terminated chain of n records at once. */
#define KNHK__POOL_BATCH 256
/* The fast paths, inline, for a caller that knows its records' link offset:
 * a worker's list in use. get: NULL when the list is empty; put: 0 when
 * the list is full. Either way, fall back to knhk__pool_get / _put. */
static inline void *knhk__pool_get_local(knhk__worker_t *w, int kind, size_t link) {
  knhk__pool_cache_t *c = &w->pools[kind];
  void *rec = c->list;
  if (!rec) return NULL;
  c->list = *(void **)(void *)((char *)rec + link);
  c->n--;
  if (c->list) __builtin_prefetch(c->list, 1); /* see knhk__pool_get */
  return rec;
}
static inline int knhk__pool_put_local(knhk__worker_t *w, int kind, size_t link, void *rec) {
  knhk__pool_cache_t *c = &w->pools[kind];
  if (c->n >= KNHK__POOL_BATCH) return 0;
  *(void **)(void *)((char *)rec + link) = c->list;
  c->list = rec;
  c->n++;
  return 1;
}
void knhk__pool_init(knhk__pool_t *p, size_t size, size_t link);
void *knhk__pool_get(knhk__executor_t *ex, knhk__worker_t *w, int kind);
void knhk__pool_put(knhk__executor_t *ex, knhk__worker_t *w, int kind, void *rec);
void knhk__pool_put_shared(knhk__executor_t *ex, int kind, void *chain, size_t n);
void knhk__pool_free_all(knhk__executor_t *ex);

/* join.c. Worker only: runs a join job taken from a queue (by a thief,
 * or by its owner's helping loop) and sets its latch. */
void knhk__join_run_taken(knhk__worker_t *w, knhk_task_t *t);

/* group.c */
void knhk__group_spawned(knhk__worker_t *w, knhk_group_t *g);
void knhk__group_task_ended(knhk__worker_t *w, knhk_group_t *g, int status);
/* Worker only. Gives back reserved slots and subtracts pending ends. */
void knhk__group_flush(knhk__worker_t *w);
/* Worker only. Gives back the slots the running task reserved. */
void knhk__group_drop_reservation(knhk__worker_t *w);
void knhk__group_flush_ends(knhk__worker_t *w);
int knhk__group_claim(knhk_group_t *g, uint32_t id);
void knhk__group_release(knhk_group_t *g);
/* Worker only. A helping wait for g (NULL: until the executor is done). */
int knhk__group_wait_on_worker(knhk__worker_t *w, knhk_group_t *g);


#endif
