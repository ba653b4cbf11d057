/* klua_lines.c: line input for the REPL on a thread of its own (libedit),
 * so that tasks keep running while the prompt waits. A task asks for a
 * line (klua_lines_request), waits, and takes it (klua_lines_take). */
#include <histedit.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <editline/readline.h>

#include "klua.h"
#include "knhk/errors.h"

typedef struct klua_lines {
  pthread_t thread;
  pthread_mutex_t m;
  pthread_cond_t cv;
  char *prompt;        /* a request: read one line with this prompt */
  char *line;          /* the answer */
  int have_line, eof, stop, requested;
  klua_task_t *waiter; /* woken when the line (or EOF) is there */
} klua_lines_t;

static void *reader(void *arg) {
  klua_lines_t *l = arg;
  pthread_mutex_lock(&l->m);
  for (;;) {
    while (!l->requested && !l->stop) pthread_cond_wait(&l->cv, &l->m);
    if (l->stop) break;
    char *prompt = l->prompt;
    l->prompt = NULL;
    pthread_mutex_unlock(&l->m);
    char *line = readline(prompt ? prompt : "> ");
    free(prompt);
    if (line && *line) add_history(line);
    pthread_mutex_lock(&l->m);
    l->requested = 0;
    l->line = line;
    l->eof = line == NULL;
    l->have_line = 1;
    klua_task_t *w = l->waiter;
    l->waiter = NULL;
    if (w) {
      pthread_mutex_unlock(&l->m);
      klua_wake(w, KLUA_WAKE_SYNC);
      klua_task_release(w);
      pthread_mutex_lock(&l->m);
    }
  }
  pthread_mutex_unlock(&l->m);
  return NULL;
}

KLUA_API klua_lines_t *klua_lines_new(void) {
  klua_lines_t *l = calloc(1, sizeof *l);
  if (!l) return NULL;
  rl_catch_signals = 0; /* signals belong to the runtime (klua_signals.c) */
  pthread_mutex_init(&l->m, NULL);
  pthread_cond_init(&l->cv, NULL);
  if (pthread_create(&l->thread, NULL, reader, l) != 0) {
    free(l);
    return NULL;
  }
  return l;
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
  }
  pthread_mutex_unlock(&l->m);
  return 0;
}

/* 1 and *line (free with klua_free; NULL at end of input) when a line is
 * there; 0 if not yet. */
KLUA_API int klua_lines_take(klua_lines_t *l, char **line) {
  pthread_mutex_lock(&l->m);
  int have = l->have_line;
  if (have) {
    *line = l->line;
    l->line = NULL;
    l->have_line = 0;
  }
  pthread_mutex_unlock(&l->m);
  return have;
}

/* Drops the waiter (a cancelled wait); the line, if read later, is kept. */
KLUA_API void klua_lines_unwait(klua_lines_t *l) {
  pthread_mutex_lock(&l->m);
  klua_task_t *w = l->waiter;
  l->waiter = NULL;
  pthread_mutex_unlock(&l->m);
  if (w) klua_task_release(w);
}

/* Stops the thread: if it is inside readline, it ends when that returns
 * (the REPL only frees it after reading EOF or on exit). */
KLUA_API void klua_lines_free(klua_lines_t *l) {
  if (!l) return;
  pthread_mutex_lock(&l->m);
  l->stop = 1;
  int busy = l->requested;
  pthread_cond_signal(&l->cv);
  pthread_mutex_unlock(&l->m);
  if (busy) {
    pthread_detach(l->thread); /* blocked in readline: the process is exiting */
    return;
  }
  pthread_join(l->thread, NULL);
  klua_lines_unwait(l);
  free(l->line);
  free(l->prompt);
  pthread_mutex_destroy(&l->m);
  pthread_cond_destroy(&l->cv);
  free(l);
}
