/* executor.c: the worker loop, spawning and waking, lifecycle and counters.
 * See knhk/executor.h for the contract, idle.c for how workers sleep and
 * wake, group.c for join groups, pool.c for pooled records. */
#define _GNU_SOURCE
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "executor_impl.h"
#include "knhk/errors.h"
#include "telemetry_impl.h"

#define KNHK__MAGIC 0x6b6e686bu  /* "knhk" */
#define KNHK__FAIRNESS_TICKS 61  /* look at inbox + injector first every so often */
#define KNHK__MAX_HELP_DEPTH 128 /* deeper helping waits only run their own queues */
#define KNHK__DEQUE_CAPACITY 256
/* A searcher spins this long before parking, and one that may not search
 * watches its own inbox as long. (Not longer: on a machine with more
 * runnable threads than cores, a spinning worker holds the core its
 * partner's wake-up is waiting for.) */
#define KNHK__SPIN_NS 40000
#define KNHK__OFFLOAD_AT 256     /* deque length at which the owner shares half */
#define KNHK__OFFLOAD_MAX 128
#define KNHK__INJECTOR_BATCH 32  /* tasks a worker takes from the injector at once */

_Thread_local knhk__worker_t *knhk__tls_worker KNHK__TLS_MODEL;

knhk__worker_t *knhk__current_worker(knhk__executor_t *ex) {
  knhk__worker_t *w = knhk__tls_worker;
  return (w && w->ex == ex) ? w : NULL;
}

knhk__executor_t *knhk__impl_of(knhk_executor_t *ex) {
  if (!ex || ex->knhk__magic != KNHK__MAGIC) return NULL;
  return ex->knhk__impl;
}

int knhk_task_init(knhk_task_t *task, knhk_task_fn run, void *data) {
  if (!task || !run) return KNHK_EINVAL;
  task->run = run;
  task->on_end = NULL;
  task->data = data;
  task->group = NULL;
  task->flags = 0;
  task->knhk__home = -1;
  task->knhk__bits = 0;
  atomic_init(&task->knhk__state, KNHK__T_INIT);
  atomic_init(&task->knhk__link.next, NULL);
  return 0;
}

int knhk_task_state(const knhk_task_t *task) {
  switch (ld_acquire(&((knhk_task_t *)task)->knhk__state)) {
  case KNHK__T_QUEUED: return KNHK_TASK_QUEUED;
  case KNHK__T_RUNNING:
  case KNHK__T_NOTIFIED: return KNHK_TASK_RUNNING;
  case KNHK__T_PARKED: return KNHK_TASK_PARKED;
  default: return KNHK_TASK_IDLE;
  }
}

/* ------------------------------------------------------- finding work */

/* Takes a task from the injector, and (for `w`) up to a batch more into
 * its own deque, so a stream of outside or offloaded tasks costs one lock
 * per batch, not per task. */
static knhk_task_t *injector_pop(knhk__executor_t *ex, knhk__worker_t *w, int *busy) {
  if (!knhk__mpsc_maybe_nonempty(&ex->injector)) return NULL;
  int unlocked = 0;
  if (!atomic_compare_exchange_strong_explicit(&ex->injector_lock, &unlocked, 1,
                                               memory_order_acquire, memory_order_relaxed)) {
    *busy = 1;
    return NULL;
  }
  knhk_link_t *first = NULL, *more;
  knhk__mpsc_pop_t r = knhk__mpsc_pop(&ex->injector, &first);
  int moved = 0;
  if (r == KNHK__MPSC_OK && w)
    while (moved < KNHK__INJECTOR_BATCH &&
           knhk__mpsc_pop(&ex->injector, &more) == KNHK__MPSC_OK) {
      if (knhk__deque_push(&w->deque, knhk__task_of(more), !ex->asymmetric) != 0) {
        knhk__mpsc_push(&ex->injector, more); /* out of memory: leave it queued */
        break;
      }
      moved++;
    }
  st_release(&ex->injector_lock, 0);
  if (r == KNHK__MPSC_BUSY) *busy = 1;
  if (moved) knhk__notify_parked(ex);
  return r == KNHK__MPSC_OK ? knhk__task_of(first) : NULL;
}

/* Owner only, after a push made its deque long: if some worker is looking
 * for work or asleep, move the oldest half to the injector in one step.
 * Stealing one tiny task at a time costs a cache-line transfer per task on
 * both sides; a batch through the injector costs one. */
static void offload(knhk__worker_t *w) {
  knhk__executor_t *ex = w->ex;
  uint32_t s = ld_relaxed(&ex->idle);
  if (KNHK__IDLE_SEARCHING(s) == 0 && ld_relaxed(&ex->nsleeping) == 0) return;
  knhk_task_t *batch[KNHK__OFFLOAD_MAX];
  int k = knhk__deque_take_oldest(&w->deque, batch, KNHK__OFFLOAD_MAX);
  if (k == 0) return;
  for (int i = 0; i + 1 < k; i++) st_relaxed(&batch[i]->knhk__link.next, &batch[i + 1]->knhk__link);
  knhk__mpsc_push_chain(&ex->injector, &batch[0]->knhk__link, &batch[k - 1]->knhk__link);
  knhk__notify_parked(ex);
}

static knhk_task_t *inbox_pop(knhk__worker_t *w, int *busy) {
  knhk_link_t *l = NULL;
  knhk__mpsc_pop_t r = knhk__mpsc_pop(&w->inbox, &l);
  if (r == KNHK__MPSC_BUSY) *busy = 1;
  return r == KNHK__MPSC_OK ? knhk__task_of(l) : NULL;
}

