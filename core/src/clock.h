/* clock.h: the one place core/src reads the system clock. */
#ifndef KNHK__MONO_NS_H
#define KNHK__MONO_NS_H
#include <stdint.h>
#include <time.h>

/* Any thread. Monotonic real time in nanoseconds. */
static inline uint64_t knhk__mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
#endif
