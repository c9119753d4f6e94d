/* N handled signals: SIGUSR1 raised at itself with a handler installed. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static volatile sig_atomic_t got;
static void on_usr1(int sig) { (void)sig; got++; }

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: signals N\n"); return 64; }
    long n = atol(argv[1]);
    signal(SIGUSR1, on_usr1);
    for (long i = 0; i < n; i++) raise(SIGUSR1);
    return got == (sig_atomic_t)n ? 0 : 1;
}
