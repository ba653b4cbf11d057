/* mirrors.c: a nursery in C. A download tries four mirrors at once and
 * keeps the first that answers (knhk_nursery_wait_any): two are down, one
 * never answers and is cancelled, one answers; the others are cancelled and
 * waited for before wait_any returns. Then the file's blocks are
 * checked in parallel and reported as each check ends (a JOIN nursery and
 * knhk_nursery_join_next).
 *
 *   scripts/run examples/mirrors [blocks] [workers]
 */
#include <stdio.h>
#include <stdlib.h>

#include "knhk/errors.h"
#include "knhk/nursery.h"

static knhk_executor_t ex;

typedef struct {
  const char *name;
  int behaviour;       /* 0 answers, 1 is down, 2 never answers */
  int waiting;
  knhk_cancel_cb_t cb; /* the one that never answers waits for this */
} mirror_t;

static void wake(knhk_cancel_cb_t *cb, int reason) {
  (void)reason;
  knhk_executor_wake(&ex, cb->data);
}

/* A mirror that never answers waits without holding its worker: it parks
 * (KNHK_TASK_PENDING) until the nursery's cancellation wakes it, then ends
 * as cancelled. */
static int fetch(knhk_child_t *self) {
  mirror_t *m = self->arg;
  if (m->behaviour == 1) return KNHK_EIO;
  if (m->behaviour == 2) {
    if (!m->waiting) {
      m->waiting = 1;
      knhk_token_t *t = knhk_nursery_token(self->nursery);
      if (t && knhk_token_on_cancel(t, &m->cb, wake, knhk_child_task(self)) == 0)
        return KNHK_TASK_PENDING;
    }
    knhk_token_off(&m->cb);
    return KNHK_ECANCELED;
  }
  self->result = (void *)m->name;
  return 0;
}

/* A block's check: a sum over its bytes, here made up from its index. */
typedef struct {
  int index;
  unsigned long sum;
} block_t;

static int check(knhk_child_t *self) {
  block_t *b = self->arg;
  unsigned long x = (unsigned long)b->index * 2654435761u + 1;
  for (int i = 0; i < 1000000; i++) x = x * 6364136223846793005ul + 1442695040888963407ul;
  b->sum = x >> 48;
  return 0;
}

static int parse(const char *s, int lo, int hi, const char *what) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == 0 || *end || v < lo || v > hi) {
    fprintf(stderr, "mirrors: %s must be a number in %d..%d, got '%s'\n", what, lo, hi, s);
    exit(2);
  }
  return (int)v;
}

static void fail(const char *what, int rc) {
  fprintf(stderr, "mirrors: %s: %s\n", what, knhk_strerror(rc));
  exit(1);
}

int main(int argc, char **argv) {
  knhk_executor_options_t o;
  if (knhk_executor_options_init(&o) != 0) {
    fprintf(stderr, "mirrors: KNHK_WORKERS must be a number in 1..%d\n", KNHK_MAX_WORKERS);
    return 2;
  }
  int nblocks = argc > 1 ? parse(argv[1], 1, 1000, "blocks") : 8;
  if (argc > 2) o.workers = parse(argv[2], 1, KNHK_MAX_WORKERS, "workers");
  int rc = knhk_executor_init(&ex, &o);
  if (rc != 0) fail("cannot start the executor", rc);

  /* The race. SUPERVISE: a mirror that is down must not cancel the others. */
  mirror_t mirrors[] = {{"north", 1, 0, {0}}, {"east", 2, 0, {0}}, {"south", 0, 0, {0}},
                        {"west", 1, 0, {0}}};
  knhk_nursery_t *n;
  if ((rc = knhk_nursery_new(&n, &ex, NULL, KNHK_NURSERY_SUPERVISE)) != 0) fail("nursery", rc);
  for (int i = 0; i < 4; i++)
    if ((rc = knhk_nursery_spawn(n, fetch, &mirrors[i])) != 0) fail("spawn", rc);
  knhk_child_t *winner;
  rc = knhk_nursery_wait_any(n, &winner); /* the others are cancelled and waited for */
  if (rc != 0) fail("no mirror answered", rc);
  printf("downloaded from %s (mirrors found down meanwhile: %d)\n",
         (const char *)winner->result, knhk_nursery_failures(n, NULL, 0));
  knhk_nursery_free(n);

  /* The checks, reported in the order they end. */
  block_t *blocks = calloc((size_t)nblocks, sizeof *blocks);
  if (!blocks) fail("blocks", KNHK_ENOMEM);
  if ((rc = knhk_nursery_new(&n, &ex, NULL, KNHK_NURSERY_JOIN)) != 0) fail("nursery", rc);
  for (int i = 0; i < nblocks; i++) {
    blocks[i].index = i;
    if ((rc = knhk_nursery_spawn(n, check, &blocks[i])) != 0) fail("spawn", rc);
  }
  knhk_child_t *c;
  unsigned long total = 0;
  int checked = 0;
  while ((rc = knhk_nursery_join_next(n, &c)) == 0) {
    block_t *b = c->arg;
    printf("block %d checked: %04lx\n", b->index, b->sum);
    total += b->sum;
    checked++;
  }
  if (rc != KNHK_ENOENT) fail("join", rc);
  printf("%d blocks checked, sum %lx\n", checked, total);
  knhk_nursery_free(n);
  free(blocks);
  knhk_executor_close(&ex);
  return 0;
}
