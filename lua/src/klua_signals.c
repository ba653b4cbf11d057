/* klua_signals.c: SIGINT / SIGTERM for a runtime. The first one cancels
 * the root token (reason KNHK_CANCEL_SIGNAL), so every checkpoint raises
 * Cancelled and cleanup code runs; a second one ends the process at once
 * with 128 + signal.
 *
 * The REPL changes what SIGINT does (SIGTERM stays as above):
 *  - while a line runs, it cancels that line's scope (klua_signals_target);
 *  - at the prompt, it discards the line being typed (klua_signals_repl,
 *    klua_lines_interrupt) and touches no task;
 *  - a SIGINT that comes while a cancelled line has not ended yet (it never
 *    reaches a checkpoint) is treated as above: the root is cancelled, and
 *    the next one ends the process. */
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "klua.h"
#include "klua_ffi.h"
#include "klua_lines.h"

typedef struct {
  knhk_signal_t watch[2];
  _Atomic int first;                 /* the first signal received, or 0 */
  _Atomic(knhk_token_t *) target;    /* a line's scope (REPL), or NULL */
  _Atomic(klua_lines_t *) repl;      /* the REPL's line input, or NULL */
  _Atomic int line_cancelled;        /* a line's scope was cancelled, the line runs on */
  _Atomic int using_repl;            /* on_signal is using `repl` */
  /* What SIGINT and SIGTERM did before the run (luajit's own SIGINT
   * handler, say): put back at its end, where libuv would leave the
   * default action, which ends the process. */
  struct sigaction before[2];
  int saved;
} klua_signals_t;

static klua_signals_t sigs;

/* The tasks a worker is running: right at the signal, and again a moment
 * after the cancel went out. One running at both has not reached a
 * checkpoint (a checkpoint would have ended it, or let others run), and
 * cleanup waits for it: say which, and how to stop waiting, so that a long
 * computation does not look like a hang. On the reactor thread. */
enum { REPORT_MAX = 8, REPORT_AFTER_NS = 200000000 };

typedef struct {
  knhk_timer_t timer;
  klua_rt_t *rt;
  int signum, n;
  uint64_t ids[REPORT_MAX];
} report_t;

static report_t report;

/* The tasks running now (a signal's report), at most REPORT_MAX. */
typedef struct {
  int n;
  uint64_t ids[REPORT_MAX];
  const char *where[REPORT_MAX];
  int worker[REPORT_MAX];
  const report_t *among; /* only these (the report after the cancel), or NULL */
} running_t;

static void add_running(void *ud, const klua_task_view_t *v) {
  running_t *r = ud;
  if (r->n == REPORT_MAX || v->state != KNHK_TASK_RUNNING) return;
  if (r->among) {
    int before = 0;
    for (int k = 0; k < r->among->n; k++) before |= r->among->ids[k] == v->id;
    if (!before) return;
  }
  r->ids[r->n] = v->id;
  r->where[r->n] = v->where;
  r->worker[r->n++] = v->home;
}

static void report_still_running(knhk_timer_t *tm, int status) {
  report_t *r = tm->data;
  if (status != 0) return;
  running_t now = {.among = r};
  klua_tasks_each(r->rt, add_running, &now);
  int n = now.n;
  if (n == 0) return;
  const char *what = r->signum == SIGINT ? "interrupted" : "terminated";
  fprintf(stderr, "knhk: %s: cancelling; waiting for %d task%s that %s not reached a checkpoint:\n",
          what, n, n == 1 ? "" : "s", n == 1 ? "has" : "have");
  for (int i = 0; i < n; i++)
    fprintf(stderr, "  task %llu (%s), running on worker %d\n", (unsigned long long)now.ids[i],
            now.where[i], now.worker[i]);
  fprintf(stderr, "knhk: %s again to end the process at once\n",
          r->signum == SIGINT ? "Ctrl-C" : "SIGTERM");
}

/* Before the cancel: who is running; a moment after it: the report. */
static void report_later(klua_rt_t *rt, int signum) {
  running_t now = {.among = NULL};
  klua_tasks_each(rt, add_running, &now);
  int n = now.n;
  report.rt = rt;
  report.signum = signum;
  report.n = n;
  for (int i = 0; i < n; i++) report.ids[i] = now.ids[i];
  if (n > 0)
    knhk_timer_start_real(rt->reactor, &report.timer, knhk_clock_real_ns() + REPORT_AFTER_NS,
                          report_still_running, &report); /* a person waits: real time */
}

