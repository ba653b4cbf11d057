/* klua_sync.c: channels, semaphores and events for Lua tasks on any worker.
 *
 * One object kind with three uses; everything under its mutex. A task that
 * must wait registers a waiter node (klua_sync_wait), tries again, and
 * yields; whoever makes progress possible wakes one waiter of the right
 * list and marks it `woken`. A woken waiter that leaves without using its
 * turn (cancelled, or someone else was faster) passes the turn on in
 * klua_sync_unwait, so a wake-up is never lost and never a herd.
 * A queued waiter holds a reference to its task; whoever takes the waiter
 * out of a list to wake it takes that reference over (and drops it after
 * waking), so a task woken twice, or gone meanwhile, is never touched freed.
 *
 * Channel values are bytes (snapshots made by the Lua side); capacity 0 is
 * a rendezvous: send returns once a receiver has taken the value.
 */
#include <stdlib.h>
#include <string.h>

#include "klua.h"
#include "knhk/errors.h"

enum { K_CHAN = 1, K_SEM = 2, K_EVENT = 3 };
enum { W_RECV = 0, W_SEND = 1, W_ACK = 2, W_LISTS = 3 };

typedef struct klua_waiter {
  klua_task_t *task;
  struct klua_waiter *prev, *next;
  int list, queued, woken;
} klua_waiter_t;

typedef struct {
  klua_waiter_t *head, *tail;
} wlist_t;

typedef struct {
  char *p;
  size_t len;
} item_t;

typedef struct klua_sync {
  pthread_mutex_t m;
  _Atomic int32_t refs;
  int kind;
  /* channel */
  size_t cap, ring_cap, head, count;
  item_t *ring;
  int closed;
  uint64_t sent, taken;
  /* semaphore */
  int64_t permits;
  /* event */
  int set;
  wlist_t w[W_LISTS];
} klua_sync_t;

static klua_sync_t *sync_new(int kind) {
  klua_sync_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  pthread_mutex_init(&s->m, NULL);
  atomic_init(&s->refs, 1);
  s->kind = kind;
  return s;
}

KLUA_API klua_sync_t *klua_chan_new(size_t capacity) {
  klua_sync_t *s = sync_new(K_CHAN);
  if (!s) return NULL;
  s->cap = capacity;
  s->ring_cap = capacity ? capacity : 1;
  s->ring = calloc(s->ring_cap, sizeof *s->ring);
  if (!s->ring) {
    free(s);
    return NULL;
  }
  return s;
}

KLUA_API klua_sync_t *klua_sem_new(int64_t permits) {
  klua_sync_t *s = sync_new(K_SEM);
  if (s) s->permits = permits;
  return s;
}

KLUA_API klua_sync_t *klua_event_new(void) { return sync_new(K_EVENT); }

KLUA_API void klua_sync_retain(klua_sync_t *s) {
  atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

KLUA_API void klua_sync_release(klua_sync_t *s) {
  if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1) return;
  for (size_t i = 0; i < s->count; i++) free(s->ring[(s->head + i) % s->ring_cap].p);
  free(s->ring);
  pthread_mutex_destroy(&s->m);
  free(s);
}

KLUA_API void klua_free(void *p) { free(p); }

/* ---------------------------------------------------------------- waiters */

static void wl_push(wlist_t *l, klua_waiter_t *w) {
  w->next = NULL;
  w->prev = l->tail;
  if (l->tail) l->tail->next = w;
  else l->head = w;
  l->tail = w;
  w->queued = 1;
}

static void wl_remove(wlist_t *l, klua_waiter_t *w) {
  if (!w->queued) return;
  if (w->prev) w->prev->next = w->next;
  else l->head = w->next;
  if (w->next) w->next->prev = w->prev;
  else l->tail = w->prev;
  w->queued = 0;
}

/* Under s->m: hands the turn to the first waiter of list `which`. Returns
 * its task, with the waiter's reference (wake_task after unlocking). */
static klua_task_t *wake_one_locked(klua_sync_t *s, int which) {
  klua_waiter_t *w = s->w[which].head;
  if (!w) return NULL;
  wl_remove(&s->w[which], w);
  w->woken = 1;
  return w->task;
}

