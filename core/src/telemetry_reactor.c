/* telemetry_reactor.c: the reactor's part of telemetry. The first reactor
 * that exists while recording drains every thread's buffer on its own
 * thread: every interval (spans and metrics), and early, spans only, when a
 * thread's buffer passes half full (knhk__tel_kick). It uses the reactor's
 * public timers only, on the real clock: when the reactor shuts down its timers complete as
 * cancelled, which drains one last time.
 *
 * react_m guards which reactor drains and whether its timers are armed. A
 * recording thread that kicks only tries to take it, so it never waits.
 */
#include "clock.h"
#include "knhk/errors.h"
#include "telemetry_impl.h"

static pthread_mutex_t react_m = PTHREAD_MUTEX_INITIALIZER;
static knhk_reactor_t *drainer;   /* the reactor that drains, or NULL */
static knhk_timer_t tick, kick;   /* armed on drainer */
static int tick_armed, kick_armed;

static void tick_done(knhk_timer_t *t, int status);

/* Under react_m. */
static void arm_tick_locked(void) {
  if (!drainer || tick_armed || !ld_acquire(&knhk__tel_on)) return;
  /* Real time whatever the runtime's clock: a virtual clock must not jump
   * to our ticks, and the interval is a person's. */
  uint64_t at = knhk_clock_real_ns() + knhk__tel.interval_ns;
  if (knhk_timer_start_real(drainer, &tick, at, tick_done, drainer) == 0) tick_armed = 1;
}

/* Records drained per turn of the reactor's loop: encoding one takes
 * ~0.4 us, so a turn holds its timers and I/O for ~2 ms at most, and a
 * backlog is drained over the next turns (a kick each). */
enum { DRAIN_CHUNK = 4096 };

static void kick_locked(void);
static void drain_all(int metrics);

static void drain(int metrics) {
  pthread_mutex_lock(&knhk__tel.m);
  int more = ld_relaxed(&knhk__tel_on) && knhk__tel_drain_locked(metrics, 0, DRAIN_CHUNK);
  pthread_mutex_unlock(&knhk__tel.m);
  if (more) {
    pthread_mutex_lock(&react_m);
    kick_locked();
    pthread_mutex_unlock(&react_m);
  }
}

/* Everything left (the reactor shuts down). */
static void drain_all(int metrics) {
  pthread_mutex_lock(&knhk__tel.m);
  if (ld_relaxed(&knhk__tel_on)) knhk__tel_drain_locked(metrics, 0, UINT64_MAX);
  pthread_mutex_unlock(&knhk__tel.m);
}

/* Reactor thread. status: 0 at the interval, KNHK_ECANCELED at shutdown. */
static void tick_done(knhk_timer_t *t, int status) {
  if (status == 0) drain(1);
  else drain_all(1);
  pthread_mutex_lock(&react_m);
  tick_armed = 0;
  if (status == 0 && drainer == t->data) arm_tick_locked();
  pthread_mutex_unlock(&react_m);
}

static void kick_done(knhk_timer_t *t, int status) {
  (void)t;
  pthread_mutex_lock(&react_m);
  kick_armed = 0;
  pthread_mutex_unlock(&react_m);
  if (status == 0) drain(0);
  else drain_all(0); /* the reactor shuts down: no next turn */
}

/* Under react_m: a drain at the reactor's next turn. */
static void kick_locked(void) {
  if (drainer && !kick_armed && knhk_timer_start_real(drainer, &kick, 0, kick_done, NULL) == 0)
    kick_armed = 1;
}

/* Any thread, while recording. */
void knhk__tel_kick(void) {
  if (pthread_mutex_trylock(&react_m) != 0) return; /* being kicked, or changing */
  kick_locked();
  pthread_mutex_unlock(&react_m);
}

static knhk_reactor_t *known[8];
static int nknown;

void knhk__tel_reactor_attach_locked(void) {
  pthread_mutex_lock(&react_m);
  if (!drainer && nknown) drainer = known[0];
  arm_tick_locked();
  pthread_mutex_unlock(&react_m);
}

void knhk__tel_reactor_add(knhk_reactor_t *r) {
  pthread_mutex_lock(&react_m);
  if (nknown < (int)(sizeof known / sizeof known[0])) known[nknown++] = r;
  if (!drainer) drainer = r;
  arm_tick_locked();
  pthread_mutex_unlock(&react_m);
}

/* Before r shuts down: it no longer gets kicks; its armed timers complete
 * (cancelled) during its shutdown and drain then. */
void knhk__tel_reactor_remove(knhk_reactor_t *r) {
  pthread_mutex_lock(&react_m);
  for (int i = 0; i < nknown; i++)
    if (known[i] == r) known[i] = known[--nknown];
  if (drainer == r) drainer = NULL;
  pthread_mutex_unlock(&react_m);
}
