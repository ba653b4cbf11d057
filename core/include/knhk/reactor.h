/* knhk/reactor.h: the reactor, one thread that owns a libuv loop.
 *
 * It runs timers (sleeps, token deadlines), signal watches, child processes
 * and file reads and writes. Requests reach it through a lock-free queue and
 * a uv_async_t; every request ends with exactly one completion callback, run
 * on the reactor thread (a task waiting for it is typically woken from there
 * with knhk_executor_wake). Requests are structs the caller owns: keep one
 * alive until its completion callback has run.
 *
 * Time: every sleep, deadline and timestamp of the runtime comes from
 * knhk_reactor_now(), the reactor's clock: real (monotonic ns) or virtual
 * (knhk/clock.h).
 */
#ifndef KNHK_REACTOR_H
#define KNHK_REACTOR_H

#include <stddef.h>
#include <stdint.h>
#include "knhk/cancel.h"
#include "knhk/clock.h"
#include "knhk/task.h"

typedef struct knhk_reactor_s knhk_reactor_t;

typedef struct {
  int clock; /* knhk_clock_kind */
} knhk_reactor_options_t;

/* Any thread. Makes a reactor with a real clock. Its thread starts with
 * the first request or signal watch (one never asked anything has none);
 * a request that cannot start it returns KNHK_ENOMEM.
 * Returns 0, KNHK_EINVAL, KNHK_ENOMEM or KNHK_EIO (libuv could not start). */
int knhk_reactor_new(knhk_reactor_t **out);
/* Any thread. As knhk_reactor_new, with the clock `opts` names (NULL:
 * real). Returns as knhk_reactor_new; KNHK_EINVAL for an unknown clock. */
int knhk_reactor_new_with(knhk_reactor_t **out, const knhk_reactor_options_t *opts);
/* Not from the reactor thread. Stops it: pending timers end cancelled,
 * running processes are killed and reaped, file operations finish, every
 * handle is closed, the thread is joined and the reactor freed. Returns 0,
 * or KNHK_EINVAL for NULL. */
int knhk_reactor_free(knhk_reactor_t *r);
/* Any thread. The runtime's clock, in nanoseconds: monotonic real time,
 * or virtual time from 0 (knhk/clock.h). */
uint64_t knhk_reactor_now(const knhk_reactor_t *r);

/* ----------------------------------------------------------------- timers */

typedef struct knhk_timer_s knhk_timer_t;
/* status: 0 when the deadline was reached, KNHK_ECANCELED when stopped
 * first (or when the reactor shut down). */
typedef void (*knhk_timer_fn)(knhk_timer_t *timer, int status);

struct knhk_timer_s {
  knhk_timer_fn on_done;
  void *data;
  uint64_t deadline;            /* knhk_reactor_now() time */
  /* private */
  knhk_link_t knhk__link;
  KNHK_ATOMIC(uint32_t) knhk__flags;
  uint32_t knhk__heap_index;
  uint32_t knhk__real;          /* on the real clock (knhk_timer_start_real) */
  uint64_t knhk__seq;           /* order of arrival, among equal deadlines */
  knhk_reactor_t *knhk__reactor;
};

/* Any thread. Arms `timer` (not armed now: new, or completed) to complete
 * at deadline_ns of the reactor's clock. Timers fire in deadline order;
 * equal deadlines in the order their starts reached the reactor (from one
 * thread: the order of the calls). Returns 0, KNHK_EINVAL or
 * KNHK_ESHUTDOWN. */
int knhk_timer_start(knhk_reactor_t *r, knhk_timer_t *timer, uint64_t deadline_ns,
                     knhk_timer_fn on_done, void *data);
/* Any thread. As knhk_timer_start, at deadline_ns of the real clock
 * (knhk_clock_real_ns) whatever the reactor's clock: for what must follow
 * real time under a virtual clock (telemetry's interval, a report to a
 * person). Under a real clock the same as knhk_timer_start. */
int knhk_timer_start_real(knhk_reactor_t *r, knhk_timer_t *timer, uint64_t deadline_ns,
                          knhk_timer_fn on_done, void *data);
/* Any thread. Asks for the timer to complete early with KNHK_ECANCELED.
 * Returns 0, or KNHK_EALREADY if it has completed (or is completing). */
int knhk_timer_stop(knhk_timer_t *timer);

/* ---------------------------------------------------------------- signals */

typedef struct knhk_signal_s knhk_signal_t;
/* Runs on the reactor thread each time the signal arrives; `count` is how
 * many times it has arrived since the watch began. */
typedef void (*knhk_signal_fn)(knhk_signal_t *watch, int signum, uint64_t count);

struct knhk_signal_s {
  knhk_signal_fn on_signal;
  void *data;
  int signum;
  /* private */
  knhk_link_t knhk__link;
  KNHK_ATOMIC(uint32_t) knhk__op;
  void *knhk__uv;
  uint64_t knhk__count;
  knhk_reactor_t *knhk__reactor;
  KNHK_ATOMIC(uint32_t) knhk__active;
};

