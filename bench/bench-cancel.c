/* bench-cancel.c: suite `cancel` — tokens, nurseries, cancellation latency,
 * timer precision and memory per waiting task. No peer: these are the
 * runtime's own primitives; the issue sets absolute targets.
 *
 *   bench-cancel [--runs N]      JSON lines on stdout (see bench.h)
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <sched.h>
#include <stdatomic.h>

#include "bench.h"
#include "knhk/errors.h"
#include "knhk/executor.h"
#include "knhk/nursery.h"
#include "knhk/reactor.h"

static int runs = 5;

static void emit(const char *bench, const char *metric, const char *unit, int workers,
                 double *v, int higher) {
  bench_figure_t f = {"cancel", bench, metric, unit, workers, bench_median(v, (size_t)runs),
                      NULL, 0, higher, runs};
  bench_emit(&f);
}

/* ------------------------------------------------------------- tokens */

static void bench_tokens(void) {
  enum { N = 2000000 };
  double is_c[16], child[16], cancel[16], grand[16];
  knhk_token_t *root, *c, *g;
  knhk_token_new(&root, NULL);
  knhk_token_new(&c, root);
  knhk_token_new(&g, c);
  knhk_token_t **fresh = malloc(N / 4 * sizeof *fresh);
  for (int r = 0; r < runs; r++) {
    /* is_cancelled: the load must happen every time (asm barrier) */
    knhk_token_t *volatile vt = root;
    long hits = 0;
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < N; i++) {
      hits += knhk_token_is_cancelled(vt);
      __asm__ __volatile__("" ::: "memory");
    }
    is_c[r] = (double)(bench_now_ns() - t0) / N;
    knhk_token_t *volatile vg = g;
    t0 = bench_now_ns();
    for (int i = 0; i < N; i++) {
      hits += knhk_token_is_cancelled(vg);
      __asm__ __volatile__("" ::: "memory");
    }
    grand[r] = (double)(bench_now_ns() - t0) / N;
    if (hits) abort();

    t0 = bench_now_ns();
    for (int i = 0; i < N / 4; i++) {
      knhk_token_t *k;
      knhk_token_new(&k, root);
      knhk_token_release(k);
    }
    child[r] = (double)(bench_now_ns() - t0) / (N / 4);

    for (int i = 0; i < N / 4; i++) knhk_token_new(&fresh[i], NULL);
    t0 = bench_now_ns();
    for (int i = 0; i < N / 4; i++) knhk_token_cancel(fresh[i], KNHK_CANCEL_EXPLICIT);
    cancel[r] = (double)(bench_now_ns() - t0) / (N / 4);
    for (int i = 0; i < N / 4; i++) knhk_token_release(fresh[i]);
  }
  free(fresh);
  knhk_token_release(g);
  knhk_token_release(c);
  knhk_token_release(root);
  emit("token_is_cancelled", "ns", "ns", 0, is_c, 0);
  emit("token_grandchild_is_cancelled", "ns", "ns", 0, grand, 0);
  emit("token_child_create_drop", "ns", "ns", 0, child, 0);
  emit("token_cancel", "ns", "ns", 0, cancel, 0);
}

/* ---------------------------------------------------------- nurseries */

static knhk_executor_t ex;

static int trivial(knhk_child_t *c) {
  (void)c;
  return 0;
}

static int noop(knhk_task_t *t) {
  (void)t;
  return 0;
}

typedef struct {
  int k, reps;
  double ns, group_ns;
} nurs_t;

/* On a worker: `reps` nurseries of k trivial children each (made, spawned
 * into, waited for, freed), then the same shape with what a child is
 * meant to cost as much as: a join group of k pooled tasks. */
