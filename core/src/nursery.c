/* nursery.c: nurseries over the executor and cancel tokens (see
 * knhk/nursery.h).
 *
 * The state: one atomic 64-bit word, n->state
 *
 *     bits  0..25  live    children spawned and not ended
 *     bits 26..35  waiter  whom an end wakes: W_NONE; 1 + i, worker i (a
 *                          helping wait: knhk__wake_waiter); W_TASK, n->waiter_task
 *                          (knhk_executor_wake); W_OUTSIDE, a thread asleep
 *                          on the futex of the word's low half
 *     bit  36      EACH    the waiter wants every end, not only the last
 *     bit  37      CLOSED
 *     bits 38..63  ends    children ended, modulo 2^26
 *
 * So ends + live is the number of children spawned (a refused spawn takes
 * its live back without an end): a spawn's index, modulo 2^26.
 *
 * Transitions (every one a CAS on the word, so they are totally ordered):
 *   spawn          live + 1, refused once CLOSED.
 *   end            live - 1, ends + 1. Wakes the waiter if live reaches 0,
 *                  or at every end with EACH; a W_TASK waiter at the next end
 *                  only, and that end takes (clears) the registration.
 *   refused spawn  live - 1 (not an end); wakes the waiter if live reaches 0.
 *   close          CLOSED; close_if_idle and wait_all set it only with
 *                  live == 0, in the same CAS.
 *   wait           the waiter sets its id (and EACH) just before it sleeps,
 *                  clears it when it is done; one waiter at a time.
 *
 * Invariants:
 *  - live counts a child from before it is queued to the end of its on_end,
 *    and knhk_nursery_free waits for live == 0: while a child counts, the
 *    nursery exists, so a child may touch it up to its decrement;
 *  - the decrement is a child's last access to the nursery: whom to wake is
 *    read from the word it replaced (and, for W_TASK, from n->waiter_task
 *    before that; the CAS takes that registration, so it is read by one end
 *    only), because the owner may free the nursery once it sees live == 0.
 *    After it, waking touches the executor or no memory at all (FUTEX_WAKE
 *    on a stale address is a spurious wake-up at worst);
 *  - what an end leaves for a waiter (the child's status and result, the
 *    JOIN queue, the first success, failures) is written before the
 *    decrement (release), and waiters read the word (acquire) first;
 *  - a waiter registers (CAS) and then looks again before it sleeps: an end
 *    before the registration is seen by that look, an end after it sees the
 *    registration. An outside waiter's futex value is the word's low half,
 *    which every end changes. So no wake-up is lost;
 *  - records: a pool record is kept past its child's end only when the
 *    nursery hands it out (JOIN queue, first success); those go back to the
 *    pool at knhk_nursery_free, the others as their child ends. A
 *    caller-owned record is not touched after its child's end is published.
 *
 * Cancellation: the token is made on demand (n->token, published by CAS).
 * Until it exists nobody can have cancelled the nursery itself, so a child
 * looks at the parent token instead: knhk_nursery_cancelled.
 */
#include <limits.h>
#include <stdlib.h>

#include "atomics.h"
#include "knhk/errors.h"
#include "knhk/nursery.h"
#include "nursery_exec.h" /* all it uses of the executor */
#include "telemetry_impl.h"

#define N_LIVE_MASK ((1ull << 26) - 1)
#define N_LIVE(s) ((uint32_t)((s) & N_LIVE_MASK))
#define N_WAITER_SHIFT 26
#define N_WAITER_MASK (0x3ffull << N_WAITER_SHIFT)
#define N_WAITER(s) ((uint32_t)(((s) & N_WAITER_MASK) >> N_WAITER_SHIFT))
#define N_EACH (1ull << 36)
#define N_CLOSED (1ull << 37)
#define N_ENDS_SHIFT 38
#define N_ENDS_ONE (1ull << N_ENDS_SHIFT)
#define N_ENDS_MASK ((1ull << (64 - N_ENDS_SHIFT)) - 1)

enum { W_NONE = 0, W_TASK = 0x3fe, W_OUTSIDE = 0x3ff };
_Static_assert((int)KNHK_MAX_WORKERS < (int)W_TASK, "worker waiter ids fit below W_TASK");