static uint32_t rng_next(knhk__worker_t *w) {
  /* xorshift64*: a victim choice needs speed, not quality */
  uint64_t x = w->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  w->rng = x;
  return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

/* One pass over the other workers' deques from a random start. */
static knhk_task_t *steal_round(knhk__worker_t *w, int *busy) {
  knhk__executor_t *ex = w->ex;
  int n = ex->n;
  if (n == 1) return NULL;
  int start = (int)(rng_next(w) % (uint32_t)n);
  for (int i = 0; i < n; i++) {
    int v = start + i;
    if (v >= n) v -= n;
    if (v == w->index) continue;
    knhk__deque_t *d = &ex->workers[v].deque;
    if (knhk__deque_size(d) == 0) continue; /* a look, not an attempt */
    knhk_task_t *t;
    owner_inc(&w->c.steal_attempts);
    knhk__steal_t r = knhk__deque_steal(d, &t);
    if (r == KNHK__STEAL_OK) {
      owner_inc(&w->c.stolen);
      return t;
    }
    if (r == KNHK__STEAL_RETRY) *busy = 1; /* lost a race: the victim still had work */
  }
  return NULL;
}

static void begin_searching(knhk__worker_t *w) {
  if (w->searching) return;
  w->searching = 1;
  atomic_fetch_add_explicit(&w->ex->idle, KNHK__IDLE_ONE_SEARCHING, memory_order_seq_cst);
}

/* At most half the workers search at once (the rest park straight away). */
static int may_search(knhk__worker_t *w) {
  if (w->searching) return 1;
  uint32_t s = ld_relaxed(&w->ex->idle);
  return 2 * KNHK__IDLE_SEARCHING(s) < (uint32_t)w->ex->n;
}

static void end_searching(knhk__worker_t *w) {
  if (!w->searching) return;
  w->searching = 0;
  uint32_t prev =
      atomic_fetch_sub_explicit(&w->ex->idle, KNHK__IDLE_ONE_SEARCHING, memory_order_seq_cst);
  if (KNHK__IDLE_SEARCHING(prev) == 1) knhk__notify_parked(w->ex);
}

/* ------------------------------------------------- seeded schedules */

void knhk_executor_batch_begin(void *handle) {
  knhk__executor_t *ex = knhk__impl_of(handle);
  if (ex && (ex->flags & KNHK_EXECUTOR_SEEDED)) pthread_mutex_lock(&ex->batch_m);
}

void knhk_executor_batch_end(void *handle) {
  knhk__executor_t *ex = knhk__impl_of(handle);
  if (ex && (ex->flags & KNHK_EXECUTOR_SEEDED)) pthread_mutex_unlock(&ex->batch_m);
}

/* splitmix64 (Steele, Lea, Flood 2014): every seed, 0 included, gives a
 * full-period stream, so seeds next to each other give unrelated orders. */
static uint64_t splitmix_next(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Owner only. Adds t to the ready set; 0, or -1 when out of memory. */
static int ready_add(knhk__worker_t *w, knhk_task_t *t) {
  if (w->nready == w->ready_cap) {
    uint32_t cap = w->ready_cap ? w->ready_cap * 2 : 64;
    knhk_task_t **r = realloc(w->ready, cap * sizeof *r);
    if (!r) return -1;
    w->ready = r;
    w->ready_cap = cap;
  }
  w->ready[w->nready++] = t;
  return 0;
}

/* KNHK_EXECUTOR_SEEDED (one worker): moves every task that is ready into
 * the ready set, in a fixed order (deque, inbox, injector), then takes the
 * one the seeded generator picks. Out of memory, the task that found no
 * room runs next: nothing is lost, only that choice is not seeded. */
static knhk_task_t *seeded_pick(knhk__worker_t *w, int *busy) {
  knhk_task_t *t;
  /* not while a batch of wake-ups is arriving (knhk_executor_batch_begin):
   * they are one choice, whatever the order their threads ran in */
  pthread_mutex_lock(&w->ex->batch_m);
  for (;;) {
    if (!(t = knhk__deque_pop(&w->deque)) && !(t = inbox_pop(w, busy)) &&
        !(t = injector_pop(w->ex, NULL, busy)))
      break;
    if (ready_add(w, t) != 0) {
      pthread_mutex_unlock(&w->ex->batch_m);
      return t;
    }
  }
  if (w->nready == 0) {
    pthread_mutex_unlock(&w->ex->batch_m);
    return NULL;
  }
  /* no draw without a choice: the stream of draws is then the same whatever
   * path a lone task came by */
  uint32_t i = w->nready == 1 ? 0 : (uint32_t)(splitmix_next(&w->pick_rng) % w->nready);
  t = w->ready[i];
  w->ready[i] = w->ready[--w->nready];
  pthread_mutex_unlock(&w->ex->batch_m);
  return t;
}

/* Local work first (LIFO), with inbox and injector looked at first every
 * KNHK__FAIRNESS_TICKS so neither starves behind a busy deque. A deep
 * helping wait leaves the injector alone. */
static knhk_task_t *find_local(knhk__worker_t *w, int *busy, int deep) {
  knhk_task_t *t;
  if (w->ex->flags & KNHK_EXECUTOR_SEEDED) return seeded_pick(w, busy);
  if (++w->tick % KNHK__FAIRNESS_TICKS == 0) {
    if ((t = inbox_pop(w, busy))) return t;
    if (!deep && (t = injector_pop(w->ex, w, busy))) return t;
  }
  if ((t = knhk__deque_pop(&w->deque))) return t;
  return inbox_pop(w, busy);
}

static knhk_task_t *find_remote(knhk__worker_t *w, int *busy) {
  knhk_task_t *t = injector_pop(w->ex, w, busy);
  if (!t && may_search(w)) {
    begin_searching(w);
    t = steal_round(w, busy);
  }
  return t;
}

/* -------------------------------------------------------------- running */

static void end_task(knhk__worker_t *w, knhk_task_t *t, int status) {
  knhk_group_t *g = t->group;
  knhk_task_end_fn on_end = t->on_end;
  int pooled = (t->knhk__bits & KNHK__TB_POOLED) != 0;
  st_release(&t->knhk__state, KNHK__T_DONE);
  if (status == 0)
    owner_inc(&w->c.completed);
  else if (status == KNHK_ECANCELED)
    owner_inc(&w->c.cancelled);
  else
    owner_inc(&w->c.failed);
  if (on_end) on_end(t, status); /* may free t */
  if (pooled && !knhk__pool_put_local(w, KNHK__POOL_TASK, offsetof(knhk_task_t, data), t))
    knhk__pool_put(w->ex, w, KNHK__POOL_TASK, t);
  if (g) knhk__group_task_ended(w, g, status);
}

static void run_task(knhk__worker_t *w, knhk_task_t *t) {
  uint32_t bits = t->knhk__bits;
  if (!(bits & KNHK__TB_STARTED)) {
    if (bits & KNHK__TB_JOIN) { /* a join's side: no task state, no counters */
      knhk__join_run_taken(w, t);
      return;
    }
    if (ld_relaxed(&w->ex->stopping) == 1 + KNHK_SHUTDOWN_PROMPT) {
      end_task(w, t, KNHK_ECANCELED);
      return;
    }
    t->knhk__bits = bits | KNHK__TB_STARTED;
    if (t->flags & KNHK_TASK_STICKY) t->knhk__home = w->index;
  }
  st_release(&t->knhk__state, KNHK__T_RUNNING);
  int status = t->run(t);
  knhk__group_drop_reservation(w); /* its spawns are all published now */
  if (status == KNHK_TASK_PENDING) {
    uint32_t expected = KNHK__T_RUNNING;
    if (atomic_compare_exchange_strong_explicit(&t->knhk__state, &expected, KNHK__T_PARKED,
                                                memory_order_acq_rel, memory_order_acquire))
      return;
    /* NOTIFIED while running: its wake-up arrived before it parked */
    st_relaxed(&t->knhk__state, KNHK__T_QUEUED);
    knhk__executor_enqueue(w->ex, t);
    return;
  }
  if (status > 0) status = KNHK_EFAILED;
  end_task(w, t, status);
}

static int loop_should_end(knhk__worker_t *w, knhk__wait_t *wt) {
  return wt ? wt->done(w, wt) : ld_acquire(&w->ex->done) != 0;
}

/* A searcher that found nothing keeps looking for a short while before it
 * parks: waking a parked worker costs a futex call on the spawner's side
 * and microseconds on ours, while spawns usually come in bursts. It stays
 * counted as searching meanwhile, so spawners wake nobody. Its own inbox
 * (a line of its own) is looked at after every pause: a task pinned to it
 * and woken there, as each side of a ping-pong between two workers is, is
 * seen within ~100 ns, not after the 32 pauses (~0.7 us on this kind of
 * core) between looks at the others' queues. Returns 1 when work (or the
 * end of the wait) appeared. */
static int spin_for_work(knhk__worker_t *w, knhk__wait_t *g) {
  uint64_t deadline = knhk__mono_ns() + KNHK__SPIN_NS;
  for (uint32_t i = 1;; i++) {
    for (int k = 0; k < 32; k++) {
      knhk__cpu_relax();
      if (knhk__mpsc_maybe_nonempty(&w->inbox)) return 1;
    }
    if (knhk__work_visible(w) || loop_should_end(w, g)) return 1;
    if ((i & 7) == 0 && knhk__mono_ns() > deadline) return 0;
  }
}

/* A worker that may not search (half the workers already do) still
 * watches its own inbox for a while before it parks: the tasks pinned to
 * it are woken there, and a wake-up that finds it awake costs the waker a
 * push, where a parked one costs a futex call and an interrupt. Looking at
 * its own inbox only, it disturbs no other worker. Returns 1 when work (or
 * the end of the wait) appeared. */
static int spin_for_inbox(knhk__worker_t *w, knhk__wait_t *g) {
  uint64_t deadline = knhk__mono_ns() + KNHK__SPIN_NS;
  for (uint32_t i = 1;; i++) {
    knhk__cpu_relax(); /* one load per pause: a wake-up is seen within ~100 ns */
    if (knhk__mpsc_maybe_nonempty(&w->inbox) || loop_should_end(w, g)) return 1;
    if ((i & 255) == 0 && knhk__mono_ns() > deadline) return 0;
  }
}

static void park_counted(knhk__worker_t *w) {
  owner_add(&w->c.busy_ns, knhk__mono_ns() - w->busy_since);
  owner_inc(&w->c.parks);
  knhk__worker_park(w);
  w->busy_since = knhk__mono_ns();
}

/* The worker loop. A helping wait nested past KNHK__MAX_HELP_DEPTH is
 * `deep`: it only runs its own deque and inbox, where the tasks it waits
 * for most likely are, so the stack stays bounded, and it sleeps outside
 * the sleepers list, since it could not act on a call to go stealing. */
int knhk__worker_loop(knhk__worker_t *w, knhk__wait_t *g) {
  int deep = 0, claimed = 0, rc = 0;
  int watched = 0; /* its inbox watched since it last ran a task */
  if (g) deep = ++w->help_depth > KNHK__MAX_HELP_DEPTH;
  for (;;) {
    if (loop_should_end(w, g)) break;
    int busy = 0;
    knhk_task_t *t = find_local(w, &busy, deep);
    if (!t) {
      knhk__group_flush(w); /* give back what we hold before looking further */
      /* seeded: every task goes through seeded_pick's choice (a push in
       * flight makes it busy: the loop comes back) */
      if (!deep && !(w->ex->flags & KNHK_EXECUTOR_SEEDED)) t = find_remote(w, &busy);
    }
    if (t) {
      end_searching(w);
      if (t->group != w->pend_g) knhk__group_flush_ends(w);
      run_task(w, t);
      watched = 0;
      continue;
    }
    if (busy) { /* a push or steal in flight: it will be visible soon */
      knhk__cpu_relax();
      continue;
    }
    /* Once stopping, no spinning: the executor is done when every worker
     * sleeps with nothing live, and a spin for work that will not come
     * only puts that off (by KNHK__SPIN_NS at the end of every run: the
     * last worker spun before it could register asleep and finish). */
    int spin = !deep && !ld_relaxed(&w->ex->stopping);
    if (spin && w->searching && spin_for_work(w, g)) continue;
    if (spin && !w->searching && !watched && !(w->ex->flags & KNHK_EXECUTOR_SEEDED)) {
      watched = 1;
      if (spin_for_inbox(w, g)) continue;
    }
    if (g && !claimed) { /* from here on, whoever completes the wait wakes us */
      if ((rc = g->claim(w, g)) != 0) break;
      claimed = 1;
      continue;
    }
    if (deep) {
      park_counted(w);
      continue;
    }
    if (!knhk__register_sleep(w)) continue;
    if (knhk__work_visible(w)) {
      knhk__unregister_sleep(w);
      begin_searching(w);
      continue;
    }
    if (loop_should_end(w, g)) {
      knhk__unregister_sleep(w);
      break;
    }
    park_counted(w);
    knhk__unregister_sleep(w);
  }
  if (g) {
    w->help_depth--;
    if (claimed) g->release(w, g);
    end_searching(w);
  }
  return rc;
}

/* ---------------------------------------------------- spawning, waking */

void knhk__executor_enqueue(knhk__executor_t *ex, knhk_task_t *t) {
  if (t->knhk__home >= 0) {
    knhk__worker_t *home = &ex->workers[t->knhk__home];
    knhk__mpsc_push(&home->inbox, &t->knhk__link);
    if (ld_sc(&home->park) == KNHK__P_PARKED) knhk__worker_unpark(home);
    return;
  }
  knhk__worker_t *w = knhk__current_worker(ex);
  if (!w || knhk__deque_push(&w->deque, t, !ex->asymmetric) != 0)
    knhk__mpsc_push(&ex->injector, &t->knhk__link); /* outside thread, or no memory */
  knhk__notify_parked(ex);
}

int knhk__spawn_queued(knhk__executor_t *ex, knhk_task_t *t) {
  knhk__worker_t *w = knhk__current_worker(ex);
  if (w && t->knhk__home >= 0) { /* pinned: straight to its worker's inbox */
    if (t->group) knhk__group_spawned(w, t->group);
    owner_inc(&w->c.spawned);
    knhk__executor_enqueue(ex, t);
    return 0;
  }
  if (w) {
    if (t->group) knhk__group_spawned(w, t->group);
    owner_inc(&w->c.spawned);
    if (knhk__deque_push(&w->deque, t, !ex->asymmetric) != 0)
      knhk__mpsc_push(&ex->injector, &t->knhk__link);
    knhk__notify_parked(ex);
    if (knhk__deque_owner_size(&w->deque) > KNHK__OFFLOAD_AT && ex->n > 1) offload(w);
    return 0;
  }
  /* Outside thread: announce, then check for shutdown (Dekker with
   * check_done_locked, which reads ext_entering after `stopping` is set). */
  atomic_fetch_add_explicit(&ex->ext_entering, 1, memory_order_seq_cst);
  int rc = 0;
  if (ld_sc(&ex->stopping)) {
    rc = KNHK_ESHUTDOWN;
  } else {
    if (t->group) knhk__group_spawned(NULL, t->group);
    atomic_fetch_add_explicit(&ex->ext_spawned, 1, memory_order_relaxed);
    if (t->knhk__home >= 0) {
      knhk__executor_enqueue(ex, t);
    } else {
      knhk__mpsc_push(&ex->injector, &t->knhk__link);
      knhk__notify_parked(ex);
    }
  }
  if (atomic_fetch_sub_explicit(&ex->ext_entering, 1, memory_order_seq_cst) == 1) {
    if (ld_sc(&ex->stopping)) {
      /* The last worker to fall asleep may have seen us in progress and so
       * not finished the shutdown: run its check again. */
      pthread_mutex_lock(&ex->idle_lock);
      int done_now = knhk__check_done_locked(ex);
      pthread_mutex_unlock(&ex->idle_lock);
      if (done_now) knhk__finish_done(ex);
    } else if (ex->on_idle && KNHK__IDLE_UNPARKED(ld_sc(&ex->idle)) == 0) {
      /* Likewise its idle hint: whoever acted on it (a virtual clock) saw
       * us in progress, so "not idle", and will not look again. Hint again
       * (Dekker: our decrement, then its count; its decrement, then the
       * watcher's read of ours). A virtual clock's run hung so, once in
       * ~25 under ThreadSanitizer with the cores busy. */
      pthread_mutex_lock(&ex->idle_lock);
      if (KNHK__IDLE_UNPARKED(ld_relaxed(&ex->idle)) == 0 && !ld_relaxed(&ex->done))
        ex->on_idle(ex->on_idle_arg);
      pthread_mutex_unlock(&ex->idle_lock);
    }
  }
  return rc;
}

static int spawn_checked(knhk__executor_t *ex, knhk_task_t *t, int worker) {
  if (!ex || !t || !t->run || worker < -1 || worker >= ex->n) return KNHK_EINVAL;
  /* A task pinned to a worker not started yet: start it now, so that a
   * thread that cannot be started is this call's error, not a task left in
   * an inbox nobody reads. (After shutdown, spawning says so below.) */
  if (worker >= 0 && !ld_acquire(&ex->workers[worker].started) &&
      knhk__worker_start(&ex->workers[worker]) == KNHK_ENOMEM)
    return KNHK_ENOMEM;
  /* A plain check, not a CAS: it catches a record spawned again while
   * live; two threads racing to spawn one record is beyond it. */
  uint32_t s = ld_acquire(&t->knhk__state);
  if (s != KNHK__T_INIT && s != KNHK__T_DONE) return KNHK_EINVAL;
  st_relaxed(&t->knhk__state, KNHK__T_QUEUED);
  t->knhk__bits &= KNHK__TB_POOLED;
  t->knhk__home = worker;
  int rc = knhk__spawn_queued(ex, t);
  if (rc != 0) st_release(&t->knhk__state, s);
  return rc;
}

int knhk_executor_spawn(knhk_executor_t *handle, knhk_task_t *t) {
  return spawn_checked(knhk__impl_of(handle), t, -1);
}

int knhk_executor_spawn_on(knhk_executor_t *handle, knhk_task_t *t, int worker) {
  return spawn_checked(knhk__impl_of(handle), t, worker < 0 ? -2 : worker);
}

int knhk_executor_submit(knhk_executor_t *handle, knhk_task_fn run, void *data,
                         knhk_group_t *group) {
  knhk__executor_t *ex = knhk__impl_of(handle);
  if (!ex || !run) return KNHK_EINVAL;
  knhk__worker_t *w = knhk__current_worker(ex);
  knhk_task_t *t = w ? knhk__pool_get_local(w, KNHK__POOL_TASK, offsetof(knhk_task_t, data)) : NULL;
  if (!t) t = knhk__pool_get(ex, w, KNHK__POOL_TASK);
  if (!t) return KNHK_ENOMEM;
  t->run = run;
  t->on_end = NULL;
  t->data = data;
  t->group = group;
  t->flags = 0;
  t->knhk__home = -1;
  t->knhk__bits = KNHK__TB_POOLED;
  st_relaxed(&t->knhk__state, KNHK__T_QUEUED);
  int rc = knhk__spawn_queued(ex, t);
  if (rc != 0) knhk__pool_put(ex, NULL, KNHK__POOL_TASK, t);
  return rc;
}

int knhk_executor_wake(knhk_executor_t *handle, knhk_task_t *t) {
  knhk__executor_t *ex = knhk__impl_of(handle);
  if (!ex || !t) return KNHK_EINVAL;
  uint32_t s = ld_acquire(&t->knhk__state);
  for (;;) {
    if (s == KNHK__T_PARKED) {
      if (atomic_compare_exchange_weak_explicit(&t->knhk__state, &s, KNHK__T_QUEUED,
                                                memory_order_acq_rel, memory_order_acquire)) {
        knhk__executor_enqueue(ex, t);
        return 0;
      }
    } else if (s == KNHK__T_RUNNING) {
      if (atomic_compare_exchange_weak_explicit(&t->knhk__state, &s, KNHK__T_NOTIFIED,
                                                memory_order_acq_rel, memory_order_acquire))
        return 0;
    } else {
      return 0; /* queued, notified, not spawned, or ended: nothing to do */
    }
  }
}

/* ------------------------------------------------------------- lifecycle */

static void *worker_main(void *arg) {
  knhk__worker_t *w = arg;
  knhk__tls_worker = w;
  w->busy_since = knhk__mono_ns();
  knhk__worker_loop(w, NULL);
  owner_add(&w->c.busy_ns, knhk__mono_ns() - w->busy_since);
  knhk__tls_worker = NULL;
  return NULL;
}

/* A worker started by a wake-up (KNHK_EXECUTOR_LAZY_WORKERS) begins as
 * one coming back from park_counted: it takes the token, and leaves the
 * sleepers (or keeps the searching role its waker gave it). */
static void *lazy_worker_main(void *arg) {
  knhk__worker_t *w = arg;
  knhk__tls_worker = w;
  w->busy_since = knhk__mono_ns();
  atomic_exchange_explicit(&w->park, KNHK__P_EMPTY, memory_order_acq_rel);
  knhk__unregister_sleep(w);
  knhk__worker_loop(w, NULL);
  owner_add(&w->c.busy_ns, knhk__mono_ns() - w->busy_since);
  knhk__tls_worker = NULL;
  return NULL;
}

/* Undoes what waking `w` counted, when its thread could not be started: a
 * notifier took it off the sleepers as unparked and searching; it goes
 * back, first in line, so the next wake-up tries another worker. */
static void unwake_unstarted(knhk__worker_t *w) {
  knhk__executor_t *ex = w->ex;
  pthread_mutex_lock(&ex->idle_lock);
  int done_now = 0;
  if (!w->in_sleepers && w->woken_to_search) {
    memmove(ex->sleepers + 1, ex->sleepers, (size_t)ex->nsleepers * sizeof *ex->sleepers);
    ex->sleepers[0] = w->index;
    ex->nsleepers++;
    atomic_fetch_add_explicit(&ex->nsleeping, 1, memory_order_seq_cst);
    atomic_fetch_sub_explicit(&ex->idle, KNHK__IDLE_ONE_UNPARKED | KNHK__IDLE_ONE_SEARCHING,
                              memory_order_seq_cst);
    w->in_sleepers = 1;
    w->woken_to_search = 0;
    done_now = knhk__check_done_locked(ex);
  }
  pthread_mutex_unlock(&ex->idle_lock);
  if (done_now) knhk__finish_done(ex);
}

int knhk__worker_start(knhk__worker_t *w) {
  knhk__executor_t *ex = w->ex;
  int rc = 0;
  pthread_mutex_lock(&ex->start_m);
  if (w->has_thread) {
    /* started already */
  } else if (ld_acquire(&ex->done)) {
    rc = KNHK_ESHUTDOWN; /* shutdown no longer joins threads started now */
  } else {
    st_release(&w->started, 1);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 8u << 20); /* helping waits nest task frames */
    if (pthread_create(&w->thread, &attr, lazy_worker_main, w) == 0) {
      w->has_thread = 1;
    } else {
      st_release(&w->started, 0);
      atomic_store_explicit(&w->park, KNHK__P_PARKED, memory_order_seq_cst);
      rc = KNHK_ENOMEM;
    }
    pthread_attr_destroy(&attr);
  }
  pthread_mutex_unlock(&ex->start_m);
  if (rc == KNHK_ENOMEM) unwake_unstarted(w);
  return rc;
}

static int env_workers(int *out) {
  const char *s = getenv("KNHK_WORKERS");
  if (!s || !*s) return 0;
  char *end;
  long v = strtol(s, &end, 10);
  if (*end || v < 1 || v > KNHK_MAX_WORKERS) return KNHK_EINVAL;
  *out = (int)v;
  return 1;
}

int knhk_executor_options_init(knhk_executor_options_t *o) {
  if (!o) return KNHK_EINVAL;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  o->workers = cpus < 1 ? 1 : cpus > KNHK_MAX_WORKERS ? KNHK_MAX_WORKERS : (int)cpus;
  o->flags = 0;
  o->seed = 0;
  o->on_idle = NULL;
  o->on_idle_arg = NULL;
  int rc = env_workers(&o->workers);
  return rc < 0 ? rc : 0;
}

static void free_impl(knhk__executor_t *ex) {
  if (ex->workers) {
    for (int i = 0; i < ex->n; i++) {
      knhk__deque_destroy(&ex->workers[i].deque);
      free(ex->workers[i].ready); /* empty: every task had ended */
    }
    free(ex->workers);
  }
  knhk__pool_free_all(ex);
  free(ex->sleepers);
  pthread_mutex_destroy(&ex->idle_lock);
  pthread_mutex_destroy(&ex->batch_m);
  pthread_mutex_destroy(&ex->start_m);
  free(ex);
}

int knhk_executor_init(knhk_executor_t *handle, const knhk_executor_options_t *opts) {
  if (!handle) return KNHK_EINVAL;
  knhk_executor_options_t o;
  if (opts) {
    o = *opts;
  } else if (knhk_executor_options_init(&o) != 0) {
    return KNHK_EINVAL;
  }
  if (o.workers < 1 || o.workers > KNHK_MAX_WORKERS) return KNHK_EINVAL;
  if (o.flags & ~(uint32_t)(KNHK_EXECUTOR_CALLER_IS_WORKER0 | KNHK_EXECUTOR_SEEDED |
                            KNHK_EXECUTOR_LAZY_WORKERS))
    return KNHK_EINVAL;
  if ((o.flags & KNHK_EXECUTOR_SEEDED) && o.workers != 1) return KNHK_EINVAL;
  handle->knhk__magic = 0;
  handle->knhk__impl = NULL;

  knhk__executor_t *ex = aligned_alloc(KNHK__CACHELINE, (sizeof *ex + 63) & ~(size_t)63);
  if (!ex) return KNHK_ENOMEM;
  memset(ex, 0, sizeof *ex);
  ex->n = o.workers;
  ex->flags = o.flags;
  ex->on_idle = o.on_idle;
  ex->on_idle_arg = o.on_idle_arg;
  pthread_mutex_init(&ex->idle_lock, NULL);
  pthread_mutex_init(&ex->batch_m, NULL);
  pthread_mutex_init(&ex->start_m, NULL);
  knhk__pool_init(&ex->pools[KNHK__POOL_TASK], sizeof(knhk_task_t), offsetof(knhk_task_t, data));
  knhk__pool_init(&ex->pools[KNHK__POOL_CHILD], knhk__nursery_pool_layout[0][0],
                  knhk__nursery_pool_layout[0][1]);
  knhk__pool_init(&ex->pools[KNHK__POOL_NURSERY], knhk__nursery_pool_layout[1][0],
                  knhk__nursery_pool_layout[1][1]);
  knhk__mpsc_init(&ex->injector);
  knhk__idle_init(ex);
  int caller0 = (o.flags & KNHK_EXECUTOR_CALLER_IS_WORKER0) != 0;
  /* Threads started here: all but the caller's worker 0, or with lazy
   * workers worker 0 alone (none if it is the caller's). */
  int eager_end = (o.flags & KNHK_EXECUTOR_LAZY_WORKERS) ? 1 : ex->n;
  /* Every worker starts counted as unparked, except a worker 0 that the
   * caller has not entered yet and the workers left asleep until needed. */
  atomic_init(&ex->idle, (uint32_t)(eager_end - caller0) << 16);
  ex->sleepers = calloc((size_t)ex->n, sizeof *ex->sleepers);
  ex->workers = aligned_alloc(KNHK__CACHELINE, (size_t)ex->n * sizeof *ex->workers);
  if (ex->workers) memset(ex->workers, 0, (size_t)ex->n * sizeof *ex->workers);
  int ok = ex->sleepers && ex->workers;
  for (int i = 0; ok && i < ex->n; i++) {
    knhk__worker_t *w = &ex->workers[i];
    if (knhk__deque_init(&w->deque, KNHK__DEQUE_CAPACITY) != 0) ok = 0;
    knhk__mpsc_init(&w->inbox);
    w->ex = ex;
    w->index = i;
    w->rng = (o.seed ^ 0x9E3779B97F4A7C15ull) * (uint64_t)(i + 1) | 1;
    w->pick_rng = o.seed;
  }
  if (!ok) {
    free_impl(ex); /* deque_destroy of a never-initialised deque is a no-op */
    return KNHK_ENOMEM;
  }
  /* The workers left for later are asleep from the start: registered as
   * sleepers (worker 1 the first woken), their park word PARKED, so the
   * first spawn that sees them wakes one, and waking starts its thread.
   * Before the handle is out, so every spawner sees them counted. */
  for (int i = ex->n - 1; i >= eager_end; i--) {
    knhk__worker_t *w = &ex->workers[i];
    ex->sleepers[ex->nsleepers++] = i;
    w->in_sleepers = 1;
    atomic_init(&w->park, KNHK__P_PARKED);
  }
  atomic_init(&ex->nsleeping, (uint32_t)ex->nsleepers);
  for (int i = 0; i < eager_end; i++) atomic_init(&ex->workers[i].started, 1);
  handle->knhk__impl = ex;
  handle->knhk__magic = KNHK__MAGIC;

  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 8u << 20); /* helping waits nest task frames */
  for (int i = caller0; i < eager_end; i++) {
    knhk__worker_t *w = &ex->workers[i];
    if (pthread_create(&w->thread, &attr, worker_main, w) != 0) {
      pthread_attr_destroy(&attr);
      /* Threads already started exit once the executor is done. */
      knhk_executor_close(handle);
      return KNHK_ENOMEM;
    }
    w->has_thread = 1;
  }
  pthread_attr_destroy(&attr);
  knhk__tel_executor_add(handle); /* its counters become metrics */
  return 0;
}

