/* runner.h: a tiny libuv-style test runner.
 *
 *   TEST(name) { ASSERT_EQ(1, x); }
 *
 * A test binary run with a case name runs that case; with no argument it runs
 * every case in order; `--list` prints the names (CMake registers one ctest
 * per case from the TEST( lines of the source). KNHK_TEST_REPEAT=n runs each
 * chosen case n times (stress). A failed assertion prints file:line, the
 * expression and both values, then exits 1.
 */
#ifndef KNHK_TEST_RUNNER_H
#define KNHK_TEST_RUNNER_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *name;
  void (*fn)(void);
} knhk_test_case_t;

#define KNHK_TEST_MAX 256
extern knhk_test_case_t knhk_test_cases[KNHK_TEST_MAX];
extern int knhk_test_ncases;

#define TEST(case_)                                                             \
  static void test_##case_(void);                                               \
  __attribute__((constructor)) static void register_##case_(void) {             \
    knhk_test_cases[knhk_test_ncases].name = #case_;                            \
    knhk_test_cases[knhk_test_ncases++].fn = test_##case_;                      \
  }                                                                             \
  static void test_##case_(void)

#define KNHK_FAIL(...)                                                          \
  do {                                                                          \
    fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                             \
    fprintf(stderr, __VA_ARGS__);                                               \
    fputc('\n', stderr);                                                        \
    exit(1);                                                                    \
  } while (0)

#define ASSERT(cond)                                                            \
  do {                                                                          \
    if (!(cond)) KNHK_FAIL("assertion failed: %s", #cond);                      \
  } while (0)

#define KNHK_ASSERT_CMP(a, op, b)                                               \
  do {                                                                          \
    int64_t va_ = (int64_t)(a), vb_ = (int64_t)(b);                             \
    if (!(va_ op vb_))                                                          \
      KNHK_FAIL("expected %s %s %s, got %" PRId64 " and %" PRId64, #a, #op, #b, \
                va_, vb_);                                                      \
  } while (0)

#define ASSERT_EQ(a, b) KNHK_ASSERT_CMP(a, ==, b)
#define ASSERT_NE(a, b) KNHK_ASSERT_CMP(a, !=, b)
#define ASSERT_GT(a, b) KNHK_ASSERT_CMP(a, >, b)
#define ASSERT_GE(a, b) KNHK_ASSERT_CMP(a, >=, b)
#define ASSERT_LT(a, b) KNHK_ASSERT_CMP(a, <, b)
#define ASSERT_LE(a, b) KNHK_ASSERT_CMP(a, <=, b)
#define ASSERT_OK(e) ASSERT_EQ(0, (e))

/* Sanitizer builds run the same cases on smaller inputs. */
#if defined(KNHK_TSAN) || defined(__SANITIZE_ADDRESS__)
#define KNHK_TEST_SCALE(n) ((n) / 10)
#else
#define KNHK_TEST_SCALE(n) (n)
#endif

#endif
