/* bench-executor.c: suite `executor` — our work-stealing executor against
 * OpenMP tasks (libgomp) on the same workloads, and against Rayon (Rust's
 * fork-join: bench/rayon-peer, a child process) on fork-join and trivial
 * spawns, in the same invocation.
 *
 *   bench-executor [--runs N] [--rayon PATH]   JSON lines on stdout (bench.h)
 *
 * Without --rayon (scripts/bench passes it when cargo could build the
 * peer) the figures that compare with Rayon are given without a peer.
 */
#include <stdarg.h>
#include <stdatomic.h>

#include "bench.h"
#include "executor-omp.h"
#include "knhk/executor.h"
#include "knhk/join.h"
#include "rayon-peer.h"

static int runs = 5;
static int no_peer; /* --no-peer: ours only, for profiling */
static rayon_peer_t rayon;
static int have_rayon;

static void check(long got, long want, const char *what) {
  if (got != want) {
    fprintf(stderr, "bench-executor: %s computed %ld, expected %ld\n", what, got, want);
    exit(1);
  }
}

/* Seconds the Rayon peer took for one command; checks its result. */
static double rayon_secs(long want, const char *fmt, ...) {
  char cmd[64];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  double secs;
  long got;
  if (rayon_peer_run(&rayon, cmd, &secs, &got) != 0) exit(1);
  check(got, want, cmd);
  return secs;
}

/* A figure against Rayon, or without a peer when it is not there. */
static void emit_vs_rayon(bench_figure_t f) {
  if (!have_rayon) f.peer = NULL;
  bench_emit(&f);
}

static void start(knhk_executor_t *ex, int workers) {
  knhk_executor_options_t o;
  knhk_executor_options_init(&o);
  o.workers = workers;
  if (knhk_executor_init(ex, &o) != 0) {
    fprintf(stderr, "bench-executor: cannot start %d workers\n", workers);
    exit(1);
  }
}

/* Runs fn(arg) as a task on a worker of ex and waits for it. */
static void on_worker(knhk_executor_t *ex, knhk_task_fn fn, void *arg) {
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, fn, arg);
  t.group = &g;
  knhk_executor_spawn(ex, &t);
  knhk_executor_wait(ex, &g);
}

static int trivial(knhk_task_t *t) {
  (void)t;
  __asm__ __volatile__("" ::: "memory");
  return 0;
}

/* ----------------------------------------------------------- latency */

typedef struct {
  knhk_executor_t *ex;
  int n;
  double *ticks;
} lat_t;

static int timed_spawns(knhk_task_t *self) {
  lat_t *l = self->data;
  knhk_group_t g;
  knhk_group_init(&g);
  for (int i = 0; i < l->n; i++) {
    uint64_t a = bench_ticks();
    for (int k = 0; k < BENCH_BATCH; k++) knhk_executor_submit(l->ex, trivial, NULL, &g);
    l->ticks[i] = (double)(bench_ticks() - a);
  }
  return knhk_executor_wait(l->ex, &g);
}

enum { LAT_N = 50000 };

/* p50 and p99 in ns per call of batches of BENCH_BATCH calls, timer cost
 * removed. */
static void lat_stats(double *ticks, int n, double overhead, double *p50, double *p99) {
  double npt = bench_ns_per_tick();
  for (int i = 0; i < n; i++) ticks[i] = (ticks[i] - overhead) * npt / BENCH_BATCH;
  *p50 = bench_percentile(ticks, (size_t)n, 0.50);
  *p99 = bench_percentile(ticks, (size_t)n, 0.99);
}

