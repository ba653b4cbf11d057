/* test-executor.c: the work-stealing executor through its public API.
 * No sleeps are used to order events: flags, groups and counters do. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "knhk/errors.h"
#include "knhk/executor.h"
#include "runner.h"
#include "threads.h"

/* Flags start() adds: the lazy-worker cases run other cases' bodies with
 * KNHK_EXECUTOR_LAZY_WORKERS. */
static uint32_t start_flags;

static void start(knhk_executor_t *ex, int workers) {
  knhk_executor_options_t o;
  ASSERT_OK(knhk_executor_options_init(&o));
  o.workers = workers;
  o.flags |= start_flags;
  ASSERT_OK(knhk_executor_init(ex, &o));
}

/* Shuts down and checks every spawned task ended exactly once. */
static knhk_executor_stats_t finish(knhk_executor_t *ex) {
  ASSERT_OK(knhk_executor_shutdown(ex, KNHK_SHUTDOWN_GRACEFUL));
  knhk_executor_stats_t s;
  ASSERT_GT(knhk_executor_stats(ex, &s, NULL, 0), 0);
  ASSERT_EQ(s.total.spawned, s.total.completed + s.total.failed + s.total.cancelled);
  ASSERT_EQ(0, s.live);
  ASSERT_OK(knhk_executor_close(ex));
  return s;
}

static int count_run(knhk_task_t *t) {
  atomic_fetch_add((_Atomic long *)t->data, 1);
  return 0;
}

/* ------------------------------------------------------------ creation */

TEST(executor_creation_with_defaults) {
  knhk_executor_t ex;
  ASSERT_OK(knhk_executor_init(&ex, NULL));
  knhk_executor_stats_t s;
  ASSERT_EQ(sysconf(_SC_NPROCESSORS_ONLN) > KNHK_MAX_WORKERS ? KNHK_MAX_WORKERS
                                                             : sysconf(_SC_NPROCESSORS_ONLN),
            knhk_executor_stats(&ex, &s, NULL, 0));
  ASSERT_EQ(0, s.total.spawned);
  finish(&ex);
}

TEST(executor_custom_config_worker_count) {
  knhk_executor_t ex;
  start(&ex, 3);
  knhk_worker_stats_t per[8];
  knhk_executor_stats_t s;
  ASSERT_EQ(3, knhk_executor_stats(&ex, &s, per, 8));
  finish(&ex);
}

TEST(executor_options_read_knhk_workers) {
  knhk_executor_options_t o;
  setenv("KNHK_WORKERS", "5", 1);
  ASSERT_OK(knhk_executor_options_init(&o));
  ASSERT_EQ(5, o.workers);
  setenv("KNHK_WORKERS", "zero", 1);
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_options_init(&o));
  setenv("KNHK_WORKERS", "100000", 1);
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_options_init(&o));
  unsetenv("KNHK_WORKERS");
  ASSERT_OK(knhk_executor_options_init(&o));
  ASSERT_GE(o.workers, 1);
}

TEST(executor_rejects_bad_worker_counts_and_flags) {
  knhk_executor_t ex;
  knhk_executor_options_t o;
  ASSERT_OK(knhk_executor_options_init(&o));
  int bad[] = {0, -1, KNHK_MAX_WORKERS + 1, 1 << 30};
  for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    o.workers = bad[i];
    ASSERT_EQ(KNHK_EINVAL, knhk_executor_init(&ex, &o));
  }
  o.workers = 1;
  o.flags = 0x80;
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_init(&ex, &o));
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_init(NULL, &o));
}

TEST(executor_null_and_bad_arguments_are_errors_not_crashes) {
  knhk_executor_t ex;
  start(&ex, 1);
  knhk_task_t t;
  ASSERT_EQ(KNHK_EINVAL, knhk_task_init(NULL, count_run, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_task_init(&t, NULL, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_spawn(&ex, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_spawn(NULL, &t));
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_submit(&ex, NULL, NULL, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_wake(&ex, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_wait(&ex, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_stop(&ex, (enum knhk_shutdown_mode)7));
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_stats(&ex, NULL, NULL, 0));
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_enter(&ex, NULL)); /* not a caller-worker executor */
  ASSERT_EQ(KNHK_EINVAL, knhk_group_init(NULL));
  ASSERT_EQ(-1, knhk_executor_worker_index(&ex));
  finish(&ex);
}

TEST(executor_close_twice_and_uninitialised_handles) {
  knhk_executor_t ex;
  start(&ex, 2);
  ASSERT_OK(knhk_executor_close(&ex));
  ASSERT_EQ(KNHK_EALREADY, knhk_executor_close(&ex));
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_spawn(&ex, NULL));
  knhk_executor_t garbage = {.knhk__magic = 0x1234, .knhk__impl = &garbage};
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_close(&garbage));
  knhk_task_t t;
  knhk_task_init(&t, count_run, NULL);
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_spawn(&garbage, &t));
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_close(NULL));
}

