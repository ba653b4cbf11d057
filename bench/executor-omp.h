/* executor-omp.h: the executor workloads written with OpenMP tasks (libgomp),
 * the peer that bench-executor runs in the same invocation. */
#ifndef KNHK_EXECUTOR_OMP_H
#define KNHK_EXECUTOR_OMP_H
#include <stdint.h>

/* Times n batches of BENCH_BATCH task creations from one thread of a team
 * of `workers` into ticks[0..n). */
void omp_spawn_latency(int workers, int n, double *ticks);
/* Seconds to create, run and wait for n trivial tasks. */
double omp_throughput(int workers, long n);
/* Seconds for fib(n) with a task per call; *result gets fib(n). */
double omp_fib(int workers, int n, long *result);
/* Seconds for skynet over `leaves` leaves (a power of 10); *sum gets the sum. */
double omp_skynet(int workers, long leaves, long *sum);
/* Runs `tasks` tasks of about task_ns each; returns wall seconds and adds
 * the time spent inside task bodies to *busy_s. */
double omp_cpu_bound(int workers, int tasks, uint64_t task_ns, double *busy_s);

/* Shared by both sides so the work is identical. */
static inline long fib_seq(int n) { return n < 2 ? n : fib_seq(n - 1) + fib_seq(n - 2); }
void bench_spin_ns(uint64_t ns);
#endif
