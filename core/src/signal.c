/* signal.c: signal watches on the reactor (see knhk/reactor.h).
 *
 * A watch's op word says what its owner wants (WANT: watching) and whether
 * its node is queued (QUEUED, at most once); the reactor installs or ends
 * the uv_signal_t accordingly when it takes the node. Callbacks run on the
 * reactor thread.
 */
#include <stdlib.h>

#include "knhk/errors.h"
#include "reactor_impl.h"

enum { SF_QUEUED = 1, SF_WANT = 2 };


static void on_uvsignal(uv_signal_t *h, int signum) {
  knhk_signal_t *w = h->data;
  w->knhk__count++;
  w->on_signal(w, signum, w->knhk__count);
}

static void free_handle(uv_handle_t *h) { free(h); }

static void watch_forget(knhk_reactor_t *r, knhk_signal_t *w) {
  for (uint32_t i = 0; i < r->nwatches; i++)
    if (r->watches[i] == w) {
      r->watches[i] = r->watches[--r->nwatches];
      return;
    }
}

static void watch_end(knhk_reactor_t *r, knhk_signal_t *w) {
  uv_signal_t *h = w->knhk__uv;
  if (!h) return;
  st_release(&w->knhk__active, 0);
  uv_signal_stop(h);
  uv_close((uv_handle_t *)h, free_handle);
  w->knhk__uv = NULL;
  watch_forget(r, w);
}

/* Installs the watch's handler (on the reactor thread, or by the caller
 * before the thread exists). Out of memory: the watch stays inactive. */
static void watch_install(knhk_reactor_t *r, knhk_signal_t *w) {
  uv_signal_t *h = malloc(sizeof *h);
  if (!h) return;
  uv_signal_init(&r->loop, h);
  h->data = w;
  if (r->nwatches == r->capwatches) {
    uint32_t cap = r->capwatches ? r->capwatches * 2 : 8;
    knhk_signal_t **ws = realloc(r->watches, cap * sizeof *ws);
    if (!ws) {
      uv_close((uv_handle_t *)h, free_handle);
      return;
    }
    r->watches = ws;
    r->capwatches = cap;
  }
  r->watches[r->nwatches++] = w;
  w->knhk__uv = h;
  uv_signal_start(h, on_uvsignal, w->signum);
  st_release(&w->knhk__active, 1);
}

void knhk__signals_take(knhk_reactor_t *r) {
  knhk_link_t *l;
  while ((l = knhk__reactor_take(&r->signals))) {
    knhk_signal_t *w = container_of(l, knhk_signal_t, knhk__link);
    uint32_t old = atomic_fetch_and_explicit(&w->knhk__op,
                                             ~(uint32_t)SF_QUEUED, memory_order_acq_rel);
    if ((old & SF_WANT) && !w->knhk__uv) {
      watch_install(r, w);
    } else if (!(old & SF_WANT) && w->knhk__uv) {
      watch_end(r, w);
    }
  }
}

int knhk_signal_start(knhk_reactor_t *r, knhk_signal_t *w, int signum, knhk_signal_fn fn,
                      void *data) {
  if (!r || !w || !fn || signum <= 0 || signum >= 65) return KNHK_EINVAL;
  w->on_signal = fn;
  w->data = data;
  w->signum = signum;
  w->knhk__uv = NULL;
  w->knhk__count = 0;
  w->knhk__reactor = r;
  atomic_store_explicit(&w->knhk__active, 0, memory_order_relaxed);
  /* Until the reactor's thread runs its loop, the loop is ours under
   * thread_m: the handler is installed now, and the watch is active on
   * return, with no wait for a thread to be scheduled; the thread is
   * started (if it was not) to run the callbacks. */
  pthread_mutex_lock(&r->thread_m);
  if (!r->looping) {
    int rc = KNHK_ESHUTDOWN;
    if (!ld_sc(&r->closing)) {
      atomic_store_explicit(&w->knhk__op, SF_WANT, memory_order_relaxed);
      watch_install(r, w);
      rc = knhk__reactor_start_locked(r);
    }
    pthread_mutex_unlock(&r->thread_m);
    return rc;
  }
  pthread_mutex_unlock(&r->thread_m);
  atomic_store_explicit(&w->knhk__op, SF_QUEUED | SF_WANT,
                        memory_order_relaxed);
  return knhk__reactor_submit(r, &r->signals, &w->knhk__link);
}

int knhk_signal_active(const knhk_signal_t *w) {
  return w ? (int)ld_acquire(&((knhk_signal_t *)w)->knhk__active) : 0;
}

int knhk_signal_stop(knhk_signal_t *w) {
  if (!w || !w->knhk__reactor) return KNHK_EINVAL;
  _Atomic uint32_t *op = &w->knhk__op;
  uint32_t old = ld_acquire(op);
  while (!atomic_compare_exchange_weak_explicit(op, &old, (old & ~(uint32_t)SF_WANT) | SF_QUEUED,
                                                memory_order_acq_rel, memory_order_acquire)) {
  }
  if (!(old & SF_QUEUED))
    knhk__reactor_submit(w->knhk__reactor, &w->knhk__reactor->signals, &w->knhk__link);
  return 0;
}

void knhk__signals_shutdown(knhk_reactor_t *r) {
  while (r->nwatches) watch_end(r, r->watches[0]);
}

void knhk__signals_free(knhk_reactor_t *r) { free(r->watches); }
