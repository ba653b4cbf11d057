/* nursery.c: nurseries over the executor and cancel tokens (see
 * knhk/nursery.h).
 *
 * Everything a waiter decides on (live count, completion queue, failures,
 * first success, the registered waiter) changes under one mutex, in
 * child_ended; so "look, then register as the waiter" under that mutex
 * cannot miss an end. What child_ended does after unlocking touches only
 * things that outlive the nursery: a retained token, the waiter's worker or
 * task, and the address of the outside waiters' futex word.
 */
#include <limits.h>
#include <stdlib.h>

#include "executor_impl.h"
#include "knhk/errors.h"
#include "knhk/nursery.h"
#include "telemetry_impl.h"

enum { W_NONE = 0, W_WORKER = 1, W_OUTSIDE = 2, W_TASK = 3 };

struct knhk_nursery_s {
  knhk_executor_t *ex;
  knhk_token_t *token;
  uint32_t flags;
  pthread_mutex_t m;
  knhk_child_t **children;
  uint32_t nchildren, cap;
  knhk_child_t *done_head, *done_tail; /* ended, not yet joined */
  knhk_child_t *first_ok;              /* first child to complete */
  uint32_t live;
  uint64_t ends;
  int closed, waiting, sibling_cancelled;
  int *failures;
  int nfail, capfail;
  int waiter_kind, waiter_worker;
  knhk_task_t *waiter_task;
  _Atomic uint32_t outside_word;       /* bumped at every end: futex */
  uint64_t tel[2];                     /* telemetry: its span, its trace */
};

int knhk_nursery_new(knhk_nursery_t **out, knhk_executor_t *ex, knhk_token_t *parent,
                     uint32_t flags) {
  if (!out || !knhk__impl_of(ex) || (flags & ~(uint32_t)KNHK_NURSERY_SUPERVISE))
    return KNHK_EINVAL;
  knhk_nursery_t *n = calloc(1, sizeof *n);
  if (!n) return KNHK_ENOMEM;
  int rc = knhk_token_new(&n->token, parent);
  if (rc != 0) {
    free(n);
    return rc;
  }
  n->ex = ex;
  n->flags = flags;
  pthread_mutex_init(&n->m, NULL);
  KNHK__TEL(nursery_open(n->tel, flags));
  *out = n;
  return 0;
}

knhk_token_t *knhk_nursery_token(const knhk_nursery_t *n) { return n ? n->token : NULL; }

static int push_failure_locked(knhk_nursery_t *n, int status) {
  if (n->nfail == n->capfail) {
    int cap = n->capfail ? n->capfail * 2 : 4;
    int *f = realloc(n->failures, (size_t)cap * sizeof *f);
    if (!f) return KNHK_ENOMEM; /* the count stays right; the status is lost */
    n->failures = f;
    n->capfail = cap;
  }
  n->failures[n->nfail++] = status;
  return 0;
}

static void child_ended(knhk_task_t *t, int status) {
  knhk_child_t *c = t->data;
  KNHK__TEL(child_end(c->knhk__tel, status, c->nursery->ex));
  knhk_nursery_t *n = c->nursery;
  knhk_token_t *cancel = NULL;
  int reason = 0;
  pthread_mutex_lock(&n->m);
  c->status = status;
  c->knhk__done_next = NULL;
  if (n->done_tail) n->done_tail->knhk__done_next = c;
  else n->done_head = c;
  n->done_tail = c;
  n->live--;
  n->ends++;
  if (status == 0 && !n->first_ok) n->first_ok = c;
  if (status != 0 && status != KNHK_ECANCELED) {
    push_failure_locked(n, status);
    if (!(n->flags & KNHK_NURSERY_SUPERVISE) && !n->sibling_cancelled) {
      n->sibling_cancelled = 1;
      cancel = knhk_token_retain(n->token);
      reason = KNHK_CANCEL_SIBLING;
    }
  }
  int kind = n->waiter_kind, worker = n->waiter_worker;
  knhk_task_t *task = n->waiter_task;
  if (kind == W_TASK) n->waiter_kind = W_NONE, n->waiter_task = NULL; /* once */
  _Atomic uint32_t *word = &n->outside_word;
  atomic_fetch_add_explicit(word, 1, memory_order_release);
  knhk_executor_t *ex = n->ex;
  pthread_mutex_unlock(&n->m);
  /* n may be freed from here on */
  if (cancel) {
    knhk_token_cancel(cancel, reason);
    knhk_token_release(cancel);
  }
  if (kind == W_WORKER) knhk__worker_unpark(&knhk__impl_of(ex)->workers[worker]);
  else if (kind == W_TASK) knhk_executor_wake(ex, task);
  else if (kind == W_OUTSIDE) knhk__futex_wake(word, INT_MAX);
}

