/* test-join.c: knhk_join, fork-join of two functions (knhk/join.h).
 * Steals are forced by a side that waits for the other one, never by time;
 * shutdown races are checked by invariants that hold whatever the timing. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "knhk/errors.h"
#include "knhk/executor.h"
#include "knhk/join.h"
#include "latch.h"
#include "runner.h"

static void start(knhk_executor_t *ex, int workers) {
  knhk_executor_options_t o;
  ASSERT_OK(knhk_executor_options_init(&o));
  o.workers = workers;
  ASSERT_OK(knhk_executor_init(ex, &o));
}

/* Shuts down (graceful) and checks every task ended exactly once. */
static knhk_executor_stats_t finish(knhk_executor_t *ex) {
  ASSERT_OK(knhk_executor_shutdown(ex, KNHK_SHUTDOWN_GRACEFUL));
  knhk_executor_stats_t s;
  ASSERT_GT(knhk_executor_stats(ex, &s, NULL, 0), 0);
  ASSERT_EQ(s.total.spawned, s.total.completed + s.total.failed + s.total.cancelled);
  ASSERT_EQ(0, s.live);
  ASSERT_OK(knhk_executor_close(ex));
  return s;
}

/* Shuts down promptly and checks nothing was lost: every task ended once. */
static void finish_prompt(knhk_executor_t *ex) {
  ASSERT_OK(knhk_executor_shutdown(ex, KNHK_SHUTDOWN_PROMPT));
  knhk_executor_stats_t s;
  knhk_executor_stats(ex, &s, NULL, 0);
  ASSERT_EQ(s.total.spawned, s.total.completed + s.total.failed + s.total.cancelled);
  ASSERT_EQ(0, s.live);
  ASSERT_OK(knhk_executor_close(ex));
}

/* Runs fn(arg) as one task on a worker; returns the task's status. */
typedef struct {
  knhk_join_fn fn;
  void *arg;
} root_t;

static int root_run(knhk_task_t *t) {
  root_t *r = t->data;
  return r->fn(r->arg);
}

static int on_worker(knhk_executor_t *ex, knhk_join_fn fn, void *arg) {
  root_t r = {fn, arg};
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, root_run, &r);
  t.group = &g;
  ASSERT_OK(knhk_executor_spawn(ex, &t));
  return knhk_executor_wait(ex, &g);
}

/* ------------------------------------------------------------------ fib */

typedef struct {
  knhk_executor_t *ex;
  int n;
  long r;
} fib_t;

static int fib(void *p) {
  fib_t *f = p;
  if (f->n < 2) {
    f->r = f->n;
    return 0;
  }
  fib_t a = {f->ex, f->n - 1, 0}, b = {f->ex, f->n - 2, 0};
  int rc = knhk_join(f->ex, fib, &a, fib, &b);
  f->r = a.r + b.r;
  return rc;
}

/* fib(30) makes 1,346,268 joins, nested 29 deep, whatever the workers. */
static void fib30_on(int workers) {
  knhk_executor_t ex;
  start(&ex, workers);
  fib_t f = {&ex, 30, 0};
  ASSERT_OK(on_worker(&ex, fib, &f));
  ASSERT_EQ(832040, f.r);
  knhk_executor_stats_t s = finish(&ex);
  ASSERT_EQ(1, s.total.spawned); /* the root task: the sides are not tasks */
}

TEST(join_fib30_on_one_worker_runs_every_side_inline) { fib30_on(1); }
TEST(join_fib30_on_two_workers) { fib30_on(2); }
TEST(join_fib30_on_more_workers_than_cores) { fib30_on(5); }

/* ------------------------------------------------------ forced steals */

/* fa holds its worker until fb has started: fb can only run on another
 * worker, taken from the deque. Without stealing this spins until ctest's
 * timeout. */
typedef struct {
  knhk_executor_t *ex;
  _Atomic int a_runs, b_runs;
  _Atomic int b_started;
  int a_worker, b_worker;
  int b_status;
} pair_t;

static int a_waits_for_b(void *p) {
  pair_t *x = p;
  atomic_fetch_add(&x->a_runs, 1);
  x->a_worker = knhk_executor_worker_index(x->ex);
  while (!atomic_load(&x->b_started)) sched_yield();
  return 0;
}

