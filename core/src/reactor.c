/* reactor.c: one thread, one uv_loop_t (see knhk/reactor.h).
 *
 * Requests: each kind has its own intrusive MPSC queue (the node is
 * embedded in the caller's request); producers push and uv_async_send. A
 * producer counts itself in `entering` before checking `closing`, and the
 * reactor waits for `entering` to drain before its final pass, so no
 * request slips in after shutdown began without completing.
 *
 * Child processes are process.c's (through reactor_impl.h).
 *
 * Timers: our own binary heap of knhk_timer_t (ns deadlines), one uv timer
 * armed for the earliest. A timer's flags word is the only shared state:
 *   START   asked to start     STOP    asked to stop
 *   QUEUED  its node is in the timer queue (at most once)
 *   ACTIVE  in the heap (reactor only)     DONE  completed
 * The reactor completes a timer only when QUEUED is clear, so a completed
 * timer (which its owner may free) is never still in the queue.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "clock.h"
#include "knhk/errors.h"
#include "reactor_impl.h"
#include "telemetry_impl.h"

enum { TF_START = 1, TF_STOP = 2, TF_QUEUED = 4, TF_ACTIVE = 8, TF_DONE = 16 };
enum { SF_QUEUED = 1, SF_WANT = 2 };

uint64_t knhk_reactor_now(const knhk_reactor_t *r) {
  (void)r;
  return knhk__mono_ns();
}

int knhk__reactor_submit(knhk_reactor_t *r, knhk__mpsc_t *q, knhk_link_t *node) {
  return knhk__reactor_submit_due(r, q, node, 0);
}

/* The wake-up is skipped only when the reactor has published, in
 * wake_at, a time no later than `due` at which it will drain the queue.
 * Dekker-style: the producer pushes, fences, reads wake_at; the reactor
 * (arm) stores wake_at, fences, and looks at the queue before it sleeps.
 * Either it sees the node, or the producer sees the new wake_at. */
int knhk__reactor_submit_due(knhk_reactor_t *r, knhk__mpsc_t *q, knhk_link_t *node, uint64_t due) {
  atomic_fetch_add_explicit(&r->entering, 1, memory_order_seq_cst);
  int rc = 0;
  if (ld_sc(&r->closing)) {
    rc = KNHK_ESHUTDOWN;
  } else {
    knhk__mpsc_push(q, node);
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t wake = atomic_load_explicit(&r->wake_at, memory_order_relaxed);
    if (wake == UINT64_MAX || due < wake) uv_async_send(&r->async);
  }
  atomic_fetch_sub_explicit(&r->entering, 1, memory_order_seq_cst);
  return rc;
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

/* ------------------------------------------------------------ timer heap */

static int heap_less(knhk_timer_t *a, knhk_timer_t *b) { return a->deadline < b->deadline; }

static void heap_set(knhk_reactor_t *r, uint32_t i, knhk_timer_t *t) {
  r->heap[i] = t;
  t->knhk__heap_index = i;
}

static void heap_up(knhk_reactor_t *r, uint32_t i) {
  knhk_timer_t *t = r->heap[i];
  while (i > 0) {
    uint32_t p = (i - 1) / 2;
    if (!heap_less(t, r->heap[p])) break;
    heap_set(r, i, r->heap[p]);
    i = p;
  }
  heap_set(r, i, t);
}

static void heap_down(knhk_reactor_t *r, uint32_t i) {
  knhk_timer_t *t = r->heap[i];
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= r->nheap) break;
    if (c + 1 < r->nheap && heap_less(r->heap[c + 1], r->heap[c])) c++;
    if (!heap_less(r->heap[c], t)) break;
    heap_set(r, i, r->heap[c]);
    i = c;
  }
  heap_set(r, i, t);
}

