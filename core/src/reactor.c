/* reactor.c: one thread, one uv_loop_t (see knhk/reactor.h).
 *
 * Requests: each kind has its own intrusive MPSC queue (the node is
 * embedded in the caller's request); producers push and uv_async_send. A
 * producer counts itself in `entering` before checking `closing`, and the
 * reactor waits for `entering` to drain before its final pass, so no
 * request slips in after shutdown began without completing.
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

#include "atomics.h"
#include "clock.h"
#include "knhk/errors.h"
#include "knhk/reactor.h"
#include "mpsc.h"

#define container_of(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

enum { TF_START = 1, TF_STOP = 2, TF_QUEUED = 4, TF_ACTIVE = 8, TF_DONE = 16 };
enum { SF_QUEUED = 1, SF_WANT = 2 };

typedef struct proc_impl proc_impl_t;

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
  proc_impl_t *live_procs;        /* for shutdown */
  knhk_signal_t **watches;
  uint32_t nwatches, capwatches;
  uint64_t file_ops;              /* in flight on the threadpool */
};

uint64_t knhk_reactor_now(const knhk_reactor_t *r) {
  (void)r;
  return knhk__mono_ns();
}

/* Any thread: queue a request node. Returns 0 or KNHK_ESHUTDOWN. */
static int submit(knhk_reactor_t *r, knhk__mpsc_t *q, knhk_link_t *node) {
  atomic_fetch_add_explicit(&r->entering, 1, memory_order_seq_cst);
  int rc = 0;
  if (ld_sc(&r->closing)) {
    rc = KNHK_ESHUTDOWN;
  } else {
    knhk__mpsc_push(q, node);
    uv_async_send(&r->async);
  }
  atomic_fetch_sub_explicit(&r->entering, 1, memory_order_seq_cst);
  return rc;
}

/* Reactor thread: the next node of a queue, or NULL (spins over a push in
 * progress: it completes within a few instructions). */
static knhk_link_t *take(knhk__mpsc_t *q) {
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
  int rc = submit(r, &r->timers, &t->knhk__link);
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
    submit(t->knhk__reactor, &t->knhk__reactor->timers, &t->knhk__link);
  }
  return 0;
}

static void complete_timer(knhk_timer_t *t, int status) {
  st_release(&t->knhk__flags, TF_DONE);
  t->on_done(t, status); /* may free t */
}

static void process_timer_requests(knhk_reactor_t *r) {
  knhk_link_t *l;
  while ((l = take(&r->timers))) {
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

static void arm(knhk_reactor_t *r) {
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
  while ((l = take(&r->signals))) {
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
  return submit(r, &r->signals, &w->knhk__link);
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
  if (!(old & SF_QUEUED)) submit(w->knhk__reactor, &w->knhk__reactor->signals, &w->knhk__link);
  return 0;
}

/* ------------------------------------------------------------- processes */

struct proc_impl {
  knhk_process_t *p;
  uv_process_t proc;
  uv_pipe_t in, out, err;
  uv_write_t write_req;
  uv_timer_t kill_timer;
  int open_handles;              /* completes when 0 and exited */
  int exited, spawned, kill_timer_on;
  knhk_link_t kill_link;
  _Atomic uint32_t kill_queued;  /* kill_link is (or is being) queued */
  int completed;                 /* on_exit ran; free once kill_link is out */
  char *buf[2];
  size_t len[2], cap[2];
  proc_impl_t *prev, *next;      /* r->live_procs */
};

static void proc_unlink(knhk_reactor_t *r, proc_impl_t *pi) {
  if (pi->prev) pi->prev->next = pi->next;
  else if (r->live_procs == pi) r->live_procs = pi->next;
  if (pi->next) pi->next->prev = pi->prev;
  pi->prev = pi->next = NULL;
}

static void proc_maybe_complete(knhk_reactor_t *r, proc_impl_t *pi) {
  if (pi->open_handles > 0 || pi->completed) return;
  knhk_process_t *p = pi->p;
  proc_unlink(r, pi);
  /* No kill request can be queued after off returns (the callback that
   * queues it has finished). */
  if (p->token) knhk_token_off(&p->knhk__cancel);
  for (int i = 0; i < 2; i++) { /* NUL-terminated, "" when there was none */
    char *b = pi->buf[i] ? pi->buf[i] : calloc(1, 1);
    size_t n = pi->buf[i] ? pi->len[i] : 0;
    if (b) b[n] = 0;
    *(i == 0 ? &p->out : &p->err) = b;
    *(i == 0 ? &p->out_len : &p->err_len) = b ? n : 0;
    pi->buf[i] = NULL;
  }
  pi->completed = 1;
  int free_now = !ld_acquire(&pi->kill_queued);
  p->knhk__impl = NULL;
  p->on_exit(p); /* may free p */
  if (free_now) free(pi);
}

static void proc_handle_closed(uv_handle_t *h) {
  proc_impl_t *pi = h->data;
  knhk_reactor_t *r = pi->p->knhk__reactor;
  pi->open_handles--;
  proc_maybe_complete(r, pi);
}

static void proc_close(uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, proc_handle_closed);
}

static void proc_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  proc_impl_t *pi = h->data;
  int i = (uv_pipe_t *)h == &pi->out ? 0 : 1;
  if (suggested < 4096) suggested = 4096;
  if (pi->cap[i] - pi->len[i] < suggested + 1) {
    size_t cap = pi->cap[i] ? pi->cap[i] : 8192;
    while (cap - pi->len[i] < suggested + 1) cap *= 2;
    char *b = realloc(pi->buf[i], cap);
    if (!b) {
      *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS to on_read */
      return;
    }
    pi->buf[i] = b;
    pi->cap[i] = cap;
  }
  *buf = uv_buf_init(pi->buf[i] + pi->len[i], (unsigned)(pi->cap[i] - pi->len[i] - 1));
}

static void proc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  proc_impl_t *pi = s->data;
  int i = (uv_pipe_t *)s == &pi->out ? 0 : 1;
  if (n > 0) pi->len[i] += (size_t)n;
  else if (n < 0) proc_close((uv_handle_t *)s); /* EOF or error */
}

