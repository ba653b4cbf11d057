/* cancel.c: the cancel-token tree (see knhk/cancel.h).
 *
 * Invariants:
 *  - reason != 0 once cancelled, and never changes after (first CAS wins).
 *  - A token is in its parent's child list (prev/next, under the parent's
 *    lock) from creation until its last reference is dropped. A child holds
 *    a reference to its parent, so a parent outlives its children.
 *  - Whoever flips a token's reason from 0 owns its cancellation: it takes
 *    the token's callbacks out of the list and cancels its children (each
 *    child flipped under the token's lock, so a child being created either
 *    sees the flag and is born cancelled, or is in the list and is flipped).
 *    Descendants go on an intrusive work list (cancel_next), so cancelling
 *    a tree allocates nothing and callbacks run outside every lock.
 *  - A child in the list may be dying: its count reached 0 and its owner
 *    waits for the parent's lock to unlink and free it. The canceller flips
 *    it, then only *tries* to retain it (never from 0) and skips it if it is
 *    dying: a dying token has no children (they would hold it) to reach.
 *  - A callback node is REGISTERED (in a list), FIRING (taken out by the
 *    canceller, running) or FIRED; knhk_token_off waits out FIRING.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "atomics.h"
#include "clock.h"
#include "knhk/cancel.h"
#include "knhk/errors.h"
#include "telemetry_impl.h"

enum { CB_IDLE = 0, CB_REGISTERED = 1, CB_FIRING = 2, CB_FIRED = 3 };

/* The callback this thread is running, so that knhk_token_off called from
 * inside it does not wait for itself. */
static _Thread_local knhk_cancel_cb_t *tls_firing;

struct knhk_token_s {
  _Atomic int32_t reason;
  _Atomic uint32_t refs;
  knhk__spin_t lock;                 /* children, callbacks, deadline */
  knhk_token_t *parent;
  knhk_token_t *first_child, *prev, *next;
  knhk_token_t *cancel_next;         /* the canceller's work list */
  knhk_cancel_cb_t *cbs;
  uint64_t deadline;                 /* own deadline, 0 = none (under lock) */
  uint64_t tel_id;                   /* telemetry's id for it, or 0 */
};

int knhk_token_new(knhk_token_t **out, knhk_token_t *parent) {
  if (!out) return KNHK_EINVAL;
  knhk_token_t *t = calloc(1, sizeof *t);
  if (!t) return KNHK_ENOMEM;
  atomic_init(&t->refs, 1);
  if (KNHK__TEL_ON()) t->tel_id = knhk__tel_token_new(parent ? parent->tel_id : 0);
  if (parent) {
    knhk_token_retain(parent);
    t->parent = parent;
    knhk__spin_lock(&parent->lock);
    int32_t r = ld_relaxed(&parent->reason);
    atomic_init(&t->reason, r); /* born cancelled, with the same reason */
    t->next = parent->first_child;
    if (t->next) t->next->prev = t;
    parent->first_child = t;
    knhk__spin_unlock(&parent->lock);
  }
  *out = t;
  return 0;
}

knhk_token_t *knhk_token_retain(knhk_token_t *t) {
  if (t) atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
  return t;
}

void knhk_token_release(knhk_token_t *t) {
  while (t) {
    /* acq_rel: the last owner sees every other owner's writes */
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) return;
    knhk_token_t *p = t->parent;
    if (p) {
      knhk__spin_lock(&p->lock);
      if (t->prev) t->prev->next = t->next;
      else p->first_child = t->next;
      if (t->next) t->next->prev = t->prev;
      knhk__spin_unlock(&p->lock);
    }
    free(t);
    t = p; /* drop the reference the child held */
  }
}

int knhk_token_is_cancelled(const knhk_token_t *t) {
  return t && ld_acquire(&((knhk_token_t *)t)->reason) != 0;
}

