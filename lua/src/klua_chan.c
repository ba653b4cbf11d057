/* klua_chan.c: channels, semaphores and events (klua_sync.h).
 *
 * A buffered channel is a bounded MPMC ring (Vyukov's): each slot has a
 * sequence number that says whose turn it is; a sender claims a position
 * with one CAS on `tail`, writes the value and publishes the slot; a
 * receiver does the same on `head`. Sequences count in twos (free for
 * position p: 2p; holding p's value: 2p + 1; freed by it: 2(p + cap)), so
 * "full" and "free" differ even with one slot. A slot stores its sequence
 * less twice its index, so that all start at zero (klua_chan_new says
 * why). When both sides are busy no lock is taken. Values up to 16 bytes (numbers, short strings) sit in the slot.
 *   Waking: a task that found the ring empty (full) counts itself in
 *   `nrecv` (`nsend`), queues its wait node under the lock, and looks once
 *   more before it sleeps; a sender publishes its slot (seq_cst) and then
 *   reads `nrecv` (seq_cst): one of the two sees the other (Dekker), so no
 *   wake-up is lost. A waker takes one waiter out of the list and wakes it;
 *   a receiver woken that way and already handled gets no second wake-up,
 *   so a burst of sends wakes one receiver, which then drains the burst.
 *   Close: a send that claimed a slot before it saw `closed` still delivers;
 *   receivers report closed only when no slot is claimed (head == tail).
 *
 * A rendezvous channel (capacity 0) hands each value over directly under
 * its lock: a sender finding a receiver waiting gives it the value and is
 * done; otherwise it waits, with its value in its wait node, until a
 * receiver takes it. A sender that leaves before (cancelled, or the
 * channel closed) takes its value back with it: that send did not happen.
 *
 * A receive from any of several channels (klua_chan_try_recv_any, at the
 * end) queues one node per channel, all of one "select" (sel_t) with one
 * state word, `won`: OPEN while it waits; a node's index once a rendezvous
 * sender claimed it (CAS from OPEN) to hand that node its value; SHUT once
 * the task leaves. Only a claim hands a select a value, so it gets at most
 * one; a rendezvous sender that finds a select claimed or shut takes its
 * node off and tries the next receiver. A buffered channel's sender only
 * wakes a select node, as it wakes a receiver: the task looks again, and
 * a turn its node was given and not used is passed on when it leaves.
 */
#include <stdlib.h>
#include <string.h>

#include "klua_sync.h"
#include "knhk/errors.h"

enum { L_RECV = 0, L_SEND = 1 };
enum { SLOT_INLINE = 16 };

typedef struct {
  _Atomic uint64_t seq;
  uint32_t len;
  uint8_t kind;
  union {
    char inl[SLOT_INLINE];
    char *p;
  } u;
} slot_t;

typedef struct {
  klua_wait_t *head, *tail;
} wlist_t;

struct klua_sync {
  _Atomic int32_t refs;
  int kind;
  klua_spin_t lock;             /* waiter lists; the rendezvous; sem; event */
  wlist_t w[2];
  /* channel */
  uint32_t cap;                 /* 0: rendezvous */
  _Atomic int closed;
  _Alignas(64) _Atomic uint64_t head;
  _Alignas(64) _Atomic uint64_t tail;
  _Alignas(64) _Atomic uint32_t nrecv, nsend; /* waiters queued */
  slot_t *ring;
  /* semaphore */
  int64_t permits;
  int is_lock;                  /* a lock: one permit, released by its holder */
  uint64_t owner;               /* a lock: the holding task's id, 0 if free */
  /* event */
  _Atomic int set;
};

static klua_sync_t *sync_new(int kind) {
  klua_sync_t *s = aligned_alloc(64, (sizeof(klua_sync_t) + 63) & ~(size_t)63);
  if (!s) return NULL;
  memset(s, 0, sizeof *s);
  atomic_init(&s->refs, 1);
  s->kind = kind;
  return s;
}

klua_sync_t *klua_chan_new(uint32_t capacity) {
  klua_sync_t *s = sync_new(KLUA_SYNC_CHAN);
  if (!s) return NULL;
  s->cap = capacity;
  if (capacity > 0) {
    /* Zero is every slot's first sequence (they are stored less 2 * their
     * index): a large ring comes from calloc untouched, and its pages are
     * written only as messages reach them. A channel of capacity 2^20 (32
     * MB of slots) that never holds more than a few messages costs a few
     * pages, not 32 MB that the Lua collector, which sees only the small
     * handle, would not hurry to give back. */
    s->ring = calloc(capacity, sizeof *s->ring);
    if (!s->ring) {
      free(s);
      return NULL;
    }
  }
  return s;
}

