/* test-reactor.c: timers, signals, child processes and files on the reactor. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "knhk/errors.h"
#include "knhk/reactor.h"
#include "latch.h"
#include "runner.h"
#include "threads.h"

static knhk_reactor_t *reactor(void) {
  knhk_reactor_t *r = NULL;
  ASSERT_OK(knhk_reactor_new(&r));
  return r;
}

/* --------------------------------------------------------------- timers */

typedef struct {
  latch_t done;
  knhk_timer_t *timers;
  uint64_t *fired_at;     /* reactor time at completion */
  uint32_t *order;        /* completion order (reactor thread only) */
  _Atomic uint32_t n;
  _Atomic int statuses[3]; /* 0: fired, 1: cancelled, 2: other */
  knhk_reactor_t *r;
} timers_t;

static void timer_done(knhk_timer_t *t, int status) {
  timers_t *s = t->data;
  uint32_t i = atomic_fetch_add(&s->n, 1);
  if (s->order) s->order[i] = (uint32_t)(t - s->timers);
  if (s->fired_at) s->fired_at[t - s->timers] = knhk_reactor_now(s->r);
  atomic_fetch_add(&s->statuses[status == 0 ? 0 : status == KNHK_ECANCELED ? 1 : 2], 1);
  latch_count_down(&s->done);
}

