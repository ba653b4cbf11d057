/* test-mpsc.c: the intrusive MPSC queue under many producers. */
#include <pthread.h>

#include "mpsc.h"
#include "runner.h"

enum { PRODUCERS = 3 };

typedef struct {
  knhk__mpsc_t q;
  knhk_link_t *items;
  long per;
  _Atomic int next_producer;
  _Atomic long pushed; /* items whose push has completed */
} mpsc_race_t;

static void *producer(void *arg) {
  mpsc_race_t *r = arg;
  int p = atomic_fetch_add(&r->next_producer, 1);
  for (long i = 0; i < r->per; i++) {
    knhk__mpsc_push(&r->q, &r->items[p * r->per + i]);
    atomic_fetch_add(&r->pushed, 1);
  }
  return NULL;
}

TEST(mpsc_fifo_per_producer_and_nothing_lost) {
  mpsc_race_t r;
  r.per = KNHK_TEST_SCALE(1000000L);
  knhk__mpsc_init(&r.q);
  r.items = calloc((size_t)(PRODUCERS * r.per), sizeof *r.items);
  atomic_init(&r.next_producer, 0);
  atomic_init(&r.pushed, 0);
  long last[PRODUCERS];
  for (int p = 0; p < PRODUCERS; p++) last[p] = -1;
  pthread_t th[PRODUCERS];
  for (int i = 0; i < PRODUCERS; i++) ASSERT_OK(pthread_create(&th[i], NULL, producer, &r));
  long got = 0, total = PRODUCERS * r.per;
  while (got < total) {
    knhk_link_t *t;
    knhk__mpsc_pop_t rc = knhk__mpsc_pop(&r.q, &t);
    if (rc != KNHK__MPSC_OK) {
      /* Whatever pop said, a queue holding completely pushed items must not
       * look empty: sleeping workers decide on this check. */
      if (got < atomic_load(&r.pushed) && !knhk__mpsc_maybe_nonempty(&r.q))
        KNHK_FAIL("queue looks empty with %ld items in it", atomic_load(&r.pushed) - got);
      continue;
    }
    long idx = t - r.items;
    int p = (int)(idx / r.per);
    if (idx <= last[p]) KNHK_FAIL("producer %d: item %ld after %ld", p, idx, last[p]);
    last[p] = idx;
    got++;
  }
  for (int i = 0; i < PRODUCERS; i++) pthread_join(th[i], NULL);
  knhk_link_t *t;
  ASSERT_EQ(KNHK__MPSC_EMPTY, knhk__mpsc_pop(&r.q, &t));
  ASSERT_EQ(0, knhk__mpsc_maybe_nonempty(&r.q));
  free(r.items);
}

/* After every pop that leaves items behind (even one reported BUSY), the
 * queue must not claim to be empty. */
TEST(mpsc_nonempty_while_items_remain) {
  knhk__mpsc_t q;
  knhk_link_t a, b, c;
  knhk__mpsc_init(&q);
  ASSERT_EQ(0, knhk__mpsc_maybe_nonempty(&q));
  knhk__mpsc_push(&q, &a);
  ASSERT_EQ(1, knhk__mpsc_maybe_nonempty(&q));
  knhk__mpsc_push(&q, &b);
  knhk_link_t *t;
  ASSERT_EQ(KNHK__MPSC_OK, knhk__mpsc_pop(&q, &t));
  ASSERT(t == &a);
  ASSERT_EQ(1, knhk__mpsc_maybe_nonempty(&q));
  /* a pop that re-links the stub behind the last item */
  ASSERT_EQ(KNHK__MPSC_OK, knhk__mpsc_pop(&q, &t));
  ASSERT(t == &b);
  ASSERT_EQ(0, knhk__mpsc_maybe_nonempty(&q));
  knhk__mpsc_push(&q, &c);
  ASSERT_EQ(1, knhk__mpsc_maybe_nonempty(&q));
  ASSERT_EQ(KNHK__MPSC_OK, knhk__mpsc_pop(&q, &t));
  ASSERT(t == &c);
  ASSERT_EQ(KNHK__MPSC_EMPTY, knhk__mpsc_pop(&q, &t));
}
