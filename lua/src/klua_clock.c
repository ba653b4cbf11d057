/* klua_clock.c: knhk.clock, the runtime's clock seen from Lua
 * (lua/knhk/clock.lua; core/include/knhk/clock.h has the semantics).
 *
 * knhk.clock.advance moves a virtual clock and then waits, as exec does,
 * for a timer due at the new time: timers fire in deadline order (equal
 * deadlines in start order), so when that timer has fired, every timer the
 * advance made due has fired too, and the tasks they woke were queued
 * before the advancing task. */
#include <stdlib.h>

#include "klua.h"
#include "klua_ffi.h"
#include "knhk/errors.h"

typedef struct klua_advance {
  knhk_timer_t timer;
  klua_task_t *task;
  _Atomic int done;
} klua_advance_t;

KLUA_API int klua_clock_kind(klua_rt_t *rt) { return knhk_clock_kind(rt->reactor); }

static void advanced(knhk_timer_t *tm, int status) { /* reactor thread */
  (void)status; /* fired, or cancelled by a reactor shutting down: done */
  klua_advance_t *a = tm->data;
  klua_task_t *t = a->task;
  atomic_store_explicit(&a->done, 1, memory_order_release);
  klua_wake(t);
  klua_task_release(t);
}

KLUA_API klua_advance_t *klua_clock_advance(klua_task_t *t, double seconds, int *err) {
  *err = 0;
  if (!t || !(seconds >= 0)) {
    *err = KNHK_EINVAL;
    return NULL;
  }
  knhk_reactor_t *r = t->rt->reactor;
  double ns = seconds * 1e9;
  int rc = knhk_clock_advance(r, ns >= KLUA_NEVER_NS ? UINT64_MAX : (uint64_t)(ns + 0.5));
  klua_advance_t *a = rc == 0 ? calloc(1, sizeof *a) : NULL;
  if (!a) {
    *err = rc ? rc : KNHK_ENOMEM;
    return NULL;
  }
  a->task = t;
  klua_task_retain(t); /* until advanced */
  rc = knhk_timer_start(r, &a->timer, knhk_reactor_now(r), advanced, a);
  if (rc != 0) {
    klua_task_release(t);
    free(a);
    *err = rc;
    return NULL;
  }
  return a;
}

KLUA_API int klua_clock_advanced(klua_advance_t *a) {
  return atomic_load_explicit(&a->done, memory_order_acquire);
}

/* After klua_clock_advanced said 1 (the reactor is done with it). */
KLUA_API void klua_clock_advance_free(klua_advance_t *a) { free(a); }