static void proc_written(uv_write_t *req, int status) {
  (void)status;
  proc_impl_t *pi = req->data;
  proc_close((uv_handle_t *)&pi->in);
}

static void proc_exited(uv_process_t *h, int64_t status, int signum) {
  proc_impl_t *pi = h->data;
  pi->p->exit_status = status;
  pi->p->term_signal = signum;
  pi->exited = 1;
  if (pi->kill_timer_on) {
    uv_timer_stop(&pi->kill_timer);
  }
  proc_close((uv_handle_t *)&pi->kill_timer);
  proc_close((uv_handle_t *)h);
}

static void proc_kill_hard(uv_timer_t *t) {
  proc_impl_t *pi = t->data;
  if (!pi->exited) uv_process_kill(&pi->proc, SIGKILL);
}

/* Reactor thread: SIGTERM now, SIGKILL after the grace period. */
static void proc_kill(proc_impl_t *pi, uint64_t grace_ns) {
  if (pi->exited || !pi->spawned || pi->kill_timer_on) return;
  pi->p->cancelled = 1;
  uv_process_kill(&pi->proc, SIGTERM);
  pi->kill_timer_on = 1;
  uv_timer_start(&pi->kill_timer, proc_kill_hard, grace_ns / 1000000, 0);
}

static void proc_on_cancel(knhk_cancel_cb_t *cb, int reason) {
  (void)reason;
  knhk_process_t *p = cb->data;
  proc_impl_t *pi = p->knhk__impl;
  uint32_t zero = 0;
  if (atomic_compare_exchange_strong_explicit(&pi->kill_queued, &zero, 1, memory_order_acq_rel,
                                              memory_order_relaxed))
    if (submit(p->knhk__reactor, &p->knhk__reactor->kills, &pi->kill_link) != 0)
      st_release(&pi->kill_queued, 0); /* shutting down: everything gets killed */
}

static void process_kill_requests(knhk_reactor_t *r) {
  knhk_link_t *l;
  while ((l = take(&r->kills))) {
    proc_impl_t *pi = container_of(l, proc_impl_t, kill_link);
    if (pi->completed) {
      free(pi);
      continue;
    }
    st_release(&pi->kill_queued, 0);
    proc_kill(pi, pi->p->kill_grace_ns ? pi->p->kill_grace_ns : 1000000000u);
  }
}