TEST(strerror_names_every_code) {
  ASSERT(strcmp(knhk_strerror(KNHK_EINVAL), "invalid argument") == 0);
  ASSERT(strcmp(knhk_err_name(KNHK_ESHUTDOWN), "KNHK_ESHUTDOWN") == 0);
  /* what a command can fail to start with (knhk.exec says these) */
  ASSERT(strcmp(knhk_strerror(KNHK_EACCES), "permission denied") == 0);
  ASSERT(strcmp(knhk_strerror(KNHK_EMFILE), "too many open files") == 0);
  ASSERT(strcmp(knhk_err_name(KNHK_ENOEXEC), "KNHK_ENOEXEC") == 0);
  ASSERT(strcmp(knhk_strerror(12345), "unknown error") == 0);
  ASSERT(strcmp(knhk_err_name(12345), "KNHK_E?") == 0);
}

/* --------------------------------------------------------------- tasks */

TEST(executor_runs_a_single_task) {
  knhk_executor_t ex;
  start(&ex, 2);
  _Atomic long ran = 0;
  knhk_group_t g;
  knhk_group_init(&g);
  ASSERT_OK(knhk_executor_submit(&ex, count_run, (void *)&ran, &g));
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  ASSERT_EQ(1, ran);
  knhk_executor_stats_t s = finish(&ex);
  ASSERT_EQ(1, s.total.spawned);
  ASSERT_EQ(1, s.total.completed);
  ASSERT_EQ(1, s.external_spawned);
}

/* One root task spawns n tasks, each marking its own slot: every task must
 * run exactly once. */
typedef struct {
  knhk_executor_t *ex;
  _Atomic uint8_t *slots;
  long n;
} many_t;

static int mark_slot(knhk_task_t *t) {
  if (atomic_fetch_add((_Atomic uint8_t *)t->data, 1) != 0) return KNHK_EFAILED;
  return 0;
}

static int spawn_many(knhk_task_t *self) {
  many_t *m = self->data;
  knhk_group_t g;
  knhk_group_init(&g);
  for (long i = 0; i < m->n; i++)
    if (knhk_executor_submit(m->ex, mark_slot, (void *)&m->slots[i], &g) != 0) return KNHK_EFAILED;
  return knhk_executor_wait(m->ex, &g);
}

static void run_many(int workers, long n) {
  knhk_executor_t ex;
  start(&ex, workers);
  many_t m = {&ex, calloc((size_t)n, 1), n};
  knhk_task_t root;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&root, spawn_many, &m);
  root.group = &g;
  ASSERT_OK(knhk_executor_spawn(&ex, &root));
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  for (long i = 0; i < n; i++)
    if (m.slots[i] != 1) KNHK_FAIL("task %ld ran %d times", i, (int)m.slots[i]);
  knhk_executor_stats_t s = finish(&ex);
  ASSERT_EQ(n + 1, s.total.spawned);
  ASSERT_EQ(n + 1, s.total.completed);
  free((void *)m.slots);
}

TEST(executor_million_trivial_tasks_each_run_once) { run_many(2, KNHK_TEST_SCALE(1000000L)); }
TEST(executor_many_tasks_on_one_worker) { run_many(1, KNHK_TEST_SCALE(100000L)); }
TEST(executor_stress_1000_tasks) { run_many(4, 1000); }

/* ------------------------------------------------------------ fork-join */

typedef struct {
  knhk_executor_t *ex;
  int n;
  long result;
} fib_t;

static int fib_task(knhk_task_t *self) {
  fib_t *f = self->data;
  if (f->n < 2) {
    f->result = f->n;
    return 0;
  }
  fib_t a = {f->ex, f->n - 1, 0}, b = {f->ex, f->n - 2, 0};
  knhk_task_t ta;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&ta, fib_task, &a);
  ta.group = &g;
  if (knhk_executor_spawn(f->ex, &ta) != 0) return KNHK_EFAILED;
  knhk_task_t tb;
  knhk_task_init(&tb, fib_task, &b);
  fib_task(&tb); /* the other half inline */
  int rc = knhk_executor_wait(f->ex, &g);
  f->result = a.result + b.result;
  return rc;
}