static int b_returns_status(void *p) {
  pair_t *x = p;
  atomic_fetch_add(&x->b_runs, 1);
  x->b_worker = knhk_executor_worker_index(x->ex);
  atomic_store(&x->b_started, 1);
  return x->b_status;
}

static int join_pair(void *p) {
  pair_t *x = p;
  return knhk_join(x->ex, a_waits_for_b, x, b_returns_status, x);
}

static void stolen_side_with_status(int status, int expected) {
  knhk_executor_t ex;
  start(&ex, 2);
  pair_t x = {.ex = &ex, .b_status = status};
  ASSERT_EQ(expected, on_worker(&ex, join_pair, &x));
  ASSERT_EQ(1, x.a_runs);
  ASSERT_EQ(1, x.b_runs);
  ASSERT_NE(x.a_worker, x.b_worker);
  knhk_worker_stats_t per[2];
  knhk_executor_stats_t s;
  ASSERT_EQ(2, knhk_executor_stats(&ex, &s, per, 2));
  ASSERT_GE(per[x.b_worker].stolen, 1);
  finish(&ex);
}

TEST(join_stolen_side_runs_on_the_other_worker) { stolen_side_with_status(0, 0); }
TEST(join_stolen_side_that_fails_is_the_joins_result) {
  stolen_side_with_status(KNHK_EIO, KNHK_EIO);
}
TEST(join_stolen_side_that_is_cancelled_is_the_joins_result) {
  stolen_side_with_status(KNHK_ECANCELED, KNHK_ECANCELED);
}
TEST(join_stolen_side_with_a_positive_status_fails_as_efailed) {
  stolen_side_with_status(7, KNHK_EFAILED);
}

/* The stolen fb keeps going until the joining worker, done with fa and
 * with nothing else to run, has gone to sleep (its park counter moved): the
 * join's end must then come from fb's taker waking it, or this never
 * returns. fa holds its worker until fb has started, so fb is stolen. */
typedef struct {
  knhk_executor_t *ex;
  _Atomic int a_runs, b_runs, b_started, a_done;
  int owner;
  uint64_t parks_before;
} sleeper_t;

static uint64_t parks_of(knhk_executor_t *ex, int worker) {
  knhk_worker_stats_t per[2];
  knhk_executor_stats_t s;
  ASSERT_EQ(2, knhk_executor_stats(ex, &s, per, 2));
  return per[worker].parks;
}

static int a_holds_then_notes(void *p) {
  sleeper_t *x = p;
  atomic_fetch_add(&x->a_runs, 1);
  while (!atomic_load(&x->b_started)) sched_yield();
  x->owner = knhk_executor_worker_index(x->ex);
  x->parks_before = parks_of(x->ex, x->owner);
  atomic_store(&x->a_done, 1);
  return 0;
}

static int b_outlasts_the_owners_sleep(void *p) {
  sleeper_t *x = p;
  atomic_fetch_add(&x->b_runs, 1);
  atomic_store(&x->b_started, 1);
  while (!atomic_load(&x->a_done)) sched_yield();
  while (parks_of(x->ex, x->owner) == x->parks_before) sched_yield();
  return KNHK_EIO;
}

static int join_sleeper(void *p) {
  sleeper_t *x = p;
  return knhk_join(x->ex, a_holds_then_notes, x, b_outlasts_the_owners_sleep, x);
}

TEST(join_waiter_sleeps_until_the_thief_finishes) {
  knhk_executor_t ex;
  start(&ex, 2);
  for (int round = 0; round < 20; round++) {
    sleeper_t x = {.ex = &ex};
    ASSERT_EQ(KNHK_EIO, on_worker(&ex, join_sleeper, &x));
    ASSERT_EQ(1, x.a_runs);
    ASSERT_EQ(1, x.b_runs);
  }
  finish(&ex);
}

/* ------------------------------------------------------ status rules */

