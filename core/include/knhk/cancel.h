/* knhk/cancel.h: cancel tokens, a tree of them.
 *
 * Cancelling a token cancels every descendant, at once: each token's flag
 * is set before knhk_token_cancel returns, so knhk_token_is_cancelled is one
 * atomic load. A child made from a cancelled parent is born cancelled;
 * cancelling a child never touches its parent or siblings. Callbacks
 * registered on a token fire exactly once, on the cancelling thread, outside
 * any lock. Tokens are reference counted: a child holds its parent; a
 * dropped token unlinks itself from its parent's list.
 * The tree knows no clock: a token only holds its deadline as a value (the
 * earliest on its path is knhk_token_deadline). What makes a token cancel
 * itself at that time (reason KNHK_CANCEL_DEADLINE) is a deadline
 * (knhk/deadline.h), which arms the reactor's timer for it.
 */
#ifndef KNHK_CANCEL_H
#define KNHK_CANCEL_H

#include <stdint.h>
#include "knhk/task.h"

typedef struct knhk_token_s knhk_token_t;

/* Why a token was cancelled; descendants inherit the reason. */
enum knhk_cancel_reason {
  KNHK_CANCEL_NONE = 0,
  KNHK_CANCEL_EXPLICIT = 1, /* knhk_token_cancel by the program */
  KNHK_CANCEL_DEADLINE = 2, /* its deadline passed */
  KNHK_CANCEL_SIBLING = 3,  /* a sibling task failed (nursery policy) */
  KNHK_CANCEL_SIGNAL = 4,   /* SIGINT / SIGTERM */
  KNHK_CANCEL_SHUTDOWN = 5  /* the runtime is shutting down */
};

typedef struct knhk_cancel_cb_s knhk_cancel_cb_t;
typedef void (*knhk_cancel_fn)(knhk_cancel_cb_t *cb, int reason);

/* A callback registration, owned by the caller. The canceller still writes
 * to it just after fn returns, so do not free it inside fn: reuse it only
 * after knhk_token_off has returned (0, or KNHK_EALREADY once fn finished). */
struct knhk_cancel_cb_s {
  knhk_cancel_fn fn;
  void *data;
  /* private */
  knhk_cancel_cb_t *knhk__prev, *knhk__next;
  knhk_token_t *knhk__token;
  KNHK_ATOMIC(uint32_t) knhk__state;
};

/* Any thread. A new token, child of `parent` (NULL: a root), with one
 * reference for the caller. Returns 0, KNHK_EINVAL, or KNHK_ENOMEM. */
int knhk_token_new(knhk_token_t **out, knhk_token_t *parent);
/* Any thread. Adds a reference; returns t. */
knhk_token_t *knhk_token_retain(knhk_token_t *t);
/* Any thread. Drops a reference; the last one frees the token and unlinks
 * it from its parent. */
void knhk_token_release(knhk_token_t *t);

/* Any thread. Cancels t and its descendants with `reason` (> 0); runs
 * their callbacks before returning. Returns 0, KNHK_EALREADY if t was
 * already cancelled (its first reason stays), or KNHK_EINVAL. */
int knhk_token_cancel(knhk_token_t *t, int reason);
/* Any thread. 1 if cancelled, else 0: one atomic load. */
int knhk_token_is_cancelled(const knhk_token_t *t);
/* Any thread. The reason it was cancelled for, or KNHK_CANCEL_NONE. */
int knhk_token_reason(const knhk_token_t *t);
/* Any thread. The parent (not retained), or NULL for a root. */
knhk_token_t *knhk_token_parent(const knhk_token_t *t);

/* Any thread. Registers cb to run fn(cb, reason) when t is cancelled.
 * Returns 0; KNHK_ECANCELED if t is already cancelled (cb is not
 * registered: act on it now); KNHK_EINVAL. */
int knhk_token_on_cancel(knhk_token_t *t, knhk_cancel_cb_t *cb, knhk_cancel_fn fn, void *data);
/* Any thread. Unregisters cb. Returns 0 if it was removed before firing;
 * KNHK_EALREADY if it fired (when called from another thread while it is
 * running, returns once it has finished); KNHK_EINVAL if never registered. */
int knhk_token_off(knhk_cancel_cb_t *cb);

/* A thread that is not a worker (it blocks). Waits until t is cancelled or
 * timeout_ns of real time passes (< 0: no timeout; a thread's wait, never
 * a virtual clock's). Returns 0 or KNHK_ETIMEDOUT.
 * Tasks wait by registering a callback that wakes them. */
int knhk_token_wait(knhk_token_t *t, int64_t timeout_ns);

/* Any thread. Records `deadline_ns` (a time of the runtime's clock, 0:
 * none) as t's own deadline, replacing the one before; nothing is armed:
 * knhk_deadline_start (knhk/deadline.h) does that and calls this. Returns 0
 * or KNHK_EINVAL. */
int knhk_token_set_deadline(knhk_token_t *t, uint64_t deadline_ns);
/* Any thread. knhk_token_set_deadline(t, 0). Returns 0 or KNHK_EINVAL. */
int knhk_token_clear_deadline(knhk_token_t *t);
/* Any thread. The earliest deadline of t and its ancestors, 0 if none. */
uint64_t knhk_token_deadline(const knhk_token_t *t);

#endif