static long fib_on(int workers, int n) {
  knhk_executor_t ex;
  start(&ex, workers);
  fib_t f = {&ex, n, 0};
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, fib_task, &f);
  t.group = &g;
  ASSERT_OK(knhk_executor_spawn(&ex, &t));
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  finish(&ex);
  return f.result;
}

TEST(executor_fork_join_fib_nested_spawn) {
  ASSERT_EQ(6765, fib_on(2, 20));
  ASSERT_EQ(6765, fib_on(4, 20));
}

TEST(executor_join_group_helps_with_one_worker) {
  /* Every wait happens on the only worker: it must run the children it
   * waits for, or this deadlocks. */
  ASSERT_EQ(6765, fib_on(1, 20));
}

/* ------------------------------------------------------- foreign threads */

typedef struct {
  knhk_executor_t *ex;
  _Atomic long *ran;
  knhk_group_t *g;
  int n;
} foreign_t;

static void *foreign_spawner(void *arg) {
  foreign_t *f = arg;
  for (int i = 0; i < f->n; i++)
    if (knhk_executor_submit(f->ex, count_run, (void *)f->ran, f->g) != 0) abort();
  return NULL;
}

TEST(executor_spawn_from_foreign_threads) {
  knhk_executor_t ex;
  start(&ex, 2);
  _Atomic long ran = 0;
  knhk_group_t g;
  knhk_group_init(&g);
  int per = KNHK_TEST_SCALE(20000);
  foreign_t f = {&ex, &ran, &g, per};
  pthread_t th[4];
  for (int i = 0; i < 4; i++) ASSERT_OK(pthread_create(&th[i], NULL, foreign_spawner, &f));
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  ASSERT_EQ(4 * per, ran);
  knhk_executor_stats_t s = finish(&ex);
  ASSERT_EQ(4 * per, s.external_spawned);
}

TEST(executor_outside_thread_waits_on_group) {
  /* The group is waited for by a thread that is not a worker, while the
   * tasks are still being run: it sleeps on the group's futex. */
  knhk_executor_t ex;
  start(&ex, 2);
  _Atomic long ran = 0;
  knhk_group_t g;
  knhk_group_init(&g);
  for (int i = 0; i < 10000; i++) ASSERT_OK(knhk_executor_submit(&ex, count_run, (void *)&ran, &g));
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  ASSERT_EQ(10000, ran);
  ASSERT_EQ(0, knhk_group_pending(&g));
  finish(&ex);
}

/* ------------------------------------------------------------- stealing */

typedef struct {
  knhk_executor_t *ex;
  int spawner;
  int children;
  _Atomic int ran_elsewhere, ran;
} imbalance_t;

static int note_worker(knhk_task_t *t) {
  imbalance_t *im = t->data;
  if (knhk_executor_worker_index(im->ex) != im->spawner) atomic_fetch_add(&im->ran_elsewhere, 1);
  atomic_fetch_add(&im->ran, 1);
  return 0;
}

static int spawn_then_spin(knhk_task_t *self) {
  imbalance_t *im = self->data;
  im->spawner = knhk_executor_worker_index(im->ex);
  knhk_group_t g;
  knhk_group_init(&g);
  for (int i = 0; i < im->children; i++) knhk_executor_submit(im->ex, note_worker, im, &g);
  /* Keep this worker busy: the only way a child runs now is on the other
   * worker. If that were broken this would spin until ctest's timeout. */
  while (!atomic_load(&im->ran_elsewhere)) {
  }
  return knhk_executor_wait(im->ex, &g);
}

static knhk_executor_stats_t run_imbalanced(imbalance_t *im) {
  knhk_executor_t *ex = im->ex;
  start(ex, 2);
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_t t;
  knhk_task_init(&t, spawn_then_spin, im);
  t.group = &g;
  ASSERT_OK(knhk_executor_spawn(ex, &t));
  ASSERT_OK(knhk_executor_wait(ex, &g));
  ASSERT_EQ(im->children, atomic_load(&im->ran));
  ASSERT_GT(atomic_load(&im->ran_elsewhere), 0);
  return finish(ex);
}