/* Any thread. Watches `signum` (SIGINT, SIGTERM, ...) until stopped or the
 * reactor is freed. A watch started before the reactor's thread runs its
 * loop (the reactor's first request) is installed by this call: it is
 * active on return. Returns 0, KNHK_EINVAL, KNHK_ESHUTDOWN, or KNHK_ENOMEM
 * (the reactor's thread could not start). */
int knhk_signal_start(knhk_reactor_t *r, knhk_signal_t *watch, int signum,
                      knhk_signal_fn on_signal, void *data);
/* Any thread. 1 once the reactor has installed the watch's handler (the
 * signal no longer takes its default action), else 0. */
int knhk_signal_active(const knhk_signal_t *watch);
/* Any thread. Ends the watch (asynchronously; no callback after the
 * reactor has processed the stop). Returns 0 or KNHK_EINVAL. */
int knhk_signal_stop(knhk_signal_t *watch);

/* -------------------------------------------------------------- processes */

typedef struct knhk_process_s knhk_process_t;
typedef void (*knhk_process_fn)(knhk_process_t *proc);

/* A child process as one request: spawn, feed stdin, capture stdout and
 * stderr, reap.
 *
 * The child runs in a process group of its own (it calls setsid() before
 * exec, so it also has no controlling terminal). Stopping it signals the
 * whole group: SIGTERM, then SIGKILL once kill_grace_ns has passed (one
 * second by default). It is stopped when `token` is cancelled, and what is
 * left of its group when the child itself exits (background jobs) is
 * stopped the same way: no process of the group outlives the request.
 *
 * on_exit runs once, on the reactor thread, after the child has exited and
 * been reaped, no process of its group is running any more (zombies whose
 * reaping is init's business do not count), and its output has been read:
 * to the end, or, when something outside the group (a process that called
 * setsid itself) still holds a pipe, as far as it had been written. */
enum knhk_process_at { KNHK_PROCESS_AT_FILE = 0, KNHK_PROCESS_AT_CWD = 1 };

struct knhk_process_s {
  /* in */
  const char *file;          /* looked up in PATH unless it has a '/' */
  char **argv;               /* argv[0] included, NULL-terminated */
  char **env;                /* NULL: inherit */
  const char *cwd;           /* NULL: inherit */
  const char *stdin_data;    /* NULL: /dev/null */
  size_t stdin_len;
  knhk_token_t *token;       /* may be NULL */
  uint64_t kill_grace_ns;    /* SIGTERM to SIGKILL; 0: one second */
  knhk_process_fn on_exit;
  void *data;
  /* out, valid in on_exit */
  int error;                 /* 0, or why it could not run (KNHK_ENOENT, -errno) */
  int error_at;              /* knhk_process_at: what `error` is about, the */
                             /* command (file) or the working directory (cwd) */
  int64_t exit_status;
  int term_signal;           /* signal that ended it, or 0 */
  int cancelled;             /* killed because the token was cancelled */
  char *out, *err;           /* captured output, NUL-terminated; free with */
  size_t out_len, err_len;   /* knhk_process_dispose */
  /* private */
  knhk_link_t knhk__link;
  void *knhk__impl;
  knhk_reactor_t *knhk__reactor;
  knhk_cancel_cb_t knhk__cancel;
};

/* Any thread. Returns 0 (on_exit will run), KNHK_EINVAL or KNHK_ESHUTDOWN.
 * A command that cannot be started still completes through on_exit, with
 * `error` set. */
int knhk_process_spawn(knhk_reactor_t *r, knhk_process_t *proc);
/* Any thread, after on_exit: frees the captured output. */
void knhk_process_dispose(knhk_process_t *proc);

/* ------------------------------------------------------------------ files */

typedef struct knhk_file_op_s knhk_file_op_t;
typedef void (*knhk_file_fn)(knhk_file_op_t *op);

enum knhk_file_kind { KNHK_FILE_READ = 0, KNHK_FILE_WRITE = 1, KNHK_FILE_APPEND = 2 };

struct knhk_file_op_s {
  /* in */
  int kind;                  /* knhk_file_kind */
  const char *path;
  const char *data;          /* WRITE / APPEND */
  size_t len;
  knhk_file_fn on_done;
  void *user;
  /* out, valid in on_done */
  int error;                 /* 0 or a negative KNHK_E* / -errno */
  char *result;              /* READ: the contents, NUL-terminated */
  size_t result_len;
  /* private */
  knhk_link_t knhk__link;
  void *knhk__impl;
  knhk_reactor_t *knhk__reactor;
};

/* Any thread. Reads or writes a whole file off the caller's thread. Returns
 * 0 (on_done will run), KNHK_EINVAL or KNHK_ESHUTDOWN. */
int knhk_file_submit(knhk_reactor_t *r, knhk_file_op_t *op);
/* Any thread, after on_done: frees op->result. */
void knhk_file_dispose(knhk_file_op_t *op);

#endif
