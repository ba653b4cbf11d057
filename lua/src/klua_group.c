/* klua_group.c: nurseries of Lua tasks.
 *
 * State machine of a group (g->state, one atomic word):
 *     live = children spawned and not ended;  CLOSED once its owner closed
 *     it, which it can do only when live == 0, in the same atomic step, so
 *     no spawn (a child's own, or one from a task the handle travelled to)
 *     slips in between "no child is live" and "closed".
 *   enter:  OPEN -> live + 1;  CLOSED -> KNHK_ECLOSED.
 *   a child ends:  live - 1; if the owner registered as the waiter (WAITER
 *     bit) it is woken when live reaches 0, and at every end if it asked
 *     for each end (EACH bit: join_next, wait_any).
 * The waiter bits are only ever set and cleared by the owner; a child reads
 * them in the decrement itself (so a registration made before it is never
 * missed) and then reads g->waiter. Groups are type-stable (pooled in the
 * runtime, never freed before it): a child that reads g->waiter after its
 * decrement let the owner go on and recycle g only wakes some task
 * spuriously, which every wait tolerates.
 *
 * Failures: a child that failed is kept (with a reference) in the group's
 * failure list, in the order they happened; the first one cancels the
 * group's token unless it supervises. Ended children of an ORDERED group
 * are pushed on a lock-free stack the owner drains, oldest first.
 *
 * What the waits read (the owner's alone): `kept`, the children its VM
 * spawned, in spawn order (wait_all), and `ring`, the ended ones drained
 * from the stack, oldest first (join_next, wait_any). Both hold a child's
 * record until it ended well with a result a detached handle holds; then
 * that result (klua_kept_t, 16 bytes) replaces it and the record goes
 * back to the pool. Drained ones are looked at as they are drained; kept
 * ones through `held` (where kept[] holds a record of a child that had not
 * ended when last looked at), whenever it has doubled since the last look:
 * each look costs what the spawns since the last one did, and the records
 * held are at most about twice those of the children running at the last
 * look (a server's nursery that never asks for results keeps 32 bytes an
 * ended child, not ~500), and none once no child runs and the owner spawns
 * or waits again (join_next). The owner looks only when it spawns or
 * waits: children spawned from other workers, while the owner does
 * neither, stay on the stack with their records. A child that ended
 * otherwise (an error, a table, a string) keeps its record: its results
 * are more than a word.
 */
#include <stdlib.h>
#include <string.h>

#include "klua.h"
#include "knhk/errors.h"

#define G_CLOSED (1ull << 41)
#define G_EACH (1ull << 42)
#define GSLAB KLUA_GROUP_SLAB
#define COMPACT_MIN 64 /* records held by kept[] before the first look */

klua_group_t *klua_group_new(klua_rt_t *rt, knhk_token_t *token, uint32_t flags) {
  pthread_mutex_lock(&rt->pool_m);
  if (!rt->free_groups) {
    klua_group_t *slab = NULL;
    if (rt->ngslabs == rt->capgslabs) {
      size_t cap = rt->capgslabs ? rt->capgslabs * 2 : 8;
      klua_group_t **s = realloc(rt->group_slabs, cap * sizeof *s);
      if (s) rt->group_slabs = s, rt->capgslabs = cap;
    }
    if (rt->ngslabs < rt->capgslabs) slab = klua_arena_alloc(&rt->arena, GSLAB * sizeof *slab);
    if (slab) {
      rt->group_slabs[rt->ngslabs++] = slab;
      for (int i = 0; i < GSLAB; i++) {
        slab[i].next_free = rt->free_groups;
        rt->free_groups = &slab[i];
      }
    }
  }
  klua_group_t *g = rt->free_groups;
  if (g) rt->free_groups = g->next_free;
  pthread_mutex_unlock(&rt->pool_m);
  if (!g) return NULL;
  g->rt = rt;
  atomic_store_explicit(&g->state, 0, memory_order_relaxed);
  atomic_store_explicit(&g->refs, 1, memory_order_relaxed);
  atomic_store_explicit(&g->sibling_cancelled, 0, memory_order_relaxed);
  atomic_store_explicit(&g->closed, 0, memory_order_relaxed); /* a pooled one was closed */
  atomic_store_explicit(&g->waiter, NULL, memory_order_relaxed);
  atomic_store_explicit(&g->ends, 0, memory_order_relaxed);
  atomic_store_explicit(&g->ended, NULL, memory_order_relaxed);
  g->flags = flags;
  g->token = knhk_token_retain(token);
  g->nfail = 0;
  g->any_failed = 0;
  g->owner_worker = -1;
  g->nkept = g->capkept = 0;
  g->nheld = g->capheld = 0;
  g->foreign = NULL; /* (a pooled one's went when it closed) */
  atomic_store_explicit(&g->nforeign, 0, memory_order_relaxed);
  g->rforeign = g->capforeign = 0;
  g->compact_at = COMPACT_MIN;
  g->rhead = g->rlen = g->rcap = 0;
  g->spill = NULL;
  atomic_store_explicit(&g->spawned, 0, memory_order_relaxed);
  memset(&g->tel, 0, sizeof g->tel);
  knhk_telemetry_nursery_open(&g->tel, flags & KLUA_G_SUPERVISE ? 1u : 0u);
  return g;
}

