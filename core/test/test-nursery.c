/* test-nursery.c: nurseries: ownership, failure policy, wait modes, records
 * and tokens made only when needed. */
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

/* Runs fn(arg) as a task on a worker and waits for it. */
static void on_worker(knhk_task_fn fn, void *arg) {
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, fn, arg);
  t.group = &g;
  ASSERT_OK(knhk_executor_spawn(&ex, &t));
  ASSERT_OK(knhk_executor_wait(&ex, &g));
}

/* ---------------------------------------------------------- children */

static int return_arg(knhk_child_t *c) {
  c->result = c->arg;
  return 0;
}

static int fail_with_arg(knhk_child_t *c) { return (int)(intptr_t)c->arg; }

/* Writes its index into the slot its argument points to. */
typedef struct {
  intptr_t *slot;
  intptr_t value;
} put_t;

static int put_value(knhk_child_t *c) {
  put_t *p = c->arg;
  *p->slot = p->value;
  return 0;
}

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
  waiter_state_t *st = c->result; /* the record lives across the child's runs */
  if (!st) {                      /* first run */
    st = calloc(1, sizeof *st);
    st->probe = c->arg;
    c->result = st;
    atomic_fetch_add(&st->probe->started, 1);
    knhk_token_t *t = knhk_nursery_token(c->nursery);
    if (t && knhk_token_on_cancel(t, &st->cb, wake_me, knhk_child_task(c)) == 0)
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
  knhk_nursery_t *n = nursery(KNHK_NURSERY_JOIN);
  ASSERT_EQ(0, knhk_nursery_live(n));
  ASSERT_EQ(0, knhk_nursery_ends(n));
  ASSERT_OK(knhk_nursery_wait_all(n));
  knhk_child_t *c;
  ASSERT_EQ(KNHK_ENOENT, knhk_nursery_join_next(n, &c));
  ASSERT_EQ(KNHK_ENOENT, knhk_nursery_try_next(n, &c));
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
  knhk_child_t rec = {0}, *c;
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_spawn(n, NULL, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_spawn(NULL, return_arg, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_spawn_ex(n, &rec, return_arg, NULL, 0, 1)); /* 1 worker */
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_spawn_ex(n, &rec, return_arg, NULL, 0, -2));
  ASSERT_EQ(0, knhk_nursery_live(n)); /* the refused spawns left nothing behind */
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_fail(n, 0));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_wait_any(n, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_join_next(n, NULL));
  /* join_next and try_next need a JOIN nursery: nothing is queued here */
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_join_next(n, &c));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_try_next(n, &c));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_notify(n, NULL, 0));
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_free(NULL));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_single_and_many_tasks_results_in_spawn_order) {
  start(2);
  knhk_nursery_t *n = nursery(0);
  knhk_child_t *kids = calloc(100, sizeof *kids);
  for (intptr_t i = 0; i < 100; i++)
    ASSERT_OK(knhk_nursery_spawn_ex(n, &kids[i], return_arg, (void *)i, 0, -1));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(0, knhk_nursery_live(n));
  ASSERT_EQ(100, knhk_nursery_ends(n));
  for (intptr_t i = 0; i < 100; i++) {
    ASSERT(kids[i].nursery == n);
    ASSERT_EQ(0, kids[i].status);
    ASSERT_EQ(i, (intptr_t)kids[i].result);
  }
  ASSERT_OK(knhk_nursery_free(n));
  /* the same with records from the pool, results through the arguments */
  n = nursery(0);
  intptr_t slots[100] = {0};
  put_t args[100];
  for (intptr_t i = 0; i < 100; i++) {
    args[i] = (put_t){&slots[i], i + 1};
    ASSERT_OK(knhk_nursery_spawn(n, put_value, &args[i]));
  }
  ASSERT_OK(knhk_nursery_wait_all(n));
  for (intptr_t i = 0; i < 100; i++) ASSERT_EQ(i + 1, slots[i]);
  ASSERT_OK(knhk_nursery_free(n));
  free(kids);
  finish();
}