TEST(executor_imbalanced_load_gets_stolen) {
  /* Fewer children than a deque holds before its owner offloads half of
   * it to the injector (KNHK__OFFLOAD_AT, 256): they stay in the spinning
   * worker's deque, so the other worker gets them only by stealing. */
  knhk_executor_t ex;
  imbalance_t im = {.ex = &ex, .spawner = -1, .children = 100};
  knhk_executor_stats_t s = run_imbalanced(&im);
  ASSERT_GT(s.total.stolen, 0);
  ASSERT_GE(s.total.steal_attempts, s.total.stolen);
}

TEST(executor_long_deque_is_shared_with_the_idle_worker) {
  /* More children than that: the other worker takes them by stealing, or
   * from the injector once the owner has offloaded half (not a steal);
   * which one depends on timing. Either way the work moves. */
  knhk_executor_t ex;
  imbalance_t im = {.ex = &ex, .spawner = -1, .children = 1000};
  knhk_executor_stats_t s = run_imbalanced(&im);
  ASSERT_GE(s.total.steal_attempts, s.total.stolen);
}

/* ------------------------------------------------------ workload shapes */

static int cpu_bound(knhk_task_t *t) {
  volatile uint64_t x = 0;
  for (int i = 0; i < 20000; i++) x += (uint64_t)i * i;
  atomic_fetch_add((_Atomic long *)t->data, 1);
  return 0;
}

static int io_like(knhk_task_t *t) {
  /* A blocking system call inside a task: it occupies the worker, nothing
   * more; the others keep running. (Not used to order anything.) */
  struct timespec ts = {0, 100000};
  nanosleep(&ts, NULL);
  atomic_fetch_add((_Atomic long *)t->data, 1);
  return 0;
}

TEST(executor_cpu_bound_workload) {
  knhk_executor_t ex;
  start(&ex, 2);
  _Atomic long ran = 0;
  knhk_group_t g;
  knhk_group_init(&g);
  for (int i = 0; i < 200; i++) ASSERT_OK(knhk_executor_submit(&ex, cpu_bound, (void *)&ran, &g));
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  ASSERT_EQ(200, ran);
  knhk_executor_stats_t s = finish(&ex);
  ASSERT_GT(s.total.busy_ns, 0);
}

TEST(executor_blocking_io_like_workload) {
  knhk_executor_t ex;
  start(&ex, 4);
  _Atomic long ran = 0;
  knhk_group_t g;
  knhk_group_init(&g);
  for (int i = 0; i < 40; i++) ASSERT_OK(knhk_executor_submit(&ex, io_like, (void *)&ran, &g));
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  ASSERT_EQ(40, ran);
  finish(&ex);
}

TEST(executor_mixed_workload) {
  knhk_executor_t ex;
  start(&ex, 3);
  _Atomic long ran = 0;
  knhk_group_t g;
  knhk_group_init(&g);
  for (int i = 0; i < 300; i++) {
    knhk_task_fn f = i % 3 == 0 ? cpu_bound : i % 3 == 1 ? io_like : count_run;
    ASSERT_OK(knhk_executor_submit(&ex, f, (void *)&ran, &g));
  }
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  ASSERT_EQ(300, ran);
  finish(&ex);
}

TEST(executor_rapid_spawn_and_complete) {
  /* Spawn one, wait for it, many times: exercises park/unpark hand-offs. */
  knhk_executor_t ex;
  start(&ex, 2);
  _Atomic long ran = 0;
  int rounds = KNHK_TEST_SCALE(20000);
  for (int i = 0; i < rounds; i++) {
    knhk_group_t g;
    knhk_group_init(&g);
    ASSERT_OK(knhk_executor_submit(&ex, count_run, (void *)&ran, &g));
    ASSERT_OK(knhk_executor_wait(&ex, &g));
    ASSERT_EQ(i + 1, ran);
  }
  knhk_executor_stats_t s = finish(&ex);
  ASSERT_EQ(rounds, s.total.completed);
}

/* -------------------------------------------------------- task statuses */

static int fail_run(knhk_task_t *t) {
  (void)t;
  return KNHK_EIO;
}
static int odd_run(knhk_task_t *t) {
  (void)t;
  return 42; /* not a status: reported as KNHK_EFAILED */
}
static int cancel_run(knhk_task_t *t) {
  (void)t;
  return KNHK_ECANCELED;
}