static int ok(void *p) {
  atomic_fetch_add((_Atomic int *)p, 1);
  return 0;
}
static int eio(void *p) {
  atomic_fetch_add((_Atomic int *)p, 1);
  return KNHK_EIO;
}
static int enoent(void *p) {
  atomic_fetch_add((_Atomic int *)p, 1);
  return KNHK_ENOENT;
}
static int cancelled(void *p) {
  atomic_fetch_add((_Atomic int *)p, 1);
  return KNHK_ECANCELED;
}
static int pending(void *p) {
  atomic_fetch_add((_Atomic int *)p, 1);
  return KNHK_TASK_PENDING;
}

typedef struct {
  knhk_executor_t *ex;
  knhk_join_fn fa, fb;
  int expected;
} rule_t;

static int check_rules(void *p) {
  rule_t *rules = p;
  for (int i = 0; rules[i].fa; i++) {
    _Atomic int ran_a = 0, ran_b = 0;
    int rc = knhk_join(rules[i].ex, rules[i].fa, (void *)&ran_a, rules[i].fb, (void *)&ran_b);
    if (rc != rules[i].expected) KNHK_FAIL("rule %d: join returned %d, expected %d", i, rc,
                                           rules[i].expected);
    /* a failing side never stops the other */
    if (ran_a != 1 || ran_b != 1) KNHK_FAIL("rule %d: sides ran %d and %d times", i,
                                            (int)ran_a, (int)ran_b);
  }
  return 0;
}

static void status_rules_on(int workers, int outside) {
  knhk_executor_t ex;
  start(&ex, workers);
  rule_t rules[] = {
      {&ex, ok, ok, 0},
      {&ex, eio, ok, KNHK_EIO},
      {&ex, ok, eio, KNHK_EIO},
      {&ex, eio, enoent, KNHK_EIO},        /* both failed: fa's, fixed order */
      {&ex, enoent, eio, KNHK_ENOENT},
      {&ex, cancelled, eio, KNHK_ECANCELED},
      {&ex, ok, cancelled, KNHK_ECANCELED},
      {&ex, pending, ok, KNHK_EFAILED},     /* a side cannot park */
      {&ex, ok, pending, KNHK_EFAILED},
      {NULL, NULL, NULL, 0},
  };
  if (outside)
    check_rules(rules);
  else
    ASSERT_OK(on_worker(&ex, check_rules, rules));
  finish(&ex);
}

TEST(join_reports_fa_first_then_fb_and_runs_both) { status_rules_on(1, 0); }
TEST(join_status_rules_hold_with_two_workers) { status_rules_on(2, 0); }
TEST(join_status_rules_hold_from_outside_a_worker) { status_rules_on(2, 1); }

TEST(join_refuses_bad_arguments_without_running_a_side) {
  knhk_executor_t ex;
  start(&ex, 1);
  _Atomic int ran = 0;
  ASSERT_EQ(KNHK_EINVAL, knhk_join(NULL, ok, (void *)&ran, ok, (void *)&ran));
  ASSERT_EQ(KNHK_EINVAL, knhk_join(&ex, NULL, NULL, ok, (void *)&ran));
  ASSERT_EQ(KNHK_EINVAL, knhk_join(&ex, ok, (void *)&ran, NULL, NULL));
  knhk_executor_t garbage = {.knhk__magic = 0x1234, .knhk__impl = &garbage};
  ASSERT_EQ(KNHK_EINVAL, knhk_join(&garbage, ok, (void *)&ran, ok, (void *)&ran));
  ASSERT_EQ(0, ran);
  finish(&ex);
}

/* ---------------------------------------------- from outside a worker */

typedef struct {
  knhk_executor_t *ex;
  _Atomic int on_worker_runs, runs;
} where_t;

static int note_where(void *p) {
  where_t *x = p;
  atomic_fetch_add(&x->runs, 1);
  if (knhk_executor_worker_index(x->ex) >= 0) atomic_fetch_add(&x->on_worker_runs, 1);
  return 0;
}