klua_sync_t *klua_sem_new(int64_t permits) {
  klua_sync_t *s = sync_new(KLUA_SYNC_SEM);
  if (s) s->permits = permits;
  return s;
}

klua_sync_t *klua_event_new(void) { return sync_new(KLUA_SYNC_EVENT); }

void klua_sync_retain(klua_sync_t *s) { atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed); }

int klua_sync_kind(const klua_sync_t *s) { return s->kind; }

void klua_sync_release(klua_sync_t *s) {
  if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1) return;
  if (s->ring) {
    uint64_t h = atomic_load(&s->head), t = atomic_load(&s->tail);
    for (uint64_t pos = h; pos < t; pos++) {
      slot_t *sl = &s->ring[pos % s->cap];
      if (sl->len > SLOT_INLINE) free(sl->u.p);
    }
    free(s->ring);
  }
  free(s);
}

/* ---------------------------------------------------------------- waiters */

static void wl_push(wlist_t *l, klua_wait_t *w) {
  w->next = NULL;
  w->prev = l->tail;
  if (l->tail) l->tail->next = w;
  else l->head = w;
  l->tail = w;
  w->queued = 1;
}

static void wl_remove(wlist_t *l, klua_wait_t *w) {
  if (w->prev) w->prev->next = w->next;
  else l->head = w->next;
  if (w->next) w->next->prev = w->prev;
  else l->tail = w->prev;
  w->prev = w->next = NULL;
  w->queued = 0;
}

static _Atomic uint32_t *count_of(klua_sync_t *s, int list) {
  return list == L_RECV ? &s->nrecv : &s->nsend;
}

/* A select's node on one channel (see the top): kind KLUA_WAIT_SELECT. */
typedef struct sel sel_t;
typedef struct {
  klua_wait_t w; /* first: the waiter lists link these */
  sel_t *sel;
} sel_node_t;

enum { SEL_OPEN = -1, SEL_SHUT = -2 };

struct sel {
  klua_task_t *task;
  _Atomic int32_t won; /* SEL_OPEN, a node's index (claimed), or SEL_SHUT */
  uint32_t n;          /* nodes: one per channel given, a repeated one too */
  uint32_t nlocks;     /* distinct channels, in `locks` */
  klua_sync_t **locks; /* the distinct channels, by address: the order their
                          locks are taken in, so that two selects never wait
                          on each other's */
  sel_node_t node[];
};

/* The task a queued node wakes: the record it sits in, or its select's. */
static klua_task_t *node_task(klua_wait_t *w) {
  if (w->kind == KLUA_WAIT_SELECT) return ((sel_node_t *)(void *)w)->sel->task;
  return klua_wait_task(w);
}

/* Under the lock of a rendezvous channel: whether its receiver node w may
 * be handed a value. A plain receiver may; a select's node only if this
 * claims its select (a select takes one value, then it is done). */
static int rdv_claim(klua_wait_t *w) {
  if (w->kind != KLUA_WAIT_SELECT) return 1;
  sel_node_t *sn = (sel_node_t *)(void *)w;
  int32_t open = SEL_OPEN;
  return atomic_compare_exchange_strong_explicit(&sn->sel->won, &open, (int32_t)(sn - sn->sel->node),
                                                 memory_order_acq_rel, memory_order_acquire);
}

/* Under the lock: queues node w (of kind `kind`) on list `list` of s. */
static void enqueue_node_locked(klua_sync_t *s, klua_wait_t *w, int list, int kind) {
  w->kind = (uint8_t)kind;
  w->on = s;
  w->list = (uint8_t)list;
  w->handed = 0;
  wl_push(&s->w[list], w);
  /* seq_cst: Dekker with a sender's publish-then-read (see the top) */
  atomic_fetch_add_explicit(count_of(s, list), 1, memory_order_seq_cst);
}

/* Under the lock: queues t's wait node on list `list` of s. */
static void enqueue_locked(klua_sync_t *s, klua_task_t *t, int list) {
  enqueue_node_locked(s, t->w, list, KLUA_WAIT_SYNC);
}

/* Under the lock: takes the first waiter of `list` out (handed = 1);
 * returns its task, to wake once unlocked, or NULL. */
static klua_task_t *dequeue_locked(klua_sync_t *s, int list) {
  klua_wait_t *w = s->w[list].head;
  if (!w) return NULL;
  wl_remove(&s->w[list], w);
  atomic_fetch_sub_explicit(count_of(s, list), 1, memory_order_relaxed);
  w->handed = 1;
  return node_task(w);
}

