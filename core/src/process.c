/* process.c: child processes on the reactor (see knhk/reactor.h).
 *
 * Each child runs in a process group of its own: libuv's
 * UV_PROCESS_DETACHED makes it call setsid() before exec, so its pid is its
 * group id from its first instruction on (no window in which it could fork
 * outside the group), and it has no controlling terminal: a Ctrl-C typed at
 * the terminal reaches the runtime, which decides what is cancelled.
 * Stopping a process signals the whole group: SIGTERM, then SIGKILL once
 * the grace period has passed.
 *
 * A process request ends (on_exit runs) only when
 *   1. the direct child has exited and been reaped (libuv's exit callback);
 *   2. no process of its group is still running: what the child left behind
 *      (a background job, a grandchild that held on when the child was
 *      signalled) is stopped the same way, TERM then KILL;
 *   3. its pipes are closed: at end of file, or, once 1 and 2 hold, after
 *      reading what is left in them without waiting. A process that left
 *      the group (its own setsid) and kept a pipe open is not waited for.
 *
 * No event tells that a process which is not our child has ended, so 2 is
 * polled (from 1 ms, doubling up to 64 ms) while group members remain: a
 * member counts as running until it is a zombie (an orphan's zombie is
 * reaped by init, which some containers' PID 1 does late, or never).
 *
 * Under a virtual clock a process holds the clock (no jump) from its
 * spawn to the end of its on_exit; its kill grace and polls are real time.
 *
 * The group id is the child's pid. Once every member is gone and reaped the
 * kernel may give that number to a new process; a group is only signalled
 * while it still had running members at the last look, a few ms earlier.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "knhk/errors.h"
#include "reactor_impl.h"

enum { IN = 0, OUT = 1, ERR = 2 };
enum { POLL_FIRST_MS = 1, POLL_MAX_MS = 64 };

struct knhk__proc {
  knhk_process_t *p;
  knhk_reactor_t *r;
  uv_process_t proc;
  uv_pipe_t pipe[3];             /* stdin, stdout, stderr */
  uv_write_t write_req;
  uv_timer_t kill_timer;         /* SIGKILL to the group after the grace */
  uv_timer_t poll_timer;         /* is a member of the group still running? */
  int pgid;
  uint64_t grace_ms, poll_ms;
  int open_handles;              /* 3 pipes, 2 timers, the process; done at 0 */
  int open_pipes;
  int spawned, exited, term_sent, kill_sent, group_gone;
  knhk_link_t kill_link;
  _Atomic uint32_t kill_queued;  /* kill_link is (or is being) queued */
  int completed;                 /* on_exit ran; free once kill_link is out */
  char *buf[3];                  /* captured stdout, stderr (index OUT, ERR) */
  size_t len[3], cap[3];
  knhk__proc_t *prev, *next;     /* r->live_procs */
};

/* 1 if a process of group `pgid` still runs (is not a zombie), else 0. */
static int group_running(int pgid) {
  /* Fails (ESRCH) once no process of the group exists, zombies included;
   * also (EPERM) when all that is left changed user: those we cannot stop. */
  if (kill(-pgid, 0) != 0) return 0;
  DIR *d = opendir("/proc");
  if (!d) return 0; /* cannot tell zombies apart: do not wait for them */
  int running = 0;
  struct dirent *e;
  char path[sizeof e->d_name + 8], stat[512];
  while (!running && (e = readdir(d))) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "%s/stat", e->d_name);
    int fd = openat(dirfd(d), path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue; /* ended meanwhile */
    ssize_t n = read(fd, stat, sizeof stat - 1);
    close(fd);
    if (n <= 0) continue;
    stat[n] = 0;
    /* "pid (comm) state ppid pgrp ...": comm may contain ')' and spaces */
    char *rp = strrchr(stat, ')');
    char state;
    int ppid, pgrp;
    if (!rp || sscanf(rp + 1, " %c %d %d", &state, &ppid, &pgrp) != 3) continue;
    if (pgrp == pgid && state != 'Z' && state != 'X') running = 1;
  }
  closedir(d);
  return running;
}

static void proc_unlink(knhk__proc_t *pi) {
  knhk_reactor_t *r = pi->r;
  if (pi->prev) pi->prev->next = pi->next;
  else if (r->live_procs == pi) r->live_procs = pi->next;
  if (pi->next) pi->next->prev = pi->prev;
  pi->prev = pi->next = NULL;
}