void klua_group_retain(klua_group_t *g) {
  atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
}

/* What only a nursery's waits use (the ended list for join_next and
 * wait_any, the spawn-order list for wait_all) goes once it is closed, when
 * no wait can ask any more: kept to the group's release, a child whose
 * results hold the nursery's handle held the group through them, and
 * neither was ever freed. Failures stay: the nursery raises them after. */
void klua_group_closed(klua_group_t *g) {
  klua_kept_t k;
  while (klua_group_next_ended(g, &k))
    if (klua_kept_is_record(&k)) klua_task_release((klua_task_t *)k.p);
  for (uint32_t i = 0; i < g->nkept; i++)
    if (klua_kept_is_record(&g->kept[i])) klua_task_release((klua_task_t *)g->kept[i].p);
  klua_spin_lock(&g->flock); /* (a spawn that reserved room fails: closed) */
  uint32_t nf = atomic_load_explicit(&g->nforeign, memory_order_relaxed);
  for (uint32_t i = 0; i < nf; i++) klua_task_release((klua_task_t *)g->foreign[i].p);
  free(g->foreign);
  g->foreign = NULL;
  atomic_store_explicit(&g->nforeign, 0, memory_order_relaxed);
  g->capforeign = 0;
  klua_spin_unlock(&g->flock);
  /* not pooled with g: a big nursery's lists would stay */
  free(g->kept);
  free(g->held);
  free(g->ring);
  g->kept = NULL;
  g->held = NULL;
  g->ring = NULL;
  g->nkept = g->capkept = g->nheld = g->capheld = 0;
  g->rhead = g->rlen = g->rcap = 0;
}

/* The last reference: every child has ended (the owner closed it), so
 * only their references in the lists are left to drop. */
void klua_group_release(klua_group_t *g) {
  if (!g || atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1) return;
  klua_group_closed(g); /* (done already if the owner closed it: empty) */
  for (uint32_t i = 0; i < g->nfail; i++) klua_task_release(g->failures[i]);
  g->nfail = 0;
  knhk_telemetry_nursery_close(&g->tel);
  knhk_token_release(g->token);
  g->token = NULL;
  klua_rt_t *rt = g->rt;
  pthread_mutex_lock(&rt->pool_m);
  g->next_free = rt->free_groups;
  rt->free_groups = g;
  pthread_mutex_unlock(&rt->pool_m);
}

int klua_group_enter(klua_group_t *g) {
  uint64_t s = atomic_load_explicit(&g->state, memory_order_relaxed);
  for (;;) {
    if (s & G_CLOSED) return KNHK_ECLOSED;
    /* relaxed: the child is published after this, by the executor's
     * queue (release), and its end comes after its start (acquire) */
    if (atomic_compare_exchange_weak_explicit(&g->state, &s, s + 1, memory_order_relaxed,
                                              memory_order_relaxed))
      return 0;
  }
}