static int nursery_loop(knhk_task_t *t) {
  nurs_t *a = t->data;
  uint64_t t0 = bench_now_ns();
  for (int i = 0; i < a->reps; i++) {
    knhk_nursery_t *n;
    if (knhk_nursery_new(&n, &ex, NULL, 0) != 0) abort();
    for (int j = 0; j < a->k; j++)
      if (knhk_nursery_spawn(n, trivial, NULL) != 0) abort();
    if (knhk_nursery_wait_all(n) != 0) abort();
    knhk_nursery_free(n);
  }
  a->ns = (double)(bench_now_ns() - t0) / a->reps;
  t0 = bench_now_ns();
  for (int i = 0; i < a->reps; i++) {
    knhk_group_t g;
    knhk_group_init(&g);
    for (int j = 0; j < a->k; j++)
      if (knhk_executor_submit(&ex, noop, NULL, &g) != 0) abort();
    if (knhk_executor_wait(&ex, &g) != 0) abort();
  }
  a->group_ns = (double)(bench_now_ns() - t0) / a->reps;
  return 0;
}

static void on_worker(knhk_task_fn fn, void *arg) {
  knhk_task_t t;
  knhk_group_t g;
  knhk_group_init(&g);
  knhk_task_init(&t, fn, arg);
  t.group = &g;
  knhk_executor_spawn(&ex, &t);
  knhk_executor_wait(&ex, &g);
}

/* nursery_spawn_wait_K: "ns" is one nursery of K children, from its
 * creation to its free; "ns_per_child" the same divided by K, against a
 * join group of K pooled tasks (peer "group") in the same runs. */
static void bench_nurseries(void) {
  int ks[] = {1, 10, 100};
  const char *names[] = {"nursery_spawn_wait_1", "nursery_spawn_wait_10", "nursery_spawn_wait_100"};
  for (int i = 0; i < 3; i++) {
    double v[16], per[16], group[16];
    for (int r = 0; r < runs; r++) {
      nurs_t a = {ks[i], 20000 / ks[i] + 100, 0, 0};
      on_worker(nursery_loop, &a);
      v[r] = a.ns;
      per[r] = a.ns / ks[i];
      group[r] = a.group_ns / ks[i];
    }
    emit(names[i], "ns", "ns", 2, v, 0);
    bench_figure_t f = {"cancel", names[i], "ns_per_child", "ns", 2,
                        bench_median(per, (size_t)runs), "group",
                        bench_median(group, (size_t)runs), 0, runs};
    bench_emit(&f);
  }
}

/* ------------------------------------------------- cancellation latency */

/* A task that waits (parked, not blocking its worker) for its token, then
 * runs its cleanup: records when. */
typedef struct {
  knhk_task_t task;
  knhk_cancel_cb_t cb;
  knhk_token_t *token;
  uint64_t cleaned_at;
  int armed;
} waiter_t;

static _Atomic long armed_count;

static void wake_waiter(knhk_cancel_cb_t *cb, int reason) {
  (void)reason;
  knhk_executor_wake(&ex, cb->data);
}

static int waiter_run(knhk_task_t *t) {
  waiter_t *w = t->data;
  if (!w->armed) {
    w->armed = 1;
    int rc = knhk_token_on_cancel(w->token, &w->cb, wake_waiter, t);
    atomic_fetch_add(&armed_count, 1);
    if (rc == 0) return KNHK_TASK_PENDING;
  }
  w->cleaned_at = bench_now_ns();
  return KNHK_ECANCELED;
}

