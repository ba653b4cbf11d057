/* klua_signals.c: SIGINT / SIGTERM for a runtime. The first one cancels
 * the root token (reason KNHK_CANCEL_SIGNAL), so every checkpoint raises
 * Cancelled and cleanup code runs; a second one ends the process at once
 * with 128 + signal. A REPL may instead route SIGINT to the scope of the
 * line being run (klua_signals_target). */
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "klua.h"

typedef struct {
  knhk_signal_t watch[2];
  _Atomic int first;                 /* the first signal received, or 0 */
  _Atomic(knhk_token_t *) target;    /* a line's scope (REPL), or NULL */
} klua_signals_t;

static klua_signals_t sigs;

static void on_signal(knhk_signal_t *w, int signum, uint64_t count) {
  (void)count;
  klua_rt_t *rt = w->data;
  knhk_token_t *target = atomic_exchange(&sigs.target, NULL);
  if (target && signum == SIGINT) { /* REPL: cancel the current line only */
    knhk_token_cancel(target, KNHK_CANCEL_SIGNAL);
    knhk_token_release(target);
    return;
  }
  if (target) knhk_token_release(target);
  int expected = 0;
  if (!atomic_compare_exchange_strong(&sigs.first, &expected, signum)) _exit(128 + signum);
  knhk_token_cancel(rt->root_token, KNHK_CANCEL_SIGNAL);
}

/* Starts watching SIGINT and SIGTERM for rt. Returns 0 or an error. */
KLUA_API int klua_signals_start(klua_rt_t *rt) {
  atomic_store(&sigs.first, 0);
  atomic_store(&sigs.target, NULL);
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

/* Until the next SIGINT, route it to `token` (NULL: back to the root). */
KLUA_API void klua_signals_target(knhk_token_t *token) {
  if (token) knhk_token_retain(token);
  knhk_token_t *old = atomic_exchange(&sigs.target, token);
  if (old) knhk_token_release(old);
}
