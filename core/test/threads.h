/* threads.h: the number of threads this process runs, for tests that
 * check which threads a component starts. */
#ifndef KNHK_TEST_THREADS_H
#define KNHK_TEST_THREADS_H

#include <pthread.h>
#include <stdio.h>

#include "runner.h"

static void *no_thread_work(void *arg) { return arg; }

/* The threads of this process, from /proc/self/status. The first call
 * starts and joins a thread first: a sanitizer's runtime starts its own
 * helper thread at the first pthread_create, which would count. */
static int thread_count(void) {
  static int warm;
  if (!warm) {
    pthread_t t;
    ASSERT_OK(pthread_create(&t, NULL, no_thread_work, NULL));
    ASSERT_OK(pthread_join(t, NULL));
    warm = 1;
  }
  FILE *f = fopen("/proc/self/status", "r");
  ASSERT(f != NULL);
  char line[256];
  int n = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Threads: %d", &n) == 1) break;
  fclose(f);
  return n;
}

#endif
