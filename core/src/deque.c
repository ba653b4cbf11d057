/* deque.c: allocation and growth of the Chase-Lev deque (see deque.h). */
#include "deque.h"

static knhk__ring_t *ring_new(int64_t cap) {
  knhk__ring_t *r = malloc(sizeof *r + (size_t)cap * sizeof(r->slot[0]));
  if (!r) return NULL;
  r->mask = cap - 1;
  r->retired = NULL;
  for (int64_t i = 0; i < cap; i++) atomic_init(&r->slot[i], NULL);
  return r;
}

int knhk__deque_init(knhk__deque_t *d, int64_t capacity_pow2) {
  if (capacity_pow2 < 2 || (capacity_pow2 & (capacity_pow2 - 1))) return -22;
  knhk__ring_t *r = ring_new(capacity_pow2);
  if (!r) return -12;
  atomic_init(&d->top, 0);
  atomic_init(&d->bottom, 0);
  atomic_init(&d->ring, r);
  d->top_cache = 0;
  return 0;
}

void knhk__deque_destroy(knhk__deque_t *d) {
  knhk__ring_t *r = ld_relaxed(&d->ring);
  while (r) {
    knhk__ring_t *older = r->retired;
    free(r);
    r = older;
  }
  st_relaxed(&d->ring, NULL);
}

knhk__ring_t *knhk__deque_grow(knhk__deque_t *d, knhk__ring_t *r, int64_t t, int64_t b) {
  knhk__ring_t *n = ring_new((r->mask + 1) * 2);
  if (!n) return NULL;
  for (int64_t i = t; i < b; i++)
    st_relaxed(&n->slot[i & n->mask], ld_relaxed(&r->slot[i & r->mask]));
  n->retired = r;
  /* Release: a thief that acquires the new ring sees its filled slots. */
  st_release(&d->ring, n);
  return n;
}