uint32_t klua_group_live(klua_group_t *g) {
  return KLUA_G_LIVE(atomic_load_explicit(&g->state, memory_order_acquire));
}

/* Under flock: lets go of the failures that were joined since they were
 * recorded (their error is handled: nobody raises it again). Without it a
 * long-lived task that spawns children which fail, and joins each, kept
 * every one of their records and errors until it ended. */
static void drop_joined_failures_locked(klua_group_t *g) {
  uint32_t kept = 0;
  for (uint32_t i = 0; i < g->nfail; i++) {
    klua_task_t *f = g->failures[i];
    if (klua_task_joined(f))
      klua_task_release(f);
    else
      g->failures[kept++] = f;
  }
  g->nfail = kept;
}

int klua_group_any_failed(klua_group_t *g) {
  klua_spin_lock(&g->flock);
  int failed = g->any_failed != 0;
  klua_spin_unlock(&g->flock);
  return failed;
}

static void record_failure(klua_group_t *g, klua_task_t *t) {
  klua_spin_lock(&g->flock);
  g->any_failed = 1;
  /* full: the joined ones go first; it grows only if more than half the
   * rest are still unjoined, so each failure is looked at O(1) times */
  int grow = g->nfail == g->capfail;
  if (grow && g->capfail) {
    drop_joined_failures_locked(g);
    grow = g->nfail > g->capfail / 2;
  }
  if (grow) {
    uint32_t cap = g->capfail ? g->capfail * 2 : 4;
    klua_task_t **f = realloc(g->failures, cap * sizeof *f);
    if (f) g->failures = f, g->capfail = cap;
  }
  if (g->nfail < g->capfail) { /* out of memory: the count below still cancels */
    klua_task_retain(t);
    g->failures[g->nfail++] = t;
  }
  klua_spin_unlock(&g->flock);
}

void klua_group_child_ended(klua_group_t *g, klua_task_t *t) {
  int outcome = klua_task_outcome(t);
  if (outcome == KLUA_ERROR) {
    record_failure(g, t);
    int no = 0;
    if (!(g->flags & KLUA_G_SUPERVISE) &&
        atomic_compare_exchange_strong_explicit(&g->sibling_cancelled, &no, 1,
                                                memory_order_relaxed, memory_order_relaxed))
      knhk_token_cancel(g->token, KNHK_CANCEL_SIBLING);
  }
  if (g->flags & KLUA_G_ORDERED) { /* push: the owner takes it (our reference) */
    klua_task_t *head = atomic_load_explicit(&g->ended, memory_order_relaxed);
    do t->link = head;
    while (!atomic_compare_exchange_weak_explicit(&g->ended, &head, t, memory_order_release,
                                                  memory_order_relaxed));
  }
  atomic_fetch_add_explicit(&g->ends, 1, memory_order_relaxed);
  /* seq_cst: with the owner's registration (notify), one of the two sees
   * the other. The last access to g's counters. */
  uint64_t old = atomic_fetch_sub_explicit(&g->state, 1, memory_order_seq_cst);
  if ((old & G_EACH) || (KLUA_G_LIVE(old) == 1 && (old & KLUA_G_WAITER))) {
    klua_task_t *w = atomic_load_explicit(&g->waiter, memory_order_acquire);
    if (w) klua_wake(w);
  }
}

int klua_group_notify(klua_group_t *g, klua_task_t *t, uint64_t seen) {
  atomic_store_explicit(&g->waiter, t, memory_order_release);
  uint64_t bits = KLUA_G_WAITER | (seen != UINT64_MAX ? G_EACH : 0);
  atomic_fetch_or_explicit(&g->state, bits, memory_order_seq_cst);
  /* look again, after registering: an end that came before it is seen here */
  if (seen != UINT64_MAX) {
    if (atomic_load_explicit(&g->ends, memory_order_seq_cst) != seen) return KNHK_EALREADY;
  }
  if (KLUA_G_LIVE(atomic_load_explicit(&g->state, memory_order_seq_cst)) == 0) return KNHK_EALREADY;
  return 0;
}

