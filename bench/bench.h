/* bench.h: timing, statistics and JSON-line output (bench/README.md) for the C benchmarks.
 *
 * Every figure is one JSON line on stdout:
 *   {"suite":..,"bench":..,"metric":..,"unit":..,"workers":..,"value":..,
 *    "peer":..,"peer_value":..,"ratio":..,"better":..,"runs":..}
 * scripts/bench turns those lines into the table (with targets) or passes
 * them through with --json. Progress goes to stderr.
 */
#ifndef KNHK_BENCH_H
#define KNHK_BENCH_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

/* Per-call latencies are timed over this many back-to-back calls: the
 * cycle counter of some machines (AMD EPYC under a hypervisor, here) moves
 * in steps of about 10 ns, coarser than one spawn. */
#define BENCH_BATCH 4

static inline uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Cycle counter for per-call timings; lfence keeps the timed instructions
 * between the two reads. Elsewhere: the monotonic clock. */
static inline uint64_t bench_ticks(void) {
#if defined(__x86_64__) || defined(__i386__)
  _mm_lfence();
  uint64_t t = __rdtsc();
  _mm_lfence();
  return t;
#else
  return bench_now_ns();
#endif
}

/* Nanoseconds per tick, measured against the monotonic clock. */
static inline double bench_ns_per_tick(void) {
  static double cached;
  if (cached > 0) return cached;
  uint64_t n0 = bench_now_ns(), t0 = bench_ticks();
  while (bench_now_ns() - n0 < 50000000u) {
  }
  uint64_t n1 = bench_now_ns(), t1 = bench_ticks();
  cached = (double)(n1 - n0) / (double)(t1 - t0);
  return cached;
}

static int bench_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* p in [0,1]; sorts v in place. */
static inline double bench_percentile(double *v, size_t n, double p) {
  qsort(v, n, sizeof *v, bench_cmp_double);
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return v[i];
}

static inline double bench_median(double *v, size_t n) { return bench_percentile(v, n, 0.5); }

/* Cost of an empty timed region, in ticks (median of many). */
static inline double bench_timer_overhead_ticks(void) {
  enum { N = 10001 };
  static double v[N];
  for (int i = 0; i < N; i++) {
    uint64_t a = bench_ticks();
    uint64_t b = bench_ticks();
    v[i] = (double)(b - a);
  }
  return bench_median(v, N);
}

typedef struct {
  const char *suite, *bench, *metric, *unit;
  int workers;             /* 0: not applicable */
  double value;
  const char *peer;        /* NULL: no peer for this figure */
  double peer_value;
  int higher_is_better;
  int runs;
} bench_figure_t;

static inline void bench_emit(const bench_figure_t *f) {
  printf("{\"suite\":\"%s\",\"bench\":\"%s\",\"metric\":\"%s\",\"unit\":\"%s\"", f->suite,
         f->bench, f->metric, f->unit);
  if (f->workers > 0) printf(",\"workers\":%d", f->workers);
  printf(",\"value\":%.6g", f->value);
  if (f->peer) {
    double ratio = f->higher_is_better ? f->value / f->peer_value : f->peer_value / f->value;
    printf(",\"peer\":\"%s\",\"peer_value\":%.6g,\"ratio\":%.4g", f->peer, f->peer_value, ratio);
  }
  printf(",\"better\":\"%s\",\"runs\":%d}\n", f->higher_is_better ? "higher" : "lower", f->runs);
  fflush(stdout);
}

#define BENCH_PROGRESS(...)                                                     \
  do {                                                                          \
    fprintf(stderr, "  " __VA_ARGS__);                                          \
    fputc('\n', stderr);                                                        \
  } while (0)

#endif