static int heap_push(knhk_reactor_t *r, knhk_timer_t *t) {
  if (r->nheap == r->capheap) {
    uint32_t cap = r->capheap ? r->capheap * 2 : 64;
    knhk_timer_t **h = realloc(r->heap, cap * sizeof *h);
    if (!h) return KNHK_ENOMEM;
    r->heap = h;
    r->capheap = cap;
  }
  r->heap[r->nheap] = t;
  heap_up(r, r->nheap++);
  return 0;
}

static void heap_remove(knhk_reactor_t *r, knhk_timer_t *t) {
  uint32_t i = t->knhk__heap_index;
  knhk_timer_t *last = r->heap[--r->nheap];
  if (i == r->nheap) return;
  heap_set(r, i, last);
  heap_down(r, i);
  heap_up(r, last->knhk__heap_index);
}

/* ---------------------------------------------------------------- timers */

int knhk_timer_start(knhk_reactor_t *r, knhk_timer_t *t, uint64_t deadline_ns,
                     knhk_timer_fn on_done, void *data) {
  if (!r || !t || !on_done) return KNHK_EINVAL;
  t->on_done = on_done;
  t->data = data;
  t->deadline = deadline_ns;
  t->knhk__reactor = r;
  atomic_store_explicit(&t->knhk__flags, TF_START | TF_QUEUED, memory_order_relaxed);
  int rc = knhk__reactor_submit_due(r, &r->timers, &t->knhk__link, deadline_ns);
  if (rc != 0) st_relaxed(&t->knhk__flags, 0);
  return rc;
}

int knhk_timer_stop(knhk_timer_t *t) {
  if (!t || !t->knhk__reactor) return KNHK_EINVAL;
  uint32_t old = ld_acquire(&t->knhk__flags);
  for (;;) {
    if (old & (TF_DONE | TF_STOP)) return (old & TF_DONE) ? KNHK_EALREADY : 0;
    if (!(old & (TF_START | TF_ACTIVE))) return KNHK_EALREADY;
    if (atomic_compare_exchange_weak_explicit(&t->knhk__flags, &old, old | TF_STOP | TF_QUEUED,
                                              memory_order_acq_rel, memory_order_acquire))
      break;
  }
  if (!(old & TF_QUEUED)) {
    /* During shutdown the final sweep completes it instead. */
    knhk__reactor_submit(t->knhk__reactor, &t->knhk__reactor->timers, &t->knhk__link);
  }
  return 0;
}

static void complete_timer(knhk_timer_t *t, int status) {
  st_release(&t->knhk__flags, TF_DONE);
  t->on_done(t, status); /* may free t */
}

static void process_timer_requests(knhk_reactor_t *r) {
  knhk_link_t *l;
  while ((l = knhk__reactor_take(&r->timers))) {
    knhk_timer_t *t = container_of(l, knhk_timer_t, knhk__link);
    uint32_t old = atomic_fetch_and_explicit(&t->knhk__flags, ~(uint32_t)TF_QUEUED,
                                             memory_order_acq_rel);
    if (old & TF_STOP) {
      if (old & TF_ACTIVE) heap_remove(r, t);
      complete_timer(t, KNHK_ECANCELED);
    } else if ((old & TF_START) && !(old & TF_ACTIVE)) {
      if (heap_push(r, t) != 0) {
        complete_timer(t, KNHK_ENOMEM);
        continue;
      }
      atomic_fetch_or_explicit(&t->knhk__flags, TF_ACTIVE, memory_order_acq_rel);
    }
  }
}

static void fire_due_timers(knhk_reactor_t *r) {
  uint64_t now = knhk_reactor_now(r);
  for (;;) {
    /* A callback may take a while: timers asked for meanwhile join the heap
     * before the next one fires, so none fires after a later deadline. */
    if (knhk__mpsc_maybe_nonempty(&r->timers)) process_timer_requests(r);
    if (!r->nheap || r->heap[0]->deadline > now) break;
    knhk_timer_t *t = r->heap[0];
    heap_remove(r, t);
    uint32_t old = ld_acquire(&t->knhk__flags);
    for (;;) {
      if (old & TF_QUEUED) { /* a stop is queued: it completes the timer */
        atomic_fetch_and_explicit(&t->knhk__flags, ~(uint32_t)TF_ACTIVE, memory_order_acq_rel);
        break;
      }
      if (atomic_compare_exchange_weak_explicit(&t->knhk__flags, &old, TF_DONE,
                                                memory_order_acq_rel, memory_order_acquire)) {
        t->on_done(t, 0);
        break;
      }
    }
  }
}

