/* N calls of one kind, for what a write hook costs:
 *   devnull  write(2) of 64 bytes to an fd open on /dev/null (not fd 2);
 *   stderr   write(2) of 64 bytes to fd 2 as given;
 *   stdout   write(2) of 64 bytes to fd 1 as given;
 *   pipe     write(2) of 64 bytes to fd 2 made a pipe, drained by a child;
 *   getppid  getppid(2), a syscall that writes nothing. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: writes N devnull|stderr|stdout|pipe|getppid\n"); return 64; }
    long n = atol(argv[1]);
    const char *m = argv[2];
    if (!strcmp(m, "getppid")) {
        for (long i = 0; i < n; i++) syscall(SYS_getppid);
        return 0;
    }
    int fd = 2;
    pid_t drain = -1;
    if (!strcmp(m, "devnull")) fd = open("/dev/null", O_WRONLY);
    else if (!strcmp(m, "stdout")) fd = 1;
    else if (!strcmp(m, "pipe")) {
        int p[2];
        if (pipe(p) != 0) { perror("pipe"); return 1; }
        drain = fork();
        if (drain == 0) {
            close(p[1]);
            char b[65536];
            while (read(p[0], b, sizeof b) > 0) {}
            _exit(0);
        }
        close(p[0]);
        dup2(p[1], 2);
        close(p[1]);
    }
    char buf[64];
    memset(buf, 'x', sizeof buf);
    for (long i = 0; i < n; i++)
        if (write(fd, buf, sizeof buf) != sizeof buf) { perror("write"); return 1; }
    if (drain > 0) { close(2); waitpid(drain, NULL, 0); }
    return 0;
}