static void wake_one(klua_sync_t *s, int list) {
  if (atomic_load_explicit(count_of(s, list), memory_order_seq_cst) == 0) return;
  klua_spin_lock(&s->lock);
  klua_task_t *t = dequeue_locked(s, list);
  klua_spin_unlock(&s->lock);
  if (t) klua_wake(t);
}

static void wake_all_locked(klua_sync_t *s, int list, klua_task_t **out, int *n, int max) {
  klua_task_t *t;
  while (*n < max && (t = dequeue_locked(s, list))) out[(*n)++] = t;
}

/* Takes t's node off s (whatever list): it leaves the wait. A node that
 * was handed a turn and leaves without using it passes the turn on. A
 * rendezvous sender's value still in its node is freed: withdrawn. */
void klua_sync_unwait(klua_wait_t *w) {
  klua_sync_t *s = w->on;
  int pass = -1;
  klua_spin_lock(&s->lock);
  if (w->queued) {
    wl_remove(&s->w[w->list], w);
    atomic_fetch_sub_explicit(count_of(s, w->list), 1, memory_order_relaxed);
  } else if (w->handed && (s->kind == KLUA_SYNC_SEM || (s->kind == KLUA_SYNC_CHAN && s->cap > 0))) {
    pass = w->list; /* a turn given to a waiter that leaves: the next one's */
  }
  klua_spin_unlock(&s->lock);
  if (w->val_owned) free((char *)w->val);
  w->val = NULL;
  w->val_owned = 0;
  w->handed = 0;
  if (pass >= 0) {
    klua_task_t *t = NULL;
    klua_spin_lock(&s->lock);
    if (s->kind != KLUA_SYNC_SEM || s->permits > 0) t = dequeue_locked(s, pass);
    klua_spin_unlock(&s->lock);
    if (t) klua_wake(t);
  }
}

/* The start of a try: the last wait's wake-ups are taken back (a node
 * still queued is taken off: the try looks again first). */
static void try_begin(klua_task_t *t) { klua_wait_end(t); }

/* The end of a try that registered t: its cancellation is armed. Returns
 * WAIT, or CANCELLED (the token was cancelled already: t is taken off). */
static int try_wait(klua_task_t *t, knhk_token_t *cancel) {
  if (klua_wait_arm_cancel(t, cancel)) {
    klua_wait_end(t);
    return KLUA_SYNC_CANCELLED;
  }
  return KLUA_SYNC_WAIT;
}

static int cancelled(knhk_token_t *cancel) { return cancel && knhk_token_is_cancelled(cancel); }

/* Whether t's last wait, on list `list` of the rendezvous s, completed: a
 * sender handed it a value (a receiver), or a receiver took its value (a
 * sender). Decided under the lock, where the other side hands over: a
 * wait woken by its cancellation may be handed its value at that very
 * moment, and a look before the lock could miss it and then drop the
 * value that send had already reported as taken. A wait that did not
 * complete is taken off the list here. */
static int rdv_completed(klua_task_t *t, klua_sync_t *s, int list) {
  klua_wait_t *w = t->w;
  if (w->kind != KLUA_WAIT_SYNC || w->on != s || w->list != list) return 0;
  klua_spin_lock(&s->lock);
  int done = w->handed && !w->queued && (list == L_SEND ? w->val == NULL : w->val != NULL);
  if (w->queued) {
    wl_remove(&s->w[list], w);
    atomic_fetch_sub_explicit(count_of(s, list), 1, memory_order_relaxed);
  }
  klua_spin_unlock(&s->lock);
  return done;
}

/* Leaves a completed wait: nothing to pass on, nothing to take back. */
static void leave_completed(klua_task_t *t) {
  klua_wait_t *w = t->w;
  w->handed = 0;
  w->kind = KLUA_WAIT_NONE;
  w->on = NULL;
  klua_wait_end(t);
}

/* try_wait for a rendezvous node just queued on `list`: the other side
 * may complete it between the unlock and a cancellation found here, and
 * then the operation happened (DONE: a receiver's value is in its node). */
static int rdv_wait(klua_task_t *t, klua_sync_t *s, int list, knhk_token_t *cancel) {
  if (!klua_wait_arm_cancel(t, cancel)) return KLUA_SYNC_WAIT;
  if (rdv_completed(t, s, list)) return KLUA_SYNC_DONE;
  klua_wait_end(t);
  return KLUA_SYNC_CANCELLED;
}