static void proc_complete(knhk__proc_t *pi) {
  knhk_process_t *p = pi->p;
  proc_unlink(pi);
  /* No kill request can be queued after off returns (the callback that
   * queues it has finished). */
  if (p->token) knhk_token_off(&p->knhk__cancel);
  for (int i = OUT; i <= ERR; i++) { /* NUL-terminated, "" when there was none */
    char *b = pi->buf[i] ? pi->buf[i] : calloc(1, 1);
    size_t n = pi->buf[i] ? pi->len[i] : 0;
    if (b) b[n] = 0;
    *(i == OUT ? &p->out : &p->err) = b;
    *(i == OUT ? &p->out_len : &p->err_len) = b ? n : 0;
    pi->buf[i] = NULL;
  }
  pi->completed = 1;
  int free_now = !ld_acquire(&pi->kill_queued);
  p->knhk__impl = NULL;
  knhk_reactor_t *r = pi->r;
  p->on_exit(p); /* may free p */
  if (free_now) free(pi);
  knhk_clock_release(r); /* after on_exit woke its task: see knhk_process_spawn */
}

static void proc_settle(knhk__proc_t *pi);

static void proc_handle_closed(uv_handle_t *h) {
  knhk__proc_t *pi = h->data;
  pi->open_handles--;
  if (h->type == UV_NAMED_PIPE) {
    pi->open_pipes--;
    proc_settle(pi);
  }
  if (pi->open_handles == 0) proc_complete(pi);
}

static void proc_close(uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, proc_handle_closed);
}

static int pipe_index(knhk__proc_t *pi, const void *h) {
  return (const uv_pipe_t *)h == &pi->pipe[OUT] ? OUT : ERR;
}

static void proc_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  knhk__proc_t *pi = h->data;
  int i = pipe_index(pi, h);
  if (suggested < 4096) suggested = 4096;
  if (pi->cap[i] - pi->len[i] < suggested + 1) {
    size_t cap = pi->cap[i] ? pi->cap[i] : 8192;
    while (cap - pi->len[i] < suggested + 1) cap *= 2;
    char *b = realloc(pi->buf[i], cap);
    if (!b) {
      *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS to on_read */
      return;
    }
    pi->buf[i] = b;
    pi->cap[i] = cap;
  }
  *buf = uv_buf_init(pi->buf[i] + pi->len[i], (unsigned)(pi->cap[i] - pi->len[i] - 1));
}

static void proc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  knhk__proc_t *pi = s->data;
  if (n > 0) pi->len[pipe_index(pi, s)] += (size_t)n;
  else if (n < 0) proc_close((uv_handle_t *)s); /* EOF or error */
}

/* Reads what an output pipe holds now, without waiting: the group has
 * ended, so nothing of it writes any more. */
static void proc_drain(knhk__proc_t *pi, int i) {
  uv_os_fd_t fd;
  if (uv_is_closing((uv_handle_t *)&pi->pipe[i]) || uv_fileno((uv_handle_t *)&pi->pipe[i], &fd) != 0)
    return;
  for (;;) {
    uv_buf_t b;
    proc_alloc((uv_handle_t *)&pi->pipe[i], 65536, &b);
    if (!b.base) return;
    ssize_t n = read(fd, b.base, b.len);
    if (n > 0) pi->len[i] += (size_t)n;
    else if (n < 0 && errno == EINTR) continue;
    else return; /* end of file, or EAGAIN: held open outside the group */
  }
}

static void proc_written(uv_write_t *req, int status) {
  (void)status;
  knhk__proc_t *pi = req->data;
  proc_close((uv_handle_t *)&pi->pipe[IN]);
}

static void proc_kill_hard(uv_timer_t *t) {
  knhk__proc_t *pi = t->data;
  pi->kill_sent = 1;
  kill(-pi->pgid, SIGKILL);
  proc_settle(pi);
}

/* SIGTERM to the group now, SIGKILL after the grace. */
static void proc_term(knhk__proc_t *pi, uint64_t grace_ms) {
  pi->term_sent = 1;
  kill(-pi->pgid, SIGTERM);
  /* libuv counts from the time cached when this turn of the loop began,
   * which lags behind under load: the grace would end early. */
  uv_update_time(&pi->r->loop);
  uv_timer_start(&pi->kill_timer, proc_kill_hard, grace_ms, 0);
}

static void proc_poll(uv_timer_t *t) { proc_settle(t->data); }

