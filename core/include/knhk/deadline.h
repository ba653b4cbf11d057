/* knhk/deadline.h: a token that cancels itself at a time of the runtime's
 * clock.
 *
 * This is where cancel tokens meet timers, and the only place: the token
 * tree (knhk/cancel.h) holds a deadline as a plain value and knows no
 * clock; the reactor (knhk/reactor.h) knows no token. A deadline records
 * its time on the token (knhk_token_deadline), arms a reactor timer, and
 * cancels the token with KNHK_CANCEL_DEADLINE when the timer fires. When
 * the token is cancelled first, for any reason, the deadline stops its
 * timer at once, so a long timeout left behind by a finished step holds no
 * timer. Under a virtual clock (knhk/clock.h) the timer, and so the
 * deadline, follows virtual time.
 *
 * One deadline per token at a time: starting one replaces the token's
 * recorded value, stopping one clears it.
 */
#ifndef KNHK_DEADLINE_H
#define KNHK_DEADLINE_H

#include <stdint.h>
#include "knhk/cancel.h"
#include "knhk/reactor.h"

typedef struct knhk_deadline_s knhk_deadline_t;

/* Any thread. Cancels `token` with KNHK_CANCEL_DEADLINE at `at_ns` of r's
 * clock (knhk_reactor_now; a time already past cancels it before this
 * returns). The
 * deadline holds a reference to the token until it is stopped. On success
 * *out is the caller's to stop, exactly once, with knhk_deadline_stop.
 * Returns 0, KNHK_EINVAL, KNHK_ENOMEM, or KNHK_ESHUTDOWN (the reactor is
 * closing). */
int knhk_deadline_start(knhk_deadline_t **out, knhk_reactor_t *r, knhk_token_t *token,
                        uint64_t at_ns);

/* Any thread, once per deadline. Stops it if it has not fired, clears the
 * token's recorded deadline, and gives up the deadline (its memory goes
 * once the reactor is done with its timer). Does not cancel the token.
 * (Whether it fired shows on the token: knhk_token_reason.) Returns 0, or
 * KNHK_EINVAL for NULL. */
int knhk_deadline_stop(knhk_deadline_t *d);

#endif