static void wake_task(klua_task_t *t) {
  if (!t) return;
  klua_wake(t, KLUA_WAKE_SYNC);
  klua_task_release(t);
}

typedef struct {
  klua_task_t **tasks;
  size_t n;
} woken_t;

/* Under s->m: takes every waiter of `which` out (their tasks, with their
 * references, into `out`); wake_all after unlocking. */
static void take_all_locked(klua_sync_t *s, int which, woken_t *out) {
  size_t n = 0;
  for (klua_waiter_t *w = s->w[which].head; w; w = w->next) n++;
  out->tasks = n ? malloc(n * sizeof *out->tasks) : NULL;
  out->n = 0;
  if (n && !out->tasks) { /* no memory: wake them one by one, still all */
    klua_task_t *t;
    while ((t = wake_one_locked(s, which))) klua_wake(t, KLUA_WAKE_SYNC), klua_task_release(t);
    return;
  }
  klua_waiter_t *w;
  while ((w = s->w[which].head)) {
    wl_remove(&s->w[which], w);
    w->woken = 1;
    out->tasks[out->n++] = w->task;
  }
}

static void wake_all(woken_t *wk) {
  for (size_t i = 0; i < wk->n; i++) wake_task(wk->tasks[i]);
  free(wk->tasks);
}

KLUA_API klua_waiter_t *klua_sync_wait(klua_sync_t *s, klua_task_t *t, int which) {
  if (which < 0 || which >= W_LISTS) return NULL;
  klua_waiter_t *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  klua_task_retain(t);
  w->task = t;
  w->list = which;
  pthread_mutex_lock(&s->m);
  wl_push(&s->w[which], w);
  pthread_mutex_unlock(&s->m);
  return w;
}

/* Takes the waiter back. `used`: the task made its operation; if it was
 * given the turn and did not use it, the turn goes to the next waiter. */
KLUA_API void klua_sync_unwait(klua_sync_t *s, klua_waiter_t *w, int used) {
  if (!w) return;
  klua_task_t *next = NULL;
  pthread_mutex_lock(&s->m);
  int was_queued = w->queued;
  wl_remove(&s->w[w->list], w);
  if (w->woken && !used && w->list != W_ACK) next = wake_one_locked(s, w->list);
  pthread_mutex_unlock(&s->m);
  if (was_queued) klua_task_release(w->task); /* nobody took its reference */
  free(w);
  wake_task(next);
}

/* --------------------------------------------------------------- channels */

/* 0 sent (*seq: its number, for a rendezvous), KNHK_EAGAIN full,
 * KNHK_ECLOSED closed. The channel keeps a copy of the bytes. */
KLUA_API int klua_chan_send(klua_sync_t *s, const char *data, size_t len, uint64_t *seq) {
  char *copy = malloc(len ? len : 1);
  if (!copy) return KNHK_ENOMEM;
  memcpy(copy, data, len);
  pthread_mutex_lock(&s->m);
  int rc = 0;
  klua_task_t *wake = NULL;
  if (s->closed) rc = KNHK_ECLOSED;
  else if (s->count == s->ring_cap) rc = KNHK_EAGAIN;
  else {
    s->ring[(s->head + s->count) % s->ring_cap] = (item_t){copy, len};
    s->count++;
    *seq = ++s->sent;
    wake = wake_one_locked(s, W_RECV);
  }
  pthread_mutex_unlock(&s->m);
  if (rc != 0) free(copy);
  wake_task(wake);
  return rc;
}

/* 0 received (*out: bytes to free with klua_free), KNHK_EAGAIN empty,
 * KNHK_ECLOSED closed and drained. */
KLUA_API int klua_chan_recv(klua_sync_t *s, char **out, size_t *len) {
  pthread_mutex_lock(&s->m);
  int rc = 0;
  klua_task_t *wake = NULL;
  woken_t acks = {NULL, 0};
  if (s->count == 0) {
    rc = s->closed ? KNHK_ECLOSED : KNHK_EAGAIN;
  } else {
    item_t it = s->ring[s->head];
    s->head = (s->head + 1) % s->ring_cap;
    s->count--;
    s->taken++;
    *out = it.p;
    *len = it.len;
    wake = wake_one_locked(s, W_SEND);
    if (s->cap == 0) take_all_locked(s, W_ACK, &acks);
  }
  pthread_mutex_unlock(&s->m);
  wake_task(wake);
  wake_all(&acks);
  return rc;
}

