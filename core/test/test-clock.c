/* test-clock.c: the runtime's clock, real and virtual; a virtual clock
 * driven by an executor's idleness. Every assertion is on virtual time,
 * never on wall time. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "knhk/clock.h"
#include "knhk/errors.h"
#include "knhk/executor.h"
#include "knhk/reactor.h"
#include "latch.h"
#include "runner.h"

#define SECONDS(s) ((uint64_t)(s) * 1000000000u)
#define HOURS(h) (SECONDS(h) * 3600u)

static knhk_reactor_t *virtual_reactor(void) {
  knhk_reactor_t *r = NULL;
  knhk_reactor_options_t o = {KNHK_CLOCK_VIRTUAL};
  ASSERT_OK(knhk_reactor_new_with(&r, &o));
  return r;
}

static void count_down(knhk_timer_t *t, int status) {
  (void)status;
  latch_count_down(t->data);
}

/* Waits for a turn of the reactor that began after this call: a timer due
 * now fires after everything due before it; a second one is started only
 * after the first fired, so it is taken in after that turn has ended (and
 * with it whatever jump the turn would have made). */
static void wait_for_turn(knhk_reactor_t *r) {
  for (int i = 0; i < 2; i++) {
    latch_t l;
    latch_init(&l, 1);
    knhk_timer_t sentinel;
    memset(&sentinel, 0, sizeof sentinel);
    ASSERT_OK(knhk_timer_start(r, &sentinel, knhk_reactor_now(r), count_down, &l));
    latch_wait(&l);
  }
}

static int always_idle(void *arg) {
  (void)arg;
  return 1;
}

/* ---------------------------------------------------------- the clocks */

TEST(clock_kinds_and_refusals) {
  knhk_reactor_t *real = NULL, *virt = virtual_reactor();
  ASSERT_OK(knhk_reactor_new(&real));
  ASSERT_EQ(KNHK_CLOCK_REAL, knhk_clock_kind(real));
  ASSERT_EQ(KNHK_CLOCK_VIRTUAL, knhk_clock_kind(virt));
  ASSERT_EQ(KNHK_EINVAL, knhk_clock_kind(NULL));
  ASSERT_EQ(0, knhk_reactor_now(virt)); /* a virtual clock starts at 0 */
  ASSERT_GT(knhk_reactor_now(real), 0);
  ASSERT_EQ(KNHK_EINVAL, knhk_clock_advance(real, 1));
  ASSERT_EQ(KNHK_EINVAL, knhk_clock_advance(NULL, 1));
  ASSERT_EQ(KNHK_EINVAL, knhk_clock_watch_idle(real, always_idle, NULL));
  knhk_reactor_t *bad = NULL;
  knhk_reactor_options_t o = {7};
  ASSERT_EQ(KNHK_EINVAL, knhk_reactor_new_with(&bad, &o));
  ASSERT(bad == NULL);
  knhk_clock_idle_hint(real); /* nothing under a real clock */
  ASSERT_OK(knhk_reactor_free(real));
  ASSERT_OK(knhk_reactor_free(virt));
}

TEST(clock_virtual_never_moves_by_itself) {
  knhk_reactor_t *r = virtual_reactor(); /* no idle watch: it cannot jump */
  latch_t l;
  latch_init(&l, 1);
  knhk_timer_t t;
  memset(&t, 0, sizeof t);
  ASSERT_OK(knhk_timer_start(r, &t, SECONDS(1), count_down, &l));
  wait_for_turn(r);
  ASSERT_EQ(0, knhk_reactor_now(r));
  ASSERT_EQ(1, atomic_load(&l.left)); /* not fired */
  ASSERT_OK(knhk_clock_advance(r, SECONDS(1)));
  latch_wait(&l);
  ASSERT_EQ(SECONDS(1), knhk_reactor_now(r));
  ASSERT_OK(knhk_reactor_free(r));
}

/* ---------------------------------------------------- advance by hand */

typedef struct {
  knhk_timer_t timers[5];
  _Atomic uint32_t n;
  uint32_t order[5];
  uint64_t at[5];
  knhk_reactor_t *r;
} fired_t;

