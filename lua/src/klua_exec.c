/* klua_exec.c: knhk.exec, a child process as a workflow step. The process
 * runs on the reactor, in a process group of its own; its completion wakes
 * the task that waits for it. The group is stopped when the token given
 * (the task's cancel scope) is cancelled, and the task still waits until no
 * process of it runs: no process outlives its step (core/src/process.c). */
#include <stdlib.h>
#include <string.h>

#include "klua.h"
#include "klua_ffi.h"
#include "knhk/errors.h"

typedef struct klua_exec {
  knhk_process_t p;
  klua_task_t *task;
  _Atomic int done;
  char **argv, **env;
  char *stdin_copy;
} klua_exec_t;

static void free_strv(char **v) {
  if (!v) return;
  for (char **p = v; *p; p++) free(*p);
  free(v);
}

static char **copy_strv(const char **v, int n) {
  char **out = calloc((size_t)n + 1, sizeof *out);
  if (!out) return NULL;
  for (int i = 0; i < n; i++)
    if (!(out[i] = strdup(v[i]))) {
      free_strv(out);
      return NULL;
    }
  return out;
}

static void exec_exited(knhk_process_t *p) {
  klua_exec_t *e = (klua_exec_t *)p;
  klua_task_t *t = e->task;
  atomic_store_explicit(&e->done, 1, memory_order_release);
  klua_wake(t);
  klua_task_release(t);
}

KLUA_API klua_exec_t *klua_exec_start(klua_task_t *t, const char **argv, int argc,
                                      const char **env, int envc, const char *cwd,
                                      const char *stdin_data, size_t stdin_len,
                                      knhk_token_t *token, int *err) {
  *err = 0;
  if (!t || !argv || argc < 1) {
    *err = KNHK_EINVAL;
    return NULL;
  }
  klua_exec_t *e = calloc(1, sizeof *e);
  if (!e || !(e->argv = copy_strv(argv, argc)) || (env && !(e->env = copy_strv(env, envc))) ||
      (stdin_data && !(e->stdin_copy = malloc(stdin_len ? stdin_len : 1)))) {
    if (e) free_strv(e->argv), free_strv(e->env), free(e);
    *err = KNHK_ENOMEM;
    return NULL;
  }
  if (stdin_data) memcpy(e->stdin_copy, stdin_data, stdin_len);
  e->task = t;
  e->p.file = e->argv[0];
  e->p.argv = e->argv;
  e->p.env = e->env;
  e->p.cwd = cwd && *cwd ? strdup(cwd) : NULL;
  e->p.stdin_data = e->stdin_copy;
  e->p.stdin_len = stdin_len;
  e->p.token = token;
  e->p.on_exit = exec_exited;
  klua_task_retain(t); /* until exec_exited */
  int rc = knhk_process_spawn(t->rt->reactor, &e->p);
  if (rc != 0) {
    klua_task_release(t);
    free((char *)e->p.cwd);
    free_strv(e->argv);
    free_strv(e->env);
    free(e->stdin_copy);
    free(e);
    *err = rc;
    return NULL;
  }
  return e;
}

KLUA_API int klua_exec_done(klua_exec_t *e) {
  return atomic_load_explicit(&e->done, memory_order_acquire);
}

/* Once done: the outcome (valid until klua_exec_free). */
KLUA_API void klua_exec_result(klua_exec_t *e, klua_exec_result_t *out) {
  const knhk_process_t *p = &e->p;
  out->error = p->error;
  out->error_at = p->error_at == KNHK_PROCESS_AT_CWD ? KLUA_EXEC_AT_CWD : KLUA_EXEC_AT_FILE;
  out->exit_status = p->exit_status;
  out->term_signal = p->term_signal;
  out->cancelled = p->cancelled;
  out->out = p->out;
  out->err = p->err;
  out->out_len = p->out_len;
  out->err_len = p->err_len;
}

KLUA_API void klua_exec_free(klua_exec_t *e) {
  if (!e) return;
  knhk_process_dispose(&e->p);
  free((char *)e->p.cwd);
  free_strv(e->argv);
  free_strv(e->env);
  free(e->stdin_copy);
  free(e);
}