/* knhk_child_t.knhk__bits */
enum {
  CB_STARTED = 1u << 0, /* child_run has been called */
  CB_POOLED = 1u << 1   /* the record is the pool's */
};

struct knhk_nursery_s {
  /* written by every spawn and end: a line of its own */
  KNHK__ALIGNED _Atomic uint64_t state;
  /* read by children, written rarely */
  KNHK__ALIGNED knhk_executor_t *ex;
  knhk__executor_t *impl;
  knhk_token_t *parent;              /* retained, or NULL */
  _Atomic(knhk_token_t *) token;     /* made on demand */
  _Atomic(knhk_child_t *) first_ok;  /* the first child to complete */
  uint32_t flags;
  _Atomic uint32_t sibling_cancelled;
  _Atomic uint32_t waiting;          /* a wait is in progress */
  _Atomic(knhk_task_t *) waiter_task;
  knhk__spin_t wlock;                /* notify's registrations */
  /* the JOIN queue: ended, not joined; joiners hand out its records */
  knhk__spin_t qlock;
  _Atomic(knhk_child_t *) qhead;     /* read without the lock as a hint */
  knhk_child_t *qtail;
  knhk_child_t *joined;              /* pool records handed out by joins */
  size_t njoined;
  knhk_child_t *kept;                /* the first success, if a pool record
                                        outside a JOIN nursery */
  /* failures, in order */
  knhk__spin_t flock;
  int *failures;
  int nfail, capfail;
  uint64_t tel[2];                   /* telemetry: its span, its trace */
  void *pool_next;                   /* free list link in the pool */
};

const size_t knhk__nursery_pool_layout[2][2] = {
    {sizeof(knhk_child_t), offsetof(knhk_child_t, knhk__next)},
    {sizeof(struct knhk_nursery_s), offsetof(struct knhk_nursery_s, pool_next)},
};

static knhk_child_t *child_get(knhk__executor_t *impl) {
  return knhk__record_get(impl, KNHK__POOL_CHILD);
}

static void child_put(knhk__executor_t *impl, knhk_child_t *c) {
  knhk__record_put(impl, KNHK__POOL_CHILD, c);
}

static _Atomic uint32_t *futex_of(knhk_nursery_t *n) {
  _Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "nursery futex needs little-endian");
  return (_Atomic uint32_t *)(void *)&n->state; /* the low half: live changes it */
}

/* ------------------------------------------------------------ creation */

int knhk_nursery_new(knhk_nursery_t **out, knhk_executor_t *ex, knhk_token_t *parent,
                     uint32_t flags) {
  if (out) *out = NULL;
  knhk__executor_t *impl = knhk__impl_of(ex);
  if (!out || !impl || (flags & ~(uint32_t)(KNHK_NURSERY_SUPERVISE | KNHK_NURSERY_JOIN)))
    return KNHK_EINVAL;
  knhk_nursery_t *n = knhk__record_get(impl, KNHK__POOL_NURSERY);
  if (!n) return KNHK_ENOMEM;
  atomic_init(&n->state, 0);
  n->ex = ex;
  n->impl = impl;
  n->parent = parent ? knhk_token_retain(parent) : NULL;
  atomic_init(&n->token, NULL);
  atomic_init(&n->first_ok, NULL);
  n->flags = flags;
  atomic_init(&n->sibling_cancelled, 0);
  atomic_init(&n->waiting, 0);
  atomic_init(&n->waiter_task, NULL);
  atomic_init(&n->wlock.held, 0);
  atomic_init(&n->qlock.held, 0);
  atomic_init(&n->qhead, NULL);
  n->qtail = n->joined = n->kept = NULL;
  n->njoined = 0;
  atomic_init(&n->flock.held, 0);
  n->failures = NULL;
  n->nfail = n->capfail = 0;
  n->tel[0] = n->tel[1] = 0;
  KNHK__TEL(nursery_open(n->tel, flags));
  *out = n;
  return 0;
}

/* --------------------------------------------------------- cancellation */