TEST(join_from_outside_a_worker_runs_both_sides_on_workers_as_one_task) {
  knhk_executor_t ex;
  start(&ex, 2);
  where_t x = {.ex = &ex};
  ASSERT_OK(knhk_join(&ex, note_where, &x, note_where, &x));
  ASSERT_EQ(2, x.runs);
  ASSERT_EQ(2, x.on_worker_runs);
  fib_t f = {&ex, 20, 0};
  ASSERT_OK(knhk_join(&ex, fib, &f, note_where, &x)); /* nested joins inside */
  ASSERT_EQ(6765, f.r);
  knhk_executor_stats_t s = finish(&ex);
  ASSERT_EQ(2, s.total.spawned);
  ASSERT_EQ(2, s.external_spawned);
}

TEST(join_from_outside_after_shutdown_is_refused_and_runs_nothing) {
  knhk_executor_t ex;
  start(&ex, 2);
  ASSERT_OK(knhk_executor_shutdown(&ex, KNHK_SHUTDOWN_GRACEFUL));
  _Atomic int ran = 0;
  ASSERT_EQ(KNHK_ESHUTDOWN, knhk_join(&ex, ok, (void *)&ran, ok, (void *)&ran));
  ASSERT_EQ(0, ran);
  ASSERT_OK(knhk_executor_close(&ex));
}

/* The join's task is queued behind a task that holds the only worker when
 * a prompt shutdown begins: it ends cancelled without running, and so do
 * both sides. */
static _Atomic int gate;
static int hold_worker(knhk_task_t *t) {
  (void)t;
  while (!atomic_load(&gate)) sched_yield();
  return 0;
}

typedef struct {
  knhk_executor_t *ex;
  _Atomic int ran;
  int rc;
} queued_join_t;

static void *join_in_background(void *p) {
  queued_join_t *q = p;
  q->rc = knhk_join(q->ex, ok, (void *)&q->ran, ok, (void *)&q->ran);
  return NULL;
}

TEST(join_from_outside_cancelled_before_it_started_runs_neither_side) {
  knhk_executor_t ex;
  start(&ex, 1);
  atomic_store(&gate, 0);
  knhk_task_t holder;
  knhk_task_init(&holder, hold_worker, NULL);
  ASSERT_OK(knhk_executor_spawn(&ex, &holder));
  queued_join_t q = {.ex = &ex, .rc = 1};
  pthread_t th;
  ASSERT_OK(pthread_create(&th, NULL, join_in_background, &q));
  knhk_executor_stats_t s;
  do { /* the join's task is spawned (queued behind the holder) */
    sched_yield();
    knhk_executor_stats(&ex, &s, NULL, 0);
  } while (s.external_spawned < 2);
  ASSERT_OK(knhk_executor_stop(&ex, KNHK_SHUTDOWN_PROMPT));
  atomic_store(&gate, 1);
  pthread_join(th, NULL);
  ASSERT_EQ(KNHK_ECANCELED, q.rc);
  ASSERT_EQ(0, q.ran);
  finish_prompt(&ex);
}

/* A join from a worker of another executor blocks that worker, like an
 * outside thread, and still completes. */
typedef struct {
  knhk_executor_t *other;
  where_t *x;
} cross_t;

static int join_other(void *p) {
  cross_t *c = p;
  return knhk_join(c->other, note_where, c->x, note_where, c->x);
}

TEST(join_from_a_worker_of_another_executor) {
  knhk_executor_t ex, other;
  start(&ex, 1);
  start(&other, 1);
  where_t x = {.ex = &other};
  cross_t c = {&other, &x};
  ASSERT_OK(on_worker(&ex, join_other, &c));
  ASSERT_EQ(2, x.on_worker_runs);
  finish(&ex);
  knhk_executor_stats_t s = finish(&other);
  ASSERT_EQ(1, s.external_spawned);
}

/* -------------------------------------- tasks left queued by a side */

/* fa spawns tasks it does not wait for: they sit above fb's job in the
 * deque when fa returns, and the join must run them (or leave them to
 * others) and still find fb, exactly once. */
typedef struct {
  knhk_executor_t *ex;
  knhk_group_t *g;
  _Atomic int *slots;
  int n;
} spawner_t;

static int mark(knhk_task_t *t) {
  return atomic_fetch_add((_Atomic int *)t->data, 1) == 0 ? 0 : KNHK_EFAILED;
}

