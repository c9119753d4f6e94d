/* Process and thread storms, one after another, waiting for each:
 *   spawn N PROGRAM [ARGS...]   fork+exec PROGRAM N times (exec/exit storm);
 *   spawn N --fork              fork N children that _exit(0) at once (no exec);
 *   spawn N --thread            create and join N threads that return at once. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *nothing(void *arg) { return arg; }

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: spawn N PROGRAM [ARGS...] | N --fork | N --thread\n"); return 64; }
    long n = atol(argv[1]);
    int fork_only = !strcmp(argv[2], "--fork"), threads = !strcmp(argv[2], "--thread");
    for (long i = 0; i < n; i++) {
        if (threads) {
            pthread_t t;
            if (pthread_create(&t, NULL, nothing, NULL) != 0 || pthread_join(t, NULL) != 0) {
                perror("thread");
                return 1;
            }
            continue;
        }
        pid_t p = fork();
        if (p == 0) {
            if (fork_only) _exit(0);
            execv(argv[2], argv + 2);
            _exit(127);
        }
        int st;
        if (p < 0 || waitpid(p, &st, 0) < 0 || st != 0) { perror("spawn"); return 1; }
    }
    return 0;
}
