/* reactor.c: one thread, one uv_loop_t, and the request plumbing (see
 * knhk/reactor.h; reactor_impl.h says which file holds which concept).
 *
 * Requests: each kind has its own intrusive MPSC queue (the node is
 * embedded in the caller's request); producers push and uv_async_send. A
 * producer counts itself in `entering` before checking `closing`, and the
 * reactor waits for `entering` to drain before its final pass, so no
 * request slips in after shutdown began without completing.
 *
 * Each turn of the loop (a wake-up, or the uv timer) takes in every queue,
 * fires the timers that are due, lets a virtual clock jump if it may, and
 * arms the uv timer for the earliest real-time deadline.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "knhk/errors.h"
#include "reactor_impl.h"
#include "telemetry_impl.h"

int knhk__reactor_submit(knhk_reactor_t *r, knhk__mpsc_t *q, knhk_link_t *node) {
  return knhk__reactor_submit_due(r, q, node, 0, 0);
}

static void *reactor_main(void *arg);

/* The thread starts when something is first asked of the reactor: a
 * runtime that never sleeps, waits on a deadline, runs a process or
 * watches a signal has none, and one that watches signals has the caller
 * install them (signal.c) with no round trip to a thread being scheduled.
 * Everything the caller did to the loop before happens before the thread
 * runs (pthread_create). */
int knhk__reactor_start_locked(knhk_reactor_t *r) {
  if (ld_relaxed(&r->started)) return 0;
  if (ld_sc(&r->closing)) return KNHK_ESHUTDOWN; /* knhk_reactor_free joins no thread */
  if (pthread_create(&r->thread, NULL, reactor_main, r) != 0) return KNHK_ENOMEM;
  st_release(&r->started, 1);
  return 0;
}

static int start_thread(knhk_reactor_t *r) {
  if (ld_acquire(&r->started)) return 0;
  pthread_mutex_lock(&r->thread_m);
  int rc = knhk__reactor_start_locked(r);
  pthread_mutex_unlock(&r->thread_m);
  return rc;
}

/* The wake-up is skipped only when the reactor will look at the queue in
 * time anyway. Dekker-style: the producer pushes, fences, reads wake_at
 * (or the virtual time); the reactor stores wake_at, fences, and looks at
 * the queue before it sleeps (knhk__timers_arm); a virtual clock moves
 * only after the reactor took in its queues (knhk__clock_settle) or by an
 * advance, which adds to vnow before it wakes the reactor. Either the
 * reactor sees the node, or the producer sees the time that needs it. */
int knhk__reactor_submit_due(knhk_reactor_t *r, knhk__mpsc_t *q, knhk_link_t *node, uint64_t due,
                             int on_virtual) {
  atomic_fetch_add_explicit(&r->entering, 1, memory_order_seq_cst);
  int rc = 0;
  if (ld_sc(&r->closing)) {
    rc = KNHK_ESHUTDOWN;
  } else if ((rc = start_thread(r)) == 0) {
    knhk__mpsc_push(q, node); /* node may be completed and gone from here on */
    atomic_thread_fence(memory_order_seq_cst);
    int wake;
    if (on_virtual) {
      wake = due <= atomic_load_explicit(&r->vnow, memory_order_relaxed);
    } else {
      uint64_t at = atomic_load_explicit(&r->wake_at, memory_order_relaxed);
      wake = at == UINT64_MAX || due < at;
    }
    if (wake) uv_async_send(&r->async);
  }
  atomic_fetch_sub_explicit(&r->entering, 1, memory_order_seq_cst);
  return rc;
}

void knhk__reactor_poke(knhk_reactor_t *r) {
  (void)start_thread(r); /* without a thread, nothing to do: what it was poked for is queued */
  atomic_fetch_add_explicit(&r->entering, 1, memory_order_seq_cst);
  if (!ld_sc(&r->closing)) uv_async_send(&r->async);
  atomic_fetch_sub_explicit(&r->entering, 1, memory_order_seq_cst);
}

/* Spins over a push in progress: it completes within a few instructions. */
knhk_link_t *knhk__reactor_take(knhk__mpsc_t *q) {
  for (;;) {
    knhk_link_t *l;
    knhk__mpsc_pop_t r = knhk__mpsc_pop(q, &l);
    if (r == KNHK__MPSC_OK) return l;
    if (r == KNHK__MPSC_EMPTY) return NULL;
    knhk__cpu_relax();
  }
}

/* ------------------------------------------------------------- the loop */

static void take_all(knhk_reactor_t *r) {
  knhk__timers_take(r);
  knhk__signals_take(r);
  knhk__proc_take_spawns(r);
  knhk__proc_take_kills(r);
  knhk__files_take(r);
}

static void on_uvtimer(uv_timer_t *h);

/* The end of every turn: before the loop sleeps. */
static void settle_and_arm(knhk_reactor_t *r) {
  knhk__clock_settle(r);
  int64_t ms = knhk__timers_arm(r);
  if (ms < 0) {
    uv_timer_stop(&r->uvtimer);
    return;
  }
  uv_update_time(&r->loop);
  uv_timer_start(&r->uvtimer, on_uvtimer, (uint64_t)ms, 0);
}