TEST(reactor_start_and_free) {
  knhk_reactor_t *r = reactor();
  ASSERT(knhk_reactor_now(r) > 0);
  ASSERT_OK(knhk_reactor_free(r));
  ASSERT_EQ(KNHK_EINVAL, knhk_reactor_free(NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_reactor_new(NULL));
}

static void hold_reactor(knhk_timer_t *t, int status) {
  (void)status;
  latch_wait(t->data); /* blocks the reactor thread until all are queued */
}

TEST(reactor_100k_timers_fire_in_deadline_order) {
  enum { N = 100000 };
  int n = KNHK_TEST_SCALE(N);
  knhk_reactor_t *r = reactor();
  timers_t s = {.timers = calloc((size_t)n, sizeof(knhk_timer_t)),
                .order = calloc((size_t)n, sizeof(uint32_t)),
                .fired_at = calloc((size_t)n, sizeof(uint64_t)),
                .r = r};
  latch_init(&s.done, (uint32_t)n);
  /* Queue every timer while the reactor thread is held, so none can fire
   * before a timer with an earlier deadline has even arrived. */
  latch_t queued;
  latch_init(&queued, 1);
  knhk_timer_t hold;
  memset(&hold, 0, sizeof hold);
  ASSERT_OK(knhk_timer_start(r, &hold, 0, hold_reactor, &queued));
  uint64_t now = knhk_reactor_now(r);
  unsigned seed = 7;
  for (int i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    uint64_t d = now + 10000000 + (uint64_t)((seed >> 8) % 200) * 1000000; /* 10..210 ms */
    ASSERT_OK(knhk_timer_start(r, &s.timers[i], d, timer_done, &s));
  }
  latch_count_down(&queued);
  latch_wait(&s.done);
  ASSERT_EQ(n, atomic_load(&s.statuses[0]));
  for (int i = 1; i < n; i++)
    if (s.timers[s.order[i]].deadline < s.timers[s.order[i - 1]].deadline)
      KNHK_FAIL("timer %u (deadline %llu, fired %llu) fired after %u (deadline %llu, fired %llu); start %llu",
                s.order[i], (unsigned long long)s.timers[s.order[i]].deadline,
                (unsigned long long)s.fired_at[s.order[i]], s.order[i - 1],
                (unsigned long long)s.timers[s.order[i - 1]].deadline,
                (unsigned long long)s.fired_at[s.order[i - 1]], (unsigned long long)now);
  for (int i = 0; i < n; i++) ASSERT_GE(s.fired_at[i], s.timers[i].deadline); /* never early */
  ASSERT_OK(knhk_reactor_free(r));
  free(s.timers);
  free(s.order);
  free(s.fired_at);
}

TEST(reactor_stopped_timer_completes_once_cancelled) {
  knhk_reactor_t *r = reactor();
  enum { N = 10000 };
  timers_t s = {.timers = calloc(N, sizeof(knhk_timer_t)), .r = r};
  latch_init(&s.done, N);
  uint64_t far = knhk_reactor_now(r) + 3600000000000ull;
  for (int i = 0; i < N; i++) ASSERT_OK(knhk_timer_start(r, &s.timers[i], far, timer_done, &s));
  for (int i = 0; i < N; i++) ASSERT_OK(knhk_timer_stop(&s.timers[i]));
  latch_wait(&s.done);
  ASSERT_EQ(N, atomic_load(&s.statuses[1]));
  ASSERT_EQ(N, atomic_load(&s.n));
  for (int i = 0; i < N; i++) ASSERT_EQ(KNHK_EALREADY, knhk_timer_stop(&s.timers[i]));
  /* a completed timer can be armed again */
  latch_init(&s.done, 1);
  ASSERT_OK(knhk_timer_start(r, &s.timers[0], knhk_reactor_now(r), timer_done, &s));
  latch_wait(&s.done);
  ASSERT_EQ(1, atomic_load(&s.statuses[0]));
  ASSERT_OK(knhk_reactor_free(r));
  free(s.timers);
}

TEST(reactor_free_completes_pending_timers_as_cancelled) {
  knhk_reactor_t *r = reactor();
  enum { N = 1000 };
  timers_t s = {.timers = calloc(N, sizeof(knhk_timer_t)), .r = r};
  latch_init(&s.done, N);
  uint64_t far = knhk_reactor_now(r) + 3600000000000ull;
  for (int i = 0; i < N; i++) ASSERT_OK(knhk_timer_start(r, &s.timers[i], far, timer_done, &s));
  ASSERT_OK(knhk_reactor_free(r));
  ASSERT_EQ(N, atomic_load(&s.statuses[1]));
  free(s.timers);
}

TEST(reactor_refuses_bad_requests) {
  knhk_reactor_t *r = reactor();
  knhk_timer_t t;
  memset(&t, 0, sizeof t);
  ASSERT_EQ(KNHK_EINVAL, knhk_timer_start(NULL, &t, 0, timer_done, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_timer_start(r, &t, 0, NULL, NULL));
  ASSERT_EQ(KNHK_EINVAL, knhk_timer_stop(&t)); /* never started */
  knhk_process_t p;
  memset(&p, 0, sizeof p);
  ASSERT_EQ(KNHK_EINVAL, knhk_process_spawn(r, &p));
  knhk_file_op_t f;
  memset(&f, 0, sizeof f);
  ASSERT_EQ(KNHK_EINVAL, knhk_file_submit(r, &f));
  knhk_signal_t w;
  ASSERT_EQ(KNHK_EINVAL, knhk_signal_start(r, &w, 0, NULL, NULL));
  ASSERT_OK(knhk_reactor_free(r));
}

/* -------------------------------------------------------------- signals */

static void on_usr1(knhk_signal_t *w, int signum, uint64_t count) {
  ASSERT_EQ(SIGUSR1, signum);
  ASSERT_GE(count, 1);
  atomic_store((_Atomic int *)w->data, 1); /* a flag: several may arrive */
}

TEST(reactor_delivers_signals_to_a_watch) {
  knhk_reactor_t *r = reactor();
  knhk_signal_t w;
  _Atomic int got = 0;
  ASSERT_OK(knhk_signal_start(r, &w, SIGUSR1, on_usr1, (void *)&got));
  /* The watch is installed asynchronously: wait until it is active, so the
   * signal never takes its default action (ending this process). */
  while (!knhk_signal_active(&w)) sched_yield();
  ASSERT_EQ(1, knhk_signal_active(&w));
  while (!atomic_load(&got)) {
    kill(getpid(), SIGUSR1);
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL); /* pacing the retries, not ordering anything */
  }
  ASSERT_OK(knhk_signal_stop(&w));
  ASSERT_OK(knhk_reactor_free(r));
}


TEST(reactor_thread_starts_with_the_first_request) {
  int before = thread_count();
  knhk_reactor_t *r = reactor();
  ASSERT_EQ(before, thread_count()); /* nothing asked yet */
  ASSERT_OK(knhk_reactor_free(r));
  ASSERT_EQ(before, thread_count());
  r = reactor();
  knhk_timer_t t;
  timers_t s = {.timers = &t, .r = r};
  latch_init(&s.done, 1);
  ASSERT_OK(knhk_timer_start(r, &t, knhk_reactor_now(r), timer_done, &s));
  latch_wait(&s.done);
  ASSERT_EQ(1, atomic_load(&s.statuses[0]));
  ASSERT_EQ(before + 1, thread_count());
  ASSERT_OK(knhk_reactor_free(r));
  ASSERT_EQ(before, thread_count());
}

static void on_usr2(knhk_signal_t *w, int signum, uint64_t count) {
  ASSERT_EQ(SIGUSR2, signum);
  ASSERT_GE(count, 1);
  atomic_store((_Atomic int *)w->data, 1);
}

TEST(reactor_first_signal_watch_is_active_at_once) {
  knhk_reactor_t *r = reactor();
  knhk_signal_t w;
  _Atomic int got = 0;
  ASSERT_OK(knhk_signal_start(r, &w, SIGUSR2, on_usr2, (void *)&got));
  ASSERT_EQ(1, knhk_signal_active(&w)); /* no wait: a signal now is caught */
  kill(getpid(), SIGUSR2);
  while (!atomic_load(&got)) sched_yield(); /* the reactor's thread runs the callback */
  ASSERT_OK(knhk_signal_stop(&w));
  ASSERT_OK(knhk_reactor_free(r));
  struct sigaction sa;
  ASSERT_OK(sigaction(SIGUSR2, NULL, &sa));
  ASSERT(sa.sa_handler == SIG_DFL); /* given back */
  /* Freed with the watch still on, and never a request: the same. */
  r = reactor();
  ASSERT_OK(knhk_signal_start(r, &w, SIGUSR2, on_usr2, (void *)&got));
  ASSERT_EQ(1, knhk_signal_active(&w));
  ASSERT_OK(knhk_reactor_free(r));
  ASSERT_OK(sigaction(SIGUSR2, NULL, &sa));
  ASSERT(sa.sa_handler == SIG_DFL);
}

/* ------------------------------------------------------------ processes */

static void proc_done(knhk_process_t *p) { latch_count_down(p->data); }

static void run(knhk_reactor_t *r, knhk_process_t *p, char **argv) {
  latch_t done;
  latch_init(&done, 1);
  p->file = argv[0];
  p->argv = argv;
  p->on_exit = proc_done;
  p->data = &done;
  ASSERT_OK(knhk_process_spawn(r, p));
  latch_wait(&done);
}

TEST(process_exit_status_and_output) {
  knhk_reactor_t *r = reactor();
  knhk_process_t p;
  memset(&p, 0, sizeof p);
  char *argv[] = {"sh", "-c", "echo out; echo err >&2; exit 3", NULL};
  run(r, &p, argv);
  ASSERT_EQ(0, p.error);
  ASSERT_EQ(3, p.exit_status);
  ASSERT_EQ(0, p.term_signal);
  ASSERT(strcmp(p.out, "out\n") == 0);
  ASSERT(strcmp(p.err, "err\n") == 0);
  ASSERT_EQ(4, p.out_len);
  knhk_process_dispose(&p);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(process_stdin_is_fed_and_large_output_captured) {
  knhk_reactor_t *r = reactor();
  size_t n = 1 << 20;
  char *input = malloc(n);
  for (size_t i = 0; i < n; i++) input[i] = (char)('a' + i % 26);
  knhk_process_t p;
  memset(&p, 0, sizeof p);
  p.stdin_data = input;
  p.stdin_len = n;
  char *argv[] = {"cat", NULL};
  run(r, &p, argv);
  ASSERT_EQ(0, p.exit_status);
  ASSERT_EQ(n, p.out_len);
  ASSERT(memcmp(p.out, input, n) == 0);
  ASSERT_EQ(0, p.err_len);
  ASSERT(p.err && p.err[0] == 0);
  knhk_process_dispose(&p);
  free(input);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(process_that_leaves_its_stdin_unread_ends_well) {
  /* Our write to its stdin fails with EPIPE, which raised SIGPIPE and
   * ended this process (no handler here: the default action). */
  knhk_reactor_t *r = reactor();
  size_t n = 1 << 20; /* more than a pipe holds: the write meets the exit */
  char *input = calloc(1, n);
  ASSERT(input != NULL);
  for (int i = 0; i < 3; i++) {
    knhk_process_t p;
    memset(&p, 0, sizeof p);
    p.stdin_data = input;
    p.stdin_len = n;
    char *argv[] = {"true", NULL};
    run(r, &p, argv);
    ASSERT_EQ(0, p.error);
    ASSERT_EQ(0, p.exit_status);
    ASSERT_EQ(0, p.term_signal);
    knhk_process_dispose(&p);
  }
  struct sigaction sa;
  ASSERT_OK(sigaction(SIGPIPE, NULL, &sa));
  ASSERT(sa.sa_handler == SIG_DFL); /* nothing changed process-wide */
  free(input);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(process_missing_command_reports_enoent) {
  knhk_reactor_t *r = reactor();
  knhk_process_t p;
  memset(&p, 0, sizeof p);
  char *argv[] = {"/nonexistent/knhk-no-such-command", NULL};
  run(r, &p, argv);
  ASSERT_EQ(KNHK_ENOENT, p.error);
  ASSERT_EQ(KNHK_PROCESS_AT_FILE, p.error_at);
  knhk_process_dispose(&p);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(process_in_a_bad_cwd_reports_the_cwd) {
  knhk_reactor_t *r = reactor();
  char *argv[] = {"pwd", NULL};
  knhk_process_t p;
  memset(&p, 0, sizeof p);
  p.cwd = "/nonexistent/knhk-no-such-dir";
  run(r, &p, argv);
  ASSERT_EQ(KNHK_ENOENT, p.error);
  ASSERT_EQ(KNHK_PROCESS_AT_CWD, p.error_at);
  knhk_process_dispose(&p);
  memset(&p, 0, sizeof p);
  p.cwd = "/dev/null"; /* exists, not a directory */
  run(r, &p, argv);
  ASSERT_EQ(-ENOTDIR, p.error);
  ASSERT_EQ(KNHK_PROCESS_AT_CWD, p.error_at);
  knhk_process_dispose(&p);
  ASSERT_OK(knhk_reactor_free(r));
}

static void cancel_when_started(knhk_timer_t *t, int status) {
  if (status == 0) knhk_token_cancel(t->data, KNHK_CANCEL_EXPLICIT);
}

TEST(process_is_killed_when_its_token_is_cancelled) {
  knhk_reactor_t *r = reactor();
  knhk_token_t *tok;
  ASSERT_OK(knhk_token_new(&tok, NULL));
  knhk_process_t p;
  memset(&p, 0, sizeof p);
  p.token = tok;
  /* cancel from the reactor thread a little after the spawn */
  knhk_timer_t t;
  memset(&t, 0, sizeof t);
  ASSERT_OK(knhk_timer_start(r, &t, knhk_reactor_now(r) + 20000000, cancel_when_started, tok));
  char *argv[] = {"sleep", "30", NULL};
  uint64_t t0 = knhk_reactor_now(r);
  run(r, &p, argv);
  ASSERT_EQ(1, p.cancelled);
  ASSERT_EQ(SIGTERM, p.term_signal);
  ASSERT_LT(knhk_reactor_now(r) - t0, 10000000000ull); /* long before sleep's 30 s */
  knhk_process_dispose(&p);
  knhk_token_release(tok);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(process_with_already_cancelled_token_is_killed_at_once) {
  knhk_reactor_t *r = reactor();
  knhk_token_t *tok;
  ASSERT_OK(knhk_token_new(&tok, NULL));
  knhk_token_cancel(tok, KNHK_CANCEL_EXPLICIT);
  knhk_process_t p;
  memset(&p, 0, sizeof p);
  p.token = tok;
  char *argv[] = {"sleep", "30", NULL};
  run(r, &p, argv);
  ASSERT_EQ(1, p.cancelled);
  knhk_process_dispose(&p);
  knhk_token_release(tok);
  ASSERT_OK(knhk_reactor_free(r));
}

static void note_exit(knhk_process_t *p) { atomic_store((_Atomic int *)p->data, 1); }

TEST(reactor_free_kills_and_reaps_running_processes_on_free) {
  knhk_reactor_t *r = reactor();
  _Atomic int exited = 0;
  knhk_process_t p;
  memset(&p, 0, sizeof p);
  char *argv[] = {"sleep", "30", NULL};
  p.file = "sleep";
  p.argv = argv;
  p.on_exit = note_exit;
  p.data = (void *)&exited;
  ASSERT_OK(knhk_process_spawn(r, &p));
  ASSERT_OK(knhk_reactor_free(r));
  ASSERT_EQ(1, atomic_load(&exited));
  ASSERT_NE(0, p.term_signal);
  knhk_process_dispose(&p);
}

/* ------------------------------------------------ process groups */

/* The commands below report the pid of a process they start through a
 * FIFO: opening it for reading waits until the command has written it. */
typedef struct {
  char dir[32], path[64];
} fifo_t;

static void fifo_make(fifo_t *f) {
  strcpy(f->dir, "/tmp/knhk-test-XXXXXX");
  ASSERT(mkdtemp(f->dir) != NULL);
  snprintf(f->path, sizeof f->path, "%s/pid", f->dir);
  ASSERT_OK(mkfifo(f->path, 0600));
}

static int fifo_read_pid(fifo_t *f) {
  FILE *in = fopen(f->path, "r");
  ASSERT(in != NULL);
  int pid = 0;
  ASSERT_EQ(1, fscanf(in, "%d", &pid));
  fclose(in);
  unlink(f->path);
  rmdir(f->dir);
  ASSERT_GT(pid, 1);
  return pid;
}

/* A process is gone once it no longer runs: it does not exist, or it is a
 * zombie (an orphan's zombie is left for init to reap, which a container's
 * PID 1 may do late, or never). */
static int process_gone(int pid) {
  if (kill(pid, 0) != 0 && errno == ESRCH) return 1;
  char path[64], stat[512];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return 1;
  size_t n = fread(stat, 1, sizeof stat - 1, f);
  fclose(f);
  stat[n] = 0;
  char *rp = strrchr(stat, ')');
  return rp && (rp[2] == 'Z' || rp[2] == 'X');
}

typedef struct {
  knhk_process_t p;
  latch_t done;
  char script[256];
  char *argv[4];
  fifo_t fifo;
  int grandchild;
} group_case_t;

/* Starts `sh -c script` (script: a format with %s for the FIFO's path) and
 * returns once it has reported its child's pid. */
static void group_start(knhk_reactor_t *r, group_case_t *c, const char *script,
                        knhk_token_t *token, uint64_t grace_ns) {
  memset(c, 0, sizeof *c);
  fifo_make(&c->fifo);
  snprintf(c->script, sizeof c->script, script, c->fifo.path);
  c->argv[0] = "sh";
  c->argv[1] = "-c";
  c->argv[2] = c->script;
  latch_init(&c->done, 1);
  c->p.file = "sh";
  c->p.argv = c->argv;
  c->p.token = token;
  c->p.kill_grace_ns = grace_ns;
  c->p.on_exit = proc_done;
  c->p.data = &c->done;
  ASSERT_OK(knhk_process_spawn(r, &c->p));
  c->grandchild = fifo_read_pid(&c->fifo);
}

/* Cancels `tok` and waits for the process request to end: the time taken. */
static uint64_t group_cancel(knhk_reactor_t *r, group_case_t *c, knhk_token_t *tok) {
  uint64_t t0 = knhk_reactor_now(r);
  knhk_token_cancel(tok, KNHK_CANCEL_EXPLICIT);
  latch_wait(&c->done);
  return knhk_reactor_now(r) - t0;
}

#define SECONDS(n) ((uint64_t)(n) * 1000000000ull)

TEST(process_cancel_stops_the_grandchild_that_holds_its_pipes) {
  /* sh waits for a `sleep` that shares its stdout: signalling sh alone
   * leaves the pipe open for the sleep's 30 s. */
  knhk_reactor_t *r = reactor();
  knhk_token_t *tok;
  ASSERT_OK(knhk_token_new(&tok, NULL));
  group_case_t c;
  group_start(r, &c, "sleep 30 & echo $! >'%s'; wait", tok, 0);
  ASSERT_LT(group_cancel(r, &c, tok), SECONDS(10));
  ASSERT_EQ(1, c.p.cancelled);
  ASSERT_EQ(SIGTERM, c.p.term_signal);
  ASSERT(process_gone(c.grandchild));
  knhk_process_dispose(&c.p);
  knhk_token_release(tok);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(process_cancel_leaves_no_orphan_when_output_is_redirected) {
  knhk_reactor_t *r = reactor();
  knhk_token_t *tok;
  ASSERT_OK(knhk_token_new(&tok, NULL));
  group_case_t c;
  group_start(r, &c, "sleep 30 >/dev/null 2>&1 & echo $! >'%s'; wait", tok, 0);
  ASSERT_LT(group_cancel(r, &c, tok), SECONDS(10));
  ASSERT_EQ(1, c.p.cancelled);
  ASSERT(process_gone(c.grandchild));
  knhk_process_dispose(&c.p);
  knhk_token_release(tok);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(process_group_ignoring_sigterm_is_killed_after_the_grace) {
  /* `trap '' TERM`: sh and the sleep it starts both ignore SIGTERM. */
  knhk_reactor_t *r = reactor();
  knhk_token_t *tok;
  ASSERT_OK(knhk_token_new(&tok, NULL));
  group_case_t c;
  uint64_t grace = 200000000; /* 0.2 s */
  group_start(r, &c, "trap '' TERM; sleep 30 & echo $! >'%s'; wait", tok, grace);
  uint64_t took = group_cancel(r, &c, tok);
  ASSERT_GE(took, grace); /* SIGKILL comes only once the grace has passed */
  ASSERT_LT(took, SECONDS(10));
  ASSERT_EQ(1, c.p.cancelled);
  ASSERT_EQ(SIGKILL, c.p.term_signal);
  ASSERT(process_gone(c.grandchild));
  knhk_process_dispose(&c.p);
  knhk_token_release(tok);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(process_background_job_does_not_outlive_its_command) {
  /* sh exits at once; the job it leaves behind holds its stdout. */
  knhk_reactor_t *r = reactor();
  group_case_t c;
  uint64_t t0 = knhk_reactor_now(r);
  group_start(r, &c, "sleep 30 & echo $! >'%s'; echo started", NULL, 0);
  latch_wait(&c.done);
  ASSERT_LT(knhk_reactor_now(r) - t0, SECONDS(10));
  ASSERT_EQ(0, c.p.exit_status);
  ASSERT_EQ(0, c.p.cancelled);
  ASSERT(strcmp(c.p.out, "started\n") == 0);
  ASSERT(process_gone(c.grandchild));
  knhk_process_dispose(&c.p);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(process_pipe_held_outside_its_group_is_not_waited_for) {
  /* The inner sh leaves the group (setsid) and keeps the outer one's stdout
   * as it becomes `sleep 30`: it cannot be stopped with the group, and the
   * pipe it holds must not keep the request open. The outer sh exits only
   * once the inner one has left (it reads "go" from a second FIFO, written
   * after the inner one reported its pid). */
  knhk_reactor_t *r = reactor();
  fifo_t pid_fifo, go_fifo;
  fifo_make(&pid_fifo);
  fifo_make(&go_fifo);
  char script[256];
  snprintf(script, sizeof script,
           "setsid sh -c 'echo $$ >\"$0\"; exec sleep 30' '%s' & read go <'%s'; echo out",
           pid_fifo.path, go_fifo.path);
  char *argv[] = {"sh", "-c", script, NULL};
  latch_t done;
  latch_init(&done, 1);
  knhk_process_t p;
  memset(&p, 0, sizeof p);
  p.file = "sh";
  p.argv = argv;
  p.on_exit = proc_done;
  p.data = &done;
  ASSERT_OK(knhk_process_spawn(r, &p));
  int escaped = fifo_read_pid(&pid_fifo);
  uint64_t t0 = knhk_reactor_now(r);
  FILE *go = fopen(go_fifo.path, "w");
  ASSERT(go != NULL);
  fputs("go\n", go);
  fclose(go);
  unlink(go_fifo.path);
  rmdir(go_fifo.dir);
  latch_wait(&done);
  ASSERT_LT(knhk_reactor_now(r) - t0, SECONDS(10));
  ASSERT_EQ(0, p.exit_status);
  ASSERT(strcmp(p.out, "out\n") == 0);
  ASSERT(!process_gone(escaped)); /* not ours to stop: the test ends it */
  ASSERT_OK(kill(escaped, SIGKILL));
  knhk_process_dispose(&p);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(process_groups_are_stopped_when_the_reactor_is_freed) {
  knhk_reactor_t *r = reactor();
  group_case_t c;
  group_start(r, &c, "sleep 30 & echo $! >'%s'; wait", NULL, 0);
  ASSERT_OK(knhk_reactor_free(r)); /* completes every request first */
  ASSERT_EQ(1, atomic_load(&c.done.left) == 0);
  ASSERT_NE(0, c.p.term_signal);
  ASSERT(process_gone(c.grandchild));
  knhk_process_dispose(&c.p);
}

/* ---------------------------------------------------------------- files */

static void file_done(knhk_file_op_t *op) { latch_count_down(op->user); }

static void file_op(knhk_reactor_t *r, knhk_file_op_t *op) {
  latch_t done;
  latch_init(&done, 1);
  op->on_done = file_done;
  op->user = &done;
  ASSERT_OK(knhk_file_submit(r, op));
  latch_wait(&done);
}

TEST(files_write_append_read_and_missing) {
  knhk_reactor_t *r = reactor();
  char path[] = "/tmp/knhk-test-XXXXXX";
  int fd = mkstemp(path);
  ASSERT(fd >= 0);
  close(fd);
  knhk_file_op_t w = {.kind = KNHK_FILE_WRITE, .path = path, .data = "hello ", .len = 6};
  file_op(r, &w);
  ASSERT_EQ(0, w.error);
  knhk_file_op_t a = {.kind = KNHK_FILE_APPEND, .path = path, .data = "world", .len = 5};
  file_op(r, &a);
  ASSERT_EQ(0, a.error);
  knhk_file_op_t rd = {.kind = KNHK_FILE_READ, .path = path};
  file_op(r, &rd);
  ASSERT_EQ(0, rd.error);
  ASSERT(strcmp(rd.result, "hello world") == 0);
  ASSERT_EQ(11, rd.result_len);
  knhk_file_dispose(&rd);
  unlink(path);
  knhk_file_op_t missing = {.kind = KNHK_FILE_READ, .path = path};
  file_op(r, &missing);
  ASSERT_EQ(KNHK_ENOENT, missing.error);
  ASSERT(missing.result == NULL);
  ASSERT_OK(knhk_reactor_free(r));
}
