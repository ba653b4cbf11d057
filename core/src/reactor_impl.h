/* reactor_impl.h: what the reactor's files share (private to core/src).
 *
 * reactor.c owns the thread, the loop, the request queues, timers, signals
 * and files; process.c owns child processes. The loop file calls into
 * process.c through the knhk__proc_* functions below; process.c never calls
 * back into the loop file: it only queues requests (submit).
 */
#ifndef KNHK_REACTOR_IMPL_H
#define KNHK_REACTOR_IMPL_H

#include <pthread.h>
#include <uv.h>

#include "atomics.h"
#include "knhk/reactor.h"
#include "mpsc.h"

#define container_of(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

typedef struct knhk__proc knhk__proc_t;

struct knhk_reactor_s {
  uv_loop_t loop;
  uv_async_t async;
  uv_timer_t uvtimer;
  knhk__mpsc_t timers, signals, procs, kills, files;
  pthread_t thread;
  _Atomic uint32_t started;       /* futex: 1 once the loop runs */
  int start_rc;
  KNHK__ALIGNED _Atomic uint32_t closing;
  _Atomic uint64_t entering;
  int shutting_down;              /* reactor thread only */
  knhk_timer_t **heap;
  uint32_t nheap, capheap;
  /* When the reactor will next look at its timer queue unprompted (its
   * earliest deadline; UINT64_MAX: never). A timer start due no earlier
   * needs no wake-up: most sleeps end after the one already armed. */
  KNHK__ALIGNED _Atomic uint64_t wake_at;
  knhk__proc_t *live_procs;       /* process.c: for shutdown */
  knhk_signal_t **watches;
  uint32_t nwatches, capwatches;
  uint64_t file_ops;              /* in flight on the threadpool */
};

/* Any thread: queue a request node and wake the loop. Returns 0, or
 * KNHK_ESHUTDOWN once the reactor is closing. A producer counts itself in
 * `entering` before checking `closing`; the reactor waits for `entering` to
 * drain before its final pass, so no request slips in after shutdown began
 * without completing. */
int knhk__reactor_submit(knhk_reactor_t *r, knhk__mpsc_t *q, knhk_link_t *node);

/* Any thread: as knhk__reactor_submit, for a request the reactor need
 * not see before `due` (a timer start): no wake-up when it will look at
 * its queue by then anyway. */
int knhk__reactor_submit_due(knhk_reactor_t *r, knhk__mpsc_t *q, knhk_link_t *node, uint64_t due);

/* Reactor thread: the next node of a queue, or NULL. */
knhk_link_t *knhk__reactor_take(knhk__mpsc_t *q);

/* Reactor thread (process.c): start the queued spawns; act on the queued
 * kill requests (a cancelled token); at shutdown, stop every live process
 * at once (TERM, then KILL on the next turn of the loop). */
void knhk__proc_take_spawns(knhk_reactor_t *r);
void knhk__proc_take_kills(knhk_reactor_t *r);
void knhk__proc_shutdown(knhk_reactor_t *r);

#endif
