/* test-nursery.c: nurseries: ownership, failure policy, wait modes. */
#include <stdatomic.h>
#include <sched.h>
#include <stdlib.h>

#include "knhk/errors.h"
#include "knhk/nursery.h"
#include "latch.h"
#include "runner.h"

static knhk_executor_t ex;

static void start(int workers) {
  knhk_executor_options_t o;
  knhk_executor_options_init(&o);
  o.workers = workers;
  ASSERT_OK(knhk_executor_init(&ex, &o));
}

static void finish(void) {
  ASSERT_OK(knhk_executor_shutdown(&ex, KNHK_SHUTDOWN_GRACEFUL));
  knhk_executor_stats_t s;
  knhk_executor_stats(&ex, &s, NULL, 0);
  ASSERT_EQ(s.total.spawned, s.total.completed + s.total.failed + s.total.cancelled);
  ASSERT_OK(knhk_executor_close(&ex));
}

static knhk_nursery_t *nursery(uint32_t flags) {
  knhk_nursery_t *n = NULL;
  ASSERT_OK(knhk_nursery_new(&n, &ex, NULL, flags));
  return n;
}

/* ---------------------------------------------------------- children */

static int return_arg(knhk_child_t *c) {
  c->result = c->arg;
  return 0;
}

static int fail_with_arg(knhk_child_t *c) { return (int)(intptr_t)c->arg; }

/* Waits, without blocking its worker, until the nursery is cancelled, then
 * records that its cleanup ran and ends as cancelled. The probe counts
 * waiters that started (a child cancelled before it starts never runs, so
 * tests about cleanup first wait for them to start) and cleanups. */
typedef struct {
  _Atomic int started, cleanups;
} probe_t;

typedef struct {
  knhk_cancel_cb_t cb;
  probe_t *probe;
} waiter_state_t;

static void await_started(probe_t *p, int k) {
  while (atomic_load(&p->started) < k) sched_yield();
}

static void wake_me(knhk_cancel_cb_t *cb, int reason) {
  (void)reason;
  knhk_executor_wake(&ex, cb->data);
}

static int wait_for_cancel(knhk_child_t *c) {
  waiter_state_t *st = c->result;
  if (!st) { /* first run */
    st = calloc(1, sizeof *st);
    st->probe = c->arg;
    c->result = st;
    atomic_fetch_add(&st->probe->started, 1);
    /* c is the task's data: find the task from the child */
    if (knhk_token_on_cancel(c->token, &st->cb, wake_me, &c->knhk__task) == 0)
      return KNHK_TASK_PENDING;
  }
  knhk_token_off(&st->cb);
  atomic_fetch_add(&st->probe->cleanups, 1); /* cleanup before the nursery reports */
  free(st);
  c->result = NULL;
  return KNHK_ECANCELED;
}

/* --------------------------------------------------------------- tests */

