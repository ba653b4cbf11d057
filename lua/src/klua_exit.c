/* klua_exit.c: os.exit with a report first (knhk-lua --stats), in any VM.
 *
 * os.exit ends the process from whichever thread calls it, and a run has
 * one VM per worker: the script's on worker 0, one of the runtime's own on
 * each other worker. A program that wants something said before the
 * process ends (knhk-lua prints the executor's counters) names, before the
 * run, a module whose at_exit() says it (klua_exit_report_set); each VM of
 * a run then puts an os.exit of knhk.runtime's in front of its own, which
 * claims the exit (klua_exit_claim), runs the report and exits.
 *
 * The claim, per process:
 *
 *     open --(first claim, thread T)--> taken by T        (never goes back)
 *
 *   - open: the first thread to claim takes it and gets 1: it reports,
 *     then calls exit() at once with its own status.
 *   - taken: a claim from another thread never returns (that thread sleeps
 *     until the exit in progress ends the process), so the report is
 *     written once and whole, and the status is the first caller's; a
 *     second exit() running beside the first would race it in the C
 *     library (exit() is not thread-safe) and could end the process with
 *     its own status half-way through the report. A claim from T again
 *     (its exit runs a finalizer, e.g. of os.exit's `close`, that calls
 *     os.exit) gets 0: no second report, and no wait for itself.
 *
 * The caller makes sure a claim that got 1 is followed by exit(): its
 * status is read, and refused if bad, before the claim.
 *
 * The standard streams, from the claim on: exit() flushes the C library's
 * streams without taking their locks (glibc's _IO_cleanup flushes them
 * "underneath" whoever uses them). A task on another worker amid
 * io.write or io.flush of stdout, its buffer being written, had that
 * buffer written a second time by exit's flush: one "x" written twice.
 * The thread that took the claim holds the locks of stdout and stderr
 * until the process ends (its own writes, the report's, take them again:
 * they nest), so a write of another thread either ended before, or waits
 * before it touches the buffer and never runs. Other files a program
 * writes from several threads at once are its own to order. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "klua.h"
#include "klua_ffi.h"
#include "knhk/errors.h"

static char *report;                   /* the module, or NULL (see klua_exit_report_set) */
static _Atomic int claimed;            /* 0 open, 1 taken */
static _Thread_local int claimed_here; /* this thread took it */

/* The thread that starts runs, before any starts (the runtime's VMs read
 * it as they open, without a lock). Names the module whose at_exit()
 * reports at an os.exit (NULL: none, os.exit as it is). 0, or
 * KNHK_ENOMEM. */
KLUA_API int klua_exit_report_set(const char *module) {
  char *copy = NULL;
  if (module && !(copy = strdup(module))) return KNHK_ENOMEM;
  free(report);
  report = copy;
  return 0;
}

/* Any thread. The module klua_exit_report_set named, or NULL. */
KLUA_API const char *klua_exit_report(void) { return report; }

/* Any thread, in an os.exit that is about to call exit(). 1: the caller
 * is first and reports; 0: its own exit is under way already. Does not
 * return to any other thread (see the claim above). */
KLUA_API int klua_exit_claim(void) {
  if (claimed_here) return 0;
  int open = 0;
  /* seq_cst, and nothing else to order: the winner is the only thread
   * that goes on */
  if (!atomic_compare_exchange_strong(&claimed, &open, 1))
    for (;;) pause(); /* a signal's handler may wake it: sleep again */
  claimed_here = 1;
  /* a write of another thread in progress ends first (see above) */
  flockfile(stdout);
  flockfile(stderr);
  return 1;
}