/* A receiver's completed node: its value out, the wait left. */
static int rdv_take_handed(klua_task_t *t, klua_val_t *out) {
  klua_wait_t *w = t->w;
  out->p = w->val;
  out->len = w->val_len;
  out->kind = w->val_kind;
  w->val = NULL;
  w->val_owned = 0;
  leave_completed(t);
  return KLUA_SYNC_DONE;
}

/* ------------------------------------------------------------------ ring */

static int ring_put(klua_sync_t *s, const klua_val_t *v) {
  uint64_t pos = atomic_load_explicit(&s->tail, memory_order_relaxed);
  slot_t *sl;
  uint64_t at; /* 2 * the slot's index: what its stored sequence is less by */
  for (;;) {
    at = 2 * (pos % s->cap);
    sl = &s->ring[at / 2];
    uint64_t seq = atomic_load_explicit(&sl->seq, memory_order_acquire) + at;
    int64_t diff = (int64_t)(seq - 2 * pos);
    if (diff == 0) {
      if (atomic_compare_exchange_weak_explicit(&s->tail, &pos, pos + 1, memory_order_relaxed,
                                                memory_order_relaxed))
        break;
    } else if (diff < 0) {
      return 0; /* full */
    } else {
      pos = atomic_load_explicit(&s->tail, memory_order_relaxed);
    }
  }
  sl->len = v->len;
  sl->kind = (uint8_t)v->kind;
  if (v->len <= SLOT_INLINE) {
    memcpy(sl->u.inl, v->p, v->len);
  } else {
    char *p = malloc(v->len);
    if (p) memcpy(p, v->p, v->len);
    else sl->len = 0, sl->kind = KLUA_VAL_INLINE; /* no memory: an empty value (reads as nil) */
    sl->u.p = p;
  }
  /* seq_cst: published before this sender reads nrecv */
  atomic_store_explicit(&sl->seq, 2 * pos + 1 - at, memory_order_seq_cst);
  return 1;
}

static int ring_take(klua_sync_t *s, klua_val_t *out) {
  uint64_t pos = atomic_load_explicit(&s->head, memory_order_relaxed);
  slot_t *sl;
  uint64_t at;
  for (;;) {
    at = 2 * (pos % s->cap);
    sl = &s->ring[at / 2];
    uint64_t seq = atomic_load_explicit(&sl->seq, memory_order_acquire) + at;
    int64_t diff = (int64_t)(seq - (2 * pos + 1));
    if (diff == 0) {
      if (atomic_compare_exchange_weak_explicit(&s->head, &pos, pos + 1, memory_order_relaxed,
                                                memory_order_relaxed))
        break;
    } else if (diff < 0) {
      return 0; /* empty, or a sender is writing it */
    } else {
      pos = atomic_load_explicit(&s->head, memory_order_relaxed);
    }
  }
  out->kind = sl->kind;
  out->len = sl->len;
  if (sl->len <= SLOT_INLINE) {
    char *p = malloc(sl->len ? sl->len : 1);
    if (p) memcpy(p, sl->u.inl, sl->len);
    out->p = p;
  } else {
    out->p = sl->u.p;
  }
  atomic_store_explicit(&sl->seq, 2 * (pos + s->cap) - at, memory_order_seq_cst);
  return 1;
}

void klua_val_free(klua_val_t *v) {
  free((char *)v->p);
  v->p = NULL;
}

/* ---------------------------------------------------------------- channels */

static int drained(klua_sync_t *s) {
  return atomic_load_explicit(&s->closed, memory_order_acquire) &&
         atomic_load_explicit(&s->head, memory_order_acquire) ==
             atomic_load_explicit(&s->tail, memory_order_acquire);
}

static char *copy_of(const klua_val_t *v) {
  char *c = malloc(v->len ? v->len : 1);
  if (c) memcpy(c, v->p, v->len);
  return c;
}

/* Under the lock of the rendezvous s: takes the value of the first
 * waiting sender into *out (its send happened) and returns that sender,
 * to wake once unlocked; or NULL if none waits. */
static klua_task_t *rdv_take_sender_locked(klua_sync_t *s, klua_val_t *out) {
  klua_wait_t *snd = s->w[L_SEND].head;
  if (!snd) return NULL;
  out->p = snd->val;
  out->len = snd->val_len;
  out->kind = snd->val_kind;
  snd->val = NULL;
  snd->val_owned = 0;
  return dequeue_locked(s, L_SEND);
}

