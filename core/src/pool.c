/* pool.c: task records for knhk_executor_submit.
 *
 * Records come in slabs that live until the executor is closed. Each worker
 * has a free list in use and one full batch in reserve; whole batches move
 * between workers and the shared pool (under pool_lock), never single
 * records, so every operation here is O(1). Batches move because records
 * migrate: a producer's tasks end, and are freed, on the workers that stole
 * them. Batches need not be full; counts only decide when to hand one over.
 * Slabs are freed at close, so a batch dropped for lack of memory in the
 * bookkeeping array is idle memory, not a leak. A free record links to the
 * next through its `data` field: it belongs to one list at a time.
 */
#include <stdlib.h>

#include "executor_impl.h"
#include "knhk/errors.h"

#define KNHK__POOL_BATCH 256

static int shared_push_locked(knhk__executor_t *ex, knhk_task_t *batch) {
  if (ex->nbatches == ex->cap_batches) {
    size_t cap = ex->cap_batches ? ex->cap_batches * 2 : 16;
    knhk_task_t **b = realloc(ex->batches, cap * sizeof *b);
    if (!b) return KNHK_ENOMEM;
    ex->batches = b;
    ex->cap_batches = cap;
  }
  ex->batches[ex->nbatches++] = batch;
  return 0;
}

/* A batch from the shared pool, or a new slab. Under pool_lock. */
static knhk_task_t *shared_take_locked(knhk__executor_t *ex) {
  if (ex->nbatches) return ex->batches[--ex->nbatches];
  if (ex->nslabs == ex->cap_slabs) {
    size_t cap = ex->cap_slabs ? ex->cap_slabs * 2 : 16;
    void **slabs = realloc(ex->slabs, cap * sizeof *slabs);
    if (!slabs) return NULL;
    ex->slabs = slabs;
    ex->cap_slabs = cap;
  }
  knhk_task_t *slab = malloc(KNHK__POOL_BATCH * sizeof *slab);
  if (!slab) return NULL;
  ex->slabs[ex->nslabs++] = slab;
  for (int i = 0; i < KNHK__POOL_BATCH; i++)
    slab[i].data = i + 1 < KNHK__POOL_BATCH ? &slab[i + 1] : NULL;
  return slab;
}

knhk_task_t *knhk__pool_get(knhk__executor_t *ex, knhk__worker_t *w) {
  if (w && !w->pool) {
    w->pool = w->spare;
    w->spare = NULL;
    w->pool_n = w->pool ? KNHK__POOL_BATCH : 0;
  }
  if (!w || !w->pool) {
    pthread_mutex_lock(&ex->pool_lock);
    knhk_task_t *batch = shared_take_locked(ex);
    if (batch && !w && batch->data) {
      /* an outside thread takes one record; the rest goes back */
      shared_push_locked(ex, batch->data);
    }
    pthread_mutex_unlock(&ex->pool_lock);
    if (!batch || !w) return batch;
    w->pool = batch;
    w->pool_n = KNHK__POOL_BATCH;
  }
  knhk_task_t *t = w->pool;
  w->pool = t->data;
  w->pool_n--;
  /* Records freed on another worker are cold here: start fetching the next
   * one now, for write, so the miss overlaps the rest of this spawn. */
  if (w->pool) __builtin_prefetch(w->pool, 1);
  return t;
}

void knhk__pool_put_shared(knhk__executor_t *ex, knhk_task_t *t) {
  /* A single record as a batch of its own: rare (a refused outside submit). */
  t->data = NULL;
  pthread_mutex_lock(&ex->pool_lock);
  shared_push_locked(ex, t); /* out of memory: the record idles until close */
  pthread_mutex_unlock(&ex->pool_lock);
}

void knhk__pool_put(knhk__executor_t *ex, knhk__worker_t *w, knhk_task_t *t) {
  t->data = w->pool;
  w->pool = t;
  if (++w->pool_n < KNHK__POOL_BATCH) return;
  /* A full batch: keep it in reserve, handing the previous reserve over. */
  if (w->spare) {
    pthread_mutex_lock(&ex->pool_lock);
    shared_push_locked(ex, w->spare);
    pthread_mutex_unlock(&ex->pool_lock);
  }
  w->spare = w->pool;
  w->pool = NULL;
  w->pool_n = 0;
}

void knhk__pool_free_all(knhk__executor_t *ex) {
  for (size_t i = 0; i < ex->nslabs; i++) free(ex->slabs[i]);
  free(ex->slabs);
  free(ex->batches);
  ex->slabs = NULL;
  ex->batches = NULL;
  ex->nslabs = ex->cap_slabs = ex->nbatches = ex->cap_batches = 0;
}