KLUA_API uint64_t klua_chan_taken(klua_sync_t *s) {
  pthread_mutex_lock(&s->m);
  uint64_t v = s->taken;
  pthread_mutex_unlock(&s->m);
  return v;
}

/* Rendezvous only: takes back the value sent as number `seq` if no
 * receiver has taken it yet (the send was cancelled, or the channel
 * closed under it). Returns 1 if withdrawn, 0 if it had been taken. A
 * rendezvous channel holds at most one value, so it is the newest one. */
KLUA_API int klua_chan_withdraw(klua_sync_t *s, uint64_t seq) {
  pthread_mutex_lock(&s->m);
  int withdrawn = 0;
  if (s->taken < seq && s->count > 0 && s->sent == seq) {
    size_t last = (s->head + s->count - 1) % s->ring_cap;
    free(s->ring[last].p);
    s->ring[last] = (item_t){NULL, 0};
    s->count--;
    s->sent--;
    withdrawn = 1;
  }
  klua_task_t *wake = withdrawn ? wake_one_locked(s, W_SEND) : NULL; /* room for another */
  pthread_mutex_unlock(&s->m);
  wake_task(wake);
  return withdrawn;
}

KLUA_API size_t klua_chan_capacity(klua_sync_t *s) { return s->cap; }

KLUA_API int klua_chan_closed(klua_sync_t *s) {
  pthread_mutex_lock(&s->m);
  int v = s->closed;
  pthread_mutex_unlock(&s->m);
  return v;
}

KLUA_API size_t klua_chan_count(klua_sync_t *s) {
  pthread_mutex_lock(&s->m);
  size_t v = s->count;
  pthread_mutex_unlock(&s->m);
  return v;
}

/* Closes: no more sends; receivers drain what is left, then see closed.
 * Returns KNHK_EALREADY if it was closed. */
KLUA_API int klua_chan_close(klua_sync_t *s) {
  pthread_mutex_lock(&s->m);
  int was = s->closed;
  s->closed = 1;
  woken_t lists[W_LISTS] = {{NULL, 0}};
  for (int i = 0; i < W_LISTS && !was; i++) take_all_locked(s, i, &lists[i]);
  pthread_mutex_unlock(&s->m);
  for (int i = 0; i < W_LISTS; i++) wake_all(&lists[i]);
  return was ? KNHK_EALREADY : 0;
}

/* ------------------------------------------------------------- semaphores */

/* 0 acquired, KNHK_EAGAIN none free. */
KLUA_API int klua_sem_acquire(klua_sync_t *s) {
  pthread_mutex_lock(&s->m);
  int rc = s->permits > 0 ? (s->permits--, 0) : KNHK_EAGAIN;
  pthread_mutex_unlock(&s->m);
  return rc;
}

KLUA_API void klua_sem_release(klua_sync_t *s) {
  pthread_mutex_lock(&s->m);
  s->permits++;
  klua_task_t *wake = wake_one_locked(s, W_RECV);
  pthread_mutex_unlock(&s->m);
  wake_task(wake);
}

KLUA_API int64_t klua_sem_permits(klua_sync_t *s) {
  pthread_mutex_lock(&s->m);
  int64_t v = s->permits;
  pthread_mutex_unlock(&s->m);
  return v;
}

/* ----------------------------------------------------------------- events */

KLUA_API void klua_event_set(klua_sync_t *s) {
  pthread_mutex_lock(&s->m);
  s->set = 1;
  woken_t all;
  take_all_locked(s, W_RECV, &all);
  pthread_mutex_unlock(&s->m);
  wake_all(&all);
}

KLUA_API int klua_event_is_set(klua_sync_t *s) {
  pthread_mutex_lock(&s->m);
  int v = s->set;
  pthread_mutex_unlock(&s->m);
  return v;
}
