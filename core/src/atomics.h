/* atomics.h: C11 atomics helpers, futex and CPU relax, shared by core/src.
 *
 * Why no standalone fences: ThreadSanitizer does not model
 * atomic_thread_fence, so the places that need a store-load barrier
 * (Dekker-style: "publish X, then look at Y") use a seq_cst read-modify-write
 * on X followed by a seq_cst load of Y instead. On x86 that is one locked
 * instruction, the same cost as a fence, and it is correct under the C11 model
 * (all four accesses take part in the single total order S).
 */
#ifndef KNHK_ATOMICS_H
#define KNHK_ATOMICS_H

#include <stdatomic.h>
#include <stdint.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define KNHK__CACHELINE 64
#define KNHK__ALIGNED _Alignas(KNHK__CACHELINE)

#define ld_relaxed(p) atomic_load_explicit((p), memory_order_relaxed)
#define ld_acquire(p) atomic_load_explicit((p), memory_order_acquire)
#define ld_sc(p) atomic_load_explicit((p), memory_order_seq_cst)
#define st_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define st_release(p, v) atomic_store_explicit((p), (v), memory_order_release)

/* A counter written only by its owner thread and read by anyone: a plain
 * load + store (no locked instruction) that readers see without a data race.
 * Release, so a reader that acquires it also sees what led up to it (the
 * quiescence check in executor.c relies on that). */
#define owner_inc(p) st_release((p), ld_relaxed(p) + 1)
#define owner_add(p, n) st_release((p), ld_relaxed(p) + (n))

static inline void knhk__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Sleeps while *addr == expected (or until woken, or spuriously). */
static inline void knhk__futex_wait(_Atomic uint32_t *addr, uint32_t expected) {
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

/* Wakes up to n sleepers on addr. FUTEX_WAKE never dereferences addr, so it
 * is safe on memory the waiter may already have reused: the worst outcome is
 * a spurious wake-up of an unrelated futex, which every wait loop tolerates. */
static inline void knhk__futex_wake(_Atomic uint32_t *addr, int n) {
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

/* A test-and-test-and-set spinlock for very short critical sections (a few
 * pointer updates); yields the CPU if the holder was preempted. */
typedef struct {
  _Atomic uint32_t held;
} knhk__spin_t;

static inline void knhk__spin_lock(knhk__spin_t *s) {
  for (unsigned n = 0;; n++) {
    if (!atomic_exchange_explicit(&s->held, 1, memory_order_acquire)) return;
    while (ld_relaxed(&s->held)) {
      if (++n % 128 == 0) sched_yield();
      else knhk__cpu_relax();
    }
  }
}

static inline void knhk__spin_unlock(knhk__spin_t *s) { st_release(&s->held, 0); }

#endif