static int spawn_and_leave(void *p) {
  spawner_t *s = p;
  for (int i = 0; i < s->n; i++)
    if (knhk_executor_submit(s->ex, mark, (void *)&s->slots[i], s->g) != 0) return KNHK_EFAILED;
  return 0;
}

typedef struct {
  spawner_t sp;
  _Atomic int b_runs;
} leave_t;

static int join_leaving_tasks(void *p) {
  leave_t *l = p;
  int rc = knhk_join(l->sp.ex, spawn_and_leave, &l->sp, ok, (void *)&l->b_runs);
  int wrc = knhk_executor_wait(l->sp.ex, l->sp.g);
  return rc != 0 ? rc : wrc;
}

static void tasks_left_queued(int workers, int n) {
  knhk_executor_t ex;
  start(&ex, workers);
  knhk_group_t g;
  knhk_group_init(&g);
  _Atomic int *slots = calloc((size_t)n, sizeof *slots);
  leave_t l = {{&ex, &g, slots, n}, 0};
  ASSERT_OK(on_worker(&ex, join_leaving_tasks, &l));
  ASSERT_EQ(1, l.b_runs);
  for (int i = 0; i < n; i++)
    if (slots[i] != 1) KNHK_FAIL("task %d ran %d times", i, (int)slots[i]);
  free((void *)slots);
  knhk_executor_stats_t s = finish(&ex);
  ASSERT_EQ(1 + n, s.total.spawned);
}

TEST(join_side_that_leaves_tasks_queued_on_one_worker) { tasks_left_queued(1, 10); }
/* more than a deque holds before its owner offloads half to the injector:
 * fb's job may travel through the injector to any worker */
TEST(join_side_that_leaves_many_tasks_queued) { tasks_left_queued(2, 1000); }

/* -------------------------------------------------- prompt shutdown */

/* A complete binary tree of joins. Each node records how often its side
 * ran and what it returned; node i's children are 2i+1 and 2i+2. One leaf
 * (or an outside thread) stops the executor promptly while the tree runs.
 * When a leaf stops it, the other leaves that run wait until it has: each
 * worker is then inside at most one leaf at the stop, and every leaf that
 * starts later must see it, however the threads are scheduled. */
enum { TREE_DEPTH = 12, TREE_NODES = (1 << (TREE_DEPTH + 1)) - 1 };

typedef struct tree tree_t;
typedef struct {
  tree_t *tree;
  int i;
} node_arg_t;

struct tree {
  knhk_executor_t *ex;
  int stop_at_leaf;             /* the k-th leaf to run stops the executor; 0: never */
  _Atomic int stopped;          /* that leaf has stopped it */
  _Atomic int leaves_run;
  latch_t first_leaf;           /* counted down by the first leaf that runs */
  _Atomic int runs[TREE_NODES];
  int status[TREE_NODES];
  node_arg_t args[TREE_NODES];
};

static int tree_node(void *p) {
  node_arg_t *a = p;
  tree_t *t = a->tree;
  int i = a->i;
  atomic_fetch_add(&t->runs[i], 1);
  int rc = 0;
  if (2 * i + 1 >= TREE_NODES) {
    int k = atomic_fetch_add(&t->leaves_run, 1) + 1;
    if (k == 1) latch_count_down(&t->first_leaf);
    if (k == t->stop_at_leaf) {
      int s = knhk_executor_stop(t->ex, KNHK_SHUTDOWN_PROMPT);
      if (s != 0 && s != KNHK_EALREADY) rc = KNHK_EFAILED;
      atomic_store(&t->stopped, 1);
    } else if (t->stop_at_leaf) {
      while (!atomic_load(&t->stopped)) sched_yield();
    }
  } else {
    rc = knhk_join(t->ex, tree_node, &t->args[2 * i + 1], tree_node, &t->args[2 * i + 2]);
  }
  t->status[i] = rc;
  return rc;
}

/* What node i's side reported, as its parent's join saw it: its status if
 * it ran, KNHK_ECANCELED if it never started. */
static int seen(tree_t *t, int i) { return t->runs[i] ? t->status[i] : KNHK_ECANCELED; }

