/* klua_lines.c: line input for the REPL on a thread of its own (libedit),
 * so that tasks keep running while the prompt waits. A task asks for a
 * line (klua_lines_request), waits, and takes it (klua_lines_take).
 *
 * Ctrl-C at the prompt reaches the runtime as SIGINT (klua_signals.c),
 * which calls klua_lines_interrupt: the line being typed is discarded and
 * the request ends as KLUA_LINES_INTERRUPTED, so that the REPL shows a
 * fresh prompt. libedit reads characters through read_char below, which
 * waits on the terminal and on a self-pipe at once: a byte on the pipe ends
 * el_gets early (as an error), with the terminal's settings restored.
 *
 * Typing is real input: while a task waits for a line, the runtime's clock
 * is held (knhk_clock_hold), so a virtual clock does not jump to the next
 * timer while the user types; the line's own waits move it. The hold
 * starts when a task begins to wait and ends once it is woken (or gives
 * up its wait). Under a real clock the hold does nothing.
 *
 * libedit is opened when the first line input starts, not linked: loading
 * it and the libraries it needs (libtinfo, libbsd, libmd) was about 0.4 ms
 * of every knhk-lua start and every `require "knhk"`, for the REPL alone. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <histedit.h>
#include <locale.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wchar.h>

#include "klua.h"
#include "klua_lines.h"
#include "knhk/errors.h"

/* libedit's functions, from KLUA_LIBEDIT (its soname, set by the build). */
static struct { /* the types the header declares them with */
  __typeof__(el_init) *el_init;
  __typeof__(el_end) *el_end;
  __typeof__(el_gets) *el_gets;
  __typeof__(el_set) *el_set;
  __typeof__(el_get) *el_get;
  __typeof__(el_line) *el_line;
  __typeof__(el_source) *el_source;
  __typeof__(history_init) *history_init;
  __typeof__(history_end) *history_end;
  __typeof__(history) *history;
} edit;
static pthread_once_t edit_once = PTHREAD_ONCE_INIT;
static int edit_loaded;

/* Once per process; the library stays loaded (lines may start again). */
static void load_edit(void) {
  void *lib = dlopen(KLUA_LIBEDIT, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "knhk: cannot load %s for line input: %s\n", KLUA_LIBEDIT, dlerror());
    return;
  }
#define SYM(name) (edit.name = (__typeof__(edit.name))dlsym(lib, #name)) != NULL
  edit_loaded = SYM(el_init) && SYM(el_end) && SYM(el_gets) && SYM(el_set) && SYM(el_get) &&
                SYM(el_line) && SYM(el_source) && SYM(history_init) && SYM(history_end) &&
                SYM(history);
#undef SYM
  if (!edit_loaded) fprintf(stderr, "knhk: %s lacks a function line input needs\n", KLUA_LIBEDIT);
}

struct klua_lines {
  pthread_t thread;
  pthread_mutex_t m;
  pthread_cond_t cv;
  int wake[2];         /* self-pipe: interrupts read_char */
  EditLine *el;        /* reader thread only (after new) */
  History *hist;
  char *shown;         /* the prompt libedit shows (reader thread only) */
  char *prompt;        /* a request: read one line with this prompt */
  char *line;          /* the answer */
  int status;          /* KLUA_LINES_LINE (line NULL at end of input) or _INTERRUPTED */
  int have_line, stop, requested;
  int reading;         /* inside el_gets */
  int interrupted;     /* el_gets is being interrupted */
  int eof_typed;       /* the reader thread's: Ctrl-D on an empty line */
  int interrupt_next;  /* an interrupt came with no prompt up: the next request gets it */
  klua_task_t *waiter; /* woken when the line (or EOF) is there */
  knhk_reactor_t *held; /* the clock held for the waiter, or NULL */
};

static char *show_prompt(EditLine *el) {
  klua_lines_t *l;
  edit.el_get(el, EL_CLIENTDATA, &l);
  return l->shown ? l->shown : "> ";
}

static void drain_wake(klua_lines_t *l) {
  char b[64];
  while (read(l->wake[0], b, sizeof b) > 0) {
  }
}

/* libedit's character source: one character from the terminal, 0 at its
 * end, or -1 (EINTR) once the read is interrupted. */