/* The token, made on the first call (published by CAS: one wins). */
static knhk_token_t *token_of(knhk_nursery_t *n) {
  knhk_token_t *t = ld_acquire(&n->token);
  if (t) return t;
  knhk_token_t *made;
  if (knhk_token_new(&made, n->parent) != 0) return NULL;
  if (atomic_compare_exchange_strong_explicit(&n->token, &t, made, memory_order_acq_rel,
                                              memory_order_acquire))
    return made;
  knhk_token_release(made); /* another thread's came first: t */
  return t;
}

knhk_token_t *knhk_nursery_token(knhk_nursery_t *n) { return n ? token_of(n) : NULL; }

static inline int cancelled(knhk_nursery_t *n) {
  knhk_token_t *t = ld_acquire(&n->token);
  if (t) return knhk_token_is_cancelled(t);
  return n->parent ? knhk_token_is_cancelled(n->parent) : 0;
}

int knhk_nursery_cancelled(const knhk_nursery_t *n) {
  return n ? cancelled((knhk_nursery_t *)n) : 0;
}

static int cancel_with(knhk_nursery_t *n, int reason) {
  knhk_token_t *t = token_of(n);
  if (!t) return KNHK_ENOMEM;
  knhk_token_cancel(t, reason);
  return 0;
}

int knhk_nursery_cancel(knhk_nursery_t *n) {
  return n ? cancel_with(n, KNHK_CANCEL_EXPLICIT) : KNHK_EINVAL;
}

static void push_failure(knhk_nursery_t *n, int status) {
  knhk__spin_lock(&n->flock);
  if (n->nfail == n->capfail) {
    int cap = n->capfail ? n->capfail * 2 : 4;
    int *f = realloc(n->failures, (size_t)cap * sizeof *f);
    if (f) n->failures = f, n->capfail = cap;
  }
  if (n->nfail < n->capfail) n->failures[n->nfail++] = status; /* else lost: no memory */
  knhk__spin_unlock(&n->flock);
}

int knhk_nursery_fail(knhk_nursery_t *n, int status) {
  if (!n || status == 0) return KNHK_EINVAL;
  push_failure(n, status);
  atomic_store_explicit(&n->sibling_cancelled, 1, memory_order_relaxed);
  cancel_with(n, KNHK_CANCEL_SIBLING);
  return 0;
}

static int first_failure(knhk_nursery_t *n) {
  knhk__spin_lock(&n->flock);
  int f = n->nfail ? n->failures[0] : 0;
  knhk__spin_unlock(&n->flock);
  return f;
}

/* ------------------------------------------------------- child's life */

/* live - 1 (and ends + 1 for an end), waking the waiter as the state
 * machine says. The last access to n: see the invariants above. */
static void drop_live(knhk_nursery_t *n, int is_end) {
  knhk_executor_t *ex = n->ex;
  knhk__executor_t *impl = n->impl;
  _Atomic uint32_t *futex = futex_of(n);
  uint64_t s = ld_acquire(&n->state), ns;
  uint32_t who;
  knhk_task_t *task;
  int wake;
  do {
    who = N_WAITER(s);
    task = NULL;
    ns = s - 1 + (is_end ? N_ENDS_ONE : 0); /* ends wrap out of the word */
    if (who == W_TASK) {
      wake = is_end || N_LIVE(s) == 1;
      /* acquire (the load or failed CAS that showed W_TASK) pairs with the
       * registration's release: the pointer was stored before it */
      if (wake) task = ld_relaxed(&n->waiter_task), ns &= ~N_WAITER_MASK;
    } else {
      wake = who != W_NONE && (N_LIVE(s) == 1 || (s & N_EACH));
    }
  } while (!atomic_compare_exchange_weak_explicit(&n->state, &s, ns, memory_order_acq_rel,
                                                  memory_order_acquire));
  /* n may be gone from here on */
  if (!wake) return;
  if (who == W_TASK) knhk_executor_wake(ex, task);
  else if (who == W_OUTSIDE) knhk__futex_wake(futex, INT_MAX);
  else knhk__wake_waiter(impl, who - 1);
}

_Static_assert(sizeof((knhk_child_t *)0)->knhk__tel == KNHK__TEL_CHILD_WORDS * sizeof(uint64_t),
               "a child record holds telemetry's words");