static void record(knhk_timer_t *t, int status) {
  fired_t *f = t->data;
  if (status != 0) return;
  uint32_t i = atomic_fetch_add(&f->n, 1);
  f->order[i] = (uint32_t)(t - f->timers);
  f->at[i] = knhk_reactor_now(f->r);
}

TEST(clock_advance_fires_exactly_the_due_timers_in_order) {
  knhk_reactor_t *r = virtual_reactor();
  fired_t *f = calloc(1, sizeof *f);
  f->r = r;
  /* timers 0..4 at 5 s, 1 s, 3 s, 3 s, 7 s: equal deadlines fire in the
   * order they were started (2 before 3) */
  uint64_t due[5] = {SECONDS(5), SECONDS(1), SECONDS(3), SECONDS(3), SECONDS(7)};
  for (int i = 0; i < 5; i++) ASSERT_OK(knhk_timer_start(r, &f->timers[i], due[i], record, f));
  ASSERT_OK(knhk_clock_advance(r, SECONDS(3)));
  ASSERT_EQ(SECONDS(3), knhk_reactor_now(r));
  wait_for_turn(r);
  ASSERT_EQ(3, atomic_load(&f->n));
  ASSERT_EQ(1, f->order[0]);
  ASSERT_EQ(2, f->order[1]);
  ASSERT_EQ(3, f->order[2]);
  for (int i = 0; i < 3; i++) ASSERT_EQ(SECONDS(3), f->at[i]); /* fired at the new time */
  ASSERT_OK(knhk_clock_advance(r, SECONDS(2)));
  wait_for_turn(r);
  ASSERT_EQ(4, atomic_load(&f->n));
  ASSERT_EQ(0, f->order[3]);
  ASSERT_EQ(SECONDS(5), knhk_reactor_now(r));
  ASSERT_OK(knhk_reactor_free(r)); /* timer 4 completes cancelled */
  ASSERT_EQ(4, atomic_load(&f->n));
  free(f);
}

TEST(clock_advance_saturates_at_forever) {
  knhk_reactor_t *r = virtual_reactor();
  ASSERT_OK(knhk_clock_advance(r, UINT64_MAX - 5));
  ASSERT_OK(knhk_clock_advance(r, 100));
  ASSERT_EQ(UINT64_MAX, knhk_reactor_now(r));
  ASSERT_OK(knhk_reactor_free(r));
}

/* --------------------------------------------------------- jumps, holds */

TEST(clock_jumps_to_the_earliest_timer_when_every_task_waits) {
  knhk_reactor_t *r = virtual_reactor();
  fired_t *f = calloc(1, sizeof *f);
  f->r = r;
  uint64_t due[3] = {HOURS(72), HOURS(1), HOURS(24)};
  for (int i = 0; i < 3; i++) ASSERT_OK(knhk_timer_start(r, &f->timers[i], due[i], record, f));
  wait_for_turn(r);
  ASSERT_EQ(0, atomic_load(&f->n)); /* nobody said the tasks wait */
  ASSERT_OK(knhk_clock_watch_idle(r, always_idle, NULL));
  latch_t l;
  latch_init(&l, 1);
  knhk_timer_t last;
  memset(&last, 0, sizeof last);
  ASSERT_OK(knhk_timer_start(r, &last, HOURS(100), count_down, &l));
  latch_wait(&l);
  ASSERT_EQ(3, atomic_load(&f->n));
  ASSERT_EQ(HOURS(1), f->at[0]); /* each at exactly its own deadline */
  ASSERT_EQ(HOURS(24), f->at[1]);
  ASSERT_EQ(HOURS(72), f->at[2]);
  ASSERT_EQ(HOURS(100), knhk_reactor_now(r));
  ASSERT_OK(knhk_reactor_free(r));
  free(f);
}

