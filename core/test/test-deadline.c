/* test-deadline.c: deadlines, where tokens meet the reactor's timers. */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <string.h>

#include "knhk/cancel.h"
#include "knhk/clock.h"
#include "knhk/deadline.h"
#include "knhk/errors.h"
#include "knhk/reactor.h"
#include "latch.h"
#include "runner.h"

#define HOURS(h) ((uint64_t)(h) * 3600u * 1000000000u)

static knhk_token_t *token(knhk_token_t *parent) {
  knhk_token_t *t = NULL;
  ASSERT_OK(knhk_token_new(&t, parent));
  return t;
}

/* A virtual clock whose idle watch says what the test says. It is asked
 * before every jump, so it also tells where the clock was each time it
 * was about to jump: stopped at `watch_for` means a timer was due there. */
static _Atomic int tasks_wait;
static _Atomic uint64_t watch_for;
static _Atomic int stopped_there;
static int test_idle(void *arg) {
  if (atomic_load(&watch_for) && knhk_reactor_now(arg) == atomic_load(&watch_for))
    atomic_store(&stopped_there, 1);
  return atomic_load(&tasks_wait);
}

static knhk_reactor_t *virtual_reactor(int idle) {
  knhk_reactor_t *r = NULL;
  knhk_reactor_options_t o = {KNHK_CLOCK_VIRTUAL};
  ASSERT_OK(knhk_reactor_new_with(&r, &o));
  atomic_store(&tasks_wait, idle);
  atomic_store(&watch_for, 0);
  atomic_store(&stopped_there, 0);
  ASSERT_OK(knhk_clock_watch_idle(r, test_idle, r));
  return r;
}

static void count_down(knhk_timer_t *t, int status) {
  (void)status;
  latch_count_down(t->data);
}

/* Waits until the reactor has fired everything due at its clock's time
 * now: a timer due now, started after them, fires after them. */
static void wait_for_due(knhk_reactor_t *r) {
  latch_t l;
  latch_init(&l, 1);
  knhk_timer_t sentinel;
  memset(&sentinel, 0, sizeof sentinel);
  ASSERT_OK(knhk_timer_start(r, &sentinel, knhk_reactor_now(r), count_down, &l));
  latch_wait(&l);
}