static int child_run(knhk_task_t *t) {
  knhk_child_t *c = t->data;
  if (!(c->knhk__bits & CB_STARTED)) {
    c->knhk__bits |= CB_STARTED;
    if (cancelled(c->nursery)) return KNHK_ECANCELED; /* never ran */
  }
  if (!KNHK__TEL_ON()) return c->knhk__fn(c);
  uint64_t *prev = knhk__tel_child_enter(c->knhk__tel, c->nursery->ex);
  int status = c->knhk__fn(c);
  if (prev) knhk__tel_child_leave(prev);
  return status;
}

/* on_end of every child, on the worker that ended it (or dropped it at a
 * prompt shutdown). */
static void child_ended(knhk_task_t *t, int status) {
  knhk_child_t *c = t->data;
  knhk_nursery_t *n = c->nursery;
  knhk__executor_t *impl = n->impl;
  int pooled = (c->knhk__bits & CB_POOLED) != 0, keep = 0;
  KNHK__TEL(child_end(c->knhk__tel, status, n->ex));
  c->status = status;
  if (status != 0 && status != KNHK_ECANCELED) {
    push_failure(n, status);
    uint32_t no = 0;
    if (!(n->flags & KNHK_NURSERY_SUPERVISE) &&
        atomic_compare_exchange_strong_explicit(&n->sibling_cancelled, &no, 1,
                                                memory_order_relaxed, memory_order_relaxed))
      cancel_with(n, KNHK_CANCEL_SIBLING);
  }
  if (n->flags & KNHK_NURSERY_JOIN) {
    /* queued in completion order; the first success is chosen under the
     * same lock, so it is also the first success of that order */
    keep = 1;
    c->knhk__next = NULL;
    knhk__spin_lock(&n->qlock);
    if (status == 0 && !ld_relaxed(&n->first_ok)) st_release(&n->first_ok, c);
    if (n->qtail) n->qtail->knhk__next = c;
    else st_release(&n->qhead, c);
    n->qtail = c;
    knhk__spin_unlock(&n->qlock); /* c is the joiners' from here on */
  } else if (status == 0 && !ld_relaxed(&n->first_ok)) {
    knhk_child_t *none = NULL;
    keep = atomic_compare_exchange_strong_explicit(&n->first_ok, &none, c, memory_order_release,
                                                   memory_order_relaxed);
    if (keep && pooled) n->kept = c; /* only the winner writes it */
  }
  drop_live(n, 1);
  if (pooled && !keep) child_put(impl, c);
}

knhk_task_t *knhk_child_task(knhk_child_t *c) { return c ? &c->knhk__task : NULL; }

int knhk_nursery_spawn(knhk_nursery_t *n, knhk_child_fn fn, void *arg) {
  return knhk_nursery_spawn_ex(n, NULL, fn, arg, 0, -1);
}

int knhk_nursery_spawn_ex(knhk_nursery_t *n, knhk_child_t *c, knhk_child_fn fn, void *arg,
                          uint32_t task_flags, int worker) {
  if (!n || !fn || worker < -1 || worker >= knhk__executor_workers(n->impl))
    return KNHK_EINVAL;
  if (c) { /* a plain check, as the executor's: a record spawned again while live */
    uint32_t st = ld_acquire(&c->knhk__task.knhk__state);
    if (st != KNHK__T_INIT && st != KNHK__T_DONE) return KNHK_EINVAL;
  }
  uint64_t s = ld_relaxed(&n->state);
  do {
    if (s & N_CLOSED) return KNHK_ECLOSED;
    if (N_LIVE(s) == N_LIVE_MASK) return KNHK_ENOMEM;
    /* relaxed: the child is published after this by the executor's queue
     * (release), and its end comes after its start (acquire) */
  } while (!atomic_compare_exchange_weak_explicit(&n->state, &s, s + 1, memory_order_relaxed,
                                                  memory_order_relaxed));
  knhk__executor_t *impl = n->impl;
  uint32_t bits = 0;
  if (!c) {
    if (!(c = child_get(impl))) {
      drop_live(n, 0);
      return KNHK_ENOMEM;
    }
    bits = CB_POOLED;
  }
  /* the task, as knhk_task_init and the executor's spawn would set it:
   * QUEUED from here, since it is spawned unchecked below */
  knhk_task_t *t = &c->knhk__task;
  t->run = child_run;
  t->on_end = child_ended;
  t->data = c;
  t->group = NULL;
  t->flags = task_flags;
  t->knhk__home = worker;
  t->knhk__bits = 0;
  st_relaxed(&t->knhk__state, KNHK__T_QUEUED);
  st_relaxed(&t->knhk__link.next, NULL);
  c->knhk__fn = fn;
  c->nursery = n;
  c->arg = arg;
  c->result = NULL;
  c->status = 0;
  c->knhk__bits = bits;
  c->knhk__next = NULL;
  if (KNHK__TEL_ON()) /* s: the word this spawn replaced */
    knhk__tel_child_spawn(c->knhk__tel, n->tel,
                          (uint32_t)(((s >> N_ENDS_SHIFT) + N_LIVE(s)) & N_LIVE_MASK));
  else
    c->knhk__tel[KNHK__TEL_CHILD_SPAN] = 0; /* no span: the other hooks skip it */
  int rc = knhk__spawn_queued(impl, t);
  if (rc == 0) return 0;
  /* refused: the child never existed */
  st_release(&t->knhk__state, KNHK__T_DONE);
  KNHK__TEL(child_end(c->knhk__tel, rc, n->ex));
  c->status = rc;
  if (bits & CB_POOLED) child_put(impl, c);
  drop_live(n, 0);
  return rc;
}

