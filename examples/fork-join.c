/* fork-join.c: fib(n) with a task per call on the work-stealing executor,
 * then the executor's counters. The C-level demo of the core; workflows
 * proper are Lua scripts in examples/.
 *
 *   scripts/run examples/fork-join [n] [workers]
 */
#include <stdio.h>
#include <stdlib.h>

#include "knhk/errors.h"
#include "knhk/executor.h"

typedef struct {
  knhk_executor_t *ex;
  int n;
  long result;
} fib_t;

static int fib(knhk_task_t *self) {
  fib_t *f = self->data;
  if (f->n < 2) {
    f->result = f->n;
    return 0;
  }
  fib_t a = {f->ex, f->n - 1, 0}, b = {f->ex, f->n - 2, 0};
  knhk_group_t g;
  knhk_task_t ta, tb;
  knhk_group_init(&g);
  knhk_task_init(&ta, fib, &a);
  ta.group = &g;
  int rc = knhk_executor_spawn(f->ex, &ta);
  if (rc != 0) return rc;
  knhk_task_init(&tb, fib, &b);
  fib(&tb);
  rc = knhk_executor_wait(f->ex, &g);
  f->result = a.result + b.result;
  return rc;
}

static int parse(const char *s, int lo, int hi, const char *what) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == 0 || *end || v < lo || v > hi) {
    fprintf(stderr, "fork-join: %s must be a number in %d..%d, got '%s'\n", what, lo, hi, s);
    exit(2);
  }
  return (int)v;
}

int main(int argc, char **argv) {
  knhk_executor_options_t o;
  if (knhk_executor_options_init(&o) != 0) {
    fprintf(stderr, "fork-join: KNHK_WORKERS must be a number in 1..%d\n", KNHK_MAX_WORKERS);
    return 2;
  }
  int n = argc > 1 ? parse(argv[1], 0, 40, "n") : 27;
  if (argc > 2) o.workers = parse(argv[2], 1, KNHK_MAX_WORKERS, "workers");

  knhk_executor_t ex;
  int rc = knhk_executor_init(&ex, &o);
  if (rc != 0) {
    fprintf(stderr, "fork-join: cannot start the executor: %s\n", knhk_strerror(rc));
    return 1;
  }
  fib_t f = {&ex, n, 0};
  knhk_task_t root;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&root, fib, &f);
  root.group = &g;
  if ((rc = knhk_executor_spawn(&ex, &root)) == 0) rc = knhk_executor_wait(&ex, &g);
  knhk_executor_shutdown(&ex, KNHK_SHUTDOWN_GRACEFUL);

  knhk_executor_stats_t s;
  knhk_executor_stats(&ex, &s, NULL, 0);
  knhk_executor_close(&ex);
  if (rc != 0) {
    fprintf(stderr, "fork-join: %s\n", knhk_strerror(rc));
    return 1;
  }
  printf("fib(%d) = %ld on %d workers\n", n, f.result, s.workers);
  printf("tasks: %llu spawned, %llu completed, %llu failed, %llu cancelled\n",
         (unsigned long long)s.total.spawned, (unsigned long long)s.total.completed,
         (unsigned long long)s.total.failed, (unsigned long long)s.total.cancelled);
  printf("stealing: %llu stolen in %llu attempts; %llu parks\n",
         (unsigned long long)s.total.stolen, (unsigned long long)s.total.steal_attempts,
         (unsigned long long)s.total.parks);
  return 0;
}
