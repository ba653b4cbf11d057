/* test-arena.c: the record arena's chunks and the cache that hands a freed
 * runtime's chunks to the next one (lua/src/klua_arena.c). Each case runs
 * in a process of its own, so it starts with an empty cache. */
#include <string.h>

#include "klua.h"
#include "klua_ffi.h" /* klua_arena_in_use */
#include "runner.h"

#define MB ((size_t)1 << 20)

static int all_zero(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

TEST(arena_gives_zeroed_blocks_and_counts_them) {
  klua_arena_t a;
  memset(&a, 0, sizeof a);
  unsigned char *p = klua_arena_alloc(&a, 100);
  unsigned char *q = klua_arena_alloc(&a, 10);
  ASSERT(p != NULL && q != NULL);
  ASSERT(all_zero(p, 100) && all_zero(q, 10));
#ifdef KLUA_ARENA_MALLOC
  ASSERT_EQ(100 + 10, klua_arena_in_use()); /* a calloc each, as asked */
#else
  ASSERT_EQ(0, (uintptr_t)p % 64);
  ASSERT_EQ(0, (uintptr_t)q % 64);
  ASSERT(q >= p + 100);
  ASSERT_EQ(128 + 64, klua_arena_in_use()); /* rounded up to 64 */
  ASSERT(klua_arena_alloc(&a, 3 * MB) == NULL); /* more than a chunk */
#endif
  klua_arena_free(&a);
  ASSERT_EQ(0, klua_arena_in_use());
}

/* The next runtime starts from the chunk the last one carved first, which
 * had all its pages written, not from its last chunk, whose tail may never
 * have been touched (a fault per page for the next runtime's first
 * records); and what it gets is zeroed again. */
TEST(arena_next_runtime_starts_from_the_first_chunk_of_the_last) {
  klua_arena_t a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  unsigned char *first = klua_arena_alloc(&a, 1 * MB);
  unsigned char *last = klua_arena_alloc(&a, 3 * MB / 2); /* no room left: a second chunk */
  ASSERT(first != NULL && last != NULL);
  ASSERT(last < first || last >= first + 2 * MB);
  memset(first, 0xa5, 1 * MB);
  memset(last, 0x5a, 3 * MB / 2);
  klua_arena_free(&a);
#ifndef KLUA_ARENA_MALLOC
  unsigned char *again = klua_arena_alloc(&b, 1 * MB);
  ASSERT(again == first);
  ASSERT(all_zero(again, 1 * MB));
  unsigned char *next = klua_arena_alloc(&b, 3 * MB / 2); /* the other kept chunk */
  ASSERT(next == last);
  ASSERT(all_zero(next, 3 * MB / 2));
#endif
  klua_arena_free(&b);
}