static int child_run(knhk_task_t *t) {
  knhk_child_t *c = t->data;
  if (!c->knhk__started) {
    c->knhk__started = 1;
    if (knhk_token_is_cancelled(c->token)) return KNHK_ECANCELED; /* never ran */
  }
  uint64_t *tel = KNHK__TEL_ON() ? knhk__tel_child_enter(c->knhk__tel, c->nursery->ex) : NULL;
  int status = c->knhk__fn(c);
  if (tel) knhk__tel_child_leave(tel);
  return status;
}

knhk_task_t *knhk_child_task(knhk_child_t *c) { return c ? &c->knhk__task : NULL; }

int knhk_nursery_spawn(knhk_nursery_t *n, knhk_child_fn fn, void *arg, knhk_child_t **out) {
  return knhk_nursery_spawn_ex(n, fn, arg, 0, -1, out);
}

int knhk_nursery_spawn_ex(knhk_nursery_t *n, knhk_child_fn fn, void *arg, uint32_t task_flags,
                          int worker, knhk_child_t **out) {
  if (out) *out = NULL;
  if (!n || !fn) return KNHK_EINVAL;
  knhk_child_t *c = calloc(1, sizeof *c);
  if (!c) return KNHK_ENOMEM;
  c->nursery = n;
  c->token = n->token;
  c->arg = arg;
  c->knhk__fn = fn;
  knhk_task_init(&c->knhk__task, child_run, c);
  c->knhk__task.on_end = child_ended;
  c->knhk__task.flags = task_flags;
  pthread_mutex_lock(&n->m);
  int rc = 0;
  if (n->closed) {
    rc = KNHK_ECLOSED;
  } else if (n->nchildren == n->cap) {
    uint32_t cap = n->cap ? n->cap * 2 : 8;
    knhk_child_t **a = realloc(n->children, cap * sizeof *a);
    if (!a) rc = KNHK_ENOMEM;
    else n->children = a, n->cap = cap;
  }
  if (rc != 0) {
    pthread_mutex_unlock(&n->m);
    free(c);
    return rc;
  }
  c->index = n->nchildren;
  n->children[n->nchildren++] = c;
  n->live++;
  pthread_mutex_unlock(&n->m);
  KNHK__TEL(child_spawn(c->knhk__tel, n->tel, c->index));
  rc = worker >= 0 ? knhk_executor_spawn_on(n->ex, &c->knhk__task, worker)
                   : knhk_executor_spawn(n->ex, &c->knhk__task);
  if (rc != 0) { /* it never ran: it stays in the list with that status */
    pthread_mutex_lock(&n->m);
    c->status = rc;
    n->live--;
    pthread_mutex_unlock(&n->m);
    KNHK__TEL(child_end(c->knhk__tel, rc, n->ex));
    return rc;
  }
  if (out) *out = c;
  return 0;
}

int knhk_nursery_cancel(knhk_nursery_t *n) {
  if (!n) return KNHK_EINVAL;
  knhk_token_cancel(n->token, KNHK_CANCEL_EXPLICIT);
  return 0;
}

int knhk_nursery_fail(knhk_nursery_t *n, int status) {
  if (!n || status == 0) return KNHK_EINVAL;
  pthread_mutex_lock(&n->m);
  push_failure_locked(n, status);
  n->sibling_cancelled = 1;
  pthread_mutex_unlock(&n->m);
  knhk_token_cancel(n->token, KNHK_CANCEL_SIBLING);
  return 0;
}

int knhk_nursery_close(knhk_nursery_t *n) {
  if (!n) return KNHK_EINVAL;
  pthread_mutex_lock(&n->m);
  n->closed = 1;
  pthread_mutex_unlock(&n->m);
  return 0;
}

int knhk_nursery_close_if_idle(knhk_nursery_t *n) {
  if (!n) return KNHK_EINVAL;
  pthread_mutex_lock(&n->m);
  int rc = n->live == 0 ? 0 : KNHK_EBUSY;
  if (rc == 0) n->closed = 1;
  pthread_mutex_unlock(&n->m);
  return rc;
}

/* ---------------------------------------------------------------- waiting */

