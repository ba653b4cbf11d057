/* timer.c: timers on the reactor (see knhk/reactor.h).
 *
 * Our own binary heaps of knhk_timer_t (ns deadlines, ties broken by order
 * of arrival), one uv timer armed by the loop file for the earliest real
 * deadline. Under a real clock every timer is in `heap`; under a virtual
 * clock `heap` holds the timers on virtual time (fired by jumps and
 * advances, clock.c) and `real_heap` those started with
 * knhk_timer_start_real.
 *
 * A timer's flags word is the only state shared with other threads:
 *   START   asked to start     STOP    asked to stop
 *   QUEUED  its node is in the timer queue (at most once)
 *   ACTIVE  in a heap (reactor only)     DONE  completed
 * The reactor completes a timer only when QUEUED is clear, so a completed
 * timer (which its owner may free) is never still in the queue.
 */
#include <stdlib.h>

#include "clock.h"
#include "knhk/errors.h"
#include "reactor_impl.h"

enum { TF_START = 1, TF_STOP = 2, TF_QUEUED = 4, TF_ACTIVE = 8, TF_DONE = 16 };

/* ------------------------------------------------------------------ heaps */

static int heap_less(const knhk_timer_t *a, const knhk_timer_t *b) {
  return a->deadline < b->deadline || (a->deadline == b->deadline && a->knhk__seq < b->knhk__seq);
}

static void heap_set(knhk__heap_t *h, uint32_t i, knhk_timer_t *t) {
  h->a[i] = t;
  t->knhk__heap_index = i;
}

static void heap_up(knhk__heap_t *h, uint32_t i) {
  knhk_timer_t *t = h->a[i];
  while (i > 0) {
    uint32_t p = (i - 1) / 2;
    if (!heap_less(t, h->a[p])) break;
    heap_set(h, i, h->a[p]);
    i = p;
  }
  heap_set(h, i, t);
}

static void heap_down(knhk__heap_t *h, uint32_t i) {
  knhk_timer_t *t = h->a[i];
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= h->n) break;
    if (c + 1 < h->n && heap_less(h->a[c + 1], h->a[c])) c++;
    if (!heap_less(h->a[c], t)) break;
    heap_set(h, i, h->a[c]);
    i = c;
  }
  heap_set(h, i, t);
}

static int heap_push(knhk__heap_t *h, knhk_timer_t *t) {
  if (h->n == h->cap) {
    uint32_t cap = h->cap ? h->cap * 2 : 64;
    knhk_timer_t **a = realloc(h->a, cap * sizeof *a);
    if (!a) return KNHK_ENOMEM;
    h->a = a;
    h->cap = cap;
  }
  h->a[h->n] = t;
  heap_up(h, h->n++);
  return 0;
}

static void heap_remove(knhk__heap_t *h, knhk_timer_t *t) {
  uint32_t i = t->knhk__heap_index;
  knhk_timer_t *last = h->a[--h->n];
  if (i == h->n) return;
  heap_set(h, i, last);
  heap_down(h, i);
  heap_up(h, last->knhk__heap_index);
}

/* The heap a timer belongs in. */
static knhk__heap_t *heap_of(knhk_reactor_t *r, const knhk_timer_t *t) {
  return t->knhk__real && r->clock == KNHK_CLOCK_VIRTUAL ? &r->real_heap : &r->heap;
}

/* The heap that the uv timer (real time) serves. */
static knhk__heap_t *real_time_heap(knhk_reactor_t *r) {
  return r->clock == KNHK_CLOCK_VIRTUAL ? &r->real_heap : &r->heap;
}

/* ---------------------------------------------------------------- requests */

static int start(knhk_reactor_t *r, knhk_timer_t *t, uint64_t deadline_ns, knhk_timer_fn on_done,
                 void *data, int real) {
  if (!r || !t || !on_done) return KNHK_EINVAL;
  t->on_done = on_done;
  t->data = data;
  t->deadline = deadline_ns;
  t->knhk__real = (uint32_t)real;
  t->knhk__reactor = r;
  atomic_store_explicit(&t->knhk__flags, TF_START | TF_QUEUED, memory_order_relaxed);
  int on_virtual = r->clock == KNHK_CLOCK_VIRTUAL && !real;
  int rc = knhk__reactor_submit_due(r, &r->timers, &t->knhk__link, deadline_ns, on_virtual);
  if (rc != 0) st_relaxed(&t->knhk__flags, 0);
  return rc;
}