static void proc_start(knhk_reactor_t *r, knhk_process_t *p) {
  proc_impl_t *pi = calloc(1, sizeof *pi);
  if (!pi) {
    p->error = KNHK_ENOMEM;
    p->on_exit(p);
    return;
  }
  pi->p = p;
  p->knhk__impl = pi;
  pi->next = r->live_procs;
  if (pi->next) pi->next->prev = pi;
  r->live_procs = pi;
  uv_pipe_t *pipes[3] = {&pi->in, &pi->out, &pi->err};
  for (int i = 0; i < 3; i++) {
    uv_pipe_init(&r->loop, pipes[i], 0);
    pipes[i]->data = pi;
  }
  uv_timer_init(&r->loop, &pi->kill_timer);
  pi->kill_timer.data = pi;
  pi->open_handles = 5; /* 3 pipes, the kill timer, the process */
  uv_stdio_container_t stdio[3];
  stdio[0].flags = p->stdin_data ? (uv_stdio_flags)(UV_CREATE_PIPE | UV_READABLE_PIPE) : UV_IGNORE;
  stdio[0].data.stream = (uv_stream_t *)&pi->in;
  stdio[1].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[1].data.stream = (uv_stream_t *)&pi->out;
  stdio[2].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[2].data.stream = (uv_stream_t *)&pi->err;
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.exit_cb = proc_exited;
  o.file = p->file;
  o.args = p->argv;
  o.env = p->env;
  o.cwd = p->cwd;
  o.stdio_count = 3;
  o.stdio = stdio;
  pi->proc.data = pi;
  int rc = uv_spawn(&r->loop, &pi->proc, &o);
  if (rc != 0) {
    p->error = rc == UV_ENOENT ? KNHK_ENOENT : rc == UV_EACCES ? -EACCES : rc;
    pi->exited = 1;
    for (int i = 0; i < 3; i++) proc_close((uv_handle_t *)pipes[i]);
    proc_close((uv_handle_t *)&pi->kill_timer);
    proc_close((uv_handle_t *)&pi->proc); /* initialised even on failure */
    return;
  }
  pi->spawned = 1;
  uv_read_start((uv_stream_t *)&pi->out, proc_alloc, proc_read);
  uv_read_start((uv_stream_t *)&pi->err, proc_alloc, proc_read);
  if (p->stdin_data) {
    uv_buf_t b = uv_buf_init((char *)p->stdin_data, (unsigned)p->stdin_len);
    pi->write_req.data = pi;
    if (uv_write(&pi->write_req, (uv_stream_t *)&pi->in, &b, 1, proc_written) != 0)
      proc_close((uv_handle_t *)&pi->in);
  } else {
    proc_close((uv_handle_t *)&pi->in);
  }
  if (p->token && knhk_token_on_cancel(p->token, &p->knhk__cancel, proc_on_cancel, p) ==
                      KNHK_ECANCELED)
    proc_kill(pi, p->kill_grace_ns ? p->kill_grace_ns : 1000000000u);
  if (r->shutting_down) proc_kill(pi, 0);
}

static void process_proc_requests(knhk_reactor_t *r) {
  knhk_link_t *l;
  while ((l = take(&r->procs))) proc_start(r, container_of(l, knhk_process_t, knhk__link));
}

int knhk_process_spawn(knhk_reactor_t *r, knhk_process_t *p) {
  if (!r || !p || !p->file || !p->argv || !p->argv[0] || !p->on_exit) return KNHK_EINVAL;
  p->error = 0;
  p->exit_status = 0;
  p->term_signal = 0;
  p->cancelled = 0;
  p->out = p->err = NULL;
  p->out_len = p->err_len = 0;
  p->knhk__impl = NULL;
  p->knhk__reactor = r;
  return submit(r, &r->procs, &p->knhk__link);
}

void knhk_process_dispose(knhk_process_t *p) {
  if (!p) return;
  free(p->out);
  free(p->err);
  p->out = p->err = NULL;
  p->out_len = p->err_len = 0;
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
  while ((l = take(&r->files))) {
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
  return submit(r, &r->files, &op->knhk__link);
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
  process_proc_requests(r);
  process_kill_requests(r);
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
  for (proc_impl_t *pi = r->live_procs; pi; pi = pi->next) proc_kill(pi, 0);
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
  *out = r;
  return 0;
}

int knhk_reactor_free(knhk_reactor_t *r) {
  if (!r) return KNHK_EINVAL;
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
