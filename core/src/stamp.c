/* stamp.c: telemetry's timestamps ("stamps", declared in clock.h): the
 * CPU's time-stamp counter where it can serve as the clock, converted to
 * CLOCK_MONOTONIC nanoseconds off the hot path; else the clock itself. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

_Atomic int knhk__stamp_kind;
static double stamp_ns_per_tick = 1;
static pthread_once_t stamp_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__) || defined(__i386__)
/* 1 if `line` (a /proc/cpuinfo flags line) lists `flag` as a whole word. */
static int has_flag(const char *line, const char *flag) {
  size_t n = strlen(flag);
  for (const char *p = line; (p = strstr(p, flag)); p += n)
    if ((p == line || p[-1] == ' ' || p[-1] == '\t') && (p[n] == ' ' || p[n] == '\n' || !p[n]))
      return 1;
  return 0;
}

/* The counter is usable when it ticks at one rate whatever the CPU's
 * frequency and sleep state (constant_tsc, nonstop_tsc) and the kernel
 * chose it as its clocksource: it then checked that the CPUs' counters
 * agree, and keeps watching them (it switches away from a counter that
 * drifts, and we see that at the next process). */
static int tsc_usable(void) {
  const char *env = getenv("KNHK_STAMP");
  if (env && strcmp(env, "clock") == 0) return 0; /* asked for the plain clock */
  int ok = 0;
  FILE *f = fopen("/proc/cpuinfo", "re");
  if (f) {
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0)
      if (strncmp(line, "flags", 5) == 0) {
        ok = has_flag(line, "constant_tsc") && has_flag(line, "nonstop_tsc");
        break;
      }
    free(line);
    fclose(f);
  }
  f = ok ? fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "re") : NULL;
  ok = 0;
  if (f) {
    char src[32] = "";
    ok = fgets(src, sizeof src, f) && strcmp(src, "tsc\n") == 0;
    fclose(f);
  }
  return ok;
}
#endif

/* The closest of a few (counter, clock, counter) readings: the clock read
 * sits between the two counter reads, so their midpoint is its instant. */
static void tsc_pair(uint64_t *stamp, uint64_t *ns) {
#if defined(__x86_64__) || defined(__i386__)
  uint64_t best = UINT64_MAX;
  *stamp = *ns = 0;
  for (int i = 0; i < 4; i++) {
    uint64_t a = __rdtsc(), n = knhk__mono_ns(), b = __rdtsc();
    if (b - a < best) best = b - a, *stamp = a + (b - a) / 2, *ns = n;
  }
#else
  *stamp = *ns = knhk__mono_ns();
#endif
}

static void stamp_decide_once(void) {
  int kind = KNHK__STAMP_NS;
#if defined(__x86_64__) || defined(__i386__)
  if (tsc_usable()) {
    /* a first rate, over 2 ms; the telemetry refines it over its whole
     * recording (knhk__stamp_pair at each drain) */
    uint64_t s0, n0, s1, n1;
    tsc_pair(&s0, &n0);
    struct timespec two_ms = {0, 2000000};
    nanosleep(&two_ms, NULL);
    tsc_pair(&s1, &n1);
    double rate = s1 > s0 ? (double)(n1 - n0) / (double)(s1 - s0) : 0;
    if (rate > 0.01 && rate < 100) { /* 10 MHz to 100 GHz: a counter that ticks */
      stamp_ns_per_tick = rate;
      kind = KNHK__STAMP_TSC;
    }
  }
#endif
  atomic_store_explicit(&knhk__stamp_kind, kind, memory_order_release);
}

int knhk__stamp_decide(void) {
  pthread_once(&stamp_once, stamp_decide_once);
  return atomic_load_explicit(&knhk__stamp_kind, memory_order_acquire);
}

void knhk__stamp_pair(uint64_t *stamp, uint64_t *ns) {
  if (knhk__stamp_decide() == KNHK__STAMP_TSC) tsc_pair(stamp, ns);
  else *stamp = *ns = knhk__mono_ns();
}

double knhk__stamp_ns_per_tick(void) {
  knhk__stamp_decide();
  return stamp_ns_per_tick;
}