static void on_uvtimer(uv_timer_t *h);

/* Before the loop sleeps: publish when it wakes next (wake_at), then make
 * sure no timer start that counted on an earlier wake_at is left queued. */
static void arm(knhk_reactor_t *r) {
  for (;;) {
    uint64_t d = r->nheap ? r->heap[0]->deadline : UINT64_MAX;
    atomic_store_explicit(&r->wake_at, d, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (!knhk__mpsc_maybe_nonempty(&r->timers)) break;
    process_timer_requests(r);
    fire_due_timers(r);
  }
  if (!r->nheap) {
    uv_timer_stop(&r->uvtimer);
    return;
  }
  uint64_t now = knhk_reactor_now(r), d = r->heap[0]->deadline;
  uint64_t ms = d > now ? (d - now + 999999) / 1000000 : 0;
  uv_update_time(&r->loop);
  uv_timer_start(&r->uvtimer, on_uvtimer, ms, 0);
}

static void process_all(knhk_reactor_t *r);

static void on_uvtimer(uv_timer_t *h) {
  knhk_reactor_t *r = h->data;
  /* Take in queued requests first: a timer already asked for, with an
   * earlier deadline, must not fire after one that was in the heap. */
  process_all(r);
  fire_due_timers(r);
  arm(r);
}

/* --------------------------------------------------------------- signals */

static void on_uvsignal(uv_signal_t *h, int signum) {
  knhk_signal_t *w = h->data;
  w->knhk__count++;
  w->on_signal(w, signum, w->knhk__count);
}

static void free_handle(uv_handle_t *h) { free(h); }

static void watch_forget(knhk_reactor_t *r, knhk_signal_t *w) {
  for (uint32_t i = 0; i < r->nwatches; i++)
    if (r->watches[i] == w) {
      r->watches[i] = r->watches[--r->nwatches];
      return;
    }
}

static void watch_end(knhk_reactor_t *r, knhk_signal_t *w) {
  uv_signal_t *h = w->knhk__uv;
  if (!h) return;
  st_release(&w->knhk__active, 0);
  uv_signal_stop(h);
  uv_close((uv_handle_t *)h, free_handle);
  w->knhk__uv = NULL;
  watch_forget(r, w);
}

static void process_signal_requests(knhk_reactor_t *r) {
  knhk_link_t *l;
  while ((l = knhk__reactor_take(&r->signals))) {
    knhk_signal_t *w = container_of(l, knhk_signal_t, knhk__link);
    uint32_t old = atomic_fetch_and_explicit(&w->knhk__op,
                                             ~(uint32_t)SF_QUEUED, memory_order_acq_rel);
    if ((old & SF_WANT) && !w->knhk__uv) {
      uv_signal_t *h = malloc(sizeof *h);
      if (!h) continue;
      uv_signal_init(&r->loop, h);
      h->data = w;
      if (r->nwatches == r->capwatches) {
        uint32_t cap = r->capwatches ? r->capwatches * 2 : 8;
        knhk_signal_t **ws = realloc(r->watches, cap * sizeof *ws);
        if (!ws) {
          uv_close((uv_handle_t *)h, free_handle);
          continue;
        }
        r->watches = ws;
        r->capwatches = cap;
      }
      r->watches[r->nwatches++] = w;
      w->knhk__uv = h;
      uv_signal_start(h, on_uvsignal, w->signum);
      st_release(&w->knhk__active, 1);
    } else if (!(old & SF_WANT) && w->knhk__uv) {
      watch_end(r, w);
    }
  }
}

int knhk_signal_start(knhk_reactor_t *r, knhk_signal_t *w, int signum, knhk_signal_fn fn,
                      void *data) {
  if (!r || !w || !fn || signum <= 0 || signum >= 65) return KNHK_EINVAL;
  w->on_signal = fn;
  w->data = data;
  w->signum = signum;
  w->knhk__uv = NULL;
  w->knhk__count = 0;
  w->knhk__reactor = r;
  atomic_store_explicit(&w->knhk__active, 0, memory_order_relaxed);
  atomic_store_explicit(&w->knhk__op, SF_QUEUED | SF_WANT,
                        memory_order_relaxed);
  return knhk__reactor_submit(r, &r->signals, &w->knhk__link);
}

int knhk_signal_active(const knhk_signal_t *w) {
  return w ? (int)ld_acquire(&((knhk_signal_t *)w)->knhk__active) : 0;
}

int knhk_signal_stop(knhk_signal_t *w) {
  if (!w || !w->knhk__reactor) return KNHK_EINVAL;
  _Atomic uint32_t *op = &w->knhk__op;
  uint32_t old = ld_acquire(op);
  while (!atomic_compare_exchange_weak_explicit(op, &old, (old & ~(uint32_t)SF_WANT) | SF_QUEUED,
                                                memory_order_acq_rel, memory_order_acquire)) {
  }
  if (!(old & SF_QUEUED))
    knhk__reactor_submit(w->knhk__reactor, &w->knhk__reactor->signals, &w->knhk__link);
  return 0;
}

/* ----------------------------------------------------------------- files */

typedef struct {
  uv_work_t work;
  knhk_file_op_t *op;
  knhk_reactor_t *r;
} file_impl_t;

static int read_all(int fd, char **out, size_t *len) {
  size_t cap = 8192, n = 0;
  char *b = malloc(cap);
  if (!b) return KNHK_ENOMEM;
  for (;;) {
    if (cap - n < 4097) {
      char *nb = realloc(b, cap *= 2);
      if (!nb) {
        free(b);
        return KNHK_ENOMEM;
      }
      b = nb;
    }
    ssize_t k = read(fd, b + n, cap - n - 1);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) {
      int e = -errno;
      free(b);
      return e;
    }
    if (k == 0) break;
    n += (size_t)k;
  }
  b[n] = 0;
  *out = b;
  *len = n;
  return 0;
}