TEST(clock_holds_keep_virtual_time_still) {
  knhk_reactor_t *r = virtual_reactor();
  ASSERT_OK(knhk_clock_watch_idle(r, always_idle, NULL));
  ASSERT_OK(knhk_clock_hold(r)); /* real work in flight */
  latch_t l;
  latch_init(&l, 1);
  knhk_timer_t t;
  memset(&t, 0, sizeof t);
  ASSERT_OK(knhk_timer_start(r, &t, HOURS(1), count_down, &l));
  knhk_clock_idle_hint(r);
  wait_for_turn(r);
  ASSERT_EQ(0, knhk_reactor_now(r));
  ASSERT_EQ(1, atomic_load(&l.left));
  ASSERT_OK(knhk_clock_release(r)); /* the last hold: it may jump now */
  latch_wait(&l);
  ASSERT_EQ(HOURS(1), knhk_reactor_now(r));
  ASSERT_EQ(KNHK_EINVAL, knhk_clock_hold(NULL));
  ASSERT_OK(knhk_reactor_free(r));
}

static void file_done(knhk_file_op_t *op) { latch_count_down(op->user); }

/* A file operation in flight is real work: the clock stands still until it
 * completes, however long that takes (a read of a FIFO waits for a writer,
 * which this thread is, once it has seen the clock stay), then jumps. */
TEST(clock_stands_still_while_a_file_operation_is_in_flight) {
  knhk_reactor_t *r = virtual_reactor();
  ASSERT_OK(knhk_clock_watch_idle(r, always_idle, NULL));
  char dir[] = "/tmp/knhk-clock-XXXXXX";
  ASSERT(mkdtemp(dir) != NULL);
  char fifo[64];
  snprintf(fifo, sizeof fifo, "%s/fifo", dir);
  ASSERT_EQ(0, mkfifo(fifo, 0600));
  latch_t read_done, fired;
  latch_init(&read_done, 1);
  latch_init(&fired, 1);
  knhk_file_op_t rd = {.kind = KNHK_FILE_READ, .path = fifo, .on_done = file_done,
                       .user = &read_done};
  ASSERT_OK(knhk_file_submit(r, &rd)); /* blocks in open() until a writer comes */
  knhk_timer_t t;
  memset(&t, 0, sizeof t);
  ASSERT_OK(knhk_timer_start(r, &t, HOURS(1), count_down, &fired));
  knhk_clock_idle_hint(r);
  wait_for_turn(r);
  ASSERT_EQ(0, knhk_reactor_now(r)); /* every task waits, yet no jump */
  ASSERT_EQ(1, atomic_load(&fired.left));
  int fd = open(fifo, O_WRONLY); /* the read can go on now */
  ASSERT(fd >= 0);
  ASSERT_EQ(4, write(fd, "data", 4));
  close(fd);
  latch_wait(&read_done);
  ASSERT_EQ(0, rd.error);
  ASSERT(strcmp(rd.result, "data") == 0);
  knhk_file_dispose(&rd);
  latch_wait(&fired); /* the read done, its hold gone: the clock jumps */
  ASSERT_EQ(HOURS(1), knhk_reactor_now(r));
  unlink(fifo);
  rmdir(dir);
  ASSERT_OK(knhk_reactor_free(r));
}

/* A timer on the real clock under a virtual one: it fires in real time
 * (here at once) and the virtual clock does not jump to it. */
TEST(clock_real_timers_follow_real_time_under_a_virtual_clock) {
  knhk_reactor_t *r = virtual_reactor();
  ASSERT_OK(knhk_clock_watch_idle(r, always_idle, NULL));
  latch_t l;
  latch_init(&l, 1);
  knhk_timer_t t;
  memset(&t, 0, sizeof t);
  ASSERT_OK(knhk_timer_start_real(r, &t, knhk_clock_real_ns() + 1000000, count_down, &l));
  latch_wait(&l);
  ASSERT_EQ(0, knhk_reactor_now(r));
  ASSERT_OK(knhk_reactor_free(r));
}

/* ------------------------------------------------- with an executor */

typedef struct {
  knhk_executor_t ex;
  knhk_reactor_t *r;
} rt_t;

static void rt_start(rt_t *rt, int workers) {
  rt->r = virtual_reactor();
  knhk_executor_options_t o;
  ASSERT_OK(knhk_executor_options_init(&o));
  o.workers = workers;
  o.on_idle = knhk_clock_idle_hint;
  o.on_idle_arg = rt->r;
  ASSERT_OK(knhk_executor_init(&rt->ex, &o));
  ASSERT_OK(knhk_clock_watch_idle(rt->r, knhk_executor_idle, &rt->ex));
}