typedef int (*pred_fn)(knhk_nursery_t *n); /* under n->m */
static int all_ended(knhk_nursery_t *n) { return n->live == 0; }
static int one_completed(knhk_nursery_t *n) { return n->first_ok || n->live == 0; }
static int next_ended(knhk_nursery_t *n) { return n->done_head || n->live == 0; }

typedef struct {
  knhk__wait_t base;
  knhk_nursery_t *n;
  pred_fn pred;
} nursery_wait_t;

static int nw_done(knhk__worker_t *w, knhk__wait_t *wt) {
  (void)w;
  nursery_wait_t *nw = (nursery_wait_t *)wt;
  pthread_mutex_lock(&nw->n->m);
  int d = nw->pred(nw->n);
  pthread_mutex_unlock(&nw->n->m);
  return d;
}

static int nw_claim(knhk__worker_t *w, knhk__wait_t *wt) {
  knhk_nursery_t *n = ((nursery_wait_t *)wt)->n;
  pthread_mutex_lock(&n->m);
  int rc = n->waiter_kind == W_NONE ? 0 : KNHK_EBUSY;
  if (rc == 0) n->waiter_kind = W_WORKER, n->waiter_worker = w->index;
  pthread_mutex_unlock(&n->m);
  return rc;
}

static void nw_release(knhk__worker_t *w, knhk__wait_t *wt) {
  (void)w;
  knhk_nursery_t *n = ((nursery_wait_t *)wt)->n;
  pthread_mutex_lock(&n->m);
  if (n->waiter_kind == W_WORKER) n->waiter_kind = W_NONE;
  pthread_mutex_unlock(&n->m);
}

/* Returns with n->m held once pred holds; or an error, unlocked. */
static int wait_until(knhk_nursery_t *n, pred_fn pred) {
  knhk__executor_t *ex = knhk__impl_of(n->ex);
  if (!ex) return KNHK_EINVAL;
  pthread_mutex_lock(&n->m);
  if (n->waiting) {
    pthread_mutex_unlock(&n->m);
    return KNHK_EBUSY;
  }
  n->waiting = 1;
  uint64_t tel = KNHK__TEL_ON() ? knhk__tel_wait_begin(n->tel, n->live) : 0;
  knhk__worker_t *w = knhk__current_worker(ex);
  int rc = 0;
  if (w) {
    pthread_mutex_unlock(&n->m);
    nursery_wait_t nw = {{nw_done, nw_claim, nw_release}, n, pred};
    rc = knhk__worker_loop(w, &nw.base);
    pthread_mutex_lock(&n->m);
  } else {
    while (!pred(n)) {
      if (n->waiter_kind != W_NONE && n->waiter_kind != W_OUTSIDE) {
        rc = KNHK_EBUSY;
        break;
      }
      n->waiter_kind = W_OUTSIDE;
      uint32_t v = ld_acquire(&n->outside_word);
      pthread_mutex_unlock(&n->m);
      knhk__futex_wait(&n->outside_word, v);
      pthread_mutex_lock(&n->m);
    }
    if (n->waiter_kind == W_OUTSIDE) n->waiter_kind = W_NONE;
  }
  n->waiting = 0;
  if (tel) knhk__tel_wait_end(tel);
  if (rc != 0) pthread_mutex_unlock(&n->m);
  return rc;
}

static int first_failure_locked(knhk_nursery_t *n) { return n->nfail ? n->failures[0] : 0; }

int knhk_nursery_wait_all(knhk_nursery_t *n) {
  if (!n) return KNHK_EINVAL;
  int rc = wait_until(n, all_ended);
  if (rc != 0) return rc;
  n->closed = 1;
  rc = first_failure_locked(n);
  pthread_mutex_unlock(&n->m);
  return rc;
}

int knhk_nursery_wait_any(knhk_nursery_t *n, knhk_child_t **winner) {
  if (winner) *winner = NULL;
  if (!n || !winner) return KNHK_EINVAL;
  int rc = wait_until(n, one_completed);
  if (rc != 0) return rc;
  knhk_child_t *w = n->first_ok;
  pthread_mutex_unlock(&n->m);
  if (w) knhk_token_cancel(n->token, KNHK_CANCEL_EXPLICIT); /* the losers */
  rc = wait_until(n, all_ended);                            /* and their cleanup */
  if (rc != 0) return rc;
  n->closed = 1;
  *winner = w;
  rc = w ? 0 : n->nfail ? n->failures[0] : KNHK_ECANCELED;
  pthread_mutex_unlock(&n->m);
  return rc;
}