static void file_work(uv_work_t *w) { /* threadpool thread */
  file_impl_t *fi = w->data;
  knhk_file_op_t *op = fi->op;
  int flags = op->kind == KNHK_FILE_READ     ? O_RDONLY
              : op->kind == KNHK_FILE_APPEND ? O_WRONLY | O_CREAT | O_APPEND
                                             : O_WRONLY | O_CREAT | O_TRUNC;
  int fd = open(op->path, flags | O_CLOEXEC, 0666);
  if (fd < 0) {
    op->error = errno == ENOENT ? KNHK_ENOENT : -errno;
    return;
  }
  if (op->kind == KNHK_FILE_READ) {
    op->error = read_all(fd, &op->result, &op->result_len);
  } else {
    size_t done = 0;
    while (done < op->len) {
      ssize_t k = write(fd, op->data + done, op->len - done);
      if (k < 0 && errno == EINTR) continue;
      if (k < 0) {
        op->error = -errno;
        break;
      }
      done += (size_t)k;
    }
  }
  if (close(fd) != 0 && !op->error) op->error = KNHK_EIO;
}

static void file_after(uv_work_t *w, int status) { /* reactor thread */
  file_impl_t *fi = w->data;
  knhk_file_op_t *op = fi->op;
  if (status == UV_ECANCELED) op->error = KNHK_ECANCELED;
  fi->r->file_ops--;
  free(fi);
  op->knhk__impl = NULL;
  op->on_done(op);
}