void klua_group_unnotify(klua_group_t *g, klua_task_t *t) {
  (void)t;
  atomic_fetch_and_explicit(&g->state, ~(KLUA_G_WAITER | G_EACH), memory_order_relaxed);
}

int klua_group_close_if_idle(klua_group_t *g) {
  uint64_t s = atomic_load_explicit(&g->state, memory_order_acquire);
  for (;;) {
    if (KLUA_G_LIVE(s) != 0) return KNHK_EBUSY;
    if (atomic_compare_exchange_weak_explicit(&g->state, &s, s | G_CLOSED, memory_order_acq_rel,
                                              memory_order_acquire)) {
      atomic_store_explicit(&g->closed, 1, memory_order_relaxed);
      return 0;
    }
  }
}

int klua_group_has_ended(klua_group_t *g) {
  return g->rlen || g->spill || atomic_load_explicit(&g->ended, memory_order_acquire);
}

/* Room in the ring for one more; 0, or -1 out of memory. */
static int ring_room(klua_group_t *g) {
  if (g->rlen < g->rcap) return 0;
  uint32_t cap = g->rcap ? g->rcap * 2 : 16;
  if (cap <= g->rcap) return -1;
  klua_kept_t *r = malloc(cap * sizeof *r);
  if (!r) return -1;
  for (uint32_t i = 0; i < g->rlen; i++) r[i] = g->ring[(g->rhead + i) % g->rcap];
  free(g->ring);
  g->ring = r;
  g->rhead = 0;
  g->rcap = cap;
  return 0;
}

/* A child as a list keeps it: its result if it has one a word holds (the
 * list's reference to the record then goes), else its record. */
static klua_kept_t kept_of(klua_task_t *t) {
  klua_kept_t k;
  if (klua_task_keepable(t, &k)) {
    klua_task_release(t);
    return k;
  }
  return klua_kept_record(t);
}

/* The stack's children onto the end of the ring, oldest first (onto the
 * spill list, in order, if the ring cannot grow, and while it is not empty). */
static void drain_ended(klua_group_t *g) {
  klua_task_t *s = atomic_exchange_explicit(&g->ended, NULL, memory_order_acquire);
  klua_task_t *oldest = NULL; /* turned over: oldest first */
  while (s) {
    klua_task_t *next = s->link;
    s->link = oldest;
    oldest = s;
    s = next;
  }
  while (oldest && !g->spill && ring_room(g) == 0) {
    klua_task_t *t = oldest;
    oldest = t->link;
    t->link = NULL;
    g->ring[(g->rhead + g->rlen++) % g->rcap] = kept_of(t);
  }
  if (oldest) { /* (out of memory) after what the spill list has */
    klua_task_t **end = &g->spill;
    while (*end) end = &(*end)->link;
    *end = oldest;
  }
}

int klua_group_next_ended(klua_group_t *g, klua_kept_t *out) {
  if (!g->rlen && !g->spill) drain_ended(g);
  if (g->rlen) {
    *out = g->ring[g->rhead];
    g->rhead = (g->rhead + 1) % g->rcap;
    g->rlen--;
    return 1;
  }
  klua_task_t *t = g->spill;
  if (!t) return 0;
  g->spill = t->link;
  t->link = NULL;
  *out = klua_kept_record(t);
  return 1;
}

/* The owner's look at its lists (see the top of this file): what ended
 * is drained, and kept children that ended well give up their records. */
static void compact(klua_group_t *g) {
  if (g->flags & KLUA_G_ORDERED) drain_ended(g);
  uint32_t j = 0;
  for (uint32_t i = 0; i < g->nheld; i++) {
    klua_kept_t *k = &g->kept[g->held[i]];
    klua_task_t *t = (klua_task_t *)k->p;
    if (klua_task_outcome(t) == KLUA_RUNNING) g->held[j++] = g->held[i]; /* a later look */
    else *k = kept_of(t); /* (one that ended otherwise keeps its record for good) */
  }
  g->nheld = j;
  g->compact_at = j * 2 > COMPACT_MIN ? j * 2 : COMPACT_MIN;
}

