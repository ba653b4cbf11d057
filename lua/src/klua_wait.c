/* klua_wait.c: how a Lua task waits, in one place.
 *
 * A wait (runtime.lua's await) is: look; if not ready, arm the wake-ups
 * (the thing waited for, and the cancellation of the task's scope), look
 * once more, yield; when resumed, take back whatever is still armed and
 * look again. Every wake-up is a hint: the task always looks again, so a
 * spurious one (a late timer, a recycled record) costs one more look and
 * never a wrong answer. Everything armed lives in the task's wait node
 * (klua_wait_t): nothing is allocated per wait but a timer when the
 * node's own is still completing.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "klua.h"
#include "knhk/errors.h"

static void on_cancel(knhk_cancel_cb_t *cb, int reason) {
  (void)reason;
  klua_wake(cb->data);
}

int klua_wait_arm_cancel(klua_task_t *t, knhk_token_t *token) {
  if (!token) return 0;
  if (knhk_token_on_cancel(token, &t->w->ccb, on_cancel, t) == KNHK_ECANCELED) return 1;
  t->w->ccb_on = 1;
  return 0;
}

/* The watch is made for the wait and freed at its end (klua_wait_end):
 * watch is set exactly while watch_on is, so the end of a task that never
 * watched (all but token:wait's) need not read the record's cold part. */
int klua_wait_arm_watch(klua_task_t *t, knhk_token_t *token) {
  knhk_cancel_cb_t *cb = calloc(1, sizeof *cb);
  if (!cb) return -1;
  if (knhk_token_on_cancel(token, cb, on_cancel, t) == KNHK_ECANCELED) {
    free(cb);
    return 1;
  }
  t->w->watch = cb;
  t->w->watch_on = 1;
  return 0;
}

/* ------------------------------------------------------------------ sleep */

/* A timer of its own for a task whose node's timer is still completing
 * (stopped, its completion not run yet): shared by the reactor and the
 * task until both are done with it. */
typedef struct {
  knhk_timer_t tm;
  _Atomic int refs;
} spare_timer_t;

static void spare_release(knhk_timer_t *tm) {
  spare_timer_t *s = (spare_timer_t *)tm;
  if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) free(s);
}

/* The completion of a node's own timer, and of a spare one. Each knows
 * which it is by itself: the task (tm->data, type-stable: no reference
 * needed) may have given its node back and taken another meanwhile. */
static void own_timer_done(knhk_timer_t *tm, int status) {
  klua_wait_t *n = (klua_wait_t *)(void *)((char *)tm - offsetof(klua_wait_t, timer));
  if (status == 0) klua_wake(tm->data);
  atomic_store_explicit(&n->timer_busy, 0, memory_order_release);
}

static void spare_timer_done(knhk_timer_t *tm, int status) {
  if (status == 0) klua_wake(tm->data);
  spare_release(tm);
}

int klua_wait_arm_sleep(klua_task_t *t, uint64_t deadline_ns) {
  klua_wait_t *n = t->w;
  knhk_timer_t *tm = &n->timer;
  int busy = 0;
  if (!atomic_compare_exchange_strong_explicit(&n->timer_busy, &busy, 1, memory_order_acq_rel,
                                               memory_order_acquire)) {
    spare_timer_t *s = calloc(1, sizeof *s);
    if (!s) return KNHK_ENOMEM;
    atomic_init(&s->refs, 2);
    tm = &s->tm;
  }
  int own = tm == &n->timer;
  int rc = knhk_timer_start(t->rt->reactor, tm, deadline_ns, own ? own_timer_done : spare_timer_done, t);
  if (rc != 0) {
    if (own) atomic_store_explicit(&n->timer_busy, 0, memory_order_release);
    else free(tm);
    return rc;
  }
  n->extra_timer = tm; /* the one this wait stops at its end */
  return 0;
}

/* ------------------------------------------------------------------- join */

int klua_wait_arm_join(klua_task_t *t, klua_task_t *target) {
  klua_spin_lock(&target->jlock);
  if (klua_task_outcome(target) != KLUA_RUNNING) {
    klua_spin_unlock(&target->jlock);
    return 1;
  }
  klua_wait_t *w = t->w;
  w->kind = KLUA_WAIT_JOIN;
  w->on = target;
  w->prev = NULL;
  w->next = target->joiners;
  if (target->joiners) target->joiners->prev = w;
  target->joiners = w;
  w->queued = 1;
  klua_spin_unlock(&target->jlock);
  return 0;
}

