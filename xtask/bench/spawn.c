/* Exec/exit storm: fork+exec a program N times, one after another, waiting for each. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: spawn N PROGRAM [ARGS...]\n"); return 64; }
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) { execv(argv[2], argv + 2); _exit(127); }
        int st;
        if (p < 0 || waitpid(p, &st, 0) < 0) { perror("spawn"); return 1; }
    }
    return 0;
}