int knhk_timer_start(knhk_reactor_t *r, knhk_timer_t *t, uint64_t deadline_ns,
                     knhk_timer_fn on_done, void *data) {
  return start(r, t, deadline_ns, on_done, data, 0);
}

int knhk_timer_start_real(knhk_reactor_t *r, knhk_timer_t *t, uint64_t deadline_ns,
                          knhk_timer_fn on_done, void *data) {
  return start(r, t, deadline_ns, on_done, data, 1);
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

static void complete(knhk_timer_t *t, int status) {
  st_release(&t->knhk__flags, TF_DONE);
  t->on_done(t, status); /* may free t */
}

void knhk__timers_take(knhk_reactor_t *r) {
  knhk_link_t *l;
  while ((l = knhk__reactor_take(&r->timers))) {
    knhk_timer_t *t = container_of(l, knhk_timer_t, knhk__link);
    uint32_t old = atomic_fetch_and_explicit(&t->knhk__flags, ~(uint32_t)TF_QUEUED,
                                             memory_order_acq_rel);
    if (old & TF_STOP) {
      if (old & TF_ACTIVE) heap_remove(heap_of(r, t), t);
      complete(t, KNHK_ECANCELED);
    } else if ((old & TF_START) && !(old & TF_ACTIVE)) {
      t->knhk__seq = r->timer_seq++;
      if (heap_push(heap_of(r, t), t) != 0) {
        complete(t, KNHK_ENOMEM);
        continue;
      }
      atomic_fetch_or_explicit(&t->knhk__flags, TF_ACTIVE, memory_order_acq_rel);
    }
  }
}

/* ------------------------------------------------------------------ firing */

static void fire_heap(knhk_reactor_t *r, knhk__heap_t *h, uint64_t now) {
  for (;;) {
    /* A callback may take a while: timers asked for meanwhile join the heap
     * before the next one fires, so none fires after a later deadline. */
    if (knhk__mpsc_maybe_nonempty(&r->timers)) knhk__timers_take(r);
    if (!h->n || h->a[0]->deadline > now) break;
    knhk_timer_t *t = h->a[0];
    heap_remove(h, t);
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

void knhk__timers_fire_due(knhk_reactor_t *r) {
  fire_heap(r, &r->heap, knhk__clock_now(r));
  if (r->clock == KNHK_CLOCK_VIRTUAL) fire_heap(r, &r->real_heap, knhk__mono_ns());
}

uint64_t knhk__timers_next(knhk_reactor_t *r) {
  return r->heap.n ? r->heap.a[0]->deadline : UINT64_MAX;
}

/* Publish when the reactor wakes next (wake_at), then make sure no timer
 * start that counted on an earlier wake_at is left queued: Dekker-style
 * with knhk__reactor_submit_due, which pushes, fences, and reads wake_at. */
int64_t knhk__timers_arm(knhk_reactor_t *r) {
  knhk__heap_t *h = real_time_heap(r);
  for (;;) {
    uint64_t d = h->n ? h->a[0]->deadline : UINT64_MAX;
    atomic_store_explicit(&r->wake_at, d, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (!knhk__mpsc_maybe_nonempty(&r->timers)) break;
    knhk__timers_take(r);
    knhk__timers_fire_due(r);
  }
  if (!h->n) return -1;
  uint64_t now = knhk__mono_ns(), d = h->a[0]->deadline;
  return d > now ? (int64_t)((d - now + 999999) / 1000000) : 0;
}

void knhk__timers_shutdown(knhk_reactor_t *r) {
  knhk__heap_t *hs[2] = {&r->heap, &r->real_heap};
  for (int i = 0; i < 2; i++)
    while (hs[i]->n) {
      knhk_timer_t *t = hs[i]->a[0];
      heap_remove(hs[i], t);
      complete(t, KNHK_ECANCELED);
    }
}

void knhk__timers_free(knhk_reactor_t *r) {
  free(r->heap.a);
  free(r->real_heap.a);
}