static void bench_spawn_latency(double overhead) {
  double *ticks = malloc(LAT_N * sizeof *ticks);
  for (int w = 1; w <= 2; w++) {
    double p50[16], p99[16], op50[16], op99[16];
    knhk_executor_t ex;
    start(&ex, w);
    lat_t l = {&ex, LAT_N, ticks};
    on_worker(&ex, timed_spawns, &l); /* warm-up: grows the deque, fills the pool */
    for (int r = 0; r < runs; r++) {
      on_worker(&ex, timed_spawns, &l);
      lat_stats(ticks, LAT_N, overhead, &p50[r], &p99[r]);
      omp_spawn_latency(w, LAT_N, ticks);
      lat_stats(ticks, LAT_N, overhead, &op50[r], &op99[r]);
    }
    knhk_executor_close(&ex);
    bench_figure_t f = {"executor", "spawn_latency", "p50", "ns", w, bench_median(p50, runs),
                        "openmp", bench_median(op50, runs), 0, runs};
    bench_emit(&f);
    f.metric = "p99";
    f.value = bench_median(p99, runs);
    f.peer_value = bench_median(op99, runs);
    bench_emit(&f);
  }

  /* From a thread that is not a worker: through the injector. OpenMP has
   * no such operation, so no peer. */
  for (int w = 1; w <= 2; w++) {
    double p50[16], p99[16];
    knhk_executor_t ex;
    start(&ex, w);
    for (int r = 0; r <= runs; r++) {
      knhk_group_t g;
      knhk_group_init(&g);
      for (int i = 0; i < LAT_N; i++) {
        uint64_t a = bench_ticks();
        for (int k = 0; k < BENCH_BATCH; k++) knhk_executor_submit(&ex, trivial, NULL, &g);
        ticks[i] = (double)(bench_ticks() - a);
      }
      knhk_executor_wait(&ex, &g);
      if (r > 0) lat_stats(ticks, LAT_N, overhead, &p50[r - 1], &p99[r - 1]);
    }
    knhk_executor_close(&ex);
    bench_figure_t f = {"executor", "spawn_latency_external", "p50", "ns", w,
                        bench_median(p50, runs), NULL, 0, 0, runs};
    bench_emit(&f);
    f.metric = "p99";
    f.value = bench_median(p99, runs);
    bench_emit(&f);
  }
  free(ticks);
}

/* -------------------------------------------------------- throughput */

typedef struct {
  knhk_executor_t *ex;
  long n;
} many_t;

static int spawn_many(knhk_task_t *self) {
  many_t *m = self->data;
  knhk_group_t g;
  knhk_group_init(&g);
  for (long i = 0; i < m->n; i++) knhk_executor_submit(m->ex, trivial, NULL, &g);
  return knhk_executor_wait(m->ex, &g);
}

/* Also `trivial_spawns`: the same figure of ours beside Rayon's 1 M
 * `s.spawn` of trivial closures in one `rayon::scope`. */
static void bench_throughput(void) {
  const long n = 1000000;
  for (int w = 1; w <= 2; w++) {
    double ours[16], peer[16], ray[16];
    knhk_executor_t ex;
    start(&ex, w);
    many_t m = {&ex, n};
    on_worker(&ex, spawn_many, &m);
    if (have_rayon) rayon_secs(n, "scope %ld %d", n, w); /* warm-up */
    for (int r = 0; r < runs; r++) {
      uint64_t t0 = bench_now_ns();
      on_worker(&ex, spawn_many, &m);
      ours[r] = (double)n / ((double)(bench_now_ns() - t0) / 1e9);
      ray[r] = have_rayon ? (double)n / rayon_secs(n, "scope %ld %d", n, w) : 0;
      peer[r] = no_peer ? 1 : (double)n / omp_throughput(w, n);
    }
    knhk_executor_close(&ex);
    bench_figure_t f = {"executor", "throughput", "tasks_per_s", "tasks/s", w,
                        bench_median(ours, runs), "openmp", bench_median(peer, runs), 1, runs};
    bench_emit(&f);
    f.bench = "trivial_spawns";
    f.peer = "rayon";
    f.peer_value = bench_median(ray, runs);
    emit_vs_rayon(f);
  }
}

/* ---------------------------------------------------------- fork-join */

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
  knhk_task_t ta, tb;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&ta, fib_task, &a);
  ta.group = &g;
  knhk_executor_spawn(f->ex, &ta);
  knhk_task_init(&tb, fib_task, &b);
  fib_task(&tb);
  knhk_executor_wait(f->ex, &g);
  f->result = a.result + b.result;
  return 0;
}

static double fib_ours(knhk_executor_t *ex, int n, long *result) {
  fib_t f = {ex, n, 0};
  uint64_t t0 = bench_now_ns();
  on_worker(ex, fib_task, &f);
  *result = f.result;
  return (double)(bench_now_ns() - t0) / 1e9;
}

/* The same with knhk_join: written as with rayon::join. */
static int fib_join(void *p) {
  fib_t *f = p;
  if (f->n < 2) {
    f->result = f->n;
    return 0;
  }
  fib_t a = {f->ex, f->n - 1, 0}, b = {f->ex, f->n - 2, 0};
  int rc = knhk_join(f->ex, fib_join, &a, fib_join, &b);
  f->result = a.result + b.result;
  return rc;
}

static int fib_join_task(knhk_task_t *self) { return fib_join(self->data); }

static double fib_join_ours(knhk_executor_t *ex, int n, long *result) {
  fib_t f = {ex, n, 0};
  uint64_t t0 = bench_now_ns();
  on_worker(ex, fib_join_task, &f);
  *result = f.result;
  return (double)(bench_now_ns() - t0) / 1e9;
}

