/* latch.h: a count-down latch for tests: wait until `n` events happened
 * (futex-based; no sleeping as synchronisation). */
#ifndef KNHK_TEST_LATCH_H
#define KNHK_TEST_LATCH_H
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
  _Atomic uint32_t left;
} latch_t;

static inline void latch_init(latch_t *l, uint32_t n) { atomic_init(&l->left, n); }

static inline void latch_count_down(latch_t *l) {
  if (atomic_fetch_sub(&l->left, 1) == 1)
    syscall(SYS_futex, (uint32_t *)&l->left, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static inline void latch_wait(latch_t *l) {
  uint32_t v;
  while ((v = atomic_load(&l->left)) != 0)
    syscall(SYS_futex, (uint32_t *)&l->left, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}
#endif
