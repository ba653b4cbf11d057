/* test-schedule.c: seeded schedules (KNHK_EXECUTOR_SEEDED). One worker runs
 * its ready tasks in an order drawn from the seed: the same seed replays
 * the same interleaving, another seed gives another one, and no task is
 * lost or run twice on the way. */
#define _GNU_SOURCE
#include <string.h>

#include "knhk/errors.h"
#include "knhk/executor.h"
#include "runner.h"

enum { CHILDREN = 8, STEPS = 4, TRACE = CHILDREN * STEPS };

typedef struct trace trace_t;
typedef struct {
  knhk_task_t task;
  trace_t *trace;
  int id, step;
} child_t;

struct trace {
  knhk_executor_t *ex;
  knhk_task_t parent;
  child_t child[CHILDREN];
  int events[TRACE];
  int n;
};

/* A child records (id, step) and yields: it wakes itself and says
 * PENDING, so every step is a new choice for the scheduler. */
static int child_run(knhk_task_t *t) {
  child_t *c = t->data;
  trace_t *tr = c->trace;
  tr->events[tr->n++] = c->id * 100 + c->step;
  if (++c->step == STEPS) return 0;
  knhk_executor_wake(tr->ex, t);
  return KNHK_TASK_PENDING;
}

/* The parent spawns the children from the worker (into its deque). */
static int parent_run(knhk_task_t *t) {
  trace_t *tr = t->data;
  for (int i = 0; i < CHILDREN; i++) {
    child_t *c = &tr->child[i];
    c->trace = tr;
    c->id = i;
    c->step = 0;
    ASSERT_OK(knhk_task_init(&c->task, child_run, c));
    c->task.group = t->group;
    ASSERT_OK(knhk_executor_spawn(tr->ex, &c->task));
  }
  return 0;
}

/* Runs the parent and its children under `seed` and fills tr->events. */
static void run_seeded(uint64_t seed, trace_t *tr) {
  knhk_executor_t ex;
  knhk_executor_options_t o;
  ASSERT_OK(knhk_executor_options_init(&o));
  o.workers = 1;
  o.flags = KNHK_EXECUTOR_SEEDED;
  o.seed = seed;
  ASSERT_OK(knhk_executor_init(&ex, &o));
  memset(tr, 0, sizeof *tr);
  tr->ex = &ex;
  knhk_group_t g;
  knhk_group_init(&g);
  ASSERT_OK(knhk_task_init(&tr->parent, parent_run, tr));
  tr->parent.group = &g;
  ASSERT_OK(knhk_executor_spawn(&ex, &tr->parent));
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  ASSERT_OK(knhk_executor_shutdown(&ex, KNHK_SHUTDOWN_GRACEFUL));
  knhk_executor_stats_t s;
  ASSERT_EQ(1, knhk_executor_stats(&ex, &s, NULL, 0));
  ASSERT_EQ(1 + CHILDREN, s.total.spawned);
  ASSERT_EQ(1 + CHILDREN, s.total.completed);
  ASSERT_EQ(0, s.live);
  ASSERT_OK(knhk_executor_close(&ex));
}

TEST(seeded_schedule_needs_exactly_one_worker) {
  knhk_executor_t ex;
  knhk_executor_options_t o;
  ASSERT_OK(knhk_executor_options_init(&o));
  o.flags = KNHK_EXECUTOR_SEEDED;
  o.workers = 2;
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_init(&ex, &o));
  o.workers = 1;
  ASSERT_OK(knhk_executor_init(&ex, &o));
  ASSERT_OK(knhk_executor_close(&ex));
}

TEST(seeded_schedule_runs_every_step_of_every_task_once) {
  trace_t tr;
  run_seeded(7, &tr);
  ASSERT_EQ(TRACE, tr.n);
  /* each child's steps appear once each, in its own order */
  for (int id = 0; id < CHILDREN; id++) {
    int next = 0;
    for (int i = 0; i < TRACE; i++)
      if (tr.events[i] / 100 == id) ASSERT_EQ(next++, tr.events[i] % 100);
    ASSERT_EQ(STEPS, next);
  }
}

TEST(seeded_schedule_same_seed_same_interleaving) {
  static trace_t a, b;
  for (uint64_t seed = 0; seed < 20; seed++) {
    run_seeded(seed, &a);
    run_seeded(seed, &b);
    ASSERT_EQ(TRACE, a.n);
    ASSERT_OK(memcmp(a.events, b.events, sizeof a.events));
  }
}

TEST(seeded_schedule_other_seeds_other_interleavings) {
  /* 20 seeds, 32 steps of 8 tasks: if seeds did not matter, every trace
   * would be the same; count the distinct ones. */
  static trace_t tr[20];
  int distinct = 0;
  for (int s = 0; s < 20; s++) {
    run_seeded((uint64_t)s, &tr[s]);
    int seen = 0;
    for (int k = 0; k < s && !seen; k++)
      seen = memcmp(tr[k].events, tr[s].events, sizeof tr[s].events) == 0;
    distinct += !seen;
  }
  ASSERT_GE(distinct, 19);
  /* and the children's steps really interleave: some child runs before
   * another child has finished */
  int interleaved = 0;
  for (int i = 1; i < TRACE && !interleaved; i++)
    interleaved = tr[0].events[i] / 100 != tr[0].events[i - 1] / 100 &&
                  tr[0].events[i - 1] % 100 != STEPS - 1;
  ASSERT(interleaved);
}