static void process_file_requests(knhk_reactor_t *r) {
  knhk_link_t *l;
  while ((l = knhk__reactor_take(&r->files))) {
    knhk_file_op_t *op = container_of(l, knhk_file_op_t, knhk__link);
    file_impl_t *fi = malloc(sizeof *fi);
    if (!fi) {
      op->error = KNHK_ENOMEM;
      op->on_done(op);
      continue;
    }
    fi->op = op;
    fi->r = r;
    fi->work.data = fi;
    op->knhk__impl = fi;
    r->file_ops++;
    if (uv_queue_work(&r->loop, &fi->work, file_work, file_after) != 0) {
      r->file_ops--;
      free(fi);
      op->error = KNHK_EIO;
      op->on_done(op);
    }
  }
}

int knhk_file_submit(knhk_reactor_t *r, knhk_file_op_t *op) {
  if (!r || !op || !op->path || !op->on_done ||
      (op->kind != KNHK_FILE_READ && !op->data && op->len) || op->kind < 0 ||
      op->kind > KNHK_FILE_APPEND)
    return KNHK_EINVAL;
  op->error = 0;
  op->result = NULL;
  op->result_len = 0;
  op->knhk__reactor = r;
  return knhk__reactor_submit(r, &r->files, &op->knhk__link);
}

void knhk_file_dispose(knhk_file_op_t *op) {
  if (!op) return;
  free(op->result);
  op->result = NULL;
  op->result_len = 0;
}

/* ------------------------------------------------------------- the loop */

static void process_all(knhk_reactor_t *r) {
  process_timer_requests(r);
  process_signal_requests(r);
  knhk__proc_take_spawns(r);
  knhk__proc_take_kills(r);
  process_file_requests(r);
}

/* Final pass once closing: no request can arrive any more. Everything
 * pending completes; handles close; uv_run then returns. */
static void shut_down(knhk_reactor_t *r) {
  r->shutting_down = 1;
  while (ld_sc(&r->entering) != 0) knhk__cpu_relax();
  process_all(r);
  while (r->nheap) {
    knhk_timer_t *t = r->heap[0];
    heap_remove(r, t);
    complete_timer(t, KNHK_ECANCELED);
  }
  while (r->nwatches) watch_end(r, r->watches[0]);
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
  process_all(r);
  fire_due_timers(r);
  arm(r);
}

static void *reactor_main(void *arg) {
  knhk_reactor_t *r = arg;
  st_release(&r->started, 1);
  knhk__futex_wake(&r->started, INT_MAX);
  uv_run(&r->loop, UV_RUN_DEFAULT);
  /* Processes killed during shutdown may still be reaped after uv_run
   * returned once: run until every handle has closed. */
  while (uv_run(&r->loop, UV_RUN_DEFAULT) != 0) {
  }
  return NULL;
}

int knhk_reactor_new(knhk_reactor_t **out) {
  if (!out) return KNHK_EINVAL;
  knhk_reactor_t *r = aligned_alloc(KNHK__CACHELINE, (sizeof *r + 63) & ~(size_t)63);
  if (!r) return KNHK_ENOMEM;
  memset(r, 0, sizeof *r);
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
  if (pthread_create(&r->thread, NULL, reactor_main, r) != 0) {
    uv_close((uv_handle_t *)&r->async, NULL);
    uv_close((uv_handle_t *)&r->uvtimer, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    uv_loop_close(&r->loop);
    free(r);
    return KNHK_ENOMEM;
  }
  while (!ld_acquire(&r->started)) knhk__futex_wait(&r->started, 0);
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
  uv_async_send(&r->async);
  atomic_fetch_sub_explicit(&r->entering, 1, memory_order_seq_cst);
  pthread_join(r->thread, NULL);
  uv_loop_close(&r->loop);
  free(r->heap);
  free(r->watches);
  free(r);
  return 0;
}