TEST(nursery_empty_waits_at_once) {
  start(2);
  knhk_nursery_t *n = nursery(0);
  ASSERT_EQ(0, knhk_nursery_count(n));
  ASSERT_OK(knhk_nursery_wait_all(n));
  knhk_child_t *c;
  ASSERT_EQ(KNHK_ENOENT, knhk_nursery_join_next(n, &c));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_bad_arguments) {
  start(1);
  knhk_nursery_t *n;
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_new(NULL, &ex, NULL, 0));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_new(&n, NULL, NULL, 0));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_new(&n, &ex, NULL, 0x80));
  n = nursery(0);
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_spawn(n, NULL, NULL, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_spawn(NULL, return_arg, NULL, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_fail(n, 0));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_wait_any(n, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_join_next(n, NULL));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_single_and_many_tasks_results_in_spawn_order) {
  start(2);
  knhk_nursery_t *n = nursery(0);
  for (intptr_t i = 0; i < 100; i++) ASSERT_OK(knhk_nursery_spawn(n, return_arg, (void *)i, NULL));
  ASSERT_EQ(100, knhk_nursery_count(n));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(0, knhk_nursery_live(n));
  for (uint32_t i = 0; i < 100; i++) {
    knhk_child_t *c = knhk_nursery_child(n, i);
    ASSERT_EQ(i, c->index);
    ASSERT_EQ(0, c->status);
    ASSERT_EQ(i, (intptr_t)c->result);
  }
  ASSERT(knhk_nursery_child(n, 100) == NULL);
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_spawn_after_close_is_refused) {
  start(1);
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(knhk_nursery_spawn(n, return_arg, NULL, NULL));
  ASSERT_OK(knhk_nursery_wait_all(n));
  knhk_child_t *c = (void *)1;
  ASSERT_EQ(KNHK_ECLOSED, knhk_nursery_spawn(n, return_arg, NULL, &c));
  ASSERT(c == NULL);
  ASSERT_EQ(1, knhk_nursery_count(n));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

static int spawn_more(knhk_child_t *c) {
  intptr_t depth = (intptr_t)c->arg;
  if (depth > 0) {
    /* children may spawn siblings into the open nursery */
    if (knhk_nursery_spawn(c->nursery, spawn_more, (void *)(depth - 1), NULL) != 0) return -1;
    if (knhk_nursery_spawn(c->nursery, spawn_more, (void *)(depth - 1), NULL) != 0) return -1;
  }
  return 0;
}

TEST(nursery_children_spawn_into_the_open_nursery) {
  start(2);
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(knhk_nursery_spawn(n, spawn_more, (void *)8, NULL));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(511, knhk_nursery_count(n)); /* 2^9 - 1 */
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_error_cancels_siblings_and_their_cleanup_runs_first) {
  start(1);
  probe_t p = {0, 0};
  knhk_nursery_t *n = nursery(0);
  for (int i = 0; i < 5; i++) ASSERT_OK(knhk_nursery_spawn(n, wait_for_cancel, &p, NULL));
  await_started(&p, 5);
  ASSERT_OK(knhk_nursery_spawn(n, fail_with_arg, (void *)(intptr_t)KNHK_EIO, NULL));
  ASSERT_EQ(KNHK_EIO, knhk_nursery_wait_all(n));
  ASSERT_EQ(5, atomic_load(&p.cleanups)); /* all ran before wait_all returned */
  ASSERT_EQ(KNHK_CANCEL_SIBLING, knhk_token_reason(knhk_nursery_token(n)));
  for (int i = 0; i < 5; i++) ASSERT_EQ(KNHK_ECANCELED, knhk_nursery_child(n, (uint32_t)i)->status);
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

/* Fails only once cancelled, with its own code: a later failure. */
typedef struct {
  int code;
  probe_t *probe;
} late_fail_t;

static int fail_after_cancel(knhk_child_t *c) {
  late_fail_t *lf = c->arg;
  atomic_fetch_add(&lf->probe->started, 1);
  while (!knhk_token_is_cancelled(c->token)) {
  }
  return lf->code;
}

TEST(nursery_first_error_kept_others_collected) {
  start(4);
  probe_t p = {0, 0};
  late_fail_t a = {-501, &p}, b = {-502, &p};
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(knhk_nursery_spawn(n, fail_after_cancel, &a, NULL));
  ASSERT_OK(knhk_nursery_spawn(n, fail_after_cancel, &b, NULL));
  await_started(&p, 2);
  ASSERT_OK(knhk_nursery_spawn(n, fail_with_arg, (void *)(intptr_t)-500, NULL));
  ASSERT_EQ(-500, knhk_nursery_wait_all(n));
  int f[8];
  ASSERT_EQ(3, knhk_nursery_failures(n, f, 8));
  ASSERT_EQ(-500, f[0]);
  ASSERT((f[1] == -501 && f[2] == -502) || (f[1] == -502 && f[2] == -501));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_body_failure_cancels_children) {
  start(1);
  probe_t p = {0, 0};
  knhk_nursery_t *n = nursery(0);
  for (int i = 0; i < 3; i++) ASSERT_OK(knhk_nursery_spawn(n, wait_for_cancel, &p, NULL));
  await_started(&p, 3);
  ASSERT_OK(knhk_nursery_fail(n, KNHK_ETIMEDOUT));
  ASSERT_EQ(KNHK_ETIMEDOUT, knhk_nursery_wait_all(n));
  ASSERT_EQ(3, atomic_load(&p.cleanups));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_explicit_cancel_is_not_an_error) {
  start(2);
  probe_t p = {0, 0};
  knhk_nursery_t *n = nursery(0);
  for (int i = 0; i < 4; i++) ASSERT_OK(knhk_nursery_spawn(n, wait_for_cancel, &p, NULL));
  await_started(&p, 4);
  ASSERT_OK(knhk_nursery_cancel(n));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(4, atomic_load(&p.cleanups));
  ASSERT_EQ(KNHK_CANCEL_EXPLICIT, knhk_token_reason(knhk_nursery_token(n)));
  ASSERT_EQ(0, knhk_nursery_failures(n, NULL, 0));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_children_not_started_when_cancelled_do_not_run) {
  start(1);
  knhk_nursery_t *n = nursery(0);
  knhk_nursery_cancel(n);
  knhk_child_t *c;
  ASSERT_OK(knhk_nursery_spawn(n, return_arg, (void *)7, &c));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(KNHK_ECANCELED, c->status);
  ASSERT(c->result == NULL);
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_supervisor_reports_per_child_and_siblings_go_on) {
  start(2);
  knhk_nursery_t *n = nursery(KNHK_NURSERY_SUPERVISE);
  ASSERT_OK(knhk_nursery_spawn(n, fail_with_arg, (void *)(intptr_t)KNHK_EIO, NULL));
  for (intptr_t i = 1; i <= 10; i++) ASSERT_OK(knhk_nursery_spawn(n, return_arg, (void *)i, NULL));
  ASSERT_EQ(KNHK_EIO, knhk_nursery_wait_all(n)); /* partial success, failure reported */
  ASSERT_EQ(0, knhk_token_is_cancelled(knhk_nursery_token(n)));
  ASSERT_EQ(KNHK_EIO, knhk_nursery_child(n, 0)->status);
  for (uint32_t i = 1; i <= 10; i++) {
    ASSERT_EQ(0, knhk_nursery_child(n, i)->status);
    ASSERT_EQ(i, (intptr_t)knhk_nursery_child(n, i)->result);
  }
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_wait_any_first_wins_and_losers_are_cancelled_and_waited) {
  start(1);
  probe_t p = {0, 0};
  knhk_nursery_t *n = nursery(0);
  for (int i = 0; i < 5; i++) ASSERT_OK(knhk_nursery_spawn(n, wait_for_cancel, &p, NULL));
  await_started(&p, 5);
  knhk_child_t *fast;
  ASSERT_OK(knhk_nursery_spawn(n, return_arg, (void *)42, &fast));
  knhk_child_t *winner;
  ASSERT_OK(knhk_nursery_wait_any(n, &winner));
  ASSERT(winner == fast);
  ASSERT_EQ(42, (intptr_t)winner->result);
  ASSERT_EQ(5, atomic_load(&p.cleanups)); /* losers' cleanup ran before it returned */
  ASSERT_EQ(0, knhk_nursery_live(n));
  ASSERT_EQ(KNHK_ECLOSED, knhk_nursery_spawn(n, return_arg, NULL, NULL));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_wait_any_exactly_one_winner_under_simultaneous_completion) {
  start(4);
  for (int round = 0; round < KNHK_TEST_SCALE(200); round++) {
    knhk_nursery_t *n = nursery(0);
    for (intptr_t i = 0; i < 16; i++) ASSERT_OK(knhk_nursery_spawn(n, return_arg, (void *)i, NULL));
    knhk_child_t *winner;
    ASSERT_OK(knhk_nursery_wait_any(n, &winner));
    ASSERT(winner != NULL);
    ASSERT_EQ(0, winner->status);
    /* the winner is the first to complete: it heads the completion order */
    knhk_child_t *first;
    ASSERT_OK(knhk_nursery_join_next(n, &first));
    ASSERT(first == winner);
    ASSERT_OK(knhk_nursery_free(n));
  }
  finish();
}

TEST(nursery_wait_any_with_no_success_reports_the_failure) {
  start(2);
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(knhk_nursery_spawn(n, fail_with_arg, (void *)(intptr_t)KNHK_EIO, NULL));
  knhk_child_t *winner = (void *)1;
  ASSERT_EQ(KNHK_EIO, knhk_nursery_wait_any(n, &winner));
  ASSERT(winner == NULL);
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

/* Completion order: each child waits for the previous to have ended. */
typedef struct {
  latch_t *gates;
  int i;
} ordered_t;

static int ordered(knhk_child_t *c) {
  ordered_t *o = c->arg;
  if (o->i > 0) latch_wait(&o->gates[o->i - 1]);
  c->result = (void *)(intptr_t)o->i;
  return 0;
}

TEST(nursery_join_next_gives_completion_order) {
  start(4);
  enum { N = 3 };
  latch_t gates[N];
  ordered_t args[N];
  knhk_nursery_t *n = nursery(0);
  for (int i = 0; i < N; i++) latch_init(&gates[i], 1);
  /* spawned in reverse order; each completes after the one below it */
  for (int i = N - 1; i >= 0; i--) {
    args[i] = (ordered_t){gates, i};
    ASSERT_OK(knhk_nursery_spawn(n, ordered, &args[i], NULL));
  }
  for (int i = 0; i < N; i++) {
    knhk_child_t *c;
    ASSERT_OK(knhk_nursery_join_next(n, &c));
    ASSERT_EQ(i, (intptr_t)c->result);
    latch_count_down(&gates[i]); /* lets the next one finish */
  }
  knhk_child_t *none;
  ASSERT_EQ(KNHK_ENOENT, knhk_nursery_join_next(n, &none));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_stress_2000_tasks) {
  start(4);
  knhk_nursery_t *n = nursery(0);
  for (intptr_t i = 0; i < 2000; i++) ASSERT_OK(knhk_nursery_spawn(n, return_arg, (void *)i, NULL));
  ASSERT_OK(knhk_nursery_wait_all(n));
  long sum = 0;
  for (uint32_t i = 0; i < 2000; i++) sum += (intptr_t)knhk_nursery_child(n, i)->result;
  ASSERT_EQ(1999L * 2000 / 2, sum);
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

/* A child that opens its own nursery and waits for it, on the worker. */
static int nested(knhk_child_t *c) {
  intptr_t depth = (intptr_t)c->arg;
  if (depth == 0) return 0;
  knhk_nursery_t *inner;
  if (knhk_nursery_new(&inner, &ex, c->token, 0) != 0) return -1;
  for (int i = 0; i < 3; i++) knhk_nursery_spawn(inner, nested, (void *)(depth - 1), NULL);
  int rc = knhk_nursery_wait_all(inner);
  long count = knhk_nursery_count(inner);
  knhk_nursery_free(inner);
  return rc == 0 && count == 3 ? 0 : -1;
}

TEST(nursery_nested_nurseries_work_on_one_worker) {
  start(1);
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(knhk_nursery_spawn(n, nested, (void *)5, NULL));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_cancel_reaches_nested_nurseries) {
  start(1);
  probe_t p = {0, 0};
  knhk_token_t *root;
  ASSERT_OK(knhk_token_new(&root, NULL));
  knhk_nursery_t *outer, *inner;
  ASSERT_OK(knhk_nursery_new(&outer, &ex, root, 0));
  ASSERT_OK(knhk_nursery_new(&inner, &ex, knhk_nursery_token(outer), 0));
  ASSERT_OK(knhk_nursery_spawn(inner, wait_for_cancel, &p, NULL));
  await_started(&p, 1);
  knhk_token_cancel(root, KNHK_CANCEL_SIGNAL);
  ASSERT_OK(knhk_nursery_wait_all(inner));
  ASSERT_EQ(1, atomic_load(&p.cleanups));
  ASSERT_EQ(KNHK_CANCEL_SIGNAL, knhk_token_reason(knhk_nursery_token(inner)));
  ASSERT_OK(knhk_nursery_free(inner));
  ASSERT_OK(knhk_nursery_free(outer));
  knhk_token_release(root);
  finish();
}

/* The Lua layer's way: a task parks and is woken at the next end. */
typedef struct {
  knhk_nursery_t *n;
  uint64_t seen;
  int wakeups;
} watcher_t;

static int watch_ends(knhk_task_t *t) {
  watcher_t *w = t->data;
  for (;;) {
    if (knhk_nursery_live(w->n) == 0 && knhk_nursery_count(w->n) == 3) return 0;
    w->seen = knhk_nursery_ends(w->n);
    if (knhk_nursery_live(w->n) == 0 && knhk_nursery_count(w->n) == 3) return 0;
    int rc = knhk_nursery_notify(w->n, t, w->seen);
    if (rc == 0) {
      w->wakeups++;
      return KNHK_TASK_PENDING;
    }
    if (rc != KNHK_EALREADY) return rc;
  }
}

TEST(nursery_notify_wakes_a_parked_task) {
  start(2);
  knhk_nursery_t *n = nursery(0);
  watcher_t w = {n, 0, 0};
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, watch_ends, &w);
  t.group = &g;
  ASSERT_OK(knhk_executor_spawn(&ex, &t));
  for (int i = 0; i < 3; i++) ASSERT_OK(knhk_nursery_spawn(n, return_arg, NULL, NULL));
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(KNHK_EALREADY, knhk_nursery_notify(n, &t, w.seen - 1));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}
