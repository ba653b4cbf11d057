/* bench-telemetry.c: suite `telemetry`, the C half — spawn throughput with
 * telemetry recording against the same work not recording (peer
 * "telemetry_off"), in the same invocation, runs interleaved. Two figures
 * per workload: the run while recording (the reactor drains meanwhile, on
 * the same two cores), and the run plus writing every remaining record as
 * JSON (a flush at its end): the whole cost a recording run pays.
 *   bench-telemetry [--runs N]    JSON lines on stdout (bench/README.md)
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "knhk/nursery.h"
#include "knhk/reactor.h"
#include "knhk/telemetry.h"

enum { WORKERS = 2, NURSERY_TASKS = 100000, SUBMIT_TASKS = 1000000 };

static knhk_executor_t ex;
static char path[64];

static int child(knhk_child_t *c) {
  (void)c;
  return 0;
}

static int noop(knhk_task_t *t) {
  (void)t;
  return 0;
}

/* Runs on a worker: the spawns come from the executor's own thread, the
 * usual case (a task fanning out). */
static int spawn_nursery(knhk_task_t *t) {
  (void)t;
  knhk_nursery_t *n;
  if (knhk_nursery_new(&n, &ex, NULL, 0) != 0) abort();
  for (int i = 0; i < NURSERY_TASKS; i++)
    if (knhk_nursery_spawn(n, child, NULL) != 0) abort();
  if (knhk_nursery_wait_all(n) != 0) abort();
  knhk_nursery_free(n);
  return 0;
}

static int spawn_raw(knhk_task_t *t) {
  (void)t;
  knhk_group_t g;
  knhk_group_init(&g);
  for (int i = 0; i < SUBMIT_TASKS; i++)
    if (knhk_executor_submit(&ex, noop, NULL, &g) != 0) abort();
  knhk_executor_wait(&ex, &g);
  return 0;
}

/* Seconds for one run of `root`, recording or not (then *with_flush gets
 * the time including the flush). */
static double one_run(knhk_task_fn root, int recording, double *with_flush) {
  if (recording) {
    knhk_telemetry_options_t o = {path, 1000000000u, "bench"};
    if (knhk_telemetry_start(&o) != 0) abort();
  }
  knhk_group_t g;
  knhk_group_init(&g);
  uint64_t t0 = bench_now_ns();
  if (knhk_executor_submit(&ex, root, NULL, &g) != 0) abort();
  knhk_executor_wait(&ex, &g);
  double s = (double)(bench_now_ns() - t0) / 1e9;
  if (recording) {
    knhk_telemetry_flush(); /* every span written */
    *with_flush = (double)(bench_now_ns() - t0) / 1e9;
    knhk_telemetry_stop();
  }
  return s;
}

static void figure(const char *bench, knhk_task_fn root, int tasks, int runs) {
  double on[16], off[16], all[16], unused;
  one_run(root, 0, &unused); /* warm-up: pools, deques */
  for (int r = 0; r < runs; r++) {
    off[r] = tasks / one_run(root, 0, &unused);
    on[r] = tasks / one_run(root, 1, &all[r]);
    all[r] = tasks / all[r];
    BENCH_PROGRESS("%s run %d: %.0f tasks/s recording (%.0f with the file written), %.0f not",
                   bench, r + 1, on[r], all[r], off[r]);
  }
  double off_m = bench_median(off, (size_t)runs);
  bench_figure_t f = {"telemetry", bench, "tasks_per_s", "tasks/s", WORKERS,
                      bench_median(on, (size_t)runs), "telemetry_off", off_m, 1, runs};
  bench_emit(&f);
  f.metric = "tasks_per_s_written";
  f.value = bench_median(all, (size_t)runs);
  bench_emit(&f);
}

int main(int argc, char **argv) {
  int runs = 5;
  for (int i = 1; i + 1 < argc; i++)
    if (strcmp(argv[i], "--runs") == 0) runs = atoi(argv[i + 1]);
  if (runs < 1 || runs > 16) runs = 5;
  snprintf(path, sizeof path, "/tmp/knhk-bench-telemetry-%d.jsonl", (int)getpid());
  knhk_reactor_t *r; /* drains while the run goes on, as in a real program */
  if (knhk_reactor_new(&r) != 0) return 1;
  knhk_executor_options_t o;
  knhk_executor_options_init(&o);
  o.workers = WORKERS;
  if (knhk_executor_init(&ex, &o) != 0) return 1;
  BENCH_PROGRESS("C: %d nursery tasks per run (a span each), %d pooled tasks (metrics only)",
                 NURSERY_TASKS, SUBMIT_TASKS);
  figure("c_nursery_spawn", spawn_nursery, NURSERY_TASKS, runs);
  figure("c_submit", spawn_raw, SUBMIT_TASKS, runs);
  knhk_executor_close(&ex);
  knhk_reactor_free(r);
  unlink(path);
  return 0;
}