static void on_signal(knhk_signal_t *w, int signum, uint64_t count) {
  (void)count;
  klua_rt_t *rt = w->data;
  if (signum == SIGINT) {
    knhk_token_t *target = atomic_exchange(&sigs.target, NULL);
    if (target) { /* REPL: cancel the current line only */
      atomic_store(&sigs.line_cancelled, 1);
      knhk_token_cancel(target, KNHK_CANCEL_SIGNAL);
      knhk_token_release(target);
      return;
    }
    /* seq_cst, with klua_signals_repl: either it sees us using the lines
     * and waits, or we see NULL */
    atomic_fetch_add(&sigs.using_repl, 1);
    klua_lines_t *repl = atomic_load(&sigs.repl);
    int at_prompt = repl && !atomic_load(&sigs.line_cancelled);
    if (at_prompt) klua_lines_interrupt(repl); /* REPL, at the prompt */
    atomic_fetch_sub(&sigs.using_repl, 1);
    if (at_prompt) return;
  }
  int expected = 0;
  if (!atomic_compare_exchange_strong(&sigs.first, &expected, signum)) _exit(128 + signum);
  report_later(rt, signum);
  knhk_token_cancel(rt->root_token, KNHK_CANCEL_SIGNAL);
}

/* Starts watching SIGINT and SIGTERM for rt (klua_rt_new, once rt has
 * its root token). Returns 0 or an error. The reactor's thread installs the
 * handlers: klua_signals_wait waits for that. */
int klua_signals_start(klua_rt_t *rt) {
  atomic_store(&sigs.first, 0);
  atomic_store(&sigs.target, NULL);
  atomic_store(&sigs.repl, NULL);
  atomic_store(&sigs.line_cancelled, 0);
  atomic_store(&sigs.using_repl, 0);
  /* (before the reactor's thread installs libuv's handlers) */
  sigs.saved = sigaction(SIGINT, NULL, &sigs.before[0]) == 0 &&
               sigaction(SIGTERM, NULL, &sigs.before[1]) == 0;
  int rc = knhk_signal_start(rt->reactor, &sigs.watch[0], SIGINT, on_signal, rt);
  if (rc == 0) rc = knhk_signal_start(rt->reactor, &sigs.watch[1], SIGTERM, on_signal, rt);
  return rc;
}

/* The run has ended and its reactor is freed (its handlers are gone):
 * SIGINT and SIGTERM do again what they did before klua_signals_start. */
void klua_signals_restore(void) {
  if (!sigs.saved) return;
  sigaction(SIGINT, &sigs.before[0], NULL);
  sigaction(SIGTERM, &sigs.before[1], NULL);
  sigs.saved = 0;
}

/* Until the reactor has installed the handlers, a signal would still take
 * its default action (and skip the cleanup): core.root waits here before
 * any task can run. */
void klua_signals_wait(void) {
  while (!knhk_signal_active(&sigs.watch[0]) || !knhk_signal_active(&sigs.watch[1]))
    sched_yield();
}

/* The first signal received since klua_signals_start, or 0. */
KLUA_API int klua_signals_received(void) { return atomic_load(&sigs.first); }

/* Until the next SIGINT, route it to `token` (NULL: back to the prompt, or
 * to the root outside the REPL). Either way the previous line has ended. */
KLUA_API void klua_signals_target(knhk_token_t *token) {
  if (token) knhk_token_retain(token);
  atomic_store(&sigs.line_cancelled, 0);
  knhk_token_t *old = atomic_exchange(&sigs.target, token);
  if (old) knhk_token_release(old);
}

/* The reactor's thread, when a virtual clock finds every task waiting with
 * nothing to wake one: the REPL line that runs, if any, is cancelled (the
 * REPL goes on, as after a Ctrl-C). 1 then, 0 when no line runs. */
int klua_signals_cancel_line(void) {
  knhk_token_t *target = atomic_exchange(&sigs.target, NULL);
  if (!target) return 0;
  atomic_store(&sigs.line_cancelled, 1);
  knhk_token_cancel(target, KNHK_CANCEL_SHUTDOWN);
  knhk_token_release(target);
  return 1;
}

/* The REPL's line input (NULL when the REPL ends): a SIGINT at the prompt
 * interrupts it instead of cancelling the root. Returns once no signal
 * handler uses the previous one (it may be freed then). */
KLUA_API void klua_signals_repl(klua_lines_t *lines) {
  atomic_store(&sigs.repl, lines);
  while (atomic_load(&sigs.using_repl)) sched_yield();
}