/* Moves a process request towards its end (see the top of this file);
 * called whenever something it waits for may have happened. */
static void proc_settle(knhk__proc_t *pi) {
  if (!pi->exited || pi->completed) return;
  if (!pi->group_gone) {
    if (group_running(pi->pgid)) {
      if (!pi->term_sent) proc_term(pi, pi->grace_ms); /* the step is over */
      if (!uv_is_active((uv_handle_t *)&pi->poll_timer)) {
        uv_timer_start(&pi->poll_timer, proc_poll, pi->poll_ms, 0);
        if (pi->poll_ms < POLL_MAX_MS) pi->poll_ms *= 2;
      }
      return;
    }
    pi->group_gone = 1;
    uv_timer_stop(&pi->kill_timer);
    uv_timer_stop(&pi->poll_timer);
  }
  for (int i = OUT; i <= ERR; i++) {
    proc_drain(pi, i);
    proc_close((uv_handle_t *)&pi->pipe[i]);
  }
  proc_close((uv_handle_t *)&pi->pipe[IN]); /* a pending write ends cancelled */
  if (pi->open_pipes == 0) {
    proc_close((uv_handle_t *)&pi->kill_timer);
    proc_close((uv_handle_t *)&pi->poll_timer);
  }
}

static void proc_exited(uv_process_t *h, int64_t status, int signum) {
  knhk__proc_t *pi = h->data;
  pi->p->exit_status = status;
  pi->p->term_signal = signum;
  pi->exited = 1;
  proc_close((uv_handle_t *)h);
  proc_settle(pi);
}

/* A cancel or a shutdown: stop the group now (TERM, KILL after grace_ms). */
static void proc_stop(knhk__proc_t *pi, uint64_t grace_ms) {
  if (!pi->spawned || pi->group_gone) return;
  if (!pi->exited) pi->p->cancelled = 1;
  if (!pi->term_sent) proc_term(pi, grace_ms);
  else if (!pi->kill_sent && grace_ms == 0)
    uv_timer_start(&pi->kill_timer, proc_kill_hard, 0, 0);
}

static void proc_on_cancel(knhk_cancel_cb_t *cb, int reason) {
  (void)reason;
  knhk_process_t *p = cb->data;
  knhk__proc_t *pi = p->knhk__impl;
  uint32_t zero = 0;
  if (atomic_compare_exchange_strong_explicit(&pi->kill_queued, &zero, 1, memory_order_acq_rel,
                                              memory_order_relaxed))
    if (knhk__reactor_submit(p->knhk__reactor, &p->knhk__reactor->kills, &pi->kill_link) != 0)
      st_release(&pi->kill_queued, 0); /* shutting down: everything gets killed */
}

void knhk__proc_take_kills(knhk_reactor_t *r) {
  knhk_link_t *l;
  while ((l = knhk__reactor_take(&r->kills))) {
    knhk__proc_t *pi = container_of(l, knhk__proc_t, kill_link);
    if (pi->completed) {
      free(pi);
      continue;
    }
    st_release(&pi->kill_queued, 0);
    proc_stop(pi, pi->grace_ms);
  }
}

void knhk__proc_shutdown(knhk_reactor_t *r) {
  for (knhk__proc_t *pi = r->live_procs; pi; pi = pi->next) proc_stop(pi, 0);
}

/* Why a spawn failed: the working directory, when it is not one we can
 * enter (uv_spawn reports a bad cwd and a missing command alike). */
static int cwd_error(const char *cwd) {
  struct stat st;
  if (!cwd) return 0;
  if (stat(cwd, &st) != 0) return errno == ENOENT ? KNHK_ENOENT : -errno;
  if (!S_ISDIR(st.st_mode)) return -ENOTDIR;
  if (access(cwd, X_OK) != 0) return -errno;
  return 0;
}