static int read_char(EditLine *el, wchar_t *wc) {
  klua_lines_t *l;
  edit.el_get(el, EL_CLIENTDATA, &l);
  mbstate_t mb;
  memset(&mb, 0, sizeof mb);
  for (;;) {
    struct pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {l->wake[0], POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (fds[1].revents) {
      pthread_mutex_lock(&l->m);
      int stop = l->interrupted || l->stop;
      if (!stop) drain_wake(l); /* a late byte from an interrupt already handled */
      pthread_mutex_unlock(&l->m);
      if (stop) {
        errno = EINTR;
        return -1;
      }
    }
    if (!fds[0].revents) continue;
    char c;
    ssize_t n = read(STDIN_FILENO, &c, 1);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return -1;
    if (n == 0) { /* the terminal's end of file (a Ctrl-D typed ahead, in canonical mode) */
      l->eof_typed = 1;
      errno = EINTR;
      return -1;
    }
    /* Ctrl-D on an empty line is the end of input, even when typed while
     * the previous line ran: the terminal, still in canonical mode then,
     * keeps that end-of-file as a NUL byte, which reaches us once libedit
     * has made it raw; and a Ctrl-D read raw after such a line arrives as
     * the character itself, which libedit would insert. */
    if (c == 4 || c == 0) {
      const LineInfo *li = edit.el_line(el);
      if (li && li->lastchar == li->buffer) { /* el_gets gives up at once, as for Ctrl-C */
        l->eof_typed = 1;
        errno = EINTR;
        return -1;
      }
    }
    size_t r = mbrtowc(wc, &c, 1, &mb);
    if (r == (size_t)-2) continue; /* more bytes of one character to come */
    if (r == (size_t)-1) {         /* not in this locale's encoding: as is */
      memset(&mb, 0, sizeof mb);
      *wc = (wchar_t)(unsigned char)c;
    }
    return 1;
  }
}

/* Called with l->m held. Ends the waiter's hold on the clock: after the
 * wake-up, so that the clock may jump only once the task is runnable. */
static void deliver(klua_lines_t *l, int status, char *line) {
  l->requested = 0;
  l->line = line;
  l->status = status;
  l->have_line = 1;
  klua_task_t *w = l->waiter;
  knhk_reactor_t *held = l->held;
  l->waiter = NULL;
  l->held = NULL;
  if (w) {
    pthread_mutex_unlock(&l->m);
    klua_wake(w);
    klua_task_release(w);
    if (held) knhk_clock_release(held);
    pthread_mutex_lock(&l->m);
  }
}

static void *reader(void *arg) {
  klua_lines_t *l = arg;
  pthread_mutex_lock(&l->m);
  for (;;) {
    while (!l->requested && !l->stop) pthread_cond_wait(&l->cv, &l->m);
    if (l->stop) break;
    if (l->interrupt_next) {
      l->interrupt_next = 0;
      deliver(l, KLUA_LINES_INTERRUPTED, NULL);
      continue;
    }
    free(l->shown);
    l->shown = l->prompt;
    l->prompt = NULL;
    l->reading = 1;
    pthread_mutex_unlock(&l->m);
    int count = 0;
    l->eof_typed = 0;
    const char *got = edit.el_gets(l->el, &count);
    char *line = got && count > 0 && !l->eof_typed ? strndup(got, (size_t)count) : NULL;
    if (line) line[strcspn(line, "\n")] = 0;
    pthread_mutex_lock(&l->m);
    l->reading = 0;
    int status = KLUA_LINES_LINE;
    if (l->interrupted) { /* a line completed meanwhile is discarded too */
      l->interrupted = 0;
      drain_wake(l);
      free(line);
      line = NULL;
      status = KLUA_LINES_INTERRUPTED;
    } else if (line && *line) {
      HistEvent ev;
      edit.history(l->hist, &ev, H_ENTER, line);
    }
    deliver(l, status, line);
  }
  pthread_mutex_unlock(&l->m);
  return NULL;
}

KLUA_API klua_lines_t *klua_lines_new(void) {
  pthread_once(&edit_once, load_edit);
  if (!edit_loaded) return NULL;
  klua_lines_t *l = calloc(1, sizeof *l);
  if (!l) return NULL;
  if (pipe2(l->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    free(l);
    return NULL;
  }
  /* The terminal's character set (LANG / LC_*): in the default "C" locale
   * libedit drops every character that is not ASCII. Only LC_CTYPE: the
   * rest (LC_NUMERIC: how Lua writes numbers) stays "C". */
  setlocale(LC_CTYPE, "");
  l->el = edit.el_init("knhk-lua", stdin, stdout, stderr);
  l->hist = edit.history_init();
  if (!l->el || !l->hist) goto fail;
  HistEvent ev;
  edit.history(l->hist, &ev, H_SETSIZE, 1000);
  edit.el_set(l->el, EL_CLIENTDATA, l);
  edit.el_set(l->el, EL_EDITOR, "emacs");
  edit.el_set(l->el, EL_PROMPT, show_prompt);
  edit.el_set(l->el, EL_HIST, edit.history, l->hist);
  edit.el_set(l->el, EL_GETCFN, read_char);
  edit.el_source(l->el, NULL); /* the user's ~/.editrc, if any */
  pthread_mutex_init(&l->m, NULL);
  pthread_cond_init(&l->cv, NULL);
  if (pthread_create(&l->thread, NULL, reader, l) != 0) {
    pthread_mutex_destroy(&l->m);
    pthread_cond_destroy(&l->cv);
    goto fail;
  }
  return l;
fail:
  if (l->el) edit.el_end(l->el);
  if (l->hist) edit.history_end(l->hist);
  close(l->wake[0]);
  close(l->wake[1]);
  free(l);
  return NULL;
}

/* Asks for a line with `prompt`; `task` is woken when it is there. */
KLUA_API int klua_lines_request(klua_lines_t *l, const char *prompt, klua_task_t *task) {
  pthread_mutex_lock(&l->m);
  if (!l->requested && !l->have_line) {
    free(l->prompt);
    l->prompt = strdup(prompt);
    l->requested = 1;
    pthread_cond_signal(&l->cv);
  }
  if (!l->have_line && task && !l->waiter) {
    klua_task_retain(task);
    l->waiter = task;
    /* before the reader can deliver (it takes l->m): its release follows */
    if (knhk_clock_hold(task->rt->reactor) == 0) l->held = task->rt->reactor;
  }
  pthread_mutex_unlock(&l->m);
  return 0;
}

/* KLUA_LINES_NONE if the answer is not there yet; KLUA_LINES_LINE and
 * *line (free with klua_free; NULL at end of input); or
 * KLUA_LINES_INTERRUPTED (Ctrl-C: the line typed was discarded). */
KLUA_API int klua_lines_take(klua_lines_t *l, char **line) {
  pthread_mutex_lock(&l->m);
  int status = KLUA_LINES_NONE;
  if (l->have_line) {
    status = l->status;
    *line = l->line;
    l->line = NULL;
    l->have_line = 0;
  }
  pthread_mutex_unlock(&l->m);
  return status;
}

void klua_lines_interrupt(klua_lines_t *l) {
  pthread_mutex_lock(&l->m);
  if (l->reading) {
    if (!l->interrupted) {
      l->interrupted = 1;
      ssize_t n = write(l->wake[1], "", 1);
      (void)n; /* a full pipe already holds a wake-up */
    }
  } else if (!l->have_line) {
    l->interrupt_next = 1;
  }
  pthread_mutex_unlock(&l->m);
}

/* Drops the waiter (a cancelled wait) and its hold on the clock; the line,
 * if read later, is kept. */
KLUA_API void klua_lines_unwait(klua_lines_t *l) {
  pthread_mutex_lock(&l->m);
  klua_task_t *w = l->waiter;
  knhk_reactor_t *held = l->held;
  l->waiter = NULL;
  l->held = NULL;
  pthread_mutex_unlock(&l->m);
  if (w) klua_task_release(w);
  if (held) knhk_clock_release(held);
}

/* Stops the thread (a prompt being shown is interrupted: the terminal gets
 * its settings back) and frees everything. */
KLUA_API void klua_lines_free(klua_lines_t *l) {
  if (!l) return;
  pthread_mutex_lock(&l->m);
  l->stop = 1;
  ssize_t n = write(l->wake[1], "", 1);
  (void)n;
  pthread_cond_signal(&l->cv);
  pthread_mutex_unlock(&l->m);
  pthread_join(l->thread, NULL);
  klua_lines_unwait(l);
  edit.el_end(l->el);
  edit.history_end(l->hist);
  close(l->wake[0]);
  close(l->wake[1]);
  free(l->line);
  free(l->prompt);
  free(l->shown);
  pthread_mutex_destroy(&l->m);
  pthread_cond_destroy(&l->cv);
  free(l);
}
