/* test-deque.c: the Chase-Lev deque alone, owner against thieves. */
#include <pthread.h>
#include <sched.h>

#include "deque.h"
#include "runner.h"

TEST(deque_pop_is_lifo_and_steal_is_fifo) {
  knhk__deque_t d;
  knhk_task_t items[5];
  ASSERT_OK(knhk__deque_init(&d, 2)); /* tiny: pushes grow it */
  for (int i = 0; i < 5; i++) ASSERT_OK(knhk__deque_push(&d, &items[i], 1));
  ASSERT_EQ(5, knhk__deque_size(&d));
  knhk_task_t *t = NULL;
  ASSERT_EQ(KNHK__STEAL_OK, knhk__deque_steal(&d, &t));
  ASSERT(t == &items[0]);
  ASSERT(knhk__deque_pop(&d) == &items[4]);
  ASSERT(knhk__deque_pop(&d) == &items[3]);
  ASSERT_EQ(KNHK__STEAL_OK, knhk__deque_steal(&d, &t));
  ASSERT(t == &items[1]);
  ASSERT(knhk__deque_pop(&d) == &items[2]);
  ASSERT(knhk__deque_pop(&d) == NULL);
  ASSERT_EQ(KNHK__STEAL_EMPTY, knhk__deque_steal(&d, &t));
  knhk__deque_destroy(&d);
}

TEST(deque_init_rejects_capacity_not_power_of_two) {
  knhk__deque_t d;
  ASSERT_EQ(-22, knhk__deque_init(&d, 3));
  ASSERT_EQ(-22, knhk__deque_init(&d, 0));
}

/* Owner pushes and pops, two thieves steal; every item must be taken
 * exactly once: each item is a slot of `taken` that takers increment. */
typedef struct {
  knhk__deque_t d;
  knhk_task_t *items;
  _Atomic uint8_t *taken;
  _Atomic int done;
  _Atomic long stolen;
  _Atomic int some_stolen; /* set at a thief's first steal */
} race_t;

static void take(race_t *r, knhk_task_t *t) {
  long i = t - r->items;
  uint8_t prev = atomic_fetch_add(&r->taken[i], 1);
  if (prev != 0) KNHK_FAIL("item %ld taken twice", i);
}

static void *thief(void *arg) {
  race_t *r = arg;
  long n = 0;
  while (!atomic_load(&r->done) || knhk__deque_size(&r->d) > 0) {
    knhk_task_t *t;
    if (knhk__deque_steal(&r->d, &t) == KNHK__STEAL_OK) {
      take(r, t);
      if (n++ == 0) atomic_store(&r->some_stolen, 1);
    }
  }
  atomic_fetch_add(&r->stolen, n);
  return NULL;
}

static int64_t owner_vs_thieves(long nitems, int64_t capacity) {
  race_t r;
  ASSERT_OK(knhk__deque_init(&r.d, capacity));
  r.items = calloc((size_t)nitems, sizeof *r.items);
  r.taken = calloc((size_t)nitems, 1);
  ASSERT(r.items && r.taken);
  atomic_init(&r.done, 0);
  atomic_init(&r.stolen, 0);
  atomic_init(&r.some_stolen, 0);
  pthread_t th[2];
  for (int i = 0; i < 2; i++) ASSERT_OK(pthread_create(&th[i], NULL, thief, &r));
  /* Bursts of pushes and pops so the deque both fills (grows) and drains
   * to its last element (the owner/thief race on one item). */
  long next = 0, popped = 0;
  unsigned seed = 12345;
  while (next < nitems) {
    seed = seed * 1103515245u + 12345u;
    long burst = 1 + (seed >> 16) % 64;
    for (long k = 0; k < burst && next < nitems; k++) ASSERT_OK(knhk__deque_push(&r.d, &r.items[next++], 1));
    long pops = (seed >> 8) % (burst + 1);
    for (long k = 0; k < pops; k++) {
      knhk_task_t *t = knhk__deque_pop(&r.d);
      if (!t) break;
      take(&r, t);
      popped++;
    }
  }
  /* The thieves must have taken part, however late their threads got a
   * CPU: leave them the rest until one has stolen something. (Items remain
   * unless they stole: the pops above take fewer than the pushes.) */
  while (!atomic_load(&r.some_stolen) && knhk__deque_size(&r.d) > 0) {
  }
  knhk_task_t *t;
  while ((t = knhk__deque_pop(&r.d))) take(&r, t), popped++;
  atomic_store(&r.done, 1);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  for (long i = 0; i < nitems; i++)
    if (atomic_load(&r.taken[i]) != 1) KNHK_FAIL("item %ld taken %d times", i, (int)r.taken[i]);
  ASSERT_EQ(nitems, popped + atomic_load(&r.stolen));
  ASSERT_GT(atomic_load(&r.stolen), 0);
  int64_t final_capacity = atomic_load(&r.d.ring)->mask + 1;
  knhk__deque_destroy(&r.d);
  free(r.items);
  free((void *)r.taken);
  return final_capacity;
}

TEST(deque_owner_against_two_thieves_takes_each_item_once) {
  /* 5M pushes + 5M takes = 10M operations in the plain build */
  owner_vs_thieves(KNHK_TEST_SCALE(5000000L), 1024);
}

TEST(deque_grows_under_contention) {
  ASSERT_GE(owner_vs_thieves(KNHK_TEST_SCALE(1000000L), 2), 64);
}
