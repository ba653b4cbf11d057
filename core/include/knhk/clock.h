/* knhk/clock.h: the runtime's clock, owned by its reactor.
 *
 * Every sleep, deadline and timestamp of a runtime reads one clock:
 * knhk_reactor_now(r). It is chosen when the reactor is made
 * (knhk_reactor_new_with) and never changes:
 *
 *   KNHK_CLOCK_REAL     monotonic real time (CLOCK_MONOTONIC), in ns.
 *   KNHK_CLOCK_VIRTUAL  starts at 0 and moves only by jumps: as soon as
 *                       every task is waiting (the executor says so through
 *                       the idle watch below) and no real work is in flight
 *                       (a child process, a file operation, a hold), it
 *                       jumps to the earliest pending timer and fires it;
 *                       knhk_clock_advance moves it by hand. A workflow
 *                       with a three-day timeout runs in milliseconds.
 *
 * Real work under a virtual clock is awaited in real time: while a child
 * process runs or a file operation is in flight, virtual time stands
 * still (no jump); their own real-time parts (a process's kill grace)
 * use the real clock. Timers that must follow real time whatever the
 * runtime's clock (telemetry's export interval) use knhk_timer_start_real.
 */
#ifndef KNHK_CLOCK_H
#define KNHK_CLOCK_H

#include <stdint.h>

typedef struct knhk_reactor_s knhk_reactor_t;

enum knhk_clock_kind { KNHK_CLOCK_REAL = 0, KNHK_CLOCK_VIRTUAL = 1 };

/* Says whether every task is waiting: 1 when nothing can run until a
 * timer fires or real work completes, else 0. Called on the reactor
 * thread; it must not block. (knhk_executor_idle is one.) */
typedef int (*knhk_idle_fn)(void *arg);

/* Any thread. Monotonic real time in ns, whatever a runtime's clock. */
uint64_t knhk_clock_real_ns(void);

/* Any thread. KNHK_CLOCK_REAL or KNHK_CLOCK_VIRTUAL; KNHK_EINVAL for NULL. */
int knhk_clock_kind(const knhk_reactor_t *r);

/* Any thread. Tells a virtual clock how to know that every task waits:
 * until then (fn NULL), it never jumps by itself. The reactor calls fn on
 * its thread until knhk_reactor_free returns, so whatever arg points to
 * must outlive the reactor, or be unwatched first (fn NULL). Returns 0, or
 * KNHK_EINVAL (NULL reactor, real clock). */
int knhk_clock_watch_idle(knhk_reactor_t *r, knhk_idle_fn fn, void *arg);

/* Any thread. Under a virtual clock, fn(arg) is called on the reactor's
 * thread whenever every task waits, nothing holds the clock and no timer
 * is pending: time can never move again, and no task will ever be woken
 * from inside the runtime (a deadlock, unless a thread outside it wakes
 * one). Set it once the first task is queued: "every task waits" is only
 * meaningful from then on (an outside thread about to queue the first
 * task is not seen by the idle watch). It must not block; it may cancel
 * tokens. Same lifetime rule as the idle watch. Returns 0, or KNHK_EINVAL
 * (NULL reactor, real clock). */
typedef void (*knhk_stall_fn)(void *arg);
int knhk_clock_on_stall(knhk_reactor_t *r, knhk_stall_fn fn, void *arg);

/* Any thread. Under a virtual clock, begin(arg) and end(arg) bracket each
 * jump and the timers it fires (on the reactor's thread), so that what
 * they wake reaches the executor as one batch (knhk_executor_batch_begin).
 * Same lifetime rule as the idle watch. Returns 0, or KNHK_EINVAL. */
typedef void (*knhk_batch_fn)(void *arg);
int knhk_clock_batch(knhk_reactor_t *r, knhk_batch_fn begin, knhk_batch_fn end, void *arg);

/* Any thread. "Every task may be waiting now": the reactor asks the idle
 * watch again soon (a hint; it always checks before it jumps). Does
 * nothing under a real clock. Its type fits knhk_executor_options_t's
 * on_idle: pass the reactor as on_idle_arg. */
void knhk_clock_idle_hint(void *reactor);

/* Any thread. Moves a virtual clock forward by ns. knhk_reactor_now reads
 * the new time when this returns; the timers it made due fire soon after
 * on the reactor thread, in deadline order (equal deadlines: in the order
 * they were started), before the clock may jump any further. Returns 0, or
 * KNHK_EINVAL (NULL, real clock). */
int knhk_clock_advance(knhk_reactor_t *r, uint64_t ns);

/* Any thread. Real work outside the reactor is in flight (a thread reading
 * a terminal): a virtual clock does not jump until the matching release.
 * Release after waking the task that waits for the work, not before. The
 * reactor's own processes and file operations hold it by themselves.
 * Returns 0 or KNHK_EINVAL. */
int knhk_clock_hold(knhk_reactor_t *r);
int knhk_clock_release(knhk_reactor_t *r);

#endif