static int rdv_send(klua_sync_t *s, klua_task_t *t, const klua_val_t *v, knhk_token_t *cancel) {
  if (rdv_completed(t, s, L_SEND)) { /* a receiver took our value: sent */
    leave_completed(t);
    return KLUA_SYNC_DONE;
  }
  try_begin(t); /* a value still in our node is withdrawn with it */
  if (cancelled(cancel)) return KLUA_SYNC_CANCELLED;
  char *copy = copy_of(v);
  if (!copy) return KNHK_ENOMEM;
  klua_spin_lock(&s->lock);
  if (atomic_load_explicit(&s->closed, memory_order_relaxed)) {
    klua_spin_unlock(&s->lock);
    free(copy);
    return KLUA_SYNC_CLOSED;
  }
  klua_wait_t *r;
  while ((r = s->w[L_RECV].head) && !rdv_claim(r)) { /* a select served or leaving: not a receiver */
    wl_remove(&s->w[L_RECV], r);
    atomic_fetch_sub_explicit(&s->nrecv, 1, memory_order_relaxed);
  }
  if (r) { /* a receiver waits: the value is its, and the send is done */
    klua_task_t *rt = dequeue_locked(s, L_RECV);
    r->val = copy;
    r->val_len = v->len;
    r->val_kind = v->kind;
    r->val_owned = 1;
    klua_spin_unlock(&s->lock);
    klua_wake(rt);
    return KLUA_SYNC_DONE;
  }
  klua_wait_t *w = t->w;
  w->val = copy;
  w->val_len = v->len;
  w->val_kind = v->kind;
  w->val_owned = 1;
  enqueue_locked(s, t, L_SEND);
  klua_spin_unlock(&s->lock);
  int st = rdv_wait(t, s, L_SEND, cancel);
  if (st == KLUA_SYNC_DONE) leave_completed(t);
  return st;
}

static int rdv_recv(klua_sync_t *s, klua_task_t *t, klua_val_t *out, knhk_token_t *cancel) {
  if (rdv_completed(t, s, L_RECV)) return rdv_take_handed(t, out); /* a sender handed us its value */
  try_begin(t);
  if (cancelled(cancel)) return KLUA_SYNC_CANCELLED;
  klua_spin_lock(&s->lock);
  klua_task_t *snd = rdv_take_sender_locked(s, out);
  if (snd) {
    klua_spin_unlock(&s->lock);
    klua_wake(snd);
    return KLUA_SYNC_DONE;
  }
  if (atomic_load_explicit(&s->closed, memory_order_relaxed)) {
    klua_spin_unlock(&s->lock);
    return KLUA_SYNC_CLOSED;
  }
  enqueue_locked(s, t, L_RECV);
  klua_spin_unlock(&s->lock);
  int st = rdv_wait(t, s, L_RECV, cancel);
  if (st == KLUA_SYNC_DONE) return rdv_take_handed(t, out);
  return st;
}

int klua_chan_try_send(klua_sync_t *s, klua_task_t *t, const klua_val_t *v, knhk_token_t *cancel) {
  if (s->cap == 0) return rdv_send(s, t, v, cancel);
  try_begin(t);
  if (cancelled(cancel)) return KLUA_SYNC_CANCELLED;
  if (atomic_load_explicit(&s->closed, memory_order_acquire)) return KLUA_SYNC_CLOSED;
  if (ring_put(s, v)) {
    wake_one(s, L_RECV);
    return KLUA_SYNC_DONE;
  }
  klua_spin_lock(&s->lock);
  enqueue_locked(s, t, L_SEND);
  klua_spin_unlock(&s->lock);
  if (atomic_load_explicit(&s->closed, memory_order_acquire)) {
    try_begin(t);
    return KLUA_SYNC_CLOSED;
  }
  if (ring_put(s, v)) { /* room appeared meanwhile */
    try_begin(t);
    wake_one(s, L_RECV);
    return KLUA_SYNC_DONE;
  }
  return try_wait(t, cancel);
}

int klua_chan_try_recv(klua_sync_t *s, klua_task_t *t, klua_val_t *out, knhk_token_t *cancel) {
  if (s->cap == 0) return rdv_recv(s, t, out, cancel);
  try_begin(t);
  if (cancelled(cancel)) return KLUA_SYNC_CANCELLED;
  if (ring_take(s, out)) {
    wake_one(s, L_SEND);
    return KLUA_SYNC_DONE;
  }
  if (drained(s)) return KLUA_SYNC_CLOSED;
  klua_spin_lock(&s->lock);
  enqueue_locked(s, t, L_RECV);
  klua_spin_unlock(&s->lock);
  if (ring_take(s, out)) {
    try_begin(t);
    wake_one(s, L_SEND);
    return KLUA_SYNC_DONE;
  }
  if (drained(s)) {
    try_begin(t);
    return KLUA_SYNC_CLOSED;
  }
  return try_wait(t, cancel);
}