int knhk_executor_stop(knhk_executor_t *handle, enum knhk_shutdown_mode mode) {
  knhk__executor_t *ex = knhk__impl_of(handle);
  if (!ex || (mode != KNHK_SHUTDOWN_GRACEFUL && mode != KNHK_SHUTDOWN_PROMPT)) return KNHK_EINVAL;
  int rc = 0;
  pthread_mutex_lock(&ex->idle_lock);
  uint32_t cur = ld_relaxed(&ex->stopping), want = 1 + (uint32_t)mode;
  if (cur) rc = KNHK_EALREADY;
  if (want > cur) atomic_store_explicit(&ex->stopping, want, memory_order_seq_cst);
  int done_now = knhk__check_done_locked(ex);
  pthread_mutex_unlock(&ex->idle_lock);
  if (done_now) knhk__finish_done(ex);
  return rc;
}

int knhk_executor_shutdown(knhk_executor_t *handle, enum knhk_shutdown_mode mode) {
  knhk__executor_t *ex = knhk__impl_of(handle);
  if (!ex) return KNHK_EINVAL;
  if (knhk__current_worker(ex)) return KNHK_EDEADLK;
  int rc = knhk_executor_stop(handle, mode);
  if (rc != 0 && rc != KNHK_EALREADY) return rc;
  while (!ld_acquire(&ex->done)) knhk__futex_wait(&ex->done, 0);
  /* Under start_m, taken once done: a worker start either finished before
   * (its thread is joined here) or sees done and starts nothing. */
  pthread_mutex_lock(&ex->start_m);
  for (int i = 0; i < ex->n; i++) {
    knhk__worker_t *w = &ex->workers[i];
    if (w->has_thread) {
      pthread_join(w->thread, NULL);
      w->has_thread = 0;
    }
  }
  pthread_mutex_unlock(&ex->start_m);
  return 0;
}