/* Workers first (no hint after they are gone), then the reactor (its last
 * completions may still wake tasks), then the executor's memory. */
static void rt_finish(rt_t *rt) {
  ASSERT_OK(knhk_executor_shutdown(&rt->ex, KNHK_SHUTDOWN_GRACEFUL));
  ASSERT_OK(knhk_reactor_free(rt->r));
  ASSERT_OK(knhk_executor_close(&rt->ex));
}

/* A task that sleeps `naps` times for the given virtual durations and
 * checks, each time it wakes, that the clock reads exactly its deadline. */
typedef struct {
  knhk_task_t task;
  rt_t *rt;
  knhk_timer_t timer;
  uint64_t naps[8];
  int nnaps, done_naps;
  uint64_t at;
  _Atomic int *wrong;   /* woke at a time other than its deadline */
  _Atomic int *busy_done; /* NULL, or: must be 1 when it first wakes */
  int saw_busy_done;
  uint64_t woke_at;
} sleeper_t;

static void sleeper_wake(knhk_timer_t *t, int status) {
  sleeper_t *s = t->data;
  if (status == 0) knhk_executor_wake(&s->rt->ex, &s->task);
}

static int sleeper_run(knhk_task_t *task) {
  sleeper_t *s = task->data;
  if (s->done_naps > 0 || s->at) {
    uint64_t now = knhk_reactor_now(s->rt->r);
    if (now != s->at) atomic_fetch_add(s->wrong, 1);
    s->woke_at = now;
    if (s->busy_done && s->done_naps == 1) s->saw_busy_done = atomic_load(s->busy_done);
  }
  if (s->done_naps == s->nnaps) return 0;
  s->at = knhk_reactor_now(s->rt->r) + s->naps[s->done_naps++];
  memset(&s->timer, 0, sizeof s->timer);
  if (knhk_timer_start(s->rt->r, &s->timer, s->at, sleeper_wake, s) != 0) return KNHK_EFAILED;
  return KNHK_TASK_PENDING;
}

static void sleeper_init(sleeper_t *s, rt_t *rt, _Atomic int *wrong, knhk_group_t *g) {
  memset(s, 0, sizeof *s);
  s->rt = rt;
  s->wrong = wrong;
  ASSERT_OK(knhk_task_init(&s->task, sleeper_run, s));
  s->task.group = g;
}

/* A fresh runtime on two workers where an outside thread spawns one task
 * that sleeps `nap` of virtual time: it wakes at exactly `nap`, and the
 * clock stops there. */
static void one_nap_from_outside(uint64_t nap) {
  rt_t rt;
  rt_start(&rt, 2);
  knhk_group_t g;
  ASSERT_OK(knhk_group_init(&g));
  _Atomic int wrong = 0;
  sleeper_t s;
  sleeper_init(&s, &rt, &wrong, &g);
  s.naps[0] = nap;
  s.nnaps = 1;
  ASSERT_OK(knhk_executor_spawn(&rt.ex, &s.task));
  ASSERT_OK(knhk_executor_wait(&rt.ex, &g));
  ASSERT_EQ(nap, s.woke_at);
  ASSERT_EQ(nap, knhk_reactor_now(rt.r));
  ASSERT_EQ(0, atomic_load(&wrong));
  rt_finish(&rt);
}

TEST(clock_72_hour_sleep_finishes_with_the_clock_at_72_hours) { one_nap_from_outside(HOURS(72)); }

/* A busy task: re-submits itself `left` times, so that one step of it is
 * always queued or running, and records whether the clock ever moved. */
typedef struct {
  rt_t *rt;
  _Atomic int left;
  _Atomic int moved;
  _Atomic int done;
  knhk_group_t *g;
} busy_t;

static int busy_step(knhk_task_t *t) {
  busy_t *b = t->data;
  if (knhk_reactor_now(b->rt->r) != 0) atomic_store(&b->moved, 1);
  int left = atomic_fetch_sub(&b->left, 1);
  /* A hint is only a reason to look: the reactor must check for itself
   * (here it would find a task running and one queued). */
  if (left % 1000 == 0) knhk_clock_idle_hint(b->rt->r);
  if (left > 1) {
    if (knhk_executor_submit(&b->rt->ex, busy_step, b, b->g) != 0) return KNHK_EFAILED;
  } else {
    atomic_store(&b->done, 1);
  }
  return 0;
}

