/* clock.h: the one place core/src reads the system clock. */
#ifndef KNHK__MONO_NS_H
#define KNHK__MONO_NS_H
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

/* Any thread. Monotonic real time in nanoseconds. */
static inline uint64_t knhk__mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Stamps: telemetry's timestamps, read on the hot path and turned into
 * knhk__mono_ns's nanoseconds later, off it (knhk__stamp_pair gives the
 * points to convert with). A stamp is the CPU's time-stamp counter when
 * that counter is one clock for every CPU and the kernel itself builds
 * CLOCK_MONOTONIC on it: reading it costs less than half of a
 * clock_gettime (which reads it too, then scales it under a seqlock).
 * Elsewhere a stamp is knhk__mono_ns itself. The kind is chosen once per
 * process and never changes, so stamps taken by any thread at any time
 * compare. */
enum { KNHK__STAMP_UNDECIDED = 0, KNHK__STAMP_NS = 1, KNHK__STAMP_TSC = 2 };
extern _Atomic int knhk__stamp_kind;
/* Any thread. Decides the kind (once; later calls return it). */
int knhk__stamp_decide(void);

static inline uint64_t knhk__stamp(void) {
#if defined(__x86_64__) || defined(__i386__)
  int kind = atomic_load_explicit(&knhk__stamp_kind, memory_order_relaxed);
  if (__builtin_expect(kind == KNHK__STAMP_UNDECIDED, 0)) kind = knhk__stamp_decide();
  if (kind == KNHK__STAMP_TSC) return __rdtsc();
#endif
  return knhk__mono_ns();
}

/* Any thread. A stamp and the knhk__mono_ns of the same instant (within a
 * few ns: the closest of a few tries). */
void knhk__stamp_pair(uint64_t *stamp, uint64_t *ns);
/* Any thread. Nanoseconds per stamp, measured once when the kind was
 * decided (1 for KNHK__STAMP_NS): good enough until a longer baseline
 * exists. */
double knhk__stamp_ns_per_tick(void);
#endif