int knhk_token_reason(const knhk_token_t *t) {
  return t ? ld_acquire(&((knhk_token_t *)t)->reason) : KNHK_CANCEL_NONE;
}

knhk_token_t *knhk_token_parent(const knhk_token_t *t) { return t ? t->parent : NULL; }

/* Takes t's callbacks out and flips its children, adding them (retained) to
 * the work list after t. Returns the callbacks to run. */
static int try_retain(knhk_token_t *t) {
  uint32_t n = ld_relaxed(&t->refs);
  while (n != 0)
    if (atomic_compare_exchange_weak_explicit(&t->refs, &n, n + 1, memory_order_acquire,
                                              memory_order_relaxed))
      return 1;
  return 0;
}

static knhk_cancel_cb_t *take_locked(knhk_token_t *t, int32_t reason) {
  knhk_cancel_cb_t *cbs = t->cbs;
  t->cbs = NULL;
  for (knhk_cancel_cb_t *c = cbs; c; c = c->knhk__next)
    st_relaxed(&c->knhk__state, CB_FIRING);
  for (knhk_token_t *c = t->first_child; c; c = c->next) {
    int32_t zero = 0;
    if (!atomic_compare_exchange_strong_explicit(&c->reason, &zero, reason, memory_order_acq_rel,
                                                 memory_order_relaxed))
      continue; /* another canceller owns it */
    if (!try_retain(c)) continue; /* dying */
    c->cancel_next = t->cancel_next;
    t->cancel_next = c;
  }
  return cbs;
}

int knhk_token_cancel(knhk_token_t *t, int reason) {
  if (!t || reason <= 0) return KNHK_EINVAL;
  int32_t zero = 0;
  if (!atomic_compare_exchange_strong_explicit(&t->reason, &zero, reason, memory_order_acq_rel,
                                               memory_order_relaxed))
    return KNHK_EALREADY;
  knhk_token_retain(t);
  uint64_t tel = KNHK__TEL_ON() ? knhk__tel_cancel_begin(t->tel_id, reason) : 0;
  uint32_t reached = 0; /* tokens this cancellation flipped, t included */
  t->cancel_next = NULL;
  knhk_token_t *work = t;
  while (work) {
    knhk_token_t *cur = work;
    reached++;
    knhk__spin_lock(&cur->lock);
    knhk_cancel_cb_t *cbs = take_locked(cur, reason);
    work = cur->cancel_next; /* take_locked put cur's children in front */
    knhk__spin_unlock(&cur->lock);
    while (cbs) {
      knhk_cancel_cb_t *next = cbs->knhk__next; /* cb may be reused once FIRED */
      knhk_cancel_cb_t *outer = tls_firing;
      tls_firing = cbs;
      cbs->fn(cbs, reason);
      tls_firing = outer;
      st_release(&cbs->knhk__state, CB_FIRED);
      cbs = next;
    }
    knhk_token_release(cur);
  }
  if (tel) knhk__tel_cancel_end(tel, reached - 1);
  return 0;
}

int knhk_token_on_cancel(knhk_token_t *t, knhk_cancel_cb_t *cb, knhk_cancel_fn fn, void *data) {
  if (!t || !cb || !fn) return KNHK_EINVAL;
  cb->fn = fn;
  cb->data = data;
  cb->knhk__token = t;
  cb->knhk__prev = NULL;
  knhk__spin_lock(&t->lock);
  if (ld_relaxed(&t->reason)) {
    knhk__spin_unlock(&t->lock);
    atomic_store_explicit(&cb->knhk__state, CB_IDLE, memory_order_relaxed);
    return KNHK_ECANCELED;
  }
  cb->knhk__next = t->cbs;
  if (t->cbs) t->cbs->knhk__prev = cb;
  t->cbs = cb;
  atomic_store_explicit(&cb->knhk__state, CB_REGISTERED, memory_order_relaxed);
  knhk__spin_unlock(&t->lock);
  return 0;
}