TEST(executor_counts_failed_and_cancelled_tasks) {
  knhk_executor_t ex;
  start(&ex, 2);
  knhk_group_t g;
  knhk_group_init(&g);
  _Atomic long ran = 0;
  ASSERT_OK(knhk_executor_submit(&ex, count_run, (void *)&ran, &g));
  ASSERT_OK(knhk_executor_submit(&ex, fail_run, NULL, &g));
  ASSERT_OK(knhk_executor_submit(&ex, odd_run, NULL, &g));
  ASSERT_OK(knhk_executor_submit(&ex, cancel_run, NULL, &g));
  int rc = knhk_executor_wait(&ex, &g);
  ASSERT(rc == KNHK_EIO || rc == KNHK_EFAILED || rc == KNHK_ECANCELED);
  knhk_executor_stats_t s = finish(&ex);
  ASSERT_EQ(1, s.total.completed);
  ASSERT_EQ(2, s.total.failed);
  ASSERT_EQ(1, s.total.cancelled);
}

static _Atomic int ended_status;
static void record_end(knhk_task_t *t, int status) {
  (void)t;
  atomic_store(&ended_status, status);
}

TEST(executor_on_end_reports_status_and_task_can_be_respawned) {
  knhk_executor_t ex;
  start(&ex, 1);
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, fail_run, NULL);
  t.on_end = record_end;
  t.group = &g;
  ASSERT_OK(knhk_executor_spawn(&ex, &t));
  ASSERT_EQ(KNHK_EIO, knhk_executor_wait(&ex, &g));
  ASSERT_EQ(KNHK_EIO, atomic_load(&ended_status));
  /* the record ended: it may be spawned again */
  _Atomic long ran = 0;
  t.run = count_run;
  t.data = (void *)&ran;
  knhk_group_init(&g);
  ASSERT_OK(knhk_executor_spawn(&ex, &t));
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  ASSERT_EQ(1, ran);
  ASSERT_EQ(0, atomic_load(&ended_status));
  finish(&ex);
}

/* A task that is still live may not be spawned again. */
static _Atomic int gate;
static int wait_gate(knhk_task_t *t) {
  (void)t;
  while (!atomic_load(&gate)) {
  }
  return 0;
}

TEST(executor_refuses_to_spawn_a_live_task) {
  knhk_executor_t ex;
  start(&ex, 1);
  atomic_store(&gate, 0);
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, wait_gate, NULL);
  t.group = &g;
  ASSERT_OK(knhk_executor_spawn(&ex, &t));
  ASSERT_EQ(KNHK_EINVAL, knhk_executor_spawn(&ex, &t));
  atomic_store(&gate, 1);
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  knhk_executor_stats_t s = finish(&ex);
  ASSERT_EQ(1, s.total.spawned);
}

/* ---------------------------------------------------- pending and wake */

typedef struct {
  knhk_executor_t *ex;
  int runs;
  int worker_first, worker_second;
  _Atomic int parked;
} pend_t;

static int pend_run(knhk_task_t *t) {
  pend_t *p = t->data;
  int w = knhk_executor_worker_index(p->ex);
  if (p->runs++ == 0) {
    p->worker_first = w;
    atomic_store(&p->parked, 1); /* the waker may wake us before we return */
    return KNHK_TASK_PENDING;
  }
  p->worker_second = w;
  return 0;
}

static void pend_with(int flags, int workers) {
  knhk_executor_t ex;
  start(&ex, workers);
  for (int round = 0; round < KNHK_TEST_SCALE(2000); round++) {
    pend_t p = {&ex, 0, -1, -1, 0};
    knhk_task_t t;
    knhk_group_t g;
    knhk_group_init(&g);
    knhk_task_init(&t, pend_run, &p);
    t.flags = (uint32_t)flags;
    t.group = &g;
    ASSERT_OK(knhk_executor_spawn(&ex, &t));
    while (!atomic_load(&p.parked)) {
    }
    ASSERT_OK(knhk_executor_wake(&ex, &t));
    ASSERT_OK(knhk_executor_wake(&ex, &t)); /* second wake: nothing happens */
    ASSERT_OK(knhk_executor_wait(&ex, &g));
    ASSERT_EQ(2, p.runs);
    if (flags & KNHK_TASK_STICKY) ASSERT_EQ(p.worker_first, p.worker_second);
  }
  knhk_executor_stats_t s = finish(&ex);
  ASSERT_EQ(KNHK_TEST_SCALE(2000), s.total.completed);
}