TEST(nursery_spawn_after_close_is_refused) {
  start(1);
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(knhk_nursery_spawn(n, return_arg, NULL));
  ASSERT_OK(knhk_nursery_wait_all(n));
  knhk_child_t rec = {0};
  ASSERT_EQ(KNHK_ECLOSED, knhk_nursery_spawn(n, return_arg, NULL));
  ASSERT_EQ(KNHK_ECLOSED, knhk_nursery_spawn_ex(n, &rec, return_arg, (void *)1, 0, -1));
  ASSERT(rec.nursery == NULL); /* a refused record is not touched */
  ASSERT_EQ(KNHK_TASK_IDLE, knhk_task_state(knhk_child_task(&rec)));
  ASSERT_EQ(1, knhk_nursery_ends(n));
  ASSERT_EQ(0, knhk_nursery_live(n));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_close_stops_spawns_but_children_go_on) {
  start(2);
  probe_t p = {0, 0};
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(knhk_nursery_spawn(n, wait_for_cancel, &p));
  await_started(&p, 1);
  ASSERT_EQ(KNHK_EBUSY, knhk_nursery_close_if_idle(n)); /* a child is live: stays open */
  ASSERT_OK(knhk_nursery_spawn(n, return_arg, NULL));
  ASSERT_OK(knhk_nursery_close(n));
  ASSERT_EQ(KNHK_ECLOSED, knhk_nursery_spawn(n, return_arg, NULL));
  ASSERT_OK(knhk_nursery_cancel(n));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(1, atomic_load(&p.cleanups));
  ASSERT_EQ(2, knhk_nursery_ends(n));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

/* Each link spawns the next before it ends, so the nursery always has a
 * live child until the chain is done: close_if_idle, tried all along from
 * another thread, can succeed only after the last link, never between a
 * link's end and its successor's spawn. */
typedef struct {
  _Atomic int ran;
  int length;
} chain_t;

static int chain_link(knhk_child_t *c) {
  chain_t *ch = c->arg;
  if (atomic_fetch_add(&ch->ran, 1) + 1 < ch->length)
    return knhk_nursery_spawn(c->nursery, chain_link, ch); /* ECLOSED would fail it */
  return 0;
}

TEST(nursery_close_if_idle_lets_no_spawn_slip_in) {
  start(2);
  for (int round = 0; round < KNHK_TEST_SCALE(50); round++) {
    chain_t ch = {0, 200};
    knhk_nursery_t *n = nursery(0);
    ASSERT_OK(knhk_nursery_spawn(n, chain_link, &ch));
    while (knhk_nursery_close_if_idle(n) == KNHK_EBUSY) sched_yield();
    ASSERT_EQ(200, atomic_load(&ch.ran));
    ASSERT_EQ(0, knhk_nursery_live(n));
    ASSERT_EQ(KNHK_ECLOSED, knhk_nursery_spawn(n, chain_link, &ch));
    ASSERT_OK(knhk_nursery_wait_all(n)); /* no failure: no link was refused */
    ASSERT_OK(knhk_nursery_free(n));
  }
  finish();
}

static int spawn_more(knhk_child_t *c) {
  intptr_t depth = (intptr_t)c->arg;
  if (depth > 0) {
    /* children may spawn siblings into the open nursery */
    if (knhk_nursery_spawn(c->nursery, spawn_more, (void *)(depth - 1)) != 0) return -1;
    if (knhk_nursery_spawn(c->nursery, spawn_more, (void *)(depth - 1)) != 0) return -1;
  }
  return 0;
}

TEST(nursery_children_spawn_into_the_open_nursery) {
  start(2);
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(knhk_nursery_spawn(n, spawn_more, (void *)8));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(511, knhk_nursery_ends(n)); /* 2^9 - 1 */
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_error_cancels_siblings_and_their_cleanup_runs_first) {
  start(1);
  probe_t p = {0, 0};
  knhk_child_t kids[5] = {0};
  knhk_nursery_t *n = nursery(0);
  for (int i = 0; i < 5; i++)
    ASSERT_OK(knhk_nursery_spawn_ex(n, &kids[i], wait_for_cancel, &p, 0, -1));
  await_started(&p, 5);
  ASSERT_OK(knhk_nursery_spawn(n, fail_with_arg, (void *)(intptr_t)KNHK_EIO));
  ASSERT_EQ(KNHK_EIO, knhk_nursery_wait_all(n));
  ASSERT_EQ(5, atomic_load(&p.cleanups)); /* all ran before wait_all returned */
  ASSERT_EQ(KNHK_CANCEL_SIBLING, knhk_token_reason(knhk_nursery_token(n)));
  for (int i = 0; i < 5; i++) ASSERT_EQ(KNHK_ECANCELED, kids[i].status);
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
  while (!knhk_nursery_cancelled(c->nursery)) {
  }
  return lf->code;
}

TEST(nursery_first_error_kept_others_collected) {
  start(4);
  probe_t p = {0, 0};
  late_fail_t a = {-501, &p}, b = {-502, &p};
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(knhk_nursery_spawn(n, fail_after_cancel, &a));
  ASSERT_OK(knhk_nursery_spawn(n, fail_after_cancel, &b));
  await_started(&p, 2);
  ASSERT_OK(knhk_nursery_spawn(n, fail_with_arg, (void *)(intptr_t)-500));
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
  for (int i = 0; i < 3; i++) ASSERT_OK(knhk_nursery_spawn(n, wait_for_cancel, &p));
  await_started(&p, 3);
  ASSERT_OK(knhk_nursery_fail(n, KNHK_ETIMEDOUT));
  ASSERT_EQ(KNHK_ETIMEDOUT, knhk_nursery_wait_all(n));
  ASSERT_EQ(3, atomic_load(&p.cleanups));
  ASSERT_EQ(KNHK_CANCEL_SIBLING, knhk_token_reason(knhk_nursery_token(n)));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_explicit_cancel_is_not_an_error) {
  start(2);
  probe_t p = {0, 0};
  knhk_nursery_t *n = nursery(0);
  for (int i = 0; i < 4; i++) ASSERT_OK(knhk_nursery_spawn(n, wait_for_cancel, &p));
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
  knhk_child_t c = {0};
  ASSERT_OK(knhk_nursery_spawn_ex(n, &c, return_arg, (void *)7, 0, -1));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(KNHK_ECANCELED, c.status);
  ASSERT(c.result == NULL);
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

/* Before anything asks for the nursery's token there is none, and
 * cancellation comes from the parent: a child not started when the parent
 * is cancelled does not run either. */
TEST(nursery_token_is_made_on_demand_and_follows_the_parent) {
  start(1);
  knhk_token_t *root;
  ASSERT_OK(knhk_token_new(&root, NULL));
  knhk_nursery_t *n;
  ASSERT_OK(knhk_nursery_new(&n, &ex, root, 0));
  ASSERT_EQ(0, knhk_nursery_cancelled(n));
  ASSERT_OK(knhk_token_cancel(root, KNHK_CANCEL_DEADLINE));
  ASSERT_EQ(1, knhk_nursery_cancelled(n));
  knhk_child_t c = {0};
  ASSERT_OK(knhk_nursery_spawn_ex(n, &c, return_arg, (void *)7, 0, -1));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(KNHK_ECANCELED, c.status);
  ASSERT(c.result == NULL);
  /* made now: a child of the parent, born cancelled with its reason */
  knhk_token_t *t = knhk_nursery_token(n);
  ASSERT(t != NULL && t != root);
  ASSERT(knhk_token_parent(t) == root);
  ASSERT_EQ(KNHK_CANCEL_DEADLINE, knhk_token_reason(t));
  ASSERT(knhk_nursery_token(n) == t); /* made once */
  ASSERT_OK(knhk_nursery_free(n));
  knhk_token_release(root); /* the nursery dropped its references */
  finish();
}

/* Children of many workers ask for the token at once: one is made. */
static int note_token(knhk_child_t *c) {
  c->result = knhk_nursery_token(c->nursery);
  return c->result ? 0 : KNHK_ENOMEM;
}

TEST(nursery_token_made_once_under_concurrent_demand) {
  start(4);
  for (int round = 0; round < KNHK_TEST_SCALE(200); round++) {
    knhk_child_t kids[8] = {0};
    knhk_nursery_t *n = nursery(0);
    for (int i = 0; i < 8; i++) ASSERT_OK(knhk_nursery_spawn_ex(n, &kids[i], note_token, NULL, 0, -1));
    ASSERT_OK(knhk_nursery_wait_all(n));
    for (int i = 0; i < 8; i++) ASSERT(kids[i].result == knhk_nursery_token(n));
    ASSERT_OK(knhk_nursery_free(n));
  }
  finish();
}

TEST(nursery_supervisor_reports_per_child_and_siblings_go_on) {
  start(2);
  knhk_child_t kids[11] = {0};
  knhk_nursery_t *n = nursery(KNHK_NURSERY_SUPERVISE);
  ASSERT_OK(knhk_nursery_spawn_ex(n, &kids[0], fail_with_arg, (void *)(intptr_t)KNHK_EIO, 0, -1));
  for (intptr_t i = 1; i <= 10; i++)
    ASSERT_OK(knhk_nursery_spawn_ex(n, &kids[i], return_arg, (void *)i, 0, -1));
  ASSERT_EQ(KNHK_EIO, knhk_nursery_wait_all(n)); /* partial success, failure reported */
  ASSERT_EQ(0, knhk_nursery_cancelled(n));
  ASSERT_EQ(0, knhk_token_is_cancelled(knhk_nursery_token(n)));
  ASSERT_EQ(KNHK_EIO, kids[0].status);
  for (intptr_t i = 1; i <= 10; i++) {
    ASSERT_EQ(0, kids[i].status);
    ASSERT_EQ(i, (intptr_t)kids[i].result);
  }
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_wait_any_first_wins_and_losers_are_cancelled_and_waited) {
  start(1);
  probe_t p = {0, 0};
  knhk_nursery_t *n = nursery(0);
  for (int i = 0; i < 5; i++) ASSERT_OK(knhk_nursery_spawn(n, wait_for_cancel, &p));
  await_started(&p, 5);
  knhk_child_t fast = {0};
  ASSERT_OK(knhk_nursery_spawn_ex(n, &fast, return_arg, (void *)42, 0, -1));
  knhk_child_t *winner;
  ASSERT_OK(knhk_nursery_wait_any(n, &winner));
  ASSERT(winner == &fast);
  ASSERT_EQ(42, (intptr_t)winner->result);
  ASSERT_EQ(5, atomic_load(&p.cleanups)); /* losers' cleanup ran before it returned */
  ASSERT_EQ(0, knhk_nursery_live(n));
  ASSERT_EQ(KNHK_CANCEL_EXPLICIT, knhk_token_reason(knhk_nursery_token(n)));
  ASSERT_EQ(KNHK_ECLOSED, knhk_nursery_spawn(n, return_arg, NULL));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_wait_any_exactly_one_winner_under_simultaneous_completion) {
  start(4);
  for (int round = 0; round < KNHK_TEST_SCALE(200); round++) {
    knhk_nursery_t *n = nursery(KNHK_NURSERY_JOIN);
    for (intptr_t i = 0; i < 16; i++) ASSERT_OK(knhk_nursery_spawn(n, return_arg, (void *)i));
    knhk_child_t *winner;
    ASSERT_OK(knhk_nursery_wait_any(n, &winner));
    ASSERT(winner != NULL);
    ASSERT_EQ(0, winner->status);
    ASSERT(winner->result == winner->arg); /* a pool record, still valid */
    /* the winner is the first to complete: it heads the completion order */
    knhk_child_t *first;
    ASSERT_OK(knhk_nursery_join_next(n, &first));
    ASSERT(first == winner);
    ASSERT_OK(knhk_nursery_free(n));
  }
  finish();
}

/* Children that all complete at the same moment, on as many workers: each
 * waits until every one has arrived, then returns. */
typedef struct {
  _Atomic int arrived;
  int k;
} together_t;

static int complete_together(knhk_child_t *c) {
  together_t *t = c->arg;
  atomic_fetch_add(&t->arrived, 1);
  while (atomic_load(&t->arrived) < t->k) sched_yield();
  c->result = c;
  return 0;
}

static void one_winner_round(void) {
  enum { K = 4 };
  together_t t = {0, K};
  knhk_child_t kids[K] = {0};
  knhk_nursery_t *n = nursery(0);
  for (int i = 0; i < K; i++) ASSERT_OK(knhk_nursery_spawn_ex(n, &kids[i], complete_together, &t, 0, -1));
  knhk_child_t *winner = NULL;
  ASSERT_OK(knhk_nursery_wait_any(n, &winner));
  int found = 0;
  for (int i = 0; i < K; i++) {
    ASSERT_EQ(0, kids[i].status); /* all completed: the losers were past cancelling */
    found += winner == &kids[i];
  }
  ASSERT_EQ(1, found);
  ASSERT_EQ(0, knhk_nursery_live(n));
  ASSERT_EQ(K, knhk_nursery_ends(n));
  ASSERT_OK(knhk_nursery_free(n));
}

static int one_winner_rounds_on_a_worker(knhk_task_t *t) {
  (void)t;
  for (int round = 0; round < KNHK_TEST_SCALE(50); round++) one_winner_round();
  return 0;
}

TEST(nursery_wait_any_one_winner_when_all_complete_together) {
  start(5);
  for (int round = 0; round < KNHK_TEST_SCALE(100); round++) one_winner_round(); /* outside */
  on_worker(one_winner_rounds_on_a_worker, NULL); /* a helping wait; 4 workers left */
  finish();
}

TEST(nursery_wait_any_with_no_success_reports_the_failure) {
  start(2);
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(knhk_nursery_spawn(n, fail_with_arg, (void *)(intptr_t)KNHK_EIO));
  knhk_child_t *winner = (void *)1;
  ASSERT_EQ(KNHK_EIO, knhk_nursery_wait_any(n, &winner));
  ASSERT(winner == NULL);
  ASSERT_OK(knhk_nursery_free(n));
  /* nothing at all: cancelled */
  n = nursery(0);
  ASSERT_EQ(KNHK_ECANCELED, knhk_nursery_wait_any(n, &winner));
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
  knhk_nursery_t *n = nursery(KNHK_NURSERY_JOIN);
  for (int i = 0; i < N; i++) latch_init(&gates[i], 1);
  /* spawned in reverse order; each completes after the one below it */
  for (int i = N - 1; i >= 0; i--) {
    args[i] = (ordered_t){gates, i};
    ASSERT_OK(knhk_nursery_spawn(n, ordered, &args[i]));
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

/* Many children on many workers, each parked until the joiner wakes it:
 * they end in the order the joiner chooses, and join_next gives exactly
 * that order; try_next sees nothing before each end. */
typedef struct {
  _Atomic(knhk_task_t *) parked;
  int index;
} sleeper_t;

static int sleep_until_woken(knhk_child_t *c) {
  sleeper_t *s = c->arg;
  if (!c->result) {
    c->result = s;
    atomic_store(&s->parked, knhk_child_task(c));
    return KNHK_TASK_PENDING;
  }
  return 0;
}

static void join_in_chosen_order(uint32_t flags, int use_try) {
  enum { N = 64 };
  sleeper_t s[N];
  knhk_nursery_t *n = nursery(flags);
  for (int i = 0; i < N; i++) {
    s[i] = (sleeper_t){NULL, i};
    ASSERT_OK(knhk_nursery_spawn(n, sleep_until_woken, &s[i]));
  }
  for (int k = 0; k < N; k++) {
    int i = (k * 37) % N; /* a permutation of 0..N-1 */
    knhk_task_t *t;
    while (!(t = atomic_load(&s[i].parked))) sched_yield();
    knhk_child_t *c;
    ASSERT_EQ(KNHK_EAGAIN, knhk_nursery_try_next(n, &c));
    knhk_executor_wake(&ex, t);
    if (use_try) {
      int rc;
      while ((rc = knhk_nursery_try_next(n, &c)) == KNHK_EAGAIN) sched_yield();
      ASSERT_OK(rc);
    } else {
      ASSERT_OK(knhk_nursery_join_next(n, &c));
    }
    ASSERT(c->arg == &s[i]);
    ASSERT_EQ(0, c->status);
  }
  knhk_child_t *none;
  ASSERT_EQ(KNHK_ENOENT, knhk_nursery_join_next(n, &none));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_OK(knhk_nursery_free(n));
}

TEST(nursery_join_next_order_with_many_children_on_many_workers) {
  start(4);
  for (int round = 0; round < KNHK_TEST_SCALE(20); round++) {
    join_in_chosen_order(KNHK_NURSERY_JOIN, 0);
    join_in_chosen_order(KNHK_NURSERY_JOIN | KNHK_NURSERY_SUPERVISE, 1);
  }
  finish();
}

/* join_next from a task on the only worker: the wait runs the children. */
static int join_all_on_worker(knhk_task_t *t) {
  intptr_t *sum = t->data;
  knhk_nursery_t *n;
  if (knhk_nursery_new(&n, &ex, NULL, KNHK_NURSERY_JOIN) != 0) return -1;
  for (intptr_t i = 1; i <= 100; i++)
    if (knhk_nursery_spawn(n, return_arg, (void *)i) != 0) return -1;
  knhk_child_t *c;
  int rc;
  while ((rc = knhk_nursery_join_next(n, &c)) == 0) *sum += (intptr_t)c->result;
  knhk_nursery_free(n);
  return rc == KNHK_ENOENT ? 0 : rc;
}

TEST(nursery_join_next_helps_on_one_worker) {
  start(1);
  intptr_t sum = 0;
  on_worker(join_all_on_worker, &sum);
  ASSERT_EQ(5050, sum);
  finish();
}

/* Records from the pool: a child's record goes back to the pool when it
 * ends, unless the nursery hands it out (JOIN, the first success). */
static int note_self(knhk_child_t *c) {
  knhk_child_t **slot = c->arg;
  *slot = c;
  return 0;
}

static int reuse_records(knhk_task_t *t) {
  int *distinct = t->data;
  knhk_child_t *seen[4] = {NULL};
  int k = 0;
  for (int i = 0; i < 1000; i++) {
    knhk_nursery_t *n;
    knhk_child_t *self = NULL;
    if (knhk_nursery_new(&n, &ex, NULL, 0) != 0) return -1;
    /* a failing child first: its record is not kept as a winner */
    if (knhk_nursery_spawn(n, fail_with_arg, (void *)(intptr_t)KNHK_EIO) != 0) return -1;
    if (knhk_nursery_wait_all(n) != KNHK_EIO) return -1;
    knhk_nursery_free(n);
    if (knhk_nursery_new(&n, &ex, NULL, KNHK_NURSERY_SUPERVISE) != 0) return -1;
    if (knhk_nursery_spawn(n, note_self, &self) != 0) return -1;
    if (knhk_nursery_wait_all(n) != 0) return -1;
    knhk_nursery_free(n);
    int j = 0;
    while (j < k && seen[j] != self) j++;
    if (j == k) {
      if (k == 4) return -2;
      seen[k++] = self;
    }
  }
  *distinct = k;
  return 0;
}

TEST(nursery_pool_records_are_reused_after_their_child_ends) {
  start(1);
  int distinct = -1;
  on_worker(reuse_records, &distinct);
  ASSERT_EQ(1, distinct); /* one worker: the record comes back to it, LIFO */
  finish();
}

TEST(nursery_join_keeps_records_until_free) {
  start(2);
  enum { N = 200 };
  knhk_nursery_t *n = nursery(KNHK_NURSERY_JOIN);
  knhk_child_t *got[N];
  for (intptr_t i = 0; i < N; i++) ASSERT_OK(knhk_nursery_spawn(n, return_arg, (void *)i));
  for (int i = 0; i < N; i++) ASSERT_OK(knhk_nursery_join_next(n, &got[i]));
  /* joined records are not reused while the nursery lives */
  int seen[N] = {0};
  for (int i = 0; i < N; i++) {
    intptr_t v = (intptr_t)got[i]->result;
    ASSERT(v >= 0 && v < N);
    ASSERT(got[i]->arg == (void *)v);
    ASSERT_EQ(0, seen[v]++);
    for (int j = 0; j < i; j++) ASSERT(got[j] != got[i]);
  }
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_caller_records_can_be_reused_once_joined) {
  start(2);
  knhk_nursery_t *n = nursery(KNHK_NURSERY_JOIN);
  knhk_child_t rec = {0}, *c;
  for (intptr_t i = 0; i < 100; i++) {
    ASSERT_OK(knhk_nursery_spawn_ex(n, &rec, return_arg, (void *)i, 0, -1));
    ASSERT_OK(knhk_nursery_join_next(n, &c));
    ASSERT(c == &rec);
    ASSERT_EQ(i, (intptr_t)rec.result);
  }
  ASSERT_EQ(KNHK_ENOENT, knhk_nursery_try_next(n, &c));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_a_live_record_is_refused) {
  start(1);
  probe_t p = {0, 0};
  knhk_nursery_t *n = nursery(0);
  knhk_child_t rec = {0};
  ASSERT_OK(knhk_nursery_spawn_ex(n, &rec, wait_for_cancel, &p, 0, -1));
  await_started(&p, 1);
  ASSERT_EQ(KNHK_EINVAL, knhk_nursery_spawn_ex(n, &rec, return_arg, NULL, 0, -1));
  ASSERT(rec.arg == &p); /* untouched */
  ASSERT_EQ(1, knhk_nursery_live(n));
  ASSERT_OK(knhk_nursery_cancel(n));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(KNHK_ECANCELED, rec.status);
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

TEST(nursery_stress_2000_tasks) {
  start(4);
  knhk_nursery_t *n = nursery(0);
  knhk_child_t *kids = calloc(2000, sizeof *kids);
  for (intptr_t i = 0; i < 2000; i++)
    ASSERT_OK(knhk_nursery_spawn_ex(n, &kids[i], return_arg, (void *)i, 0, -1));
  ASSERT_OK(knhk_nursery_wait_all(n));
  long sum = 0;
  for (uint32_t i = 0; i < 2000; i++) sum += (intptr_t)kids[i].result;
  ASSERT_EQ(1999L * 2000 / 2, sum);
  ASSERT_OK(knhk_nursery_free(n));
  free(kids);
  finish();
}

/* A binary tree of children, every node spawning into the same nursery
 * from whichever worker runs it; the sum of the leaves' values. */
typedef struct {
  _Atomic long sum;
  _Atomic long nodes;
} tree_t;

static tree_t tree;

static int tree_node(knhk_child_t *c) {
  intptr_t depth = (intptr_t)c->arg;
  atomic_fetch_add_explicit(&tree.nodes, 1, memory_order_relaxed);
  if (depth == 0) {
    atomic_fetch_add_explicit(&tree.sum, 3, memory_order_relaxed);
    return 0;
  }
  for (int i = 0; i < 2; i++) {
    int rc = knhk_nursery_spawn(c->nursery, tree_node, (void *)(depth - 1));
    if (rc != 0) return rc;
  }
  return 0;
}

static int grow_tree(knhk_nursery_t *n, int depth, int copies) {
  atomic_store(&tree.sum, 0);
  atomic_store(&tree.nodes, 0);
  for (int i = 0; i < copies; i++) {
    int rc = knhk_nursery_spawn(n, tree_node, (void *)(intptr_t)depth);
    if (rc != 0) return rc;
  }
  return knhk_nursery_wait_all(n);
}

static void check_tree(knhk_nursery_t *n, int depth, int copies) {
  long nodes = copies * ((1L << (depth + 1)) - 1);
  ASSERT_EQ(nodes, atomic_load(&tree.nodes));
  ASSERT_EQ(copies * 3 * (1L << depth), atomic_load(&tree.sum));
  ASSERT_EQ((uint64_t)nodes & ((1u << 26) - 1), knhk_nursery_ends(n));
  ASSERT_EQ(0, knhk_nursery_live(n));
  ASSERT_EQ(0, knhk_nursery_failures(n, NULL, 0));
}

typedef struct {
  knhk_nursery_t *n;
  int depth, rc;
} tree_job_t;

static int tree_on_worker(knhk_task_t *t) {
  tree_job_t *j = t->data;
  j->rc = grow_tree(j->n, j->depth, 2);
  return 0;
}

TEST(nursery_many_children_on_many_workers) {
  start(4);
  int depth = KNHK_TEST_SCALE(10) == 10 ? 16 : 12; /* a smaller tree under sanitizers */
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(grow_tree(n, depth, 1)); /* waited for from outside */
  check_tree(n, depth, 1);
  ASSERT_OK(knhk_nursery_free(n));
  tree_job_t j = {nursery(0), depth, -1};
  on_worker(tree_on_worker, &j); /* waited for on a worker, helping */
  ASSERT_OK(j.rc);
  check_tree(j.n, depth, 2);
  ASSERT_OK(knhk_nursery_free(j.n));
  finish();
}

/* A child that opens its own nursery and waits for it, on the worker. */
typedef struct {
  intptr_t depth;
  _Atomic long *ran;
} nest_t;

static int nested(knhk_child_t *c) {
  nest_t *a = c->arg;
  atomic_fetch_add(a->ran, 1);
  if (a->depth == 0) return 0;
  knhk_nursery_t *inner;
  if (knhk_nursery_new(&inner, &ex, knhk_nursery_token(c->nursery), 0) != 0) return -1;
  nest_t sub = {a->depth - 1, a->ran};
  for (int i = 0; i < 3; i++) knhk_nursery_spawn(inner, nested, &sub);
  int rc = knhk_nursery_wait_all(inner);
  uint64_t count = knhk_nursery_ends(inner);
  knhk_nursery_free(inner);
  return rc == 0 && count == 3 ? 0 : -1;
}

TEST(nursery_nested_nurseries_work_on_one_worker) {
  start(1);
  _Atomic long ran = 0;
  nest_t top = {5, &ran};
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(knhk_nursery_spawn(n, nested, &top));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(1 + 3 + 9 + 27 + 81 + 243, atomic_load(&ran));
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
  ASSERT_OK(knhk_nursery_spawn(inner, wait_for_cancel, &p));
  await_started(&p, 1);
  knhk_token_cancel(root, KNHK_CANCEL_SIGNAL);
  ASSERT_OK(knhk_nursery_wait_all(inner));
  ASSERT_EQ(1, atomic_load(&p.cleanups));
  ASSERT_EQ(KNHK_CANCEL_SIGNAL, knhk_token_reason(knhk_nursery_token(inner)));
  ASSERT_EQ(1, knhk_nursery_cancelled(outer));
  ASSERT_OK(knhk_nursery_free(inner));
  ASSERT_OK(knhk_nursery_free(outer));
  knhk_token_release(root);
  finish();
}

/* An outside spawn once shutdown began is refused; the nursery is left as
 * if it had not been tried. */
TEST(nursery_spawn_refused_at_shutdown_leaves_no_child) {
  start(1);
  knhk_nursery_t *n = nursery(0);
  ASSERT_OK(knhk_executor_stop(&ex, KNHK_SHUTDOWN_GRACEFUL));
  knhk_child_t rec = {0};
  ASSERT_EQ(KNHK_ESHUTDOWN, knhk_nursery_spawn_ex(n, &rec, return_arg, (void *)1, 0, -1));
  ASSERT_EQ(KNHK_ESHUTDOWN, rec.status);
  ASSERT_EQ(KNHK_ESHUTDOWN, knhk_nursery_spawn(n, return_arg, NULL));
  ASSERT_EQ(0, knhk_nursery_live(n));
  ASSERT_EQ(0, knhk_nursery_ends(n));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

/* Children still queued at a prompt shutdown end as cancelled, unrun. */
typedef struct {
  latch_t go;
  _Atomic int running;
} blocker_t;

static int block_worker(knhk_task_t *t) {
  blocker_t *b = t->data;
  atomic_store(&b->running, 1);
  latch_wait(&b->go);
  return 0;
}

TEST(nursery_children_queued_at_prompt_shutdown_end_cancelled) {
  start(1);
  blocker_t b;
  latch_init(&b.go, 1);
  atomic_init(&b.running, 0);
  knhk_task_t bt;
  knhk_task_init(&bt, block_worker, &b);
  ASSERT_OK(knhk_executor_spawn(&ex, &bt));
  while (!atomic_load(&b.running)) sched_yield();
  knhk_nursery_t *n = nursery(0);
  knhk_child_t kids[10] = {0};
  for (int i = 0; i < 10; i++) ASSERT_OK(knhk_nursery_spawn_ex(n, &kids[i], return_arg, (void *)1, 0, -1));
  for (int i = 0; i < 10; i++) ASSERT_OK(knhk_nursery_spawn(n, return_arg, NULL)); /* pool records */
  ASSERT_OK(knhk_executor_stop(&ex, KNHK_SHUTDOWN_PROMPT));
  latch_count_down(&b.go);
  ASSERT_OK(knhk_nursery_wait_all(n)); /* cancelled is not a failure */
  for (int i = 0; i < 10; i++) {
    ASSERT_EQ(KNHK_ECANCELED, kids[i].status);
    ASSERT(kids[i].result == NULL); /* never ran */
  }
  ASSERT_EQ(20, knhk_nursery_ends(n));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

/* The Lua layer's way: a task parks and is woken at the next end. */
typedef struct {
  knhk_nursery_t *n;
  uint64_t seen;
  _Atomic int registrations;
} watcher_t;

static int watch_ends(knhk_task_t *t) {
  watcher_t *w = t->data;
  for (;;) {
    if (knhk_nursery_live(w->n) == 0 && knhk_nursery_ends(w->n) == 3) return 0;
    w->seen = knhk_nursery_ends(w->n);
    int rc = knhk_nursery_notify(w->n, t, w->seen);
    if (rc == 0) {
      atomic_fetch_add(&w->registrations, 1);
      return KNHK_TASK_PENDING;
    }
    if (rc != KNHK_EALREADY) return rc;
  }
}

TEST(nursery_notify_wakes_a_parked_task) {
  start(2);
  probe_t p = {0, 0};
  knhk_nursery_t *n = nursery(0);
  /* a live child first, so the watcher has something to wait for */
  ASSERT_OK(knhk_nursery_spawn(n, wait_for_cancel, &p));
  await_started(&p, 1);
  watcher_t w = {n, 0, 0};
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, watch_ends, &w);
  t.group = &g;
  ASSERT_OK(knhk_executor_spawn(&ex, &t));
  while (atomic_load(&w.registrations) == 0) sched_yield(); /* parked, registered */
  for (int i = 0; i < 2; i++) ASSERT_OK(knhk_nursery_spawn(n, return_arg, NULL));
  ASSERT_OK(knhk_nursery_cancel(n)); /* ends the first child */
  /* the watcher returns only once it saw all three ends: each end it
   * registered for woke it */
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_EQ(KNHK_EALREADY, knhk_nursery_notify(n, &t, w.seen - 1));
  ASSERT_EQ(KNHK_EALREADY, knhk_nursery_notify(n, &t, knhk_nursery_ends(n))); /* none live */
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}

/* One waiter at a time: a registered task makes another task, and a wait,
 * busy; the same task may register again. */
static int never_runs(knhk_task_t *t) {
  (void)t;
  return 0;
}

TEST(nursery_notify_one_waiter_at_a_time) {
  start(1);
  probe_t p = {0, 0};
  knhk_nursery_t *n = nursery(0);
  knhk_child_t rec = {0};
  ASSERT_OK(knhk_nursery_spawn_ex(n, &rec, wait_for_cancel, &p, 0, -1));
  await_started(&p, 1);
  /* parked tasks of our own, never spawned: waking one queues nothing */
  knhk_task_t a, b;
  knhk_task_init(&a, never_runs, NULL);
  knhk_task_init(&b, never_runs, NULL);
  uint64_t seen = knhk_nursery_ends(n);
  ASSERT_OK(knhk_nursery_notify(n, &a, seen));
  ASSERT_OK(knhk_nursery_notify(n, &a, seen)); /* again: fine */
  ASSERT_EQ(KNHK_EBUSY, knhk_nursery_notify(n, &b, seen));
  ASSERT_EQ(KNHK_EALREADY, knhk_nursery_notify(n, &b, seen + 1));
  ASSERT_EQ(KNHK_EBUSY, knhk_nursery_wait_all(n)); /* the outside wait cannot register */
  ASSERT_EQ(KNHK_EBUSY, knhk_nursery_free(n));     /* nor can free's: nothing freed */
  /* the next end takes the registration: then b may register */
  ASSERT_OK(knhk_nursery_cancel(n));
  while (knhk_nursery_live(n) != 0) sched_yield();
  ASSERT_EQ(KNHK_ECANCELED, rec.status);
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_OK(knhk_nursery_free(n));
  finish();
}
