/* pool.c: fixed-size records of an executor: tasks for knhk_executor_submit,
 * nursery children and nurseries (one pool of each, executor_impl.h).
 *
 * Records come in slabs that live until the executor is closed. Each worker
 * has, per pool, a free list in use and one full batch in reserve; whole
 * batches move between workers and the shared pool (under its lock), never
 * single records, so every operation here is O(1). Batches move because
 * records migrate: a producer's tasks end, and are freed, on the workers
 * that stole them. Counts are exact, so a worker hands a batch over only
 * when it really holds more than two batches' worth, and a record that goes
 * back and forth between one get and one put stays in the list in use. Slabs are
 * freed at close, so a batch dropped for lack of memory in the bookkeeping
 * array is idle memory, not a leak. A free record links to the next through
 * the pointer at the pool's `link` offset: it belongs to one list at a time.
 * The fast paths are inline in executor_impl.h.
 */
#include <stdlib.h>

#include "executor_impl.h"
#include "knhk/errors.h"

static void **link_of(const knhk__pool_t *p, void *rec) {
  return (void **)(void *)((char *)rec + p->link);
}

void knhk__pool_init(knhk__pool_t *p, size_t size, size_t link) {
  p->size = size;
  p->link = link;
  pthread_mutex_init(&p->lock, NULL);
  p->batches = NULL;
  p->slabs = NULL;
  p->nbatches = p->cap_batches = p->nslabs = p->cap_slabs = 0;
}

static int shared_push_locked(knhk__pool_t *p, void *head, size_t n) {
  if (p->nbatches == p->cap_batches) {
    size_t cap = p->cap_batches ? p->cap_batches * 2 : 16;
    knhk__pool_batch_t *b = realloc(p->batches, cap * sizeof *b);
    if (!b) return KNHK_ENOMEM;
    p->batches = b;
    p->cap_batches = cap;
  }
  p->batches[p->nbatches++] = (knhk__pool_batch_t){head, n};
  return 0;
}

/* A batch from the shared pool, or a new slab. Under p->lock. */
static knhk__pool_batch_t shared_take_locked(knhk__pool_t *p) {
  knhk__pool_batch_t none = {NULL, 0};
  if (p->nbatches) return p->batches[--p->nbatches];
  if (p->nslabs == p->cap_slabs) {
    size_t cap = p->cap_slabs ? p->cap_slabs * 2 : 16;
    void **slabs = realloc(p->slabs, cap * sizeof *slabs);
    if (!slabs) return none;
    p->slabs = slabs;
    p->cap_slabs = cap;
  }
  /* cache-line aligned: a record whose size is a multiple of the line
   * (nurseries) starts on a line of its own */
  size_t bytes = (KNHK__POOL_BATCH * p->size + KNHK__CACHELINE - 1) & ~(size_t)(KNHK__CACHELINE - 1);
  char *slab = aligned_alloc(KNHK__CACHELINE, bytes);
  if (!slab) return none;
  p->slabs[p->nslabs++] = slab;
  for (int i = 0; i < KNHK__POOL_BATCH; i++)
    *link_of(p, slab + (size_t)i * p->size) =
        i + 1 < KNHK__POOL_BATCH ? slab + (size_t)(i + 1) * p->size : NULL;
  return (knhk__pool_batch_t){slab, KNHK__POOL_BATCH};
}

void *knhk__pool_get(knhk__executor_t *ex, knhk__worker_t *w, int kind) {
  knhk__pool_t *p = &ex->pools[kind];
  knhk__pool_cache_t *c = w ? &w->pools[kind] : NULL;
  if (c && !c->list) {
    c->list = c->spare;
    c->n = c->spare_n;
    c->spare = NULL;
    c->spare_n = 0;
  }
  if (!c || !c->list) {
    pthread_mutex_lock(&p->lock);
    knhk__pool_batch_t b = shared_take_locked(p);
    if (b.head && !c && b.n > 1) {
      /* an outside thread takes one record; the rest goes back */
      shared_push_locked(p, *link_of(p, b.head), b.n - 1);
    }
    pthread_mutex_unlock(&p->lock);
    if (!b.head || !c) return b.head;
    c->list = b.head;
    c->n = (uint32_t)b.n;
  }
  void *rec = c->list;
  c->list = *link_of(p, rec);
  c->n--;
  /* Records freed on another worker are cold here: start fetching the next
   * one now, for write, so the miss overlaps the rest of this spawn. */
  if (c->list) __builtin_prefetch(c->list, 1);
  return rec;
}

void knhk__pool_put_shared(knhk__executor_t *ex, int kind, void *chain, size_t n) {
  /* A chain as a batch of its own: rare (a refused outside spawn, records
   * given back from a thread that is not a worker). */
  knhk__pool_t *p = &ex->pools[kind];
  pthread_mutex_lock(&p->lock);
  shared_push_locked(p, chain, n); /* out of memory: the records idle until close */
  pthread_mutex_unlock(&p->lock);
}

void knhk__pool_put(knhk__executor_t *ex, knhk__worker_t *w, int kind, void *rec) {
  knhk__pool_t *p = &ex->pools[kind];
  if (!w) {
    *link_of(p, rec) = NULL;
    knhk__pool_put_shared(ex, kind, rec, 1);
    return;
  }
  knhk__pool_cache_t *c = &w->pools[kind];
  if (c->n >= KNHK__POOL_BATCH) {
    /* A full batch: keep it in reserve, handing the previous reserve over,
     * and start a new list with rec. (Moving the list when a put fills it
     * instead would make a get/put pair at the boundary move a batch each
     * time.) */
    if (c->spare) knhk__pool_put_shared(ex, kind, c->spare, c->spare_n);
    c->spare = c->list;
    c->spare_n = c->n;
    c->list = NULL;
    c->n = 0;
  }
  *link_of(p, rec) = c->list;
  c->list = rec;
  c->n++;
}

void knhk__pool_free_all(knhk__executor_t *ex) {
  for (int k = 0; k < KNHK__NPOOLS; k++) {
    knhk__pool_t *p = &ex->pools[k];
    for (size_t i = 0; i < p->nslabs; i++) free(p->slabs[i]);
    free(p->slabs);
    free(p->batches);
    p->slabs = NULL;
    p->batches = NULL;
    p->nslabs = p->cap_slabs = p->nbatches = p->cap_batches = 0;
    pthread_mutex_destroy(&p->lock);
  }
}

/* ------------------------------------------------- nursery_exec.h's part */

void *knhk__record_get(knhk__executor_t *ex, int kind) {
  knhk__worker_t *w = knhk__worker_of(ex);
  void *rec = w ? knhk__pool_get_local(w, kind, ex->pools[kind].link) : NULL;
  return rec ? rec : knhk__pool_get(ex, w, kind);
}

void knhk__record_put(knhk__executor_t *ex, int kind, void *rec) {
  knhk__worker_t *w = knhk__worker_of(ex);
  if (!w || !knhk__pool_put_local(w, kind, ex->pools[kind].link, rec))
    knhk__pool_put(ex, w, kind, rec);
}

/* One at a time to a worker's list; at once to the shared pool. */
void knhk__record_put_chain(knhk__executor_t *ex, int kind, void *chain, size_t n) {
  if (!chain) return;
  knhk__worker_t *w = knhk__worker_of(ex);
  if (!w) {
    knhk__pool_put_shared(ex, kind, chain, n);
    return;
  }
  knhk__pool_t *p = &ex->pools[kind];
  while (chain) {
    void *next = *link_of(p, chain);
    knhk__record_put(ex, kind, chain);
    chain = next;
  }
}