/* t ended (its outcome is published): every joiner is taken out of the
 * list and woken. A joiner holds a handle to t while it waits, so t's
 * lock outlives the joiners' own unlinking. Its node is read only under
 * the lock, and its task woken after, in batches as a channel's close
 * wakes its waiters: once the lock is let go, a joiner whose node is out
 * (queued 0) may go on, woken by something else, and queue that node on
 * another task (a `next` read after the unlock then walked that task's
 * list: ThreadSanitizer saw the write race the read). No joiner comes
 * meanwhile: the outcome is published, and klua_wait_arm_join looks. */
void klua_wake_joiners(klua_task_t *t) {
  enum { MAXW = 64 };
  for (;;) {
    klua_task_t *ts[MAXW];
    int n = 0;
    klua_spin_lock(&t->jlock);
    klua_wait_t *w = t->joiners;
    for (; w && n < MAXW; w = w->next) {
      w->queued = 0;
      ts[n++] = klua_wait_task(w);
    }
    t->joiners = w; /* (the rest, still queued, for the next batch) */
    if (w) w->prev = NULL;
    klua_spin_unlock(&t->jlock);
    for (int i = 0; i < n; i++) klua_wake(ts[i]);
    if (n < MAXW) break;
  }
}

/* ------------------------------------------------------------------- end */

void klua_sync_unwait(klua_wait_t *w);     /* klua_chan.c */
void klua_select_unwait(void *sel);       /* klua_chan.c */

void klua_wait_end(klua_task_t *t) {
  klua_wait_t *w = t->w;
  if (!w) return; /* it has not started, or has ended */
  if (w->ccb_on) {
    knhk_token_off(&w->ccb);
    w->ccb_on = 0;
  }
  if (w->watch_on) {
    knhk_token_off(w->watch); /* (returned: the token is done with it) */
    free(w->watch);
    w->watch = NULL;
    w->watch_on = 0;
  }
  if (w->extra_timer) {
    knhk_timer_t *tm = w->extra_timer;
    w->extra_timer = NULL;
    knhk_timer_stop(tm); /* EALREADY if it fired: either way it completes once */
    if (tm != &w->timer) spare_release(tm);
  }
  if (w->on) { /* queued on something (every try starts here: one test when not) */
    switch (w->kind) {
    case KLUA_WAIT_JOIN: {
      klua_task_t *target = w->on;
      klua_spin_lock(&target->jlock);
      if (w->queued) {
        if (w->prev) w->prev->next = w->next;
        else target->joiners = w->next;
        if (w->next) w->next->prev = w->prev;
        w->queued = 0;
      }
      klua_spin_unlock(&target->jlock);
      break;
    }
    case KLUA_WAIT_SYNC: klua_sync_unwait(w); break;
    case KLUA_WAIT_SELECT: klua_select_unwait(w->on); break;
    case KLUA_WAIT_GROUP: klua_group_unnotify(w->on, t); break;
    default: break;
    }
  }
  w->kind = KLUA_WAIT_NONE;
  w->on = NULL;
}

/* ------------------------------------------------------------- describe */

void klua_wait_describe(klua_task_t *t, char *buf, size_t n) {
  const klua_wait_t *w = t->w;
  if (!w) {
    snprintf(buf, n, "%s", "to start"); /* (no node: it has not run yet) */
    return;
  }
  switch (w->kind) { /* (a wait's end sets it back to NONE) */
  case KLUA_WAIT_JOIN:
    snprintf(buf, n, "to join task %llu", (unsigned long long)((klua_task_t *)w->on)->id);
    return;
  case KLUA_WAIT_SYNC: snprintf(buf, n, "%s", klua_sync_wait_what(w)); return;
  case KLUA_WAIT_GROUP: snprintf(buf, n, "for its nursery's children to end"); return;
  case KLUA_WAIT_SELECT: snprintf(buf, n, "to receive on any of several channels"); return;
  case KLUA_WAIT_OTHER: snprintf(buf, n, "for a process or a line of input"); return;
  default: /* nothing queued: its own cancellation, a token's, or a time */
    snprintf(buf, n, "%s", w->watch_on ? "for a token to be cancelled"
                           : !w->extra_timer ? "to be cancelled"
                           : w->extra_timer->deadline == UINT64_MAX ? "for ever (a sleep of math.huge)"
                                                                    : "for a time to come");
  }
}