/* ------------------------------------------------------------- closing */

int knhk_nursery_close(knhk_nursery_t *n) {
  if (!n) return KNHK_EINVAL;
  atomic_fetch_or_explicit(&n->state, N_CLOSED, memory_order_acq_rel);
  return 0;
}

int knhk_nursery_close_if_idle(knhk_nursery_t *n) {
  if (!n) return KNHK_EINVAL;
  uint64_t s = ld_acquire(&n->state);
  for (;;) {
    if (N_LIVE(s) != 0) return KNHK_EBUSY;
    if (s & N_CLOSED) return 0;
    if (atomic_compare_exchange_weak_explicit(&n->state, &s, s | N_CLOSED, memory_order_acq_rel,
                                              memory_order_acquire))
      return 0;
  }
}

/* ---------------------------------------------------------------- waiting */

/* What a wait waits for; true once it holds. */
typedef int (*cond_fn)(knhk_nursery_t *n);
/* wait_all: no child live, and closed in that same step */
static int idle_and_closed(knhk_nursery_t *n) { return knhk_nursery_close_if_idle(n) == 0; }
/* wait_any: a success, or no child live */
static int some_success(knhk_nursery_t *n) {
  return N_LIVE(ld_acquire(&n->state)) == 0 || ld_acquire(&n->first_ok) != NULL;
}
/* join_next: something queued, or no child live */
static int some_ended(knhk_nursery_t *n) {
  return N_LIVE(ld_acquire(&n->state)) == 0 || ld_acquire(&n->qhead) != NULL;
}

/* Registers `id` (and `each`) as the waiter: 0, or KNHK_EBUSY. */
static int claim(knhk_nursery_t *n, uint32_t id, uint64_t each) {
  uint64_t s = ld_relaxed(&n->state);
  for (;;) {
    uint32_t who = N_WAITER(s);
    if (who != W_NONE && who != id) return KNHK_EBUSY;
    uint64_t ns = (s & ~(N_WAITER_MASK | N_EACH)) | ((uint64_t)id << N_WAITER_SHIFT) | each;
    if (atomic_compare_exchange_weak_explicit(&n->state, &s, ns, memory_order_acq_rel,
                                              memory_order_relaxed))
      return 0;
  }
}

static void unclaim(knhk_nursery_t *n, uint32_t id) {
  uint64_t s = ld_relaxed(&n->state);
  while (N_WAITER(s) == id &&
         !atomic_compare_exchange_weak_explicit(&n->state, &s, s & ~(N_WAITER_MASK | N_EACH),
                                                memory_order_acq_rel, memory_order_relaxed)) {
  }
}

typedef struct {
  knhk__help_t base;
  knhk_nursery_t *n;
  cond_fn cond;
  uint64_t each;
} nursery_wait_t;

static int nw_done(knhk__help_t *h) {
  nursery_wait_t *nw = (nursery_wait_t *)h;
  return nw->cond(nw->n);
}

