/* mpsc.h: intrusive multi-producer single-consumer FIFO of tasks
 * (D. Vyukov's non-blocking queue) of knhk_link_t nodes embedded in what is
 * queued: tasks (injector, inboxes), reactor requests.
 *
 * Producers: one atomic exchange on `head` then a release store that links
 * the previous node; wait-free. Consumer: a single thread at a time (the
 * worker that owns an inbox; whoever holds the injector's lock).
 *
 * Invariants:
 *  - `tail` is written by the consumer only: the next item it will return,
 *    or the stub. The stub is re-linked at the end when the consumer takes
 *    what looks like the last item, so it can also sit behind real items:
 *    the queue is empty only when both `tail` and `head` are the stub.
 *  - between a producer's exchange and its link store the list is broken at
 *    that point: pop then reports KNHK__MPSC_BUSY, not EMPTY, so a consumer
 *    deciding whether to sleep never mistakes an in-flight push for nothing
 *    (the producer wakes the consumer after linking anyway).
 */
#ifndef KNHK_MPSC_H
#define KNHK_MPSC_H

#include "atomics.h"
#include "knhk/task.h" /* knhk_link_t */

typedef struct {
  KNHK__ALIGNED _Atomic(knhk_link_t *) head;   /* producers */
  KNHK__ALIGNED _Atomic(knhk_link_t *) tail;   /* consumer writes, anyone reads */
  knhk_link_t stub;
} knhk__mpsc_t;

typedef enum { KNHK__MPSC_EMPTY = 0, KNHK__MPSC_BUSY = 1, KNHK__MPSC_OK = 2 } knhk__mpsc_pop_t;

static inline void knhk__mpsc_init(knhk__mpsc_t *q) {
  atomic_init(&q->stub.next, NULL);
  atomic_init(&q->head, &q->stub);
  atomic_init(&q->tail, &q->stub);
}

/* Any thread. seq_cst exchange: a following seq_cst load by the producer
 * (is the consumer asleep?) is ordered after the push. */
static inline void knhk__mpsc_push(knhk__mpsc_t *q, knhk_link_t *n) {
  st_relaxed(&n->next, NULL);
  knhk_link_t *prev = atomic_exchange_explicit(&q->head, n, memory_order_seq_cst);
  st_release(&prev->next, n);
}

/* Any thread. Pushes first..last, already linked through `next`, with
 * one exchange. */
static inline void knhk__mpsc_push_chain(knhk__mpsc_t *q, knhk_link_t *first, knhk_link_t *last) {
  st_relaxed(&last->next, NULL);
  knhk_link_t *prev = atomic_exchange_explicit(&q->head, last, memory_order_seq_cst);
  st_release(&prev->next, first);
}

/* Consumer only. */
static inline knhk__mpsc_pop_t knhk__mpsc_pop(knhk__mpsc_t *q, knhk_link_t **out) {
  knhk_link_t *tail = ld_relaxed(&q->tail);
  knhk_link_t *next = ld_acquire(&tail->next);
  if (tail == &q->stub) {
    if (!next) return ld_sc(&q->head) == tail ? KNHK__MPSC_EMPTY : KNHK__MPSC_BUSY;
    st_relaxed(&q->tail, next);
    tail = next;
    next = ld_acquire(&next->next);
  }
  if (next) {
    st_relaxed(&q->tail, next);
    *out = tail;
    return KNHK__MPSC_OK;
  }
  if (tail != ld_sc(&q->head)) return KNHK__MPSC_BUSY;
  knhk__mpsc_push(q, &q->stub);
  next = ld_acquire(&tail->next);
  if (next) {
    st_relaxed(&q->tail, next);
    *out = tail;
    return KNHK__MPSC_OK;
  }
  return KNHK__MPSC_BUSY;
}

/* Any thread; may say non-empty for a queue that is being drained, never
 * empty for a queue holding an item whose push completed. `head` first: the
 * consumer moves `tail` off the stub before it re-links the stub (a seq_cst
 * exchange on head), so whoever reads that head also sees that tail. */
static inline int knhk__mpsc_maybe_nonempty(knhk__mpsc_t *q) {
  return ld_sc(&q->head) != &q->stub || ld_relaxed(&q->tail) != &q->stub;
}

#endif
