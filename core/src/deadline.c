/* deadline.c: deadlines, above both the token tree and the reactor (see
 * knhk/deadline.h).
 *
 * A deadline is shared by its owner and its timer: two references, the
 * last one frees it and drops the token. The timer's completion is its
 * last access; the owner's stop is the owner's. A cancel callback on the
 * token stops the timer when something else cancels the token first: it
 * runs on the cancelling thread while the owner's reference keeps the
 * deadline alive (stop unregisters it, waiting out a callback in
 * progress, before dropping that reference).
 */
#include <stdlib.h>

#include "atomics.h"
#include "knhk/deadline.h"
#include "knhk/errors.h"

struct knhk_deadline_s {
  knhk_timer_t timer;
  knhk_cancel_cb_t on_cancel;
  knhk_token_t *token;
  _Atomic uint32_t refs;  /* the owner's and the timer's */
  int cb_on;              /* on_cancel is registered (owner only) */
};

static void release(knhk_deadline_t *d) {
  /* acq_rel: the last one sees every write of the other before freeing */
  if (atomic_fetch_sub_explicit(&d->refs, 1, memory_order_acq_rel) != 1) return;
  knhk_token_release(d->token);
  free(d);
}

/* Reactor thread. */
static void timer_done(knhk_timer_t *tm, int status) {
  knhk_deadline_t *d = tm->data;
  if (status == 0) knhk_token_cancel(d->token, KNHK_CANCEL_DEADLINE);
  release(d);
}

/* The cancelling thread (the reactor's, when the deadline itself fired:
 * the stop then finds the timer completed and does nothing). */
static void token_cancelled(knhk_cancel_cb_t *cb, int reason) {
  (void)reason;
  knhk_deadline_t *d = cb->data;
  knhk_timer_stop(&d->timer);
}

int knhk_deadline_start(knhk_deadline_t **out, knhk_reactor_t *r, knhk_token_t *token,
                        uint64_t at_ns) {
  if (out) *out = NULL;
  if (!out || !r || !token) return KNHK_EINVAL;
  knhk_deadline_t *d = calloc(1, sizeof *d);
  if (!d) return KNHK_ENOMEM;
  d->token = knhk_token_retain(token);
  atomic_init(&d->refs, 2);
  knhk_token_set_deadline(token, at_ns);
  int rc = knhk_timer_start(r, &d->timer, at_ns, timer_done, d);
  if (rc != 0) {
    knhk_token_clear_deadline(token);
    knhk_token_release(token);
    free(d);
    return rc;
  }
  /* After the start: a cancel between the two finds the callback refused
   * (ECANCELED) and stops the timer here instead. */
  if (knhk_token_on_cancel(token, &d->on_cancel, token_cancelled, d) == KNHK_ECANCELED)
    knhk_timer_stop(&d->timer);
  else
    d->cb_on = 1;
  /* A time already past cancels now, not when the reactor next turns: a
   * scope entered past its deadline must not run on to a real wait
   * (fail_after(0, f) would run f's checkpoints through). The timer, told
   * by token_cancelled, stops. */
  if (at_ns <= knhk_reactor_now(r)) knhk_token_cancel(token, KNHK_CANCEL_DEADLINE);
  *out = d;
  return 0;
}

int knhk_deadline_stop(knhk_deadline_t *d) {
  if (!d) return KNHK_EINVAL;
  if (d->cb_on) knhk_token_off(&d->on_cancel); /* waits out a callback in progress */
  knhk_timer_stop(&d->timer);                  /* EALREADY once completed: fine */
  knhk_token_clear_deadline(d->token);
  release(d);
  return 0;
}
