/* runner.c: main() for test binaries (see runner.h). */
#include "runner.h"

knhk_test_case_t knhk_test_cases[KNHK_TEST_MAX];
int knhk_test_ncases;

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--list") == 0) {
    for (int i = 0; i < knhk_test_ncases; i++) puts(knhk_test_cases[i].name);
    return 0;
  }
  const char *rep = getenv("KNHK_TEST_REPEAT");
  int repeat = rep ? atoi(rep) : 1;
  if (repeat < 1) repeat = 1;
  int ran = 0;
  for (int i = 0; i < knhk_test_ncases; i++) {
    if (argc > 1 && strcmp(argv[1], knhk_test_cases[i].name) != 0) continue;
    for (int r = 0; r < repeat; r++) knhk_test_cases[i].fn();
    printf("ok %s%s\n", knhk_test_cases[i].name, repeat > 1 ? " (repeated)" : "");
    ran++;
  }
  if (ran == 0) {
    fprintf(stderr, "no test case named '%s'; --list shows them\n", argc > 1 ? argv[1] : "");
    return 2;
  }
  return 0;
}
