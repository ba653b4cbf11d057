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
#include "klua_lines.h"

typedef struct {
  knhk_signal_t watch[2];
  _Atomic int first;                 /* the first signal received, or 0 */
  _Atomic(knhk_token_t *) target;    /* a line's scope (REPL), or NULL */
  _Atomic(klua_lines_t *) repl;      /* the REPL's line input, or NULL */
  _Atomic int line_cancelled;        /* a line's scope was cancelled, the line runs on */
  _Atomic int using_repl;            /* on_signal is using `repl` */
} klua_signals_t;

static klua_signals_t sigs;

/* Right after the root was cancelled: the tasks a worker is running now
 * have not reached a checkpoint, and cleanup waits for them. Say which,
 * and how to stop waiting, so that a long computation does not look like
 * a hang. Runs on the reactor thread. */
static void report_running(klua_rt_t *rt, int signum) {
  klua_task_row_t rows[8];
  int n = klua_tasks_running(rt, rows, 8);
  if (n == 0) return;
  const char *what = signum == SIGINT ? "interrupted" : "terminated";
  fprintf(stderr, "knhk: %s: cancelling; waiting for %d task%s that %s not reached a checkpoint:\n",
          what, n, n == 1 ? "" : "s", n == 1 ? "has" : "have");
  for (int i = 0; i < n; i++)
    fprintf(stderr, "  task %llu (%s), running on worker %d\n", (unsigned long long)rows[i].id,
            rows[i].where, rows[i].worker);
  fprintf(stderr, "knhk: %s again to end the process at once\n",
          signum == SIGINT ? "Ctrl-C" : "SIGTERM");
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
  knhk_token_cancel(rt->root_token, KNHK_CANCEL_SIGNAL);
  report_running(rt, signum);
}

/* Starts watching SIGINT and SIGTERM for rt. Returns 0 or an error. */
KLUA_API int klua_signals_start(klua_rt_t *rt) {
  atomic_store(&sigs.first, 0);
  atomic_store(&sigs.target, NULL);
  atomic_store(&sigs.repl, NULL);
  atomic_store(&sigs.line_cancelled, 0);
  atomic_store(&sigs.using_repl, 0);
  int rc = knhk_signal_start(rt->reactor, &sigs.watch[0], SIGINT, on_signal, rt);
  if (rc == 0) rc = knhk_signal_start(rt->reactor, &sigs.watch[1], SIGTERM, on_signal, rt);
  if (rc != 0) return rc;
  /* Until the reactor has installed the handlers, a signal would still take
   * its default action (and skip the cleanup): return only once it has. */
  while (!knhk_signal_active(&sigs.watch[0]) || !knhk_signal_active(&sigs.watch[1]))
    sched_yield();
  return 0;
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

/* The REPL's line input (NULL when the REPL ends): a SIGINT at the prompt
 * interrupts it instead of cancelling the root. Returns once no signal
 * handler uses the previous one (it may be freed then). */
KLUA_API void klua_signals_repl(klua_lines_t *lines) {
  atomic_store(&sigs.repl, lines);
  while (atomic_load(&sigs.using_repl)) sched_yield();
}