TEST(executor_pending_task_runs_again_when_woken) { pend_with(0, 2); }
TEST(executor_sticky_task_resumes_on_its_worker) { pend_with(KNHK_TASK_STICKY, 4); }

static int self_waking(knhk_task_t *t) {
  pend_t *p = t->data;
  if (p->runs++ == 0) {
    /* The wake arrives while still running: it must not be lost. */
    knhk_executor_wake(p->ex, t);
    return KNHK_TASK_PENDING;
  }
  return 0;
}

TEST(executor_wake_while_running_is_not_lost) {
  knhk_executor_t ex;
  start(&ex, 2);
  pend_t p = {&ex, 0, -1, -1, 0};
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, self_waking, &p);
  t.group = &g;
  ASSERT_OK(knhk_executor_spawn(&ex, &t));
  ASSERT_OK(knhk_executor_wait(&ex, &g));
  ASSERT_EQ(2, p.runs);
  finish(&ex);
}

/* ------------------------------------------------------------- shutdown */

TEST(executor_graceful_shutdown_runs_queued_work) {
  knhk_executor_t ex;
  start(&ex, 2);
  _Atomic long ran = 0;
  for (int i = 0; i < 10000; i++) ASSERT_OK(knhk_executor_submit(&ex, count_run, (void *)&ran, NULL));
  ASSERT_OK(knhk_executor_shutdown(&ex, KNHK_SHUTDOWN_GRACEFUL));
  ASSERT_EQ(10000, ran);
  knhk_executor_stats_t s;
  knhk_executor_stats(&ex, &s, NULL, 0);
  ASSERT_EQ(10000, s.total.completed);
  ASSERT_OK(knhk_executor_close(&ex));
}

static _Atomic long ends_ok, ends_cancelled;
static void count_end(knhk_task_t *t, int status) {
  (void)t;
  atomic_fetch_add(status == 0 ? &ends_ok : &ends_cancelled, 1);
}

TEST(executor_prompt_shutdown_cancels_queued_tasks_and_loses_none) {
  knhk_executor_t ex;
  start(&ex, 1);
  atomic_store(&gate, 0);
  atomic_store(&ends_ok, 0);
  atomic_store(&ends_cancelled, 0);
  enum { N = 1000 };
  static knhk_task_t tasks[N + 1];
  knhk_task_init(&tasks[0], wait_gate, NULL);
  tasks[0].on_end = count_end;
  ASSERT_OK(knhk_executor_spawn(&ex, &tasks[0]));
  _Atomic long ran = 0;
  for (int i = 1; i <= N; i++) {
    knhk_task_init(&tasks[i], count_run, (void *)&ran);
    tasks[i].on_end = count_end;
    ASSERT_OK(knhk_executor_spawn(&ex, &tasks[i]));
  }
  /* The only worker is held in tasks[0] (or has not picked it yet); the
   * rest are queued. Prompt stop, then let the worker go. */
  ASSERT_OK(knhk_executor_stop(&ex, KNHK_SHUTDOWN_PROMPT));
  knhk_task_t late;
  knhk_task_init(&late, count_run, (void *)&ran);
  ASSERT_EQ(KNHK_ESHUTDOWN, knhk_executor_spawn(&ex, &late));
  ASSERT_EQ(KNHK_ESHUTDOWN, knhk_executor_submit(&ex, count_run, (void *)&ran, NULL));
  atomic_store(&gate, 1);
  ASSERT_OK(knhk_executor_shutdown(&ex, KNHK_SHUTDOWN_PROMPT));
  ASSERT_EQ(N + 1, atomic_load(&ends_ok) + atomic_load(&ends_cancelled));
  ASSERT_EQ(0, ran); /* queued behind the gate: none started */
  knhk_executor_stats_t s;
  knhk_executor_stats(&ex, &s, NULL, 0);
  ASSERT_EQ(N + 1, s.total.spawned);
  ASSERT_EQ(s.total.spawned, s.total.completed + s.total.cancelled);
  ASSERT_GE(s.total.cancelled, N);
  ASSERT_OK(knhk_executor_close(&ex));
}