/* An outside thread spawns a task that sleeps: the worker that runs it may
 * fall asleep, and hint "idle", while the spawn is still in progress (the
 * clock then sees "not idle"); the spawn's end must hint again, or the
 * clock never jumps. Many short runs, for the interleaving to come up. */
TEST(clock_jumps_after_an_outside_spawn_that_was_still_in_progress) {
  for (int i = 0; i < 200; i++) one_nap_from_outside(1000);
}

TEST(clock_never_moves_while_a_task_is_runnable) {
  rt_t rt;
  rt_start(&rt, 2);
  knhk_group_t g;
  ASSERT_OK(knhk_group_init(&g));
  _Atomic int wrong = 0;
  busy_t b = {.rt = &rt, .g = &g};
  atomic_init(&b.left, KNHK_TEST_SCALE(200000));
  sleeper_t s;
  sleeper_init(&s, &rt, &wrong, &g);
  s.naps[0] = SECONDS(1);
  s.nnaps = 1;
  s.busy_done = &b.done;
  /* held while this thread (no task) starts both: else the sleeper could
   * wait alone, and the clock jump, before the busy task exists */
  ASSERT_OK(knhk_clock_hold(rt.r));
  ASSERT_OK(knhk_executor_spawn(&rt.ex, &s.task));
  ASSERT_OK(knhk_executor_submit(&rt.ex, busy_step, &b, &g));
  ASSERT_OK(knhk_clock_release(rt.r));
  ASSERT_OK(knhk_executor_wait(&rt.ex, &g));
  ASSERT_EQ(1, s.saw_busy_done); /* the sleeper woke only after the busy one ended */
  ASSERT_EQ(0, atomic_load(&b.moved));
  ASSERT_EQ(SECONDS(1), s.woke_at);
  ASSERT_EQ(0, atomic_load(&wrong));
  rt_finish(&rt);
}

/* Many tasks sleeping pseudo-random virtual durations on two workers: each
 * wakes with the clock at exactly its own deadline (a jump never overtakes
 * a task that is runnable), and the clock ends at the latest deadline. */
TEST(clock_stress_every_sleeper_wakes_at_its_own_deadline) {
  enum { N = 400 };
  int n = KNHK_TEST_SCALE(N);
  rt_t rt;
  rt_start(&rt, 2);
  knhk_group_t g;
  ASSERT_OK(knhk_group_init(&g));
  _Atomic int wrong = 0;
  sleeper_t *s = calloc((size_t)n, sizeof *s);
  unsigned seed = 12345;
  uint64_t latest = 0;
  for (int i = 0; i < n; i++) {
    sleeper_init(&s[i], &rt, &wrong, &g);
    s[i].nnaps = 8;
    uint64_t total = 0;
    for (int k = 0; k < 8; k++) {
      seed = seed * 1103515245u + 12345u;
      s[i].naps[k] = (uint64_t)((seed >> 8) % 1000) * 1000000u; /* 0..999 ms, 0 included */
      total += s[i].naps[k];
    }
    if (total > latest) latest = total;
  }
  /* This thread is no task: once the sleepers spawned so far all wait, the
   * clock may jump before the rest are spawned, and they would start late.
   * Spawning is real work in flight: hold the clock through it. */
  ASSERT_OK(knhk_clock_hold(rt.r));
  for (int i = 0; i < n; i++) ASSERT_OK(knhk_executor_spawn(&rt.ex, &s[i].task));
  ASSERT_OK(knhk_clock_release(rt.r));
  ASSERT_OK(knhk_executor_wait(&rt.ex, &g));
  ASSERT_EQ(0, atomic_load(&wrong));
  for (int i = 0; i < n; i++) ASSERT_EQ(8, s[i].done_naps);
  ASSERT_EQ(latest, knhk_reactor_now(rt.r));
  rt_finish(&rt);
  free(s);
}
