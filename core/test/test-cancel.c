/* test-cancel.c: cancel tokens, their tree, callbacks, waiters, deadlines. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>

#include "knhk/cancel.h"
#include "knhk/errors.h"
#include "latch.h"
#include "runner.h"

static knhk_token_t *token(knhk_token_t *parent) {
  knhk_token_t *t = NULL;
  ASSERT_OK(knhk_token_new(&t, parent));
  ASSERT(t != NULL);
  return t;
}

TEST(token_basics) {
  knhk_token_t *t = token(NULL);
  ASSERT_EQ(0, knhk_token_is_cancelled(t));
  ASSERT_EQ(KNHK_CANCEL_NONE, knhk_token_reason(t));
  ASSERT(knhk_token_parent(t) == NULL);
  ASSERT_OK(knhk_token_cancel(t, KNHK_CANCEL_EXPLICIT));
  ASSERT_EQ(1, knhk_token_is_cancelled(t));
  ASSERT_EQ(KNHK_CANCEL_EXPLICIT, knhk_token_reason(t));
  /* idempotent: the first reason stays */
  ASSERT_EQ(KNHK_EALREADY, knhk_token_cancel(t, KNHK_CANCEL_SIGNAL));
  ASSERT_EQ(KNHK_CANCEL_EXPLICIT, knhk_token_reason(t));
  knhk_token_release(t);
}

