/* reactor_impl.h: what the reactor's files share (private to core/src).
 *
 * One file per concept, as libuv does:
 *   reactor.c   the thread, the loop, the request queues (plumbing)
 *   timer.c     timers: the heaps and their firing
 *   clock.c     the runtime's clock: real, or virtual (holds, jumps)
 *   signal.c    signal watches
 *   process.c   child processes
 *   file.c      whole-file reads and writes
 * The loop file calls into each concept's file through the knhk__* entry
 * points below; no concept file calls back into the loop file except to
 * queue a request or wake the loop (knhk__reactor_submit*, _poke), which
 * any thread may do.
 */
#ifndef KNHK_REACTOR_IMPL_H
#define KNHK_REACTOR_IMPL_H

#include <pthread.h>
#include <uv.h>

#include "atomics.h"
#include "knhk/clock.h"
#include "knhk/reactor.h"
#include "mpsc.h"

#define container_of(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

typedef struct knhk__proc knhk__proc_t;

/* A binary heap of timers by (deadline, seq): equal deadlines fire in the
 * order their starts reached the reactor. */
typedef struct {
  knhk_timer_t **a;
  uint32_t n, cap;
} knhk__heap_t;

struct knhk_reactor_s {
  uv_loop_t loop;
  uv_async_t async;
  uv_timer_t uvtimer;
  knhk__mpsc_t timers, signals, procs, kills, files;
  pthread_t thread;
  /* The thread starts with the first request or signal watch (reactor.c,
   * knhk__reactor_start_locked), and takes thread_m before its loop runs:
   * until `looping`, the loop is whoever holds thread_m's. */
  pthread_mutex_t thread_m;
  _Atomic uint32_t started;       /* written under thread_m */
  int looping;                    /* under thread_m */
  KNHK__ALIGNED _Atomic uint32_t closing;
  _Atomic uint64_t entering;
  int shutting_down;              /* reactor thread only */
  /* timer.c (reactor thread only): timers on the runtime's clock; under a
   * virtual clock, timers on the real clock (knhk_timer_start_real) too */
  knhk__heap_t heap, real_heap;
  uint64_t timer_seq;
  /* When the reactor will next look at its timer queue unprompted (the
   * earliest real-clock deadline; UINT64_MAX: never). A timer start due no
   * earlier needs no wake-up: most sleeps end after the one already armed. */
  KNHK__ALIGNED _Atomic uint64_t wake_at;
  /* clock.c */
  int clock;                      /* knhk_clock_kind, fixed at creation */
  KNHK__ALIGNED _Atomic uint64_t vnow; /* virtual: the time (only grows) */
  _Atomic uint64_t holds;         /* real work in flight: no jump meanwhile */
  _Atomic(knhk_idle_fn) idle_fn;  /* is every task waiting? */
  _Atomic(void *) idle_arg;
  _Atomic(knhk_stall_fn) stall_fn; /* called when the clock can never move */
  _Atomic(void *) stall_arg;
  _Atomic(knhk_batch_fn) batch_begin, batch_end; /* around a jump's firing */
  _Atomic(void *) batch_arg;
  /* process.c, signal.c, file.c */
  knhk__proc_t *live_procs;       /* for shutdown */
  knhk_signal_t **watches;
  uint32_t nwatches, capwatches;
  uint64_t file_ops;              /* in flight on the threadpool */
};

/* ---------------------------------------------------------- reactor.c */

/* Any thread: queue a request node and wake the loop. Returns 0, or
 * KNHK_ESHUTDOWN once the reactor is closing. A producer counts itself in
 * `entering` before checking `closing`; the reactor waits for `entering` to
 * drain before its final pass, so no request slips in after shutdown began
 * without completing. */
int knhk__reactor_submit(knhk_reactor_t *r, knhk__mpsc_t *q, knhk_link_t *node);
/* Under r->thread_m. Starts the reactor's thread unless it runs already;
 * 0, KNHK_ESHUTDOWN once closing, or KNHK_ENOMEM. */
int knhk__reactor_start_locked(knhk_reactor_t *r);
/* Any thread: as knhk__reactor_submit, for a request the reactor need not
 * see before `due` (a timer start): no wake-up when it will look at its
 * queue by then anyway. On the real clock that is its published wake_at;
 * on a virtual clock (on_virtual), any time after now: the clock cannot
 * move before the reactor has taken in its queues. */
int knhk__reactor_submit_due(knhk_reactor_t *r, knhk__mpsc_t *q, knhk_link_t *node, uint64_t due,
                             int on_virtual);
/* Any thread: wake the loop (it takes in every queue, fires what is due
 * and lets a virtual clock jump if it may). No effect once closing. */
void knhk__reactor_poke(knhk_reactor_t *r);
/* Reactor thread: the next node of a queue, or NULL. */
knhk_link_t *knhk__reactor_take(knhk__mpsc_t *q);

/* ------------------------------------------------------------ timer.c */

/* Reactor thread: take in the queued starts and stops. */
void knhk__timers_take(knhk_reactor_t *r);
/* Reactor thread: fire every timer that is due, in order, taking in the
 * queue between two firings (a callback may start an earlier timer). */
void knhk__timers_fire_due(knhk_reactor_t *r);
/* Reactor thread: the earliest deadline on the runtime's clock, or
 * UINT64_MAX. */
uint64_t knhk__timers_next(knhk_reactor_t *r);
/* Reactor thread, before the loop sleeps: publish wake_at and return in
 * how many ms the uv timer must fire (-1: not at all). */
int64_t knhk__timers_arm(knhk_reactor_t *r);
/* Reactor thread, at shutdown: complete every pending timer, cancelled. */
void knhk__timers_shutdown(knhk_reactor_t *r);
void knhk__timers_free(knhk_reactor_t *r);

/* ------------------------------------------------------------ clock.c */

/* Any thread. The clock's time now (virtual or monotonic). */
uint64_t knhk__clock_now(const knhk_reactor_t *r);
/* Reactor thread. Under a virtual clock, while every task waits and no
 * real work is in flight, jump to the earliest timer and fire it (and
 * again, while that woke nobody). Nothing under a real clock. */
void knhk__clock_settle(knhk_reactor_t *r);

/* ----------------------------------------------------------- signal.c */

void knhk__signals_take(knhk_reactor_t *r);
void knhk__signals_shutdown(knhk_reactor_t *r);
void knhk__signals_free(knhk_reactor_t *r);

/* ---------------------------------------------------------- process.c */

/* Reactor thread: start the queued spawns; act on the queued kill requests
 * (a cancelled token); at shutdown, stop every live process at once (TERM,
 * then KILL on the next turn of the loop). */
void knhk__proc_take_spawns(knhk_reactor_t *r);
void knhk__proc_take_kills(knhk_reactor_t *r);
void knhk__proc_shutdown(knhk_reactor_t *r);

/* ------------------------------------------------------------- file.c */

void knhk__files_take(knhk_reactor_t *r);

#endif
