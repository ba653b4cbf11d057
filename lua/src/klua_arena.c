/* klua_arena.c: the memory of a runtime's task records and nursery
 * groups, in 2 MB chunks kept from one runtime to the next.
 *
 * Records are type-stable for the whole run (a late waker may read one at
 * any time), so their slabs live until the runtime is freed. A slab per
 * calloc went back to the system with the runtime, and the next runtime
 * paid a page fault per 4 KB of records again (~2 us each on these
 * machines: ~40 % of a 200 k-task spawn loop in a fresh runtime). Here
 * slabs are carved from 2 MB chunks, and a freed runtime's chunks are
 * kept, up to CACHE_MAX, for the next runtime of the process (knhk.run in
 * a loop: tests, benchmarks, a server's requests). A kept chunk is given
 * to the kernel with MADV_FREE: while memory is plentiful its pages stay
 * mapped and the next runtime writes them without a fault; under pressure
 * the kernel takes them back without writing them anywhere (they come
 * back zero). So the cache can be large enough for 200 k live records
 * (91 MB) without pinning that memory: with 64 MB the spawn rows' runs
 * after the first still faulted on a third of their records (~25 ns a
 * task of the ~400).
 *
 * No MADV_HUGEPAGE: with the kernel's usual defrag setting a fault in an
 * advised range may compact memory first (185 ms for 96 MB measured here,
 * against 45 ms of plain faults), and neither the spawn rows nor the
 * million sleepers showed a gain from it that stood out of the noise.
 *
 * Under AddressSanitizer every slab is its own calloc instead: a chunk
 * would hide an overflow from one slab into the next.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "klua.h"

/* What klua_arena_alloc gave to arenas not freed yet (klua_arena_in_use). */
static _Atomic size_t in_use;

#define CHUNK ((size_t)2 << 20)
#define CACHE_MAX 64 /* chunks kept for the next runtime: 128 MB, reclaimable */
#define ALIGN 64

/* Room in a->chunks for one more. */
static int chunks_room(klua_arena_t *a) {
  if (a->nchunks < a->capchunks) return 0;
  size_t cap = a->capchunks ? a->capchunks * 2 : 8;
  void **c = realloc(a->chunks, cap * sizeof *c);
  if (!c) return -1;
  a->chunks = c;
  a->capchunks = cap;
  return 0;
}

#ifndef KLUA_ARENA_MALLOC
/* Chunks of freed runtimes. Their bytes are whatever the last run left:
 * zeroed again as they are carved (klua_arena_alloc). */
static pthread_mutex_t cache_m = PTHREAD_MUTEX_INITIALIZER;
static void *cache[CACHE_MAX];
static int ncache;

/* A fresh chunk (zero bytes). */
static void *chunk_map(void) {
  void *p = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

/* A chunk for `a`: a cached one (dirty) or a fresh one (zero). */
static int chunk_next(klua_arena_t *a) {
  if (chunks_room(a) != 0) return -1;
  void *p = NULL;
  pthread_mutex_lock(&cache_m);
  if (ncache > 0) p = cache[--ncache];
  pthread_mutex_unlock(&cache_m);
  a->dirty = p != NULL;
  if (!p && !(p = chunk_map())) return -1;
  a->chunks[a->nchunks++] = p;
  a->at = p;
  a->left = CHUNK;
  return 0;
}
#endif

void *klua_arena_alloc(klua_arena_t *a, size_t size) {
#ifdef KLUA_ARENA_MALLOC
  if (chunks_room(a) != 0) return NULL;
  void *p = calloc(1, size);
  if (!p) return NULL;
  a->chunks[a->nchunks++] = p;
  a->used += size;
  atomic_fetch_add_explicit(&in_use, size, memory_order_relaxed);
  return p;
#else
  size = (size + ALIGN - 1) & ~(size_t)(ALIGN - 1);
  if (size > CHUNK) return NULL;
  if (size > a->left && chunk_next(a) != 0) return NULL;
  char *p = a->at;
  a->at += size;
  a->left -= size;
  if (a->dirty) memset(p, 0, size);
  a->used += size;
  atomic_fetch_add_explicit(&in_use, size, memory_order_relaxed);
  return p;
#endif
}

KLUA_API size_t klua_arena_in_use(void) {
  return atomic_load_explicit(&in_use, memory_order_relaxed);
}

void klua_arena_free(klua_arena_t *a) {
  atomic_fetch_sub_explicit(&in_use, a->used, memory_order_relaxed);
#ifdef KLUA_ARENA_MALLOC
  for (size_t i = 0; i < a->nchunks; i++) free(a->chunks[i]);
#else
  /* The cache is a stack, and the next runtime starts from its top. The
   * first chunks a runtime carved have had every page written; its last
   * one may have been carved only a little, the rest of its pages never
   * faulted in. So the first chunks go on top, and when the cache is full
   * the last ones are the ones given back. Pushed first to last, as they
   * once were, the next runtime began in that last chunk: its first
   * records (its first few thousand spawns) faulted on a page every nine
   * records, and the spawn rows' second run had a p99 of ~2 us against
   * ~0.7 us for the runs after it. */
  size_t keep = 0;
  pthread_mutex_lock(&cache_m);
  if (ncache < CACHE_MAX) keep = (size_t)(CACHE_MAX - ncache);
  if (keep > a->nchunks) keep = a->nchunks;
  for (size_t i = keep; i-- > 0;) {
    /* (its pages the kernel's to take back; if it does not, no fault) */
    madvise(a->chunks[i], CHUNK, MADV_FREE);
    cache[ncache++] = a->chunks[i];
  }
  pthread_mutex_unlock(&cache_m);
  for (size_t i = keep; i < a->nchunks; i++) munmap(a->chunks[i], CHUNK);
#endif
  free(a->chunks);
  memset(a, 0, sizeof *a);
}