klua_task_t **klua_group_take_failures(klua_group_t *g, uint32_t *n) {
  klua_spin_lock(&g->flock);
  klua_task_t **out = NULL;
  *n = 0;
  if (g->nfail) {
    out = malloc(g->nfail * sizeof *out);
    if (out) {
      memcpy(out, g->failures, g->nfail * sizeof *out);
      *n = g->nfail;
      g->nfail = 0;
    }
  }
  klua_spin_unlock(&g->flock);
  return out;
}

/* Room for one more in an array of *cap elements of `size` bytes. */
static int array_room(void **a, uint32_t n, uint32_t *cap, size_t size) {
  if (n < *cap) return 0;
  uint32_t c = *cap ? *cap * 2 : 16;
  if (c <= *cap) return -1;
  void *p = realloc(*a, (size_t)c * size);
  if (!p) return -1;
  *a = p;
  *cap = c;
  return 0;
}

void klua_group_tidy(klua_group_t *g) {
  /* (no child running: every record held has ended, and one look lets
   * them all go; else only once they doubled: see the top of this file) */
  if (g->nheld >= g->compact_at || (g->nheld && klua_group_live(g) == 0)) compact(g);
}

/* Room in kept[] (and held[]) for one more child: 0, or -1 out of memory. */
static int kept_room(klua_group_t *g) {
  if (array_room((void **)&g->kept, g->nkept, &g->capkept, sizeof *g->kept) != 0) return -1;
  return array_room((void **)&g->held, g->nheld, &g->capheld, sizeof *g->held);
}

/* A child's record at the end of kept[], held there until it ends (room made). */
static void kept_push(klua_group_t *g, klua_kept_t k) {
  g->held[g->nheld++] = g->nkept;
  g->kept[g->nkept++] = k;
}

void klua_group_take_foreign(klua_group_t *g) {
  if (!atomic_load_explicit(&g->nforeign, memory_order_relaxed)) return;
  klua_spin_lock(&g->flock);
  uint32_t n = atomic_load_explicit(&g->nforeign, memory_order_relaxed), i = 0;
  for (; i < n && kept_room(g) == 0; i++) kept_push(g, g->foreign[i]);
  /* (out of memory: the rest stay, for a later look) */
  memmove(g->foreign, g->foreign + i, (n - i) * sizeof *g->foreign);
  atomic_store_explicit(&g->nforeign, n - i, memory_order_relaxed);
  klua_spin_unlock(&g->flock);
}

int klua_group_keep_room(klua_group_t *g, klua_worker_t *w) {
  if (g->owner_worker < 0) return KLUA_KEEP_NONE; /* no wait_all: a task's own nursery */
  if (!klua_group_owned_by(g, w)) {
    klua_spin_lock(&g->flock);
    uint32_t used = atomic_load_explicit(&g->nforeign, memory_order_relaxed) + g->rforeign;
    int rc = array_room((void **)&g->foreign, used, &g->capforeign, sizeof *g->foreign);
    if (rc == 0) g->rforeign++;
    klua_spin_unlock(&g->flock);
    return rc == 0 ? KLUA_KEEP_FOREIGN : -1;
  }
  klua_group_take_foreign(g); /* (before this child: they were spawned before it) */
  klua_group_tidy(g);
  return kept_room(g) == 0 ? KLUA_KEEP_OWNER : -1;
}

void klua_group_unkeep(klua_group_t *g, int keep) {
  if (keep != KLUA_KEEP_FOREIGN) return; /* (the owner's room stays for its next spawn) */
  klua_spin_lock(&g->flock);
  g->rforeign--;
  klua_spin_unlock(&g->flock);
}

void klua_group_keep(klua_group_t *g, klua_task_t *t, int keep) {
  klua_task_retain(t);
  if (keep == KLUA_KEEP_FOREIGN) {
    klua_spin_lock(&g->flock);
    g->rforeign--;
    uint32_t n = atomic_load_explicit(&g->nforeign, memory_order_relaxed);
    g->foreign[n] = klua_kept_record(t);
    atomic_store_explicit(&g->nforeign, n + 1, memory_order_relaxed);
    klua_spin_unlock(&g->flock);
    return;
  }
  kept_push(g, klua_kept_record(t));
}