int knhk_executor_enter(knhk_executor_t *handle, knhk_group_t *g) {
  knhk__executor_t *ex = knhk__impl_of(handle);
  if (!ex || !(ex->flags & KNHK_EXECUTOR_CALLER_IS_WORKER0) || knhk__tls_worker)
    return KNHK_EINVAL;
  knhk__worker_t *w = &ex->workers[0];
  pthread_mutex_lock(&ex->idle_lock);
  int busy = ex->worker0_entered;
  ex->worker0_entered = 1;
  if (!busy) atomic_fetch_add_explicit(&ex->idle, KNHK__IDLE_ONE_UNPARKED, memory_order_seq_cst);
  pthread_mutex_unlock(&ex->idle_lock);
  if (busy) return KNHK_EBUSY;
  knhk__tls_worker = w;
  w->busy_since = knhk__mono_ns();
  int rc = knhk__group_wait_on_worker(w, g);
  knhk__group_flush(w);
  owner_add(&w->c.busy_ns, knhk__mono_ns() - w->busy_since);
  knhk__tls_worker = NULL;
  pthread_mutex_lock(&ex->idle_lock);
  ex->worker0_entered = 0;
  if (!ld_relaxed(&ex->done))
    atomic_fetch_sub_explicit(&ex->idle, KNHK__IDLE_ONE_UNPARKED, memory_order_seq_cst);
  int done_now = knhk__check_done_locked(ex);
  pthread_mutex_unlock(&ex->idle_lock);
  if (done_now) knhk__finish_done(ex);
  if (rc != 0) return rc;
  return g ? knhk_group_status(g) : 0;
}