/* waiter: a worker's index; the word holds 1 + it (0 is W_NONE) */
static int nw_claim(knhk__help_t *h, uint32_t waiter) {
  nursery_wait_t *nw = (nursery_wait_t *)h;
  return claim(nw->n, 1 + waiter, nw->each);
}

static void nw_release(knhk__help_t *h, uint32_t waiter) {
  unclaim(((nursery_wait_t *)h)->n, 1 + waiter);
}

static int wait_outside(knhk_nursery_t *n, cond_fn cond, uint64_t each) {
  int rc = claim(n, W_OUTSIDE, each);
  if (rc != 0) return rc;
  for (;;) {
    uint64_t s = ld_acquire(&n->state); /* before the look: an end after it changes it */
    if (cond(n)) break;
    knhk__futex_wait(futex_of(n), (uint32_t)s);
  }
  unclaim(n, W_OUTSIDE);
  return 0;
}

/* Waits until cond(n): helping on a worker of n's executor, blocking
 * elsewhere. 0 or KNHK_EBUSY (another wait, or another waiter registered). */
static int wait_until(knhk_nursery_t *n, cond_fn cond, uint64_t each) {
  if (atomic_exchange_explicit(&n->waiting, 1, memory_order_acquire)) return KNHK_EBUSY;
  uint64_t tel =
      KNHK__TEL_ON() ? knhk__tel_wait_begin(n->tel, N_LIVE(ld_relaxed(&n->state))) : 0;
  int rc = 0;
  if (!cond(n)) {
    nursery_wait_t nw = {{nw_done, nw_claim, nw_release}, n, cond, each};
    rc = knhk__help_until(n->impl, &nw.base);
    if (rc == KNHK_EDEADLK) rc = wait_outside(n, cond, each); /* not a worker */
  }
  if (tel) knhk__tel_wait_end(tel);
  st_release(&n->waiting, 0);
  return rc;
}

int knhk_nursery_wait_all(knhk_nursery_t *n) {
  if (!n) return KNHK_EINVAL;
  int rc = wait_until(n, idle_and_closed, 0);
  return rc != 0 ? rc : first_failure(n);
}

int knhk_nursery_wait_any(knhk_nursery_t *n, knhk_child_t **winner) {
  if (winner) *winner = NULL;
  if (!n || !winner) return KNHK_EINVAL;
  int rc = wait_until(n, some_success, N_EACH);
  if (rc != 0) return rc;
  knhk_child_t *w = ld_acquire(&n->first_ok);
  if (w) cancel_with(n, KNHK_CANCEL_EXPLICIT); /* the losers */
  rc = wait_until(n, idle_and_closed, 0);      /* and their cleanup */
  if (rc != 0) return rc;
  *winner = w;
  if (w) return 0;
  rc = first_failure(n);
  return rc ? rc : KNHK_ECANCELED;
}

/* The oldest queued child, or NULL; a pool record moves to n->joined. */
static knhk_child_t *dequeue(knhk_nursery_t *n) {
  if (!ld_acquire(&n->qhead)) return NULL;
  knhk__spin_lock(&n->qlock);
  knhk_child_t *c = ld_relaxed(&n->qhead);
  if (c) {
    st_relaxed(&n->qhead, c->knhk__next);
    if (!c->knhk__next) n->qtail = NULL;
    c->knhk__next = NULL;
    if (c->knhk__bits & CB_POOLED) c->knhk__next = n->joined, n->joined = c, n->njoined++;
  }
  knhk__spin_unlock(&n->qlock);
  return c;
}

int knhk_nursery_try_next(knhk_nursery_t *n, knhk_child_t **next) {
  if (next) *next = NULL;
  if (!n || !next || !(n->flags & KNHK_NURSERY_JOIN)) return KNHK_EINVAL;
  knhk_child_t *c = dequeue(n);
  if (!c) {
    if (N_LIVE(ld_acquire(&n->state)) != 0) return KNHK_EAGAIN;
    c = dequeue(n); /* every end is queued before its decrement: this look is final */
    if (!c) return KNHK_ENOENT;
  }
  *next = c;
  return 0;
}