TEST(executor_spawn_after_shutdown_is_refused) {
  knhk_executor_t ex;
  start(&ex, 2);
  ASSERT_OK(knhk_executor_shutdown(&ex, KNHK_SHUTDOWN_GRACEFUL));
  ASSERT_OK(knhk_executor_shutdown(&ex, KNHK_SHUTDOWN_GRACEFUL)); /* idempotent */
  ASSERT_EQ(KNHK_EALREADY, knhk_executor_stop(&ex, KNHK_SHUTDOWN_GRACEFUL));
  knhk_task_t t;
  knhk_task_init(&t, count_run, NULL);
  ASSERT_EQ(KNHK_ESHUTDOWN, knhk_executor_spawn(&ex, &t));
  /* the refused record was not left half-spawned: refused again, not EINVAL */
  ASSERT_EQ(KNHK_ESHUTDOWN, knhk_executor_spawn(&ex, &t));
  ASSERT_OK(knhk_executor_close(&ex));
}

static knhk_executor_t *shutdown_from_task_ex;
static int try_shutdown(knhk_task_t *t) {
  *(int *)t->data = knhk_executor_shutdown(shutdown_from_task_ex, KNHK_SHUTDOWN_GRACEFUL);
  return 0;
}

TEST(executor_shutdown_from_a_worker_is_refused) {
  knhk_executor_t ex;
  start(&ex, 1);
  shutdown_from_task_ex = &ex;
  int rc = 0;
  knhk_group_t g;
  knhk_group_init(&g);
  ASSERT_OK(knhk_executor_submit(&ex, try_shutdown, &rc, &g));
  knhk_executor_wait(&ex, &g);
  ASSERT_EQ(KNHK_EDEADLK, rc);
  finish(&ex);
}

/* Spawns from inside tasks continue while a graceful shutdown drains. */
typedef struct {
  knhk_executor_t *ex;
  _Atomic long *ran;
  int depth;
} chain_t;

static int chain_run(knhk_task_t *t) {
  chain_t *c = t->data;
  atomic_fetch_add(c->ran, 1);
  if (c->depth > 0) {
    c->depth--;
    return knhk_executor_submit(c->ex, chain_run, c, NULL);
  }
  return 0;
}

TEST(executor_graceful_shutdown_waits_for_spawns_from_running_tasks) {
  knhk_executor_t ex;
  start(&ex, 2);
  _Atomic long ran = 0;
  chain_t c = {&ex, &ran, 5000};
  ASSERT_OK(knhk_executor_submit(&ex, chain_run, &c, NULL));
  ASSERT_OK(knhk_executor_shutdown(&ex, KNHK_SHUTDOWN_GRACEFUL));
  ASSERT_EQ(5001, ran);
  finish(&ex);
}

TEST(executor_start_stop_cycles_with_work) {
  for (int i = 0; i < KNHK_TEST_SCALE(200); i++) {
    knhk_executor_t ex;
    start(&ex, 1 + i % 4);
    _Atomic long ran = 0;
    for (int k = 0; k < 50; k++) ASSERT_OK(knhk_executor_submit(&ex, count_run, (void *)&ran, NULL));
    knhk_executor_stats_t s = finish(&ex);
    ASSERT_EQ(50, ran);
    ASSERT_EQ(50, s.total.completed);
  }
}

/* ------------------------------------------------- caller as worker 0 */

TEST(executor_caller_can_be_worker_zero) {
  knhk_executor_t ex;
  knhk_executor_options_t o;
  knhk_executor_options_init(&o);
  o.workers = 2;
  o.flags = KNHK_EXECUTOR_CALLER_IS_WORKER0;
  ASSERT_OK(knhk_executor_init(&ex, &o));
  fib_t f = {&ex, 18, 0};
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, fib_task, &f);
  t.group = &g;
  ASSERT_OK(knhk_executor_spawn(&ex, &t));
  ASSERT_OK(knhk_executor_enter(&ex, &g));
  ASSERT_EQ(2584, f.result);
  ASSERT_EQ(-1, knhk_executor_worker_index(&ex)); /* left the loop */
  finish(&ex);
}

/* ------------------------------------------------------- lazy workers */


static int noop_run(knhk_task_t *t) {
  (void)t;
  return 0;
}