/* Every side ran at most once; every join that ran returned exactly what
 * its two sides reported, fa first; returns the leaves that ran. */
static int check_tree(tree_t *t) {
  int leaves = 0;
  for (int i = 0; i < TREE_NODES; i++) {
    if (t->runs[i] > 1) KNHK_FAIL("node %d ran %d times", i, (int)t->runs[i]);
    if (!t->runs[i]) continue;
    if (2 * i + 1 >= TREE_NODES) {
      leaves++;
      continue;
    }
    int l = seen(t, 2 * i + 1), r = seen(t, 2 * i + 2);
    int want = l != 0 ? l : r;
    if (t->status[i] != want)
      KNHK_FAIL("node %d returned %d, its sides reported %d and %d", i, t->status[i], l, r);
  }
  return leaves;
}

static tree_t *tree_new(knhk_executor_t *ex, int stop_at_leaf) {
  tree_t *t = calloc(1, sizeof *t);
  t->ex = ex;
  t->stop_at_leaf = stop_at_leaf;
  latch_init(&t->first_leaf, 1);
  for (int i = 0; i < TREE_NODES; i++) t->args[i] = (node_arg_t){t, i};
  return t;
}

TEST(join_tree_runs_every_side_once_without_shutdown) {
  knhk_executor_t ex;
  start(&ex, 2);
  tree_t *t = tree_new(&ex, 0);
  ASSERT_OK(on_worker(&ex, tree_node, &t->args[0]));
  ASSERT_EQ(1 << TREE_DEPTH, check_tree(t));
  free(t);
  finish(&ex);
}

static void prompt_from_a_leaf(int workers) {
  knhk_executor_t ex;
  start(&ex, workers);
  tree_t *t = tree_new(&ex, 1);
  /* The first leaf stops the executor: sides that start later do not run,
   * so the root's join reports a cancellation. */
  ASSERT_EQ(KNHK_ECANCELED, on_worker(&ex, tree_node, &t->args[0]));
  int leaves = check_tree(t);
  ASSERT_GE(leaves, 1);
  ASSERT_LE(leaves, workers); /* at most one per worker had started */
  free(t);
  finish_prompt(&ex);
}

TEST(join_prompt_shutdown_from_a_side_on_one_worker) { prompt_from_a_leaf(1); }
TEST(join_prompt_shutdown_from_a_side_on_many_workers) { prompt_from_a_leaf(4); }

/* The outside thread stops the executor once the tree is running and waits
 * for the shutdown: whatever point the joins had reached, it completes,
 * and no side ran twice or was lost. */
typedef struct {
  knhk_executor_t *ex;
  tree_t *tree;
  int rc;
} bg_t;

static void *join_tree_from_outside(void *p) {
  bg_t *b = p;
  b->rc = knhk_join(b->ex, tree_node, &b->tree->args[1], tree_node, &b->tree->args[2]);
  return NULL;
}

TEST(join_prompt_shutdown_from_outside_while_joins_run) {
  knhk_executor_t ex;
  start(&ex, 3);
  tree_t *t = tree_new(&ex, 0);
  bg_t b = {&ex, t, 0};
  pthread_t th;
  ASSERT_OK(pthread_create(&th, NULL, join_tree_from_outside, &b));
  latch_wait(&t->first_leaf);
  ASSERT_OK(knhk_executor_shutdown(&ex, KNHK_SHUTDOWN_PROMPT));
  pthread_join(th, NULL);
  /* the root's join ran from outside: its sides are nodes 1 and 2 */
  int l = seen(t, 1), r = seen(t, 2);
  ASSERT_EQ(l != 0 ? l : r, b.rc);
  int leaves = check_tree(t);
  ASSERT_GE(leaves, 1);
  if (leaves < 1 << TREE_DEPTH) ASSERT_EQ(KNHK_ECANCELED, b.rc);
  free(t);
  knhk_executor_stats_t s;
  knhk_executor_stats(&ex, &s, NULL, 0);
  ASSERT_EQ(1, s.total.spawned);
  ASSERT_EQ(s.total.spawned, s.total.completed + s.total.failed + s.total.cancelled);
  ASSERT_OK(knhk_executor_close(&ex));
}