int klua_chan_close(klua_sync_t *s) {
  enum { MAXW = 64 };
  klua_spin_lock(&s->lock);
  int was = atomic_exchange_explicit(&s->closed, 1, memory_order_acq_rel);
  klua_spin_unlock(&s->lock);
  /* every waiter, on both sides, looks again and sees closed */
  for (;;) {
    klua_task_t *ts[MAXW];
    int n = 0;
    klua_spin_lock(&s->lock);
    wake_all_locked(s, L_RECV, ts, &n, MAXW);
    wake_all_locked(s, L_SEND, ts, &n, MAXW);
    klua_spin_unlock(&s->lock);
    for (int i = 0; i < n; i++) klua_wake(ts[i]);
    if (n < MAXW) break;
  }
  return was ? KNHK_EALREADY : 0;
}

int klua_chan_closed(klua_sync_t *s) { return atomic_load_explicit(&s->closed, memory_order_acquire); }

uint32_t klua_chan_capacity(klua_sync_t *s) { return s->cap; }

uint32_t klua_chan_count(klua_sync_t *s) {
  if (s->cap == 0) {
    klua_spin_lock(&s->lock);
    uint32_t n = 0;
    for (klua_wait_t *w = s->w[L_SEND].head; w; w = w->next) n++;
    klua_spin_unlock(&s->lock);
    return n;
  }
  uint64_t h = atomic_load_explicit(&s->head, memory_order_acquire);
  uint64_t t = atomic_load_explicit(&s->tail, memory_order_acquire);
  return t > h ? (uint32_t)(t - h) : 0;
}

/* ------------------------------------------------------- receive from any
 *
 * klua_chan_try_recv_any, one try (see the top for the select's word):
 *   1. The last wait's select is shut; if a rendezvous sender claimed it
 *      first, its value is the result (a completed hand-off wins, even
 *      over a cancellation, as for recv).
 *   2. A look at every channel, from a random one on, without waiting.
 *   3. Nothing: every channel's lock is taken (in address order), a node
 *      queued on each, and a second look made under the locks. No
 *      rendezvous sender can hand a node a value while they are held, so
 *      a value found here is the only one; a buffered channel's sender
 *      that published after the first look sees the node counted in
 *      nrecv (Dekker, as for recv) and wakes the task.
 *   4. Still nothing: the task waits, its select in t->w->on.
 * Invariants: only the task's own try takes from a ring, and only a claim
 * (CAS OPEN -> index) hands its nodes a value, so each DONE takes exactly
 * one value; a node comes off its channel only under that channel's lock.
 */

/* A random start for a look at n channels (xorshift, per thread). */
static _Thread_local uint32_t sel_rand;

static uint32_t sel_start(const klua_task_t *t, uint32_t n) {
  uint32_t x = sel_rand;
  if (!x) x = (uint32_t)(t->id * 2654435761u) | 1u;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  sel_rand = x;
  return x % n;
}

/* One look at every channel, from chs[start] on: DONE (the value in *out,
 * from chs[*which]), CLOSED (every one closed and drained), or WAIT.
 * `locked`: the caller holds every channel's lock. A rendezvous sender
 * whose value was taken is left in *sender, to wake once unlocked. */
static int sel_look(klua_sync_t *const *chs, uint32_t n, uint32_t start, int locked, klua_val_t *out,
                    uint32_t *which, klua_task_t **sender) {
  int open = 0;
  for (uint32_t k = 0; k < n; k++) {
    uint32_t i = k < n - start ? start + k : start + k - n;
    klua_sync_t *s = chs[i];
    if (s->cap > 0) {
      if (ring_take(s, out)) {
        *which = i;
        return KLUA_SYNC_DONE;
      }
      if (!drained(s)) open = 1;
      continue;
    }
    if (!locked) klua_spin_lock(&s->lock);
    klua_task_t *snd = rdv_take_sender_locked(s, out);
    if (!snd && !atomic_load_explicit(&s->closed, memory_order_relaxed)) open = 1;
    if (!locked) klua_spin_unlock(&s->lock);
    if (snd) {
      *sender = snd;
      *which = i;
      return KLUA_SYNC_DONE;
    }
  }
  return open ? KLUA_SYNC_WAIT : KLUA_SYNC_CLOSED;
}

/* After a value was taken from s (no lock held): the sender it made room
 * for, or the rendezvous sender it came from, is woken. */
static void sel_took(klua_sync_t *s, klua_task_t *sender) {
  if (s->cap > 0) wake_one(s, L_SEND);
  else klua_wake(sender);
}