int knhk_executor_close(knhk_executor_t *handle) {
  if (!handle) return KNHK_EINVAL;
  if (handle->knhk__magic != KNHK__MAGIC) return handle->knhk__impl ? KNHK_EINVAL : KNHK_EALREADY;
  knhk__executor_t *ex = handle->knhk__impl;
  if (knhk__current_worker(ex)) return KNHK_EDEADLK;
  int rc = knhk_executor_shutdown(handle, KNHK_SHUTDOWN_GRACEFUL);
  if (rc != 0) return rc;
  knhk__tel_executor_remove(handle);
  handle->knhk__magic = 0;
  handle->knhk__impl = NULL;
  free_impl(ex);
  return 0;
}

int knhk_executor_stats(knhk_executor_t *handle, knhk_executor_stats_t *out,
                        knhk_worker_stats_t *per, int n) {
  knhk__executor_t *ex = knhk__impl_of(handle);
  if (!ex || !out || n < 0 || (n > 0 && !per)) return KNHK_EINVAL;
  memset(out, 0, sizeof *out);
  out->workers = ex->n;
  uint64_t ended = 0;
  for (int i = 0; i < ex->n; i++) {
    knhk__counters_t *c = &ex->workers[i].c;
    knhk_worker_stats_t s = {
        .completed = ld_acquire(&c->completed),
        .failed = ld_acquire(&c->failed),
        .cancelled = ld_acquire(&c->cancelled),
        .stolen = ld_acquire(&c->stolen),
        .steal_attempts = ld_acquire(&c->steal_attempts),
        .parks = ld_acquire(&c->parks),
        .busy_ns = ld_acquire(&c->busy_ns),
    };
    ended += s.completed + s.failed + s.cancelled;
    out->total.completed += s.completed;
    out->total.failed += s.failed;
    out->total.cancelled += s.cancelled;
    out->total.stolen += s.stolen;
    out->total.steal_attempts += s.steal_attempts;
    out->total.parks += s.parks;
    out->total.busy_ns += s.busy_ns;
    if (i < n) per[i] = s;
  }
  /* spawned after ended (see knhk__check_done_locked): live never underflows */
  out->external_spawned = ld_acquire(&ex->ext_spawned);
  out->total.spawned = out->external_spawned;
  for (int i = 0; i < ex->n; i++) {
    uint64_t sp = ld_acquire(&ex->workers[i].c.spawned);
    out->total.spawned += sp;
    if (i < n) per[i].spawned = sp;
  }
  out->live = out->total.spawned - ended;
  return ex->n;
}