static void proc_start(knhk_reactor_t *r, knhk_process_t *p) {
  knhk__proc_t *pi = calloc(1, sizeof *pi);
  if (!pi) {
    p->error = KNHK_ENOMEM;
    p->on_exit(p);
    knhk_clock_release(r);
    return;
  }
  pi->p = p;
  pi->r = r;
  pi->grace_ms = p->kill_grace_ns ? p->kill_grace_ns / 1000000 : 1000;
  pi->poll_ms = POLL_FIRST_MS;
  p->knhk__impl = pi;
  pi->next = r->live_procs;
  if (pi->next) pi->next->prev = pi;
  r->live_procs = pi;
  for (int i = 0; i < 3; i++) {
    uv_pipe_init(&r->loop, &pi->pipe[i], 0);
    pi->pipe[i].data = pi;
  }
  uv_timer_init(&r->loop, &pi->kill_timer);
  uv_timer_init(&r->loop, &pi->poll_timer);
  pi->kill_timer.data = pi->poll_timer.data = pi;
  pi->open_handles = 6;
  pi->open_pipes = 3;
  uv_stdio_container_t stdio[3];
  stdio[IN].flags = p->stdin_data ? (uv_stdio_flags)(UV_CREATE_PIPE | UV_READABLE_PIPE) : UV_IGNORE;
  stdio[OUT].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[ERR].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  for (int i = 0; i < 3; i++) stdio[i].data.stream = (uv_stream_t *)&pi->pipe[i];
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.exit_cb = proc_exited;
  o.file = p->file;
  o.args = p->argv;
  o.env = p->env;
  o.cwd = p->cwd;
  o.flags = UV_PROCESS_DETACHED; /* setsid(): a process group of its own */
  o.stdio_count = 3;
  o.stdio = stdio;
  pi->proc.data = pi;
  int rc = uv_spawn(&r->loop, &pi->proc, &o);
  if (rc != 0) {
    int cwd_rc = cwd_error(p->cwd);
    p->error = cwd_rc ? cwd_rc : rc == UV_ENOENT ? KNHK_ENOENT : rc;
    p->error_at = cwd_rc ? KNHK_PROCESS_AT_CWD : KNHK_PROCESS_AT_FILE;
    pi->exited = pi->group_gone = 1;
    for (int i = 0; i < 3; i++) proc_close((uv_handle_t *)&pi->pipe[i]);
    proc_close((uv_handle_t *)&pi->kill_timer);
    proc_close((uv_handle_t *)&pi->poll_timer);
    proc_close((uv_handle_t *)&pi->proc); /* initialised even on failure */
    return;
  }
  pi->spawned = 1;
  pi->pgid = pi->proc.pid;
  uv_read_start((uv_stream_t *)&pi->pipe[OUT], proc_alloc, proc_read);
  uv_read_start((uv_stream_t *)&pi->pipe[ERR], proc_alloc, proc_read);
  if (p->stdin_data) {
    uv_buf_t b = uv_buf_init((char *)p->stdin_data, (unsigned)p->stdin_len);
    pi->write_req.data = pi;
    if (uv_write(&pi->write_req, (uv_stream_t *)&pi->pipe[IN], &b, 1, proc_written) != 0)
      proc_close((uv_handle_t *)&pi->pipe[IN]);
  } else {
    proc_close((uv_handle_t *)&pi->pipe[IN]);
  }
  if (p->token && knhk_token_on_cancel(p->token, &p->knhk__cancel, proc_on_cancel, p) ==
                      KNHK_ECANCELED)
    proc_stop(pi, pi->grace_ms);
  if (r->shutting_down) proc_stop(pi, 0);
}

void knhk__proc_take_spawns(knhk_reactor_t *r) {
  knhk_link_t *l;
  while ((l = knhk__reactor_take(&r->procs))) proc_start(r, container_of(l, knhk_process_t, knhk__link));
}

int knhk_process_spawn(knhk_reactor_t *r, knhk_process_t *p) {
  if (!r || !p || !p->file || !p->argv || !p->argv[0] || !p->on_exit) return KNHK_EINVAL;
  p->error = 0;
  p->error_at = KNHK_PROCESS_AT_FILE;
  p->exit_status = 0;
  p->term_signal = 0;
  p->cancelled = 0;
  p->out = p->err = NULL;
  p->out_len = p->err_len = 0;
  p->knhk__impl = NULL;
  p->knhk__reactor = r;
  /* A process holds the clock from here to the end of its on_exit: a
   * virtual clock stands still while it runs (knhk/clock.h). Taken before
   * the request is visible, so the reactor never sees it unheld. */
  knhk_clock_hold(r);
  int rc = knhk__reactor_submit(r, &r->procs, &p->knhk__link);
  if (rc != 0) knhk_clock_release(r);
  return rc;
}

void knhk_process_dispose(knhk_process_t *p) {
  if (!p) return;
  free(p->out);
  free(p->err);
  p->out = p->err = NULL;
  p->out_len = p->err_len = 0;
}