/* fib(30) with a fork per call: spawn + group wait (against OpenMP tasks),
 * and knhk_join (against rayon::join); sequential C and Rust for scale. */
static void bench_fib(void) {
  const int n = 30;
  double seq[16], t1[16], t2[16], ot1[16], ot2[16];
  double j1[16], j2[16], rt1[16], rt2[16], rseq[16];
  knhk_executor_t ex1, ex2;
  start(&ex1, 1);
  start(&ex2, 2);
  long want = fib_seq(n), got;
  /* knhk_join against Rayon first, before OpenMP's threads have run
   * (libgomp's idle threads spin a while after each region, taking a core
   * from whatever runs next), taking turns to go first. */
  fib_join_ours(&ex1, n, &got); /* warm-up, and Rayon builds both pools */
  fib_join_ours(&ex2, n, &got);
  if (have_rayon) {
    rayon_secs(want, "fib %d 1", n);
    rayon_secs(want, "fib %d 2", n);
  }
  for (int r = 0; r < runs; r++) {
    for (int turn = 0; turn < 2; turn++) {
      if ((turn + r) % 2 == 0) {
        j1[r] = fib_join_ours(&ex1, n, &got);
        check(got, want, "fib with join on 1 worker");
        j2[r] = fib_join_ours(&ex2, n, &got);
        check(got, want, "fib with join on 2 workers");
      } else if (have_rayon) {
        rt1[r] = rayon_secs(want, "fib %d 1", n);
        rt2[r] = rayon_secs(want, "fib %d 2", n);
        rseq[r] = rayon_secs(want, "fib_seq %d", n);
      } else {
        rt1[r] = rt2[r] = rseq[r] = 0;
      }
    }
  }
  for (int r = 0; r < runs; r++) {
    volatile int vn = n; /* keeps the compiler from reusing `want` */
    uint64_t a = bench_now_ns();
    long s = fib_seq(vn);
    seq[r] = (double)(bench_now_ns() - a) / 1e9;
    check(s, want, "sequential fib");
    t1[r] = fib_ours(&ex1, n, &got);
    check(got, want, "fib on 1 worker");
    t2[r] = fib_ours(&ex2, n, &got);
    check(got, want, "fib on 2 workers");
    ot1[r] = omp_fib(1, n, &got);
    check(got, want, "OpenMP fib on 1 thread");
    ot2[r] = omp_fib(2, n, &got);
    check(got, want, "OpenMP fib on 2 threads");
  }
  knhk_executor_stats_t s0, s1;
  knhk_executor_stats(&ex2, &s0, NULL, 0);
  fib_ours(&ex2, n, &got);
  knhk_executor_stats(&ex2, &s1, NULL, 0);
  knhk_executor_close(&ex1);
  knhk_executor_close(&ex2);

  double mseq = bench_median(seq, runs), m1 = bench_median(t1, runs), m2 = bench_median(t2, runs);
  double o1 = bench_median(ot1, runs), o2 = bench_median(ot2, runs);
  double mj1 = bench_median(j1, runs), mj2 = bench_median(j2, runs);
  double r1 = bench_median(rt1, runs), r2 = bench_median(rt2, runs), rs = bench_median(rseq, runs);
  BENCH_PROGRESS("fib(30): seq %.1f ms, ours T1 %.1f ms T2 %.1f ms, OpenMP T1 %.1f ms T2 %.1f ms",
                 mseq * 1e3, m1 * 1e3, m2 * 1e3, o1 * 1e3, o2 * 1e3);
  BENCH_PROGRESS("fib(30): join T1 %.1f ms T2 %.1f ms, Rayon T1 %.1f ms T2 %.1f ms, Rust seq %.1f ms",
                 mj1 * 1e3, mj2 * 1e3, r1 * 1e3, r2 * 1e3, rs * 1e3);
  for (int w = 1; w <= 2; w++) {
    bench_figure_t s = {"executor", "fib30", "s", "s", w, w == 1 ? m1 : m2,
                        "rayon", w == 1 ? r1 : r2, 0, runs};
    emit_vs_rayon(s);
    s.bench = "fib30_join";
    s.value = w == 1 ? mj1 : mj2;
    emit_vs_rayon(s);
  }
  bench_figure_t sq = {"executor", "fib30_seq", "s", "s", 0, mseq, "rust", rs, 0, runs};
  emit_vs_rayon(sq);
  bench_figure_t f = {"executor", "fib30", "t1_over_tseq", "x", 0, m1 / mseq,
                      "openmp", o1 / mseq, 0, runs};
  bench_emit(&f);
  f.metric = "t1_over_t2";
  f.value = m1 / m2;
  f.peer_value = o1 / o2;
  f.higher_is_better = 1;
  bench_emit(&f);

  uint64_t steals = s1.total.stolen - s0.total.stolen;
  uint64_t attempts = s1.total.steal_attempts - s0.total.steal_attempts;
  BENCH_PROGRESS("fib(30) on 2 workers: %llu steals in %llu attempts",
                 (unsigned long long)steals, (unsigned long long)attempts);
  bench_figure_t st = {"executor", "steal", "attempts_per_steal", "attempts", 2,
                       steals ? (double)attempts / (double)steals : 0, NULL, 0, 0, 1};
  bench_emit(&st);
}