int knhk_token_off(knhk_cancel_cb_t *cb) {
  if (!cb || !cb->knhk__token) return KNHK_EINVAL;
  knhk_token_t *t = cb->knhk__token;
  knhk__spin_lock(&t->lock);
  uint32_t s = ld_relaxed(&cb->knhk__state);
  if (s == CB_REGISTERED) {
    if (cb->knhk__prev) cb->knhk__prev->knhk__next = cb->knhk__next;
    else t->cbs = cb->knhk__next;
    if (cb->knhk__next) cb->knhk__next->knhk__prev = cb->knhk__prev;
    st_relaxed(&cb->knhk__state, CB_IDLE);
    knhk__spin_unlock(&t->lock);
    return 0;
  }
  knhk__spin_unlock(&t->lock);
  if (s == CB_IDLE) return KNHK_EINVAL;
  /* Fired or firing: wait until it has finished, unless this thread is the
   * one running it (a callback unregistering itself). */
  if (tls_firing == cb) return KNHK_EALREADY;
  while (ld_acquire(&cb->knhk__state) == CB_FIRING) sched_yield();
  return KNHK_EALREADY;
}

/* ---------------------------------------------------------------- waiting */

static void wake_waiter(knhk_cancel_cb_t *cb, int reason) {
  (void)reason;
  _Atomic uint32_t *word = cb->data;
  st_release(word, 1);
  knhk__futex_wake(word, INT_MAX);
}

int knhk_token_wait(knhk_token_t *t, int64_t timeout_ns) {
  if (!t) return KNHK_EINVAL;
  _Atomic uint32_t word = 0;
  knhk_cancel_cb_t cb;
  if (knhk_token_on_cancel(t, &cb, wake_waiter, (void *)&word) == KNHK_ECANCELED) return 0;
  uint64_t end = timeout_ns < 0 ? UINT64_MAX : knhk__mono_ns() + (uint64_t)timeout_ns;
  int rc = 0;
  while (!ld_acquire(&word)) {
    uint64_t now = knhk__mono_ns();
    if (now >= end) {
      rc = KNHK_ETIMEDOUT;
      break;
    }
    struct timespec ts = {0, 0}, *tsp = NULL;
    if (end != UINT64_MAX) {
      uint64_t left = end - now;
      ts.tv_sec = (time_t)(left / 1000000000u);
      ts.tv_nsec = (long)(left % 1000000000u);
      tsp = &ts;
    }
    syscall(SYS_futex, (uint32_t *)&word, FUTEX_WAIT_PRIVATE, 0, tsp, NULL, 0);
  }
  /* Removed before it fired, or it fired: either way it no longer touches
   * `word` once off returns. */
  if (knhk_token_off(&cb) == KNHK_EALREADY) rc = 0;
  return rc;
}

/* -------------------------------------------------------------- deadlines */

/* A plain value: what arms a timer for it is knhk/deadline.h's business. */
int knhk_token_set_deadline(knhk_token_t *t, uint64_t deadline_ns) {
  if (!t) return KNHK_EINVAL;
  knhk__spin_lock(&t->lock);
  t->deadline = deadline_ns;
  knhk__spin_unlock(&t->lock);
  return 0;
}

int knhk_token_clear_deadline(knhk_token_t *t) { return knhk_token_set_deadline(t, 0); }

uint64_t knhk_token_deadline(const knhk_token_t *t) {
  uint64_t best = 0;
  for (knhk_token_t *p = (knhk_token_t *)t; p; p = p->parent) {
    knhk__spin_lock(&p->lock);
    uint64_t d = p->deadline;
    knhk__spin_unlock(&p->lock);
    if (d && (!best || d < best)) best = d;
  }
  return best;
}

/* -------------------------------------------------------------- telemetry */

uint64_t knhk_telemetry_token_id(const void *token) {
  return token ? ((const knhk_token_t *)token)->tel_id : 0;
}