TEST(executor_lazy_workers_start_none_without_work) {
  int before = thread_count();
  knhk_executor_t ex;
  start_flags = KNHK_EXECUTOR_LAZY_WORKERS;
  start(&ex, 4);
  ASSERT_EQ(before + 1, thread_count()); /* worker 0 only */
  ASSERT_OK(knhk_executor_shutdown(&ex, KNHK_SHUTDOWN_GRACEFUL));
  knhk_executor_stats_t s;
  knhk_worker_stats_t per[4];
  ASSERT_EQ(4, knhk_executor_stats(&ex, &s, per, 4));
  for (int i = 1; i < 4; i++) { /* never ran, never looked for work */
    ASSERT_EQ(0, per[i].busy_ns);
    ASSERT_EQ(0, per[i].parks);
  }
  finish(&ex);
  ASSERT_EQ(before, thread_count());
  /* The caller's worker 0 and a task pinned to it: no thread at all. */
  start_flags = KNHK_EXECUTOR_LAZY_WORKERS | KNHK_EXECUTOR_CALLER_IS_WORKER0;
  start(&ex, 4);
  start_flags = 0;
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, noop_run, NULL);
  t.group = &g;
  ASSERT_OK(knhk_executor_spawn_on(&ex, &t, 0));
  ASSERT_OK(knhk_executor_enter(&ex, &g));
  ASSERT_EQ(before, thread_count());
  ASSERT_EQ(4, knhk_executor_stats(&ex, &s, per, 4));
  for (int i = 1; i < 4; i++) ASSERT_EQ(0, per[i].busy_ns);
  s = finish(&ex);
  ASSERT_EQ(1, s.total.completed);
  ASSERT_EQ(0, s.total.parks);
}

TEST(executor_lazy_workers_start_for_work_and_share_it) {
  int before = thread_count();
  knhk_executor_t ex;
  start_flags = KNHK_EXECUTOR_LAZY_WORKERS | KNHK_EXECUTOR_CALLER_IS_WORKER0;
  start(&ex, 4);
  start_flags = 0;
  ASSERT_EQ(before, thread_count());
  /* Spawns on worker 0 wake the sleepers, which start, steal and help. */
  fib_t f = {&ex, 22, 0};
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, fib_task, &f);
  t.group = &g;
  ASSERT_OK(knhk_executor_spawn_on(&ex, &t, 0));
  ASSERT_OK(knhk_executor_enter(&ex, &g));
  ASSERT_EQ(17711, f.result);
  ASSERT_GT(thread_count(), before);
  finish(&ex);
  ASSERT_EQ(before, thread_count());
}

/* The other cases' bodies, every worker but 0 started by a wake-up. */
TEST(executor_lazy_workers_run_tasks_each_once) {
  start_flags = KNHK_EXECUTOR_LAZY_WORKERS;
  run_many(4, KNHK_TEST_SCALE(200000L));
  ASSERT_EQ(6765, fib_on(4, 20));
  start_flags = 0;
}

TEST(executor_lazy_workers_steal) {
  start_flags = KNHK_EXECUTOR_LAZY_WORKERS;
  knhk_executor_t ex;
  imbalance_t im = {.ex = &ex, .spawner = -1, .children = 100};
  knhk_executor_stats_t s = run_imbalanced(&im);
  ASSERT_GT(s.total.stolen, 0);
  start_flags = 0;
}

TEST(executor_lazy_workers_sticky_tasks_and_cycles) {
  start_flags = KNHK_EXECUTOR_LAZY_WORKERS;
  pend_with(KNHK_TASK_STICKY, 4);
  for (int i = 0; i < KNHK_TEST_SCALE(200); i++) {
    knhk_executor_t ex;
    start(&ex, 1 + i % 4);
    _Atomic long ran = 0;
    for (int k = 0; k < 50; k++) ASSERT_OK(knhk_executor_submit(&ex, count_run, (void *)&ran, NULL));
    finish(&ex);
    ASSERT_EQ(50, ran);
  }
  start_flags = 0;
}

typedef struct {
  knhk_executor_t *ex;
  _Atomic int worker;
} where_t;

static int note_where(knhk_task_t *t) {
  where_t *w = t->data;
  atomic_store(&w->worker, knhk_executor_worker_index(w->ex));
  return 0;
}

TEST(executor_lazy_workers_spawn_on_starts_the_worker) {
  start_flags = KNHK_EXECUTOR_LAZY_WORKERS;
  knhk_executor_t ex;
  start(&ex, 3);
  for (int target = 2; target >= 0; target--) {
    where_t w = {&ex, -1};
    knhk_task_t t;
    knhk_group_t g;
    knhk_group_init(&g);
    knhk_task_init(&t, note_where, &w);
    t.group = &g;
    ASSERT_OK(knhk_executor_spawn_on(&ex, &t, target));
    ASSERT_OK(knhk_executor_wait(&ex, &g));
    ASSERT_EQ(target, atomic_load(&w.worker));
  }
  finish(&ex);
  start_flags = 0;
}