int knhk_executor_worker_index(knhk_executor_t *handle) {
  knhk__executor_t *ex = knhk__impl_of(handle);
  knhk__worker_t *w = ex ? knhk__current_worker(ex) : NULL;
  return w ? w->index : -1;
}

/* ------------------------------------------------- nursery_exec.h's part */

int knhk__executor_workers(const knhk__executor_t *ex) { return ex->n; }

/* A helping wait over a knhk__help_t: the worker's index is the waiter. */
typedef struct {
  knhk__wait_t base;
  knhk__help_t *h;
} help_wait_t;

static int help_done(knhk__worker_t *w, knhk__wait_t *wt) {
  (void)w;
  help_wait_t *hw = (help_wait_t *)wt;
  return hw->h->done(hw->h);
}

static int help_claim(knhk__worker_t *w, knhk__wait_t *wt) {
  help_wait_t *hw = (help_wait_t *)wt;
  return hw->h->claim(hw->h, (uint32_t)w->index);
}

static void help_release(knhk__worker_t *w, knhk__wait_t *wt) {
  help_wait_t *hw = (help_wait_t *)wt;
  hw->h->release(hw->h, (uint32_t)w->index);
}

int knhk__help_until(knhk__executor_t *ex, knhk__help_t *h) {
  knhk__worker_t *w = knhk__worker_of(ex);
  if (!w) return KNHK_EDEADLK;
  help_wait_t hw = {{help_done, help_claim, help_release}, h};
  return knhk__worker_loop(w, &hw.base);
}

void knhk__wake_waiter(knhk__executor_t *ex, uint32_t waiter) {
  knhk__worker_unpark(&ex->workers[waiter]);
}