int knhk_nursery_join_next(knhk_nursery_t *n, knhk_child_t **next) {
  if (next) *next = NULL;
  if (!n || !next) return KNHK_EINVAL;
  int rc = wait_until(n, next_ended);
  if (rc != 0) return rc;
  knhk_child_t *c = n->done_head;
  if (c) {
    n->done_head = c->knhk__done_next;
    if (!n->done_head) n->done_tail = NULL;
  }
  pthread_mutex_unlock(&n->m);
  *next = c;
  return c ? 0 : KNHK_ENOENT;
}

int knhk_nursery_try_next(knhk_nursery_t *n, knhk_child_t **next) {
  if (next) *next = NULL;
  if (!n || !next) return KNHK_EINVAL;
  pthread_mutex_lock(&n->m);
  knhk_child_t *c = n->done_head;
  int rc = c ? 0 : n->live ? KNHK_EAGAIN : KNHK_ENOENT;
  if (c) {
    n->done_head = c->knhk__done_next;
    if (!n->done_head) n->done_tail = NULL;
  }
  pthread_mutex_unlock(&n->m);
  *next = c;
  return rc;
}

int knhk_nursery_notify(knhk_nursery_t *n, knhk_task_t *task, uint64_t seen) {
  if (!n || !task) return KNHK_EINVAL;
  pthread_mutex_lock(&n->m);
  int rc = 0;
  if (n->ends != seen) rc = KNHK_EALREADY;
  else if (n->waiter_kind != W_NONE && !(n->waiter_kind == W_TASK && n->waiter_task == task))
    rc = KNHK_EBUSY;
  else n->waiter_kind = W_TASK, n->waiter_task = task;
  pthread_mutex_unlock(&n->m);
  return rc;
}

/* ---------------------------------------------------------------- queries */

#define LOCKED_READ(n, expr, type)                                              \
  ({                                                                            \
    pthread_mutex_lock(&(n)->m);                                                \
    type v_ = (expr);                                                           \
    pthread_mutex_unlock(&(n)->m);                                              \
    v_;                                                                         \
  })

uint64_t knhk_nursery_ends(const knhk_nursery_t *cn) {
  knhk_nursery_t *n = (knhk_nursery_t *)cn;
  return n ? LOCKED_READ(n, n->ends, uint64_t) : 0;
}

uint32_t knhk_nursery_count(const knhk_nursery_t *cn) {
  knhk_nursery_t *n = (knhk_nursery_t *)cn;
  return n ? LOCKED_READ(n, n->nchildren, uint32_t) : 0;
}

uint32_t knhk_nursery_live(const knhk_nursery_t *cn) {
  knhk_nursery_t *n = (knhk_nursery_t *)cn;
  return n ? LOCKED_READ(n, n->live, uint32_t) : 0;
}

knhk_child_t *knhk_nursery_child(const knhk_nursery_t *cn, uint32_t i) {
  knhk_nursery_t *n = (knhk_nursery_t *)cn;
  return n ? LOCKED_READ(n, i < n->nchildren ? n->children[i] : NULL, knhk_child_t *) : NULL;
}

int knhk_nursery_failures(const knhk_nursery_t *cn, int *statuses, int max) {
  knhk_nursery_t *n = (knhk_nursery_t *)cn;
  if (!n) return KNHK_EINVAL;
  pthread_mutex_lock(&n->m);
  for (int i = 0; statuses && i < max && i < n->nfail; i++) statuses[i] = n->failures[i];
  int k = n->nfail;
  pthread_mutex_unlock(&n->m);
  return k;
}

int knhk_nursery_free(knhk_nursery_t *n) {
  if (!n) return KNHK_EINVAL;
  if (knhk_nursery_live(n) > 0) knhk_nursery_wait_all(n);
  for (uint32_t i = 0; i < n->nchildren; i++) free(n->children[i]);
  free(n->children);
  free(n->failures);
  KNHK__TEL(nursery_close(n->tel));
  knhk_token_release(n->token);
  pthread_mutex_destroy(&n->m);
  free(n);
  return 0;
}

/* -------------------------------------------------------------- telemetry */

uint64_t knhk_telemetry_nursery_wait_begin(const void *nursery) {
  knhk_nursery_t *n = (knhk_nursery_t *)nursery;
  if (!n || !KNHK__TEL_ON()) return 0;
  return knhk__tel_wait_begin(n->tel, knhk_nursery_live(n));
}

void knhk_telemetry_nursery_wait_end(uint64_t span) { knhk__tel_wait_end(span); }