TEST(deadline_cancels_its_token_with_reason_deadline) {
  knhk_reactor_t *r;
  ASSERT_OK(knhk_reactor_new(&r));
  knhk_token_t *t = token(NULL);
  knhk_deadline_t *d;
  uint64_t at = knhk_reactor_now(r) + 5000000;
  ASSERT_OK(knhk_deadline_start(&d, r, t, at));
  ASSERT_EQ(at, knhk_token_deadline(t));
  ASSERT_OK(knhk_token_wait(t, -1));
  ASSERT_EQ(KNHK_CANCEL_DEADLINE, knhk_token_reason(t));
  ASSERT_GE(knhk_reactor_now(r), at);
  ASSERT_OK(knhk_deadline_stop(d));
  ASSERT_EQ(0, knhk_token_deadline(t));
  knhk_token_release(t);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(deadline_refuses_bad_arguments) {
  knhk_reactor_t *r;
  ASSERT_OK(knhk_reactor_new(&r));
  knhk_token_t *t = token(NULL);
  knhk_deadline_t *d = (knhk_deadline_t *)&d;
  ASSERT_EQ(KNHK_EINVAL, knhk_deadline_start(&d, NULL, t, 1));
  ASSERT(d == NULL);
  ASSERT_EQ(KNHK_EINVAL, knhk_deadline_start(&d, r, NULL, 1));
  ASSERT_EQ(KNHK_EINVAL, knhk_deadline_start(NULL, r, t, 1));
  ASSERT_EQ(KNHK_EINVAL, knhk_deadline_stop(NULL));
  knhk_token_release(t);
  ASSERT_OK(knhk_reactor_free(r));
}

/* Virtual time: the outer deadline (1 h) fires when the clock jumps to it,
 * the inner one (60 h) never does: the outer's cancel reached the inner
 * token, whose deadline stopped its own timer, so the clock then goes
 * straight to the next timer (100 h) without stopping at 60 h. */
TEST(deadline_nested_outer_earlier_wins) {
  knhk_reactor_t *r = virtual_reactor(0);
  knhk_token_t *outer = token(NULL), *inner = token(outer);
  knhk_deadline_t *dout, *din;
  ASSERT_OK(knhk_deadline_start(&dout, r, outer, HOURS(1)));
  ASSERT_OK(knhk_deadline_start(&din, r, inner, HOURS(60)));
  ASSERT_EQ(HOURS(1), knhk_token_deadline(inner));
  atomic_store(&tasks_wait, 1);
  knhk_clock_idle_hint(r);
  ASSERT_OK(knhk_token_wait(inner, -1));
  ASSERT_EQ(KNHK_CANCEL_DEADLINE, knhk_token_reason(inner));
  ASSERT_EQ(HOURS(1), knhk_reactor_now(r)); /* exactly: it jumped there */
  atomic_store(&watch_for, HOURS(60));
  latch_t l;
  latch_init(&l, 1);
  knhk_timer_t after;
  memset(&after, 0, sizeof after);
  ASSERT_OK(knhk_timer_start(r, &after, HOURS(100), count_down, &l));
  knhk_clock_idle_hint(r);
  latch_wait(&l);
  ASSERT_EQ(HOURS(100), knhk_reactor_now(r));
  ASSERT_EQ(0, atomic_load(&stopped_there));
  ASSERT_OK(knhk_deadline_stop(din));
  ASSERT_OK(knhk_deadline_stop(dout));
  knhk_token_release(inner);
  knhk_token_release(outer);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(deadline_stopped_never_fires) {
  knhk_reactor_t *r = virtual_reactor(0);
  knhk_token_t *t = token(NULL);
  knhk_deadline_t *d;
  ASSERT_OK(knhk_deadline_start(&d, r, t, HOURS(1)));
  ASSERT_OK(knhk_deadline_stop(d));
  ASSERT_EQ(0, knhk_token_deadline(t));
  ASSERT_OK(knhk_clock_advance(r, HOURS(2)));
  wait_for_due(r);
  ASSERT_EQ(0, knhk_token_is_cancelled(t));
  knhk_token_release(t);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(deadline_already_past_fires_at_once) {
  knhk_reactor_t *r = virtual_reactor(0); /* never idle: no jump helps it */
  ASSERT_OK(knhk_clock_advance(r, HOURS(5)));
  knhk_token_t *t = token(NULL);
  knhk_deadline_t *d;
  ASSERT_OK(knhk_deadline_start(&d, r, t, HOURS(1)));
  /* before the start returned, not at the reactor's next turn: a scope
   * entered past its deadline is cancelled at its first checkpoint */
  ASSERT(knhk_token_is_cancelled(t));
  ASSERT_OK(knhk_token_wait(t, -1));
  ASSERT_EQ(KNHK_CANCEL_DEADLINE, knhk_token_reason(t));
  ASSERT_OK(knhk_deadline_stop(d));
  knhk_token_release(t);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(deadline_on_a_cancelled_token_holds_no_timer) {
  knhk_reactor_t *r = virtual_reactor(0);
  knhk_token_t *t = token(NULL);
  ASSERT_OK(knhk_token_cancel(t, KNHK_CANCEL_EXPLICIT));
  knhk_deadline_t *d;
  ASSERT_OK(knhk_deadline_start(&d, r, t, HOURS(1)));
  /* Its timer was stopped at once: with every task waiting the clock has
   * nothing to stop at before a timer at 3 h. */
  atomic_store(&watch_for, HOURS(1));
  latch_t l;
  latch_init(&l, 1);
  knhk_timer_t later;
  memset(&later, 0, sizeof later);
  ASSERT_OK(knhk_timer_start(r, &later, HOURS(3), count_down, &l));
  atomic_store(&tasks_wait, 1);
  knhk_clock_idle_hint(r);
  latch_wait(&l);
  ASSERT_EQ(HOURS(3), knhk_reactor_now(r));
  ASSERT_EQ(0, atomic_load(&stopped_there));
  ASSERT_EQ(KNHK_CANCEL_EXPLICIT, knhk_token_reason(t));
  ASSERT_OK(knhk_deadline_stop(d));
  knhk_token_release(t);
  ASSERT_OK(knhk_reactor_free(r));
}

TEST(deadline_pending_at_reactor_free_releases_the_token) {
  knhk_reactor_t *r;
  ASSERT_OK(knhk_reactor_new(&r));
  knhk_token_t *t = token(NULL);
  knhk_deadline_t *d;
  ASSERT_OK(knhk_deadline_start(&d, r, t, knhk_reactor_now(r) + HOURS(1)));
  knhk_token_release(t);           /* the deadline still holds it */
  ASSERT_OK(knhk_reactor_free(r)); /* completes the timer, cancelled */
  ASSERT_OK(knhk_deadline_stop(d)); /* the last reference: frees the token (ASan checks) */
}