/* ------------------------------------------------------------- skynet */

typedef struct {
  knhk_executor_t *ex;
  long num, size, sum;
} sky_t;

static int skynet_task(knhk_task_t *self) {
  sky_t *s = self->data;
  if (s->size == 1) {
    s->sum = s->num;
    return 0;
  }
  sky_t kids[10];
  knhk_task_t tasks[10];
  knhk_group_t g;
  knhk_group_init(&g);
  long child = s->size / 10;
  for (int i = 0; i < 10; i++) {
    kids[i] = (sky_t){s->ex, s->num + i * child, child, 0};
    knhk_task_init(&tasks[i], skynet_task, &kids[i]);
    tasks[i].group = &g;
    knhk_executor_spawn(s->ex, &tasks[i]);
  }
  knhk_executor_wait(s->ex, &g);
  long sum = 0;
  for (int i = 0; i < 10; i++) sum += kids[i].sum;
  s->sum = sum;
  return 0;
}

/* Skynet with knhk_join: a node's ten children split in halves by nested
 * joins, as a Rayon user writes it with rayon::join. */
typedef struct {
  knhk_executor_t *ex;
  long num, child; /* the node's first leaf, and its children's size */
  int lo, hi;      /* children lo..hi of the node */
  long sum;
} sky_kids_t;

static int skynet_kids(void *p);

static int skynet_node(sky_t *s) {
  if (s->size == 1) {
    s->sum = s->num;
    return 0;
  }
  sky_kids_t k = {s->ex, s->num, s->size / 10, 0, 10, 0};
  int rc = skynet_kids(&k);
  s->sum = k.sum;
  return rc;
}

static int skynet_kids(void *p) {
  sky_kids_t *k = p;
  if (k->hi - k->lo == 1) {
    sky_t s = {k->ex, k->num + k->lo * k->child, k->child, 0};
    int rc = skynet_node(&s);
    k->sum = s.sum;
    return rc;
  }
  int mid = (k->lo + k->hi) / 2;
  sky_kids_t a = {k->ex, k->num, k->child, k->lo, mid, 0};
  sky_kids_t b = {k->ex, k->num, k->child, mid, k->hi, 0};
  int rc = knhk_join(k->ex, skynet_kids, &a, skynet_kids, &b);
  k->sum = a.sum + b.sum;
  return rc;
}

static int skynet_join_task(knhk_task_t *self) { return skynet_node(self->data); }

static void bench_skynet(void) {
  const long leaves = 1000000, want = leaves * (leaves - 1) / 2;
  for (int w = 1; w <= 2; w++) {
    double ours[16], peer[16], join[16], ray[16];
    knhk_executor_t ex;
    start(&ex, w);
    /* join against Rayon first, taking turns, as in bench_fib */
    sky_t warm = {&ex, 0, leaves, 0};
    on_worker(&ex, skynet_join_task, &warm);
    if (have_rayon) rayon_secs(want, "skynet %ld %d", leaves, w);
    for (int r = 0; r < runs; r++) {
      for (int turn = 0; turn < 2; turn++) {
        if ((turn + r) % 2 == 0) {
          sky_t s = {&ex, 0, leaves, 0};
          uint64_t t0 = bench_now_ns();
          on_worker(&ex, skynet_join_task, &s);
          join[r] = (double)(bench_now_ns() - t0) / 1e9;
          check(s.sum, want, "skynet with join");
        } else {
          ray[r] = have_rayon ? rayon_secs(want, "skynet %ld %d", leaves, w) : 0;
        }
      }
    }
    for (int r = 0; r < runs; r++) {
      sky_t s = {&ex, 0, leaves, 0};
      uint64_t t0 = bench_now_ns();
      on_worker(&ex, skynet_task, &s);
      ours[r] = (double)(bench_now_ns() - t0) / 1e9;
      check(s.sum, want, "skynet");
      long sum;
      peer[r] = omp_skynet(w, leaves, &sum);
      check(sum, want, "OpenMP skynet");
    }
    knhk_executor_close(&ex);
    bench_figure_t f = {"executor", "skynet", "s", "s", w, bench_median(ours, runs),
                        "openmp", bench_median(peer, runs), 0, runs};
    bench_emit(&f);
    bench_figure_t j = {"executor", "skynet_join", "s", "s", w, bench_median(join, runs),
                        "rayon", bench_median(ray, runs), 0, runs};
    emit_vs_rayon(j);
  }
}