int knhk_nursery_join_next(knhk_nursery_t *n, knhk_child_t **next) {
  if (next) *next = NULL;
  if (!n || !next || !(n->flags & KNHK_NURSERY_JOIN)) return KNHK_EINVAL;
  for (;;) {
    int rc = knhk_nursery_try_next(n, next);
    if (rc != KNHK_EAGAIN) return rc;
    rc = wait_until(n, some_ended, N_EACH);
    if (rc != 0) return rc;
  }
}

int knhk_nursery_notify(knhk_nursery_t *n, knhk_task_t *task, uint64_t seen) {
  if (!n || !task) return KNHK_EINVAL;
  int rc;
  knhk__spin_lock(&n->wlock); /* one registrant writes waiter_task at a time */
  uint64_t s = ld_acquire(&n->state);
  for (;;) {
    if ((s >> N_ENDS_SHIFT) != (seen & N_ENDS_MASK) || N_LIVE(s) == 0) {
      rc = KNHK_EALREADY;
      break;
    }
    uint32_t who = N_WAITER(s);
    if (who == W_TASK && ld_relaxed(&n->waiter_task) == task) {
      rc = 0;
      break;
    }
    if (who != W_NONE) {
      rc = KNHK_EBUSY;
      break;
    }
    st_relaxed(&n->waiter_task, task); /* published by the CAS (release) */
    if (atomic_compare_exchange_weak_explicit(&n->state, &s,
                                              s | ((uint64_t)W_TASK << N_WAITER_SHIFT),
                                              memory_order_acq_rel, memory_order_acquire)) {
      rc = 0;
      break;
    }
  }
  knhk__spin_unlock(&n->wlock);
  return rc;
}

/* ---------------------------------------------------------------- queries */

uint64_t knhk_nursery_ends(const knhk_nursery_t *n) {
  return n ? ld_acquire(&((knhk_nursery_t *)n)->state) >> N_ENDS_SHIFT : 0;
}

uint32_t knhk_nursery_live(const knhk_nursery_t *n) {
  return n ? N_LIVE(ld_acquire(&((knhk_nursery_t *)n)->state)) : 0;
}

int knhk_nursery_failures(const knhk_nursery_t *cn, int *statuses, int max) {
  knhk_nursery_t *n = (knhk_nursery_t *)cn;
  if (!n) return KNHK_EINVAL;
  knhk__spin_lock(&n->flock);
  for (int i = 0; statuses && i < max && i < n->nfail; i++) statuses[i] = n->failures[i];
  int k = n->nfail;
  knhk__spin_unlock(&n->flock);
  return k;
}

/* ---------------------------------------------------------------- freeing */

int knhk_nursery_free(knhk_nursery_t *n) {
  if (!n) return KNHK_EINVAL;
  if (knhk_nursery_live(n) > 0) {
    int rc = knhk_nursery_wait_all(n);
    if (rc == KNHK_EBUSY) return rc; /* another waiter: nothing freed */
  }
  knhk__executor_t *impl = n->impl;
  /* pool records still queued, handed out by joins, or kept as the winner */
  knhk_child_t *chain = n->joined, *c = ld_relaxed(&n->qhead);
  size_t k = n->njoined;
  while (c) {
    knhk_child_t *next = c->knhk__next;
    if (c->knhk__bits & CB_POOLED) c->knhk__next = chain, chain = c, k++;
    c = next;
  }
  if (n->kept) n->kept->knhk__next = chain, chain = n->kept, k++;
  knhk__record_put_chain(impl, KNHK__POOL_CHILD, chain, k);
  free(n->failures);
  KNHK__TEL(nursery_close(n->tel));
  knhk_token_t *t = ld_relaxed(&n->token);
  if (t) knhk_token_release(t);
  if (n->parent) knhk_token_release(n->parent);
  knhk__record_put(impl, KNHK__POOL_NURSERY, n);
  return 0;
}

/* -------------------------------------------------------------- telemetry */

uint64_t knhk_telemetry_nursery_wait_begin(const void *nursery) {
  knhk_nursery_t *n = (knhk_nursery_t *)nursery;
  if (!n || !KNHK__TEL_ON()) return 0;
  return knhk__tel_wait_begin(n->tel, knhk_nursery_live(n));
}

void knhk_telemetry_nursery_wait_end(uint64_t span) { knhk__tel_wait_end(span); }