static int by_address(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (klua_sync_t *const *)a, y = (uintptr_t) * (klua_sync_t *const *)b;
  return x < y ? -1 : x > y;
}

/* A select of t over chs: a node per channel (each channel retained while
 * it holds it), and the distinct channels in lock order. */
static sel_t *sel_new(klua_task_t *t, klua_sync_t *const *chs, uint32_t n) {
  sel_t *sel = calloc(1, sizeof *sel + n * (sizeof(sel_node_t) + sizeof(klua_sync_t *)));
  if (!sel) return NULL;
  sel->task = t;
  atomic_init(&sel->won, SEL_OPEN);
  sel->n = n;
  sel->locks = (klua_sync_t **)(void *)(sel->node + n);
  for (uint32_t i = 0; i < n; i++) {
    sel->node[i].sel = sel;
    sel->node[i].w.on = chs[i];
    klua_sync_retain(chs[i]);
    sel->locks[i] = chs[i];
  }
  qsort(sel->locks, n, sizeof *sel->locks, by_address);
  uint32_t m = 1; /* a channel given twice is locked once */
  for (uint32_t i = 1; i < n; i++)
    if (sel->locks[i] != sel->locks[m - 1]) sel->locks[m++] = sel->locks[i];
  sel->nlocks = m;
  return sel;
}

static void sel_free(sel_t *sel) {
  for (uint32_t i = 0; i < sel->n; i++) klua_sync_release(sel->node[i].w.on);
  free(sel);
}

static void sel_lock_all(sel_t *sel) {
  for (uint32_t i = 0; i < sel->nlocks; i++) klua_spin_lock(&sel->locks[i]->lock);
}

static void sel_unlock_all(sel_t *sel) {
  for (uint32_t i = sel->nlocks; i-- > 0;) klua_spin_unlock(&sel->locks[i]->lock);
}

/* Shuts a select: no sender hands it a value from now on. Returns 1 if
 * one claimed it before: the value is moved to *out and its node's index
 * to *which (the receive happened); else 0. */
static int sel_shut(sel_t *sel, klua_val_t *out, uint32_t *which) {
  int32_t won = SEL_OPEN;
  if (atomic_compare_exchange_strong_explicit(&sel->won, &won, SEL_SHUT, memory_order_acq_rel,
                                              memory_order_acquire))
    return 0;
  if (won < 0) return 0; /* shut already */
  klua_wait_t *w = &sel->node[won].w;
  klua_sync_t *s = w->on;
  klua_spin_lock(&s->lock); /* the claim and the value were made under it */
  out->p = w->val;
  out->len = w->val_len;
  out->kind = w->val_kind;
  w->val = NULL;
  w->val_owned = 0;
  klua_spin_unlock(&s->lock);
  *which = (uint32_t)won;
  return 1;
}

/* klua_wait_end's for a select: shut, every node taken off its channel (a
 * turn a node was handed passed on, a value it was handed and nobody took
 * dropped: the task is leaving without it), and freed. */
void klua_select_unwait(void *p) {
  sel_t *sel = p;
  int32_t open = SEL_OPEN;
  atomic_compare_exchange_strong_explicit(&sel->won, &open, SEL_SHUT, memory_order_acq_rel,
                                          memory_order_acquire);
  for (uint32_t i = 0; i < sel->n; i++) klua_sync_unwait(&sel->node[i].w);
  sel_free(sel);
}

int klua_chan_try_recv_any(klua_sync_t *const *chs, uint32_t n, klua_task_t *t, klua_val_t *out,
                           uint32_t *which, knhk_token_t *cancel) {
  if (t->w->kind == KLUA_WAIT_SELECT && sel_shut(t->w->on, out, which)) { /* 1 */
    klua_wait_end(t);
    return KLUA_SYNC_DONE;
  }
  try_begin(t);
  if (cancelled(cancel)) return KLUA_SYNC_CANCELLED;
  uint32_t start = sel_start(t, n);
  klua_task_t *sender = NULL;
  int st = sel_look(chs, n, start, 0, out, which, &sender); /* 2 */
  if (st == KLUA_SYNC_DONE) sel_took(chs[*which], sender);
  if (st != KLUA_SYNC_WAIT) return st;
  sel_t *sel = sel_new(t, chs, n); /* 3 */
  if (!sel) return KNHK_ENOMEM;
  sel_lock_all(sel);
  for (uint32_t i = 0; i < n; i++) enqueue_node_locked(chs[i], &sel->node[i].w, L_RECV, KLUA_WAIT_SELECT);
  st = sel_look(chs, n, start, 1, out, which, &sender);
  if (st != KLUA_SYNC_WAIT) { /* nobody could reach the nodes yet: all still queued */
    for (uint32_t i = 0; i < n; i++) {
      wl_remove(&chs[i]->w[L_RECV], &sel->node[i].w);
      atomic_fetch_sub_explicit(&chs[i]->nrecv, 1, memory_order_relaxed);
    }
  }
  sel_unlock_all(sel);
  if (st != KLUA_SYNC_WAIT) {
    if (st == KLUA_SYNC_DONE) sel_took(chs[*which], sender);
    sel_free(sel);
    return st;
  }
  t->w->kind = KLUA_WAIT_SELECT; /* 4 */
  t->w->on = sel;
  if (!klua_wait_arm_cancel(t, cancel)) return KLUA_SYNC_WAIT;
  /* cancelled already: a sender may have claimed the select since the
   * unlock, and then the receive happened */
  st = sel_shut(sel, out, which) ? KLUA_SYNC_DONE : KLUA_SYNC_CANCELLED;
  klua_wait_end(t);
  return st;
}