static void on_uvtimer(uv_timer_t *h) {
  knhk_reactor_t *r = h->data;
  /* Take in queued requests first: a timer already asked for, with an
   * earlier deadline, must not fire after one that was in the heap. */
  take_all(r);
  knhk__timers_fire_due(r);
  settle_and_arm(r);
}

/* Final pass once closing: no request can arrive any more. Everything
 * pending completes; handles close; uv_run then returns. */
static void shut_down(knhk_reactor_t *r) {
  r->shutting_down = 1;
  while (ld_sc(&r->entering) != 0) knhk__cpu_relax();
  take_all(r);
  knhk__timers_shutdown(r);
  knhk__signals_shutdown(r);
  knhk__proc_shutdown(r);
  uv_timer_stop(&r->uvtimer);
  uv_close((uv_handle_t *)&r->uvtimer, NULL);
  uv_close((uv_handle_t *)&r->async, NULL);
}

static void on_async(uv_async_t *h) {
  knhk_reactor_t *r = h->data;
  if (r->shutting_down) return;
  if (ld_sc(&r->closing)) {
    shut_down(r);
    return;
  }
  take_all(r);
  knhk__timers_fire_due(r);
  settle_and_arm(r);
}

static void *reactor_main(void *arg) {
  knhk_reactor_t *r = arg;
  /* A child that exits without reading all of its stdin makes our write
   * to the pipe raise SIGPIPE, whose default action ends the process.
   * Blocked on this thread, which does every such write, it stays pending
   * here and the write fails with EPIPE instead (process.c lets the child's
   * stdin go then), whatever the program does with SIGPIPE elsewhere. */
  sigset_t pipe_only;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_only, NULL);
  /* after whatever the caller that started us does to the loop meanwhile
   * (signal.c installs a second watch the same way as the first) */
  pthread_mutex_lock(&r->thread_m);
  r->looping = 1;
  pthread_mutex_unlock(&r->thread_m);
  uv_run(&r->loop, UV_RUN_DEFAULT);
  /* Processes killed during shutdown may still be reaped after uv_run
   * returned once: run until every handle has closed. */
  while (uv_run(&r->loop, UV_RUN_DEFAULT) != 0) {
  }
  return NULL;
}

/* ------------------------------------------------------------ lifecycle */

int knhk_reactor_new(knhk_reactor_t **out) { return knhk_reactor_new_with(out, NULL); }

int knhk_reactor_new_with(knhk_reactor_t **out, const knhk_reactor_options_t *opts) {
  if (!out) return KNHK_EINVAL;
  int clock = opts ? opts->clock : KNHK_CLOCK_REAL;
  if (clock != KNHK_CLOCK_REAL && clock != KNHK_CLOCK_VIRTUAL) return KNHK_EINVAL;
  knhk_reactor_t *r = aligned_alloc(KNHK__CACHELINE, (sizeof *r + 63) & ~(size_t)63);
  if (!r) return KNHK_ENOMEM;
  memset(r, 0, sizeof *r);
  r->clock = clock;
  if (uv_loop_init(&r->loop) != 0) {
    free(r);
    return KNHK_EIO;
  }
  atomic_store_explicit(&r->wake_at, UINT64_MAX, memory_order_relaxed);
  knhk__mpsc_init(&r->timers);
  knhk__mpsc_init(&r->signals);
  knhk__mpsc_init(&r->procs);
  knhk__mpsc_init(&r->kills);
  knhk__mpsc_init(&r->files);
  uv_async_init(&r->loop, &r->async, on_async);
  r->async.data = r;
  uv_timer_init(&r->loop, &r->uvtimer);
  r->uvtimer.data = r;
  pthread_mutex_init(&r->thread_m, NULL);
  /* No thread yet: the first request starts it (knhk__reactor_start_locked).
   * Once started it is not waited for either: what is submitted before it
   * runs waits in the queues, and the async wake-up in its eventfd, until
   * its loop's first poll. */
  knhk__tel_reactor_add(r); /* it may drain telemetry */
  *out = r;
  return 0;
}

int knhk_reactor_free(knhk_reactor_t *r) {
  if (!r) return KNHK_EINVAL;
  knhk__tel_reactor_remove(r);
  /* (A second free of the same reactor is use after free: not detectable.) */
  /* Counted as entering, like a producer: the reactor closes the async
   * handle only once nobody is between its check and its send. */
  atomic_fetch_add_explicit(&r->entering, 1, memory_order_seq_cst);
  atomic_store_explicit(&r->closing, 1, memory_order_seq_cst);
  /* From here on no thread starts (closing, read under thread_m) */
  pthread_mutex_lock(&r->thread_m);
  int started = (int)ld_relaxed(&r->started);
  pthread_mutex_unlock(&r->thread_m);
  if (started) {
    uv_async_send(&r->async);
    atomic_fetch_sub_explicit(&r->entering, 1, memory_order_seq_cst);
    pthread_join(r->thread, NULL);
  } else { /* never started: the final pass runs here, the loop being ours */
    atomic_fetch_sub_explicit(&r->entering, 1, memory_order_seq_cst);
    shut_down(r);
    while (uv_run(&r->loop, UV_RUN_DEFAULT) != 0) {
    }
  }
  uv_loop_close(&r->loop);
  pthread_mutex_destroy(&r->thread_m);
  knhk__timers_free(r);
  knhk__signals_free(r);
  free(r);
  return 0;
}
