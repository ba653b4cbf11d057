/* deque.h: Chase-Lev work-stealing deque of task pointers, growable.
 *
 * Owner: push and pop at the bottom (LIFO). Thieves: steal at the top (FIFO).
 * Orderings follow Le, Pop, Cohen, Zappa Nardelli, "Correct and Efficient
 * Work-Stealing for Weak Memory Models" (PPoPP 2013), with each seq_cst fence
 * replaced by seq_cst operations (see atomics.h).
 *
 * Invariants:
 *  - top only grows, by successful CAS (thieves, or the owner taking the
 *    last element); bottom is written only by the owner.
 *  - elements live at indices [top, bottom) of the current ring, slot
 *    i & mask. A ring is replaced only by the owner when full; retired rings
 *    stay allocated until the deque is destroyed, because a thief that read
 *    the old ring pointer may still read a slot of it (the value it reads
 *    there equals the new ring's, and its CAS on top decides validity).
 *  - a slot is rewritten only after top has passed it, so a thief that read a
 *    stale slot fails its CAS.
 */
#ifndef KNHK_DEQUE_H
#define KNHK_DEQUE_H

#include <stdint.h>
#include <stdlib.h>
#include "atomics.h"
#include "knhk/task.h"

typedef struct knhk__ring {
  int64_t mask;
  struct knhk__ring *retired;   /* older ring, freed with the deque */
  _Atomic(knhk_task_t *) slot[];
} knhk__ring_t;

typedef struct {
  KNHK__ALIGNED _Atomic int64_t top;
  KNHK__ALIGNED _Atomic int64_t bottom;
  _Atomic(knhk__ring_t *) ring;
  int64_t top_cache; /* owner only: a past value of top (top only grows) */
} knhk__deque_t;

typedef enum { KNHK__STEAL_EMPTY = 0, KNHK__STEAL_RETRY = 1, KNHK__STEAL_OK = 2 } knhk__steal_t;

int knhk__deque_init(knhk__deque_t *d, int64_t capacity_pow2);
void knhk__deque_destroy(knhk__deque_t *d);
/* Owner only. Grows the ring; returns the new one or NULL (out of memory). */
knhk__ring_t *knhk__deque_grow(knhk__deque_t *d, knhk__ring_t *r, int64_t t, int64_t b);

/* Owner only. Returns 0 or KNHK_ENOMEM. With `sc`, the bottom update is a
 * seq_cst RMW, so that a following seq_cst load (the wake-up check) is
 * ordered after it; without, a release store (see idle.c: asymmetric). */
static inline int knhk__deque_push(knhk__deque_t *d, knhk_task_t *task, int sc) {
  int64_t b = ld_relaxed(&d->bottom);
  knhk__ring_t *r = ld_relaxed(&d->ring);
  /* The cached top is never ahead of the real one, so it can only make the
   * ring look fuller than it is: read the real top (a line thieves write)
   * only then. */
  if (b - d->top_cache > r->mask) {
    int64_t t = d->top_cache = ld_acquire(&d->top);
    if (b - t > r->mask) {
      r = knhk__deque_grow(d, r, t, b);
      if (!r) return -12;
    }
  }
  st_relaxed(&r->slot[b & r->mask], task);
  if (sc)
    atomic_exchange_explicit(&d->bottom, b + 1, memory_order_seq_cst);
  else
    st_release(&d->bottom, b + 1);
  return 0;
}

/* Owner only. The most recently pushed task, or NULL. */
static inline knhk_task_t *knhk__deque_pop(knhk__deque_t *d) {
  int64_t b = ld_relaxed(&d->bottom) - 1;
  /* Fast empty check: top only grows, so a stale top can only make the
   * deque look fuller than it is, never emptier. */
  if (b < ld_relaxed(&d->top)) return NULL;
  knhk__ring_t *r = ld_relaxed(&d->ring);
  atomic_exchange_explicit(&d->bottom, b, memory_order_seq_cst);
  int64_t t = ld_sc(&d->top);
  if (t > b) { /* a thief took the last one */
    st_relaxed(&d->bottom, b + 1);
    return NULL;
  }
  knhk_task_t *x = ld_relaxed(&r->slot[b & r->mask]);
  if (t == b) { /* last element: race the thieves for it */
    if (!atomic_compare_exchange_strong_explicit(&d->top, &t, t + 1, memory_order_seq_cst,
                                                 memory_order_relaxed))
      x = NULL;
    st_relaxed(&d->bottom, b + 1);
  }
  return x;
}

/* Any thread. */
static inline knhk__steal_t knhk__deque_steal(knhk__deque_t *d, knhk_task_t **out) {
  int64_t t = ld_sc(&d->top);
  int64_t b = ld_sc(&d->bottom);
  if (t >= b) return KNHK__STEAL_EMPTY;
  knhk__ring_t *r = ld_acquire(&d->ring);
  knhk_task_t *x = ld_relaxed(&r->slot[t & r->mask]);
  if (!atomic_compare_exchange_strong_explicit(&d->top, &t, t + 1, memory_order_seq_cst,
                                               memory_order_relaxed))
    return KNHK__STEAL_RETRY;
  *out = x;
  return KNHK__STEAL_OK;
}

/* Owner only. Takes up to `max` of the oldest tasks (from the top, where
 * thieves take) into out[], leaving at least as many behind; returns how
 * many. Safe because the owner is the only one popping at the bottom: its
 * CAS on top races thieves' single-item CASes, and one of them wins. */
static inline int knhk__deque_take_oldest(knhk__deque_t *d, knhk_task_t **out, int max) {
  int64_t t = ld_sc(&d->top);
  int64_t b = ld_relaxed(&d->bottom);
  int64_t k = (b - t) / 2;
  if (k > max) k = max;
  if (k <= 0) return 0;
  knhk__ring_t *r = ld_relaxed(&d->ring);
  for (int64_t i = 0; i < k; i++) out[i] = ld_relaxed(&r->slot[(t + i) & r->mask]);
  if (!atomic_compare_exchange_strong_explicit(&d->top, &t, t + k, memory_order_seq_cst,
                                               memory_order_relaxed))
    return 0;
  d->top_cache = t + k;
  return (int)k;
}

/* Owner only: how full the deque may be, by the cached top (an upper bound). */
static inline int64_t knhk__deque_owner_size(knhk__deque_t *d) {
  return ld_relaxed(&d->bottom) - d->top_cache;
}

/* Any thread; a snapshot (exact only when the owner is not pushing). */
static inline int64_t knhk__deque_size(knhk__deque_t *d) {
  int64_t b = ld_sc(&d->bottom), t = ld_sc(&d->top);
  return b > t ? b - t : 0;
}

#endif