/* -------------------------------------------------------------- semaphores */

int klua_sem_try_acquire(klua_sync_t *s, klua_task_t *t, knhk_token_t *cancel) {
  try_begin(t);
  if (cancelled(cancel)) return KLUA_SYNC_CANCELLED;
  klua_spin_lock(&s->lock);
  if (s->permits > 0) {
    s->permits--;
    if (s->is_lock) s->owner = t->id;
    klua_spin_unlock(&s->lock);
    return KLUA_SYNC_DONE;
  }
  enqueue_locked(s, t, L_RECV);
  klua_spin_unlock(&s->lock);
  return try_wait(t, cancel);
}

void klua_sem_make_lock(klua_sync_t *s) { s->is_lock = 1; }

const char *klua_sync_wait_what(const klua_wait_t *w) {
  const klua_sync_t *s = w->on;
  switch (s->kind) {
  case KLUA_SYNC_CHAN: return w->list == L_SEND ? "to send on a channel" : "to receive on a channel";
  case KLUA_SYNC_SEM: return s->is_lock ? "for a lock" : "for a semaphore's permit";
  default: return "for an event to be set";
  }
}

uint64_t klua_lock_owner(klua_sync_t *s) {
  klua_spin_lock(&s->lock);
  uint64_t o = s->owner;
  klua_spin_unlock(&s->lock);
  return o;
}

int klua_sem_release(klua_sync_t *s, const klua_task_t *t) {
  klua_spin_lock(&s->lock);
  if (s->is_lock) { /* only the holder releases a lock, once */
    if (!t || s->owner != t->id) {
      klua_spin_unlock(&s->lock);
      return KNHK_EINVAL;
    }
    s->owner = 0;
  }
  s->permits++;
  klua_task_t *w = dequeue_locked(s, L_RECV);
  klua_spin_unlock(&s->lock);
  if (w) klua_wake(w);
  return 0;
}

int64_t klua_sem_permits(klua_sync_t *s) {
  klua_spin_lock(&s->lock);
  int64_t v = s->permits;
  klua_spin_unlock(&s->lock);
  return v;
}

/* ------------------------------------------------------------------ events */

int klua_event_try_wait(klua_sync_t *s, klua_task_t *t, knhk_token_t *cancel) {
  try_begin(t);
  if (cancelled(cancel)) return KLUA_SYNC_CANCELLED;
  if (atomic_load_explicit(&s->set, memory_order_acquire)) return KLUA_SYNC_DONE;
  klua_spin_lock(&s->lock);
  if (atomic_load_explicit(&s->set, memory_order_relaxed)) {
    klua_spin_unlock(&s->lock);
    return KLUA_SYNC_DONE;
  }
  enqueue_locked(s, t, L_RECV);
  klua_spin_unlock(&s->lock);
  return try_wait(t, cancel);
}

void klua_event_set(klua_sync_t *s) {
  enum { MAXW = 64 };
  atomic_store_explicit(&s->set, 1, memory_order_release);
  for (;;) {
    klua_task_t *ts[MAXW];
    int n = 0;
    klua_spin_lock(&s->lock);
    wake_all_locked(s, L_RECV, ts, &n, MAXW);
    klua_spin_unlock(&s->lock);
    for (int i = 0; i < n; i++) klua_wake(ts[i]);
    if (n < MAXW) break;
  }
}

int klua_event_is_set(klua_sync_t *s) { return atomic_load_explicit(&s->set, memory_order_acquire); }
