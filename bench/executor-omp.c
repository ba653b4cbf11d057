/* executor-omp.c: the peer. Same workloads as bench-executor.c, with
 * `#pragma omp task` / `taskwait` in place of spawn / group wait. */
#include <omp.h>

#include "bench.h"
#include "executor-omp.h"

void bench_spin_ns(uint64_t ns) {
  uint64_t end = bench_now_ns() + ns;
  while (bench_now_ns() < end) {
  }
}

void omp_spawn_latency(int workers, int n, double *ticks) {
#pragma omp parallel num_threads(workers)
#pragma omp single
  {
    for (int i = 0; i < n; i++) {
      uint64_t a = bench_ticks();
      for (int k = 0; k < BENCH_BATCH; k++) {
#pragma omp task
        { __asm__ __volatile__("" ::: "memory"); }
      }
      ticks[i] = (double)(bench_ticks() - a);
    }
#pragma omp taskwait
  }
}

double omp_throughput(int workers, long n) {
  uint64_t t0 = bench_now_ns();
#pragma omp parallel num_threads(workers)
#pragma omp single
  {
    for (long i = 0; i < n; i++) {
#pragma omp task
      { __asm__ __volatile__("" ::: "memory"); }
    }
#pragma omp taskwait
  }
  return (double)(bench_now_ns() - t0) / 1e9;
}

static long fib_omp(int n) {
  if (n < 2) return n;
  long a, b;
#pragma omp task shared(a)
  a = fib_omp(n - 1);
  b = fib_omp(n - 2);
#pragma omp taskwait
  return a + b;
}

double omp_fib(int workers, int n, long *result) {
  uint64_t t0 = bench_now_ns();
#pragma omp parallel num_threads(workers)
#pragma omp single
  *result = fib_omp(n);
  return (double)(bench_now_ns() - t0) / 1e9;
}

static long skynet_omp(long num, long size) {
  if (size == 1) return num;
  long sums[10];
  long child = size / 10;
  for (int i = 0; i < 10; i++) {
#pragma omp task shared(sums)
    sums[i] = skynet_omp(num + i * child, child);
  }
#pragma omp taskwait
  long s = 0;
  for (int i = 0; i < 10; i++) s += sums[i];
  return s;
}

double omp_skynet(int workers, long leaves, long *sum) {
  uint64_t t0 = bench_now_ns();
#pragma omp parallel num_threads(workers)
#pragma omp single
  *sum = skynet_omp(0, leaves);
  return (double)(bench_now_ns() - t0) / 1e9;
}

double omp_cpu_bound(int workers, int tasks, uint64_t task_ns, double *busy_s) {
  uint64_t busy = 0;
  uint64_t t0 = bench_now_ns();
#pragma omp parallel num_threads(workers)
#pragma omp single
  {
    for (int i = 0; i < tasks; i++) {
#pragma omp task shared(busy)
      {
        uint64_t a = bench_now_ns();
        bench_spin_ns(task_ns);
        __atomic_fetch_add(&busy, bench_now_ns() - a, __ATOMIC_RELAXED);
      }
    }
#pragma omp taskwait
  }
  double wall = (double)(bench_now_ns() - t0) / 1e9;
  *busy_s += (double)busy / 1e9;
  return wall;
}
