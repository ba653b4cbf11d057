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
 */
#include <stdlib.h>
#include <string.h>

#include "klua.h"
#include "knhk/errors.h"

#define G_CLOSED (1ull << 41)
#define G_EACH (1ull << 42)
#define GSLAB KLUA_GROUP_SLAB

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
  g->ended_fifo = NULL;
  g->flags = flags;
  g->token = knhk_token_retain(token);
  g->nfail = 0;
  g->owner_worker = -1;
  g->nkept = 0;
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
  klua_task_t *t;
  while ((t = klua_group_next_ended(g))) klua_task_release(t);
  for (uint32_t i = 0; i < g->nkept; i++) klua_task_release(g->kept[i]);
  free(g->kept); /* not pooled with g: a big nursery's list would stay */
  g->kept = NULL;
  g->nkept = g->capkept = 0;
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

static void record_failure(klua_group_t *g, klua_task_t *t) {
  klua_spin_lock(&g->flock);
  if (g->nfail == g->capfail) {
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
  return g->ended_fifo || atomic_load_explicit(&g->ended, memory_order_acquire);
}

klua_task_t *klua_group_next_ended(klua_group_t *g) {
  if (!g->ended_fifo) { /* take the stack (newest first) and turn it over */
    klua_task_t *s = atomic_exchange_explicit(&g->ended, NULL, memory_order_acquire);
    klua_task_t *fifo = NULL;
    while (s) {
      klua_task_t *next = s->link;
      s->link = fifo;
      fifo = s;
      s = next;
    }
    g->ended_fifo = fifo;
  }
  klua_task_t *t = g->ended_fifo;
  if (t) {
    g->ended_fifo = t->link;
    t->link = NULL;
  }
  return t;
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

int klua_group_keep_room(klua_group_t *g, klua_worker_t *w) {
  if (!klua_group_owned_by(g, w)) return 0;
  if (g->nkept < g->capkept) return 1;
  uint32_t cap = g->capkept ? g->capkept * 2 : 16;
  if (cap <= g->capkept) return -1;
  klua_task_t **k = realloc(g->kept, cap * sizeof *k);
  if (!k) return -1;
  g->kept = k;
  g->capkept = cap;
  return 1;
}

void klua_group_keep(klua_group_t *g, klua_task_t *t) {
  klua_task_retain(t);
  g->kept[g->nkept++] = t;
}