static void bench_cancel_latency(void) {
  enum { N = 10000 };
  double v[16], bytes[16];
  waiter_t *ws = calloc(N, sizeof *ws);
  for (int r = 0; r < runs; r++) {
    knhk_token_t *root;
    knhk_token_new(&root, NULL);
    knhk_group_t g;
    knhk_group_init(&g);
    atomic_store(&armed_count, 0);
    struct mallinfo2 m0 = mallinfo2();
    for (int i = 0; i < N; i++) {
      ws[i] = (waiter_t){.token = NULL};
      knhk_token_new(&ws[i].token, root); /* each its own scope, as tasks have */
      knhk_task_init(&ws[i].task, waiter_run, &ws[i]);
      ws[i].task.group = &g;
      knhk_executor_spawn(&ex, &ws[i].task);
    }
    while (atomic_load(&armed_count) < N) sched_yield();
    struct mallinfo2 m1 = mallinfo2();
    /* the task record + callback + its token: what one waiting task costs */
    bytes[r] = (double)sizeof(waiter_t) + (double)(m1.uordblks - m0.uordblks) / N;
    uint64_t t0 = bench_now_ns();
    knhk_token_cancel(root, KNHK_CANCEL_EXPLICIT);
    knhk_executor_wait(&ex, &g);
    uint64_t last = 0;
    for (int i = 0; i < N; i++) {
      if (ws[i].cleaned_at > last) last = ws[i].cleaned_at;
      knhk_token_off(&ws[i].cb);
      knhk_token_release(ws[i].token);
    }
    v[r] = (double)(last - t0) / 1e6;
    knhk_token_release(root);
  }
  free(ws);
  emit("cancel_10k_waiters", "ms_to_last_wake", "ms", 2, v, 0);
  emit("waiting_task", "bytes", "bytes", 0, bytes, 0);
}

/* ----------------------------------------------------- timer precision */

typedef struct {
  knhk_timer_t t;
  uint64_t late_ns;
} sleeper_t;

static _Atomic long timers_left;
static knhk_reactor_t *reactor;

static void sleeper_done(knhk_timer_t *t, int status) {
  (void)status;
  sleeper_t *s = (sleeper_t *)t;
  s->late_ns = knhk_reactor_now(reactor) - t->deadline;
  atomic_fetch_sub(&timers_left, 1);
}

static void bench_timers(void) {
  enum { N = 100000 };
  double v[16];
  sleeper_t *ss = calloc(N, sizeof *ss);
  double *late = malloc(N * sizeof *late);
  for (int r = 0; r < runs; r++) {
    atomic_store(&timers_left, N);
    uint64_t now = knhk_reactor_now(reactor);
    for (int i = 0; i < N; i++) {
      memset(&ss[i].t, 0, sizeof ss[i].t);
      /* spread over 100..600 ms so all are queued before the first is due */
      uint64_t d = now + 100000000 + (uint64_t)(i % 500) * 1000000 + (uint64_t)(i % 997) * 1000;
      knhk_timer_start(reactor, &ss[i].t, d, sleeper_done, NULL);
    }
    while (atomic_load(&timers_left) > 0) sched_yield();
    for (int i = 0; i < N; i++) late[i] = (double)ss[i].late_ns / 1e6;
    v[r] = bench_percentile(late, N, 0.99);
  }
  free(ss);
  free(late);
  emit("timers_100k", "p99_lateness_ms", "ms", 0, v, 0);
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
      runs = atoi(argv[++i]);
      if (runs < 1 || runs > 16) {
        fprintf(stderr, "bench-cancel: --runs takes 1..16, got '%s'\n", argv[i]);
        return 2;
      }
    } else {
      fprintf(stderr, "usage: bench-cancel [--runs N]\n");
      return 2;
    }
  }
  knhk_executor_options_t o;
  knhk_executor_options_init(&o);
  o.workers = 2;
  if (knhk_executor_init(&ex, &o) != 0 || knhk_reactor_new(&reactor) != 0) {
    fprintf(stderr, "bench-cancel: cannot start the executor or the reactor\n");
    return 1;
  }
  BENCH_PROGRESS("tokens");
  bench_tokens();
  BENCH_PROGRESS("nurseries");
  bench_nurseries();
  BENCH_PROGRESS("cancellation latency");
  bench_cancel_latency();
  BENCH_PROGRESS("timers");
  bench_timers();
  knhk_reactor_free(reactor);
  knhk_executor_close(&ex);
  return 0;
}
