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
 * a loop: tests, benchmarks, a server's requests).
 *
 * The top CACHE_HOT chunks of the cache (the ones the next runtime takes
 * first) are kept as they are; those below are given to the kernel with
 * MADV_FREE: while memory is plentiful their pages stay mapped, under
 * pressure the kernel takes them back without writing them anywhere (they
 * come back zero). MADV_FREE is not free on reuse: the kernel clears the
 * pages' dirty and accessed bits, and the first write to each page after
 * pays for setting them again. With every cached chunk so advised, the
 * 200 k-task spawn loop took ~195 ns a task, against ~163 ns when the
 * chunks were kept as they were (same page faults, within 7 %): a sixth of
 * the loop. So a runtime of up to CACHE_HOT chunks (64 MB: 200 k records
 * and their wait nodes) reuses memory at full speed, and a larger one
 * (a million sleeping tasks) leaves what is beyond that reclaimable.
 *
 * No MADV_HUGEPAGE: on reused chunks it bought what keeping them hot
 * does (~165 ns a task), and the first touch of a huge page cost far more
 * than 512 small faults here: the million sleepers' spawn loop went from
 * ~1.25 s to ~2.1 s (six interleaved pairs). Earlier, with the kernel's
 * usual defrag setting, a fault in an advised range compacted memory
 * first (185 ms for 96 MB, against 45 ms of plain faults).
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
#define CACHE_MAX 64 /* chunks kept for the next runtime: 128 MB */
#define CACHE_HOT 32 /* of them, at the top, kept as they are: 64 MB */
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
/* cache[0 .. nadvised) were given MADV_FREE: the advised ones are always
 * the bottom of the stack, since pushes and pops happen at its top */
static int nadvised;

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
  if (ncache > 0) {
    p = cache[--ncache];
    if (nadvised > ncache) nadvised = ncache;
  }
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
  for (size_t i = keep; i-- > 0;) cache[ncache++] = a->chunks[i];
  /* what the pushes moved below the hot top becomes the kernel's to take
   * back (if it does not, the next use costs no fault) */
  for (; nadvised < ncache - CACHE_HOT; nadvised++) madvise(cache[nadvised], CHUNK, MADV_FREE);
  pthread_mutex_unlock(&cache_m);
  for (size_t i = keep; i < a->nchunks; i++) munmap(a->chunks[i], CHUNK);
#endif
  free(a->chunks);
  memset(a, 0, sizeof *a);
}