/* ---------------------------------------------------------- cpu-bound */

static _Atomic uint64_t busy_ns;

static int cpu_task(knhk_task_t *t) {
  uint64_t a = bench_now_ns();
  bench_spin_ns((uint64_t)(uintptr_t)t->data);
  atomic_fetch_add_explicit(&busy_ns, bench_now_ns() - a, memory_order_relaxed);
  return 0;
}

typedef struct {
  knhk_executor_t *ex;
  int tasks;
  uint64_t task_ns;
} cpu_t;

static int spawn_cpu(knhk_task_t *self) {
  cpu_t *c = self->data;
  knhk_group_t g;
  knhk_group_init(&g);
  for (int i = 0; i < c->tasks; i++)
    knhk_executor_submit(c->ex, cpu_task, (void *)(uintptr_t)c->task_ns, &g);
  return knhk_executor_wait(c->ex, &g);
}

static void bench_cpu_bound(void) {
  const int w = 2, tasks = 10000;
  const uint64_t task_ns = 10000;
  double ours[16], peer[16];
  knhk_executor_t ex;
  start(&ex, w);
  cpu_t c = {&ex, tasks, task_ns};
  for (int r = 0; r < runs; r++) {
    atomic_store(&busy_ns, 0);
    uint64_t t0 = bench_now_ns();
    on_worker(&ex, spawn_cpu, &c);
    double wall = (double)(bench_now_ns() - t0) / 1e9;
    ours[r] = (double)atomic_load(&busy_ns) / 1e9 / (w * wall);
    double busy = 0;
    double owall = omp_cpu_bound(w, tasks, task_ns, &busy);
    peer[r] = busy / (w * owall);
  }
  knhk_executor_close(&ex);
  bench_figure_t f = {"executor", "cpu_bound", "utilization", "fraction", w,
                      bench_median(ours, runs), "openmp", bench_median(peer, runs), 1, runs};
  bench_emit(&f);
}

int main(int argc, char **argv) {
  const char *only = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
      only = argv[++i];
    } else if (strcmp(argv[i], "--no-peer") == 0) {
      no_peer = 1;
    } else if (strcmp(argv[i], "--rayon") == 0 && i + 1 < argc) {
      if (rayon_peer_start(&rayon, argv[++i]) != 0) return 1;
      have_rayon = 1;
    } else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
      runs = atoi(argv[++i]);
      if (runs < 1 || runs > 16) {
        fprintf(stderr, "bench-executor: --runs takes 1..16, got '%s'\n", argv[i]);
        return 2;
      }
    } else {
      fprintf(stderr, "usage: bench-executor [--runs N] [--rayon PATH] "
                      "[--only spawn_latency|throughput|fib30|skynet|cpu_bound]\n");
      return 2;
    }
  }
  if (!have_rayon)
    BENCH_PROGRESS("no Rayon peer (--rayon PATH not given): figures against Rayon have no peer");
  double overhead = bench_timer_overhead_ticks();
  BENCH_PROGRESS("timer: %.1f ticks (%.1f ns) per empty timed region, subtracted", overhead,
                 overhead * bench_ns_per_tick());
  bench_figure_t timer = {"executor", "timer", "overhead", "ns", 0,
                          overhead * bench_ns_per_tick(), NULL, 0, 0, 1};
  bench_emit(&timer);
  struct {
    const char *name;
    void (*run)(void);
  } parts[] = {{"throughput", bench_throughput},
               {"fib30", bench_fib},
               {"skynet", bench_skynet},
               {"cpu_bound", bench_cpu_bound}};
  if (!only || strcmp(only, "spawn_latency") == 0) {
    BENCH_PROGRESS("spawn_latency");
    bench_spawn_latency(overhead);
  }
  for (unsigned i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    if (only && strcmp(only, parts[i].name) != 0) continue;
    BENCH_PROGRESS("%s", parts[i].name);
    parts[i].run();
  }
  if (have_rayon) rayon_peer_stop(&rayon);
  return 0;
}
