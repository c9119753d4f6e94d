/* Four calls deep, built -O2 -fomit-frame-pointer: only CFI can walk it. `s` faults inside
   libc instead (strlen of a NULL pointer). */
#include <stdlib.h>
#include <string.h>
__attribute__((noinline)) int d4(volatile int *p) { return *p + 1; }
__attribute__((noinline)) int d3(int *p) { return d4(p) * 3; }
__attribute__((noinline)) int d2(int *p) { return d3(p) + 7; }
__attribute__((noinline)) int d1(int *p) { return d2(p) - 1; }
int main(int argc, char **argv) {
  if (argc > 1 && argv[1][0] == 's')
    return (int)strlen(getenv("CRASHWATCH_NEVER_SET"));
  return d1(argc > 5 ? &argc : NULL);
}