TEST(token_bad_arguments) {
  knhk_token_t *t = token(NULL);
  ASSERT_EQ(KNHK_EINVAL, knhk_token_new(NULL, t));
  ASSERT_EQ(KNHK_EINVAL, knhk_token_cancel(NULL, KNHK_CANCEL_EXPLICIT));
  ASSERT_EQ(KNHK_EINVAL, knhk_token_cancel(t, 0));
  ASSERT_EQ(KNHK_EINVAL, knhk_token_cancel(t, -3));
  ASSERT_EQ(KNHK_EINVAL, knhk_token_on_cancel(t, NULL, NULL, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_token_off(NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_token_wait(NULL, 0));
  ASSERT_EQ(KNHK_EINVAL, knhk_token_set_deadline(NULL, 1));
  ASSERT_EQ(0, knhk_token_is_cancelled(NULL));
  ASSERT_EQ(0, knhk_token_is_cancelled(t));
  knhk_token_release(t);
  knhk_token_release(NULL); /* no-op */
}

TEST(token_hierarchy_parent_cancels_descendants_only) {
  knhk_token_t *root = token(NULL), *a = token(root), *b = token(root);
  knhk_token_t *a1 = token(a), *a2 = token(a), *a11 = token(a1);
  ASSERT(knhk_token_parent(a11) == a1);
  /* cancelling a child touches neither its parent nor its sibling */
  ASSERT_OK(knhk_token_cancel(a1, KNHK_CANCEL_EXPLICIT));
  ASSERT_EQ(1, knhk_token_is_cancelled(a1));
  ASSERT_EQ(1, knhk_token_is_cancelled(a11)); /* grandchild */
  ASSERT_EQ(0, knhk_token_is_cancelled(a));
  ASSERT_EQ(0, knhk_token_is_cancelled(a2));
  ASSERT_EQ(0, knhk_token_is_cancelled(root));
  /* the root reaches everything below it, with its reason */
  ASSERT_OK(knhk_token_cancel(root, KNHK_CANCEL_SIGNAL));
  ASSERT_EQ(1, knhk_token_is_cancelled(a));
  ASSERT_EQ(1, knhk_token_is_cancelled(a2));
  ASSERT_EQ(1, knhk_token_is_cancelled(b));
  ASSERT_EQ(KNHK_CANCEL_SIGNAL, knhk_token_reason(b));
  ASSERT_EQ(KNHK_CANCEL_EXPLICIT, knhk_token_reason(a1)); /* cancelled first */
  knhk_token_t *all[] = {a11, a2, a1, b, a, root};
  for (int i = 0; i < 6; i++) knhk_token_release(all[i]);
}

TEST(token_child_of_cancelled_parent_is_born_cancelled) {
  knhk_token_t *root = token(NULL);
  knhk_token_cancel(root, KNHK_CANCEL_DEADLINE);
  knhk_token_t *c = token(root), *g = token(c);
  ASSERT_EQ(1, knhk_token_is_cancelled(c));
  ASSERT_EQ(1, knhk_token_is_cancelled(g));
  ASSERT_EQ(KNHK_CANCEL_DEADLINE, knhk_token_reason(g));
  knhk_token_release(g);
  knhk_token_release(c);
  knhk_token_release(root);
}

TEST(token_parent_outlives_children_it_has_dropped) {
  /* Drop the parent's own reference first: the child keeps it alive. */
  knhk_token_t *root = token(NULL), *c = token(root);
  knhk_token_release(root);
  ASSERT_EQ(0, knhk_token_is_cancelled(knhk_token_parent(c)));
  knhk_token_release(c); /* frees both (ASan reports a leak otherwise) */
}

static _Atomic int fired;
static _Atomic int fired_reason;
static void count_fire(knhk_cancel_cb_t *cb, int reason) {
  (void)cb;
  atomic_fetch_add(&fired, 1);
  atomic_store(&fired_reason, reason);
}

TEST(token_callbacks_fire_exactly_once) {
  atomic_store(&fired, 0);
  knhk_token_t *root = token(NULL), *child = token(root);
  knhk_cancel_cb_t a, b, gone;
  ASSERT_OK(knhk_token_on_cancel(root, &a, count_fire, NULL));
  ASSERT_OK(knhk_token_on_cancel(child, &b, count_fire, NULL));
  ASSERT_OK(knhk_token_on_cancel(child, &gone, count_fire, NULL));
  ASSERT_OK(knhk_token_off(&gone)); /* removed before it fired: never runs */
  ASSERT_EQ(KNHK_EINVAL, knhk_token_off(&gone)); /* not registered any more */
  knhk_token_cancel(root, KNHK_CANCEL_SIBLING);
  knhk_token_cancel(root, KNHK_CANCEL_EXPLICIT);
  knhk_token_cancel(child, KNHK_CANCEL_EXPLICIT);
  ASSERT_EQ(2, atomic_load(&fired));
  ASSERT_EQ(KNHK_CANCEL_SIBLING, atomic_load(&fired_reason));
  ASSERT_EQ(KNHK_EALREADY, knhk_token_off(&a));
  /* registering on a cancelled token: refused, so the caller acts now */
  knhk_cancel_cb_t late;
  ASSERT_EQ(KNHK_ECANCELED, knhk_token_on_cancel(child, &late, count_fire, NULL));
  ASSERT_EQ(2, atomic_load(&fired));
  knhk_token_release(child);
  knhk_token_release(root);
}

static void off_self(knhk_cancel_cb_t *cb, int reason) {
  (void)reason;
  /* a callback may unregister itself without waiting for itself */
  *(int *)cb->data = knhk_token_off(cb);
}

TEST(token_callback_may_unregister_itself) {
  knhk_token_t *t = token(NULL);
  knhk_cancel_cb_t cb;
  int rc = 99;
  ASSERT_OK(knhk_token_on_cancel(t, &cb, off_self, &rc));
  knhk_token_cancel(t, KNHK_CANCEL_EXPLICIT);
  ASSERT_EQ(KNHK_EALREADY, rc);
  knhk_token_release(t);
}

/* ------------------------------------------------------------- waiters */

typedef struct {
  knhk_token_t *t;
  latch_t *ready;
  _Atomic int *woke;
} waiter_arg_t;

static void *waiter(void *arg) {
  waiter_arg_t *w = arg;
  latch_count_down(w->ready);
  if (knhk_token_wait(w->t, -1) == 0) atomic_fetch_add(w->woke, 1);
  return NULL;
}

TEST(token_many_waiters_all_wake) {
  enum { N = 32 };
  knhk_token_t *t = token(NULL);
  latch_t ready;
  latch_init(&ready, N);
  _Atomic int woke = 0;
  waiter_arg_t arg = {t, &ready, &woke};
  pthread_t th[N];
  for (int i = 0; i < N; i++) ASSERT_OK(pthread_create(&th[i], NULL, waiter, &arg));
  latch_wait(&ready); /* some may not be waiting yet: they must still wake */
  knhk_token_cancel(t, KNHK_CANCEL_EXPLICIT);
  for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
  ASSERT_EQ(N, woke);
  knhk_token_release(t);
}

TEST(token_wait_times_out_or_returns_at_once) {
  knhk_token_t *t = token(NULL);
  ASSERT_EQ(KNHK_ETIMEDOUT, knhk_token_wait(t, 1000000)); /* 1 ms, never cancelled */
  ASSERT_EQ(KNHK_ETIMEDOUT, knhk_token_wait(t, 0));
  knhk_token_cancel(t, KNHK_CANCEL_EXPLICIT);
  ASSERT_OK(knhk_token_wait(t, 0)); /* select: cancellation wins at once */
  ASSERT_OK(knhk_token_wait(t, -1));
  knhk_token_release(t);
}

/* ------------------------------------------------------------ at scale */

TEST(token_memory_stays_flat_with_a_million_short_lived_children) {
  knhk_token_t *root = token(NULL);
  struct mallinfo2 before = mallinfo2();
  for (int i = 0; i < KNHK_TEST_SCALE(1000000); i++) {
    knhk_token_t *c = token(root);
    if (i % 3 == 0) knhk_token_cancel(c, KNHK_CANCEL_EXPLICIT);
    knhk_token_release(c);
  }
  struct mallinfo2 after = mallinfo2();
  /* Under ASan mallinfo is not the real allocator's; the leak check at exit
   * covers that build. */
  ASSERT_LT((long)after.uordblks - (long)before.uordblks, 64 * 1024);
  knhk_token_release(root);
}

TEST(token_cancel_storm_fires_every_callback_once) {
  enum { N = 100000 };
  atomic_store(&fired, 0);
  knhk_token_t *root = token(NULL);
  knhk_token_t **kids = malloc(N * sizeof *kids);
  knhk_cancel_cb_t *cbs = malloc(N * sizeof *cbs);
  for (int i = 0; i < N; i++) {
    kids[i] = token(i % 2 == 0 ? root : kids[i - 1]); /* a mix of depth 1 and 2 */
    ASSERT_OK(knhk_token_on_cancel(kids[i], &cbs[i], count_fire, NULL));
  }
  knhk_token_cancel(root, KNHK_CANCEL_SIGNAL);
  ASSERT_EQ(N, atomic_load(&fired));
  for (int i = 0; i < N; i++) ASSERT_EQ(1, knhk_token_is_cancelled(kids[i]));
  for (int i = N - 1; i >= 0; i--) knhk_token_release(kids[i]);
  knhk_token_release(root);
  free(kids);
  free(cbs);
}

typedef struct {
  knhk_token_t *root;
  _Atomic int *stop, *returned;
  _Atomic long made, cancelled_seen;
} churn_t;

static void *churn(void *arg) {
  churn_t *c = arg;
  while (!atomic_load(c->stop)) {
    /* Once cancel has returned, every descendant made after is cancelled. */
    int after = atomic_load(c->returned);
    knhk_token_t *a, *b;
    if (knhk_token_new(&a, c->root) != 0 || knhk_token_new(&b, a) != 0) abort();
    atomic_fetch_add(&c->made, 1);
    if (after && !knhk_token_is_cancelled(b)) abort();
    atomic_fetch_add(&c->cancelled_seen, knhk_token_is_cancelled(b));
    knhk_token_release(b);
    knhk_token_release(a);
  }
  return NULL;
}

TEST(token_concurrent_cancel_and_child_creation) {
  /* Many threads make and drop children and grandchildren while the root
   * is cancelled: nothing deadlocks, and once the root is cancelled no new
   * descendant is seen live. */
  for (int round = 0; round < KNHK_TEST_SCALE(50); round++) {
    knhk_token_t *root = token(NULL);
    _Atomic int stop = 0, returned = 0;
    churn_t c[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
      c[i].root = root;
      c[i].stop = &stop;
      c[i].returned = &returned;
      atomic_init(&c[i].made, 0);
      atomic_init(&c[i].cancelled_seen, 0);
      ASSERT_OK(pthread_create(&th[i], NULL, churn, &c[i]));
    }
    while (atomic_load(&c[0].made) < 100) sched_yield();
    knhk_token_cancel(root, KNHK_CANCEL_EXPLICIT);
    atomic_store(&returned, 1);
    while (atomic_load(&c[0].cancelled_seen) < 10) sched_yield();
    atomic_store(&stop, 1);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    knhk_token_release(root);
  }
}

TEST(token_hundred_concurrent_tokens_rapid_cancel_and_check) {
  knhk_token_t *ts[128];
  for (int i = 0; i < 128; i++) ts[i] = token(NULL);
  for (int i = 0; i < 128; i++) {
    ASSERT_EQ(0, knhk_token_is_cancelled(ts[i]));
    knhk_token_cancel(ts[i], KNHK_CANCEL_EXPLICIT);
    ASSERT_EQ(1, knhk_token_is_cancelled(ts[i]));
    if (i + 1 < 128) ASSERT_EQ(0, knhk_token_is_cancelled(ts[i + 1]));
  }
  for (int i = 0; i < 128; i++) knhk_token_release(ts[i]);
}

/* ------------------------------------------------------------ deadlines */

/* The tree keeps deadlines as values only (knhk/deadline.h arms them: see
 * test-deadline.c): the earliest on the path is the token's. */
TEST(token_deadline_is_the_earliest_value_on_its_path) {
  knhk_token_t *outer = token(NULL), *inner = token(outer);
  ASSERT_EQ(0, knhk_token_deadline(inner));
  ASSERT_OK(knhk_token_set_deadline(inner, 500));
  ASSERT_EQ(500, knhk_token_deadline(inner));
  ASSERT_OK(knhk_token_set_deadline(outer, 200));
  ASSERT_EQ(200, knhk_token_deadline(inner));
  ASSERT_EQ(200, knhk_token_deadline(outer));
  ASSERT_OK(knhk_token_clear_deadline(outer));
  ASSERT_EQ(500, knhk_token_deadline(inner));
  ASSERT_OK(knhk_token_set_deadline(inner, 900)); /* replaces, even a later one */
  ASSERT_EQ(900, knhk_token_deadline(inner));
  ASSERT_EQ(0, knhk_token_is_cancelled(inner)); /* a value: nothing fires */
  knhk_token_release(inner);
  knhk_token_release(outer);
}
