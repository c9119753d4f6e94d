/* N write(2) calls of 64 bytes to FD (1 = open /dev/null, 2 = stderr as given). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: writes N devnull|stderr\n"); return 64; }
    long n = atol(argv[1]);
    int fd = strcmp(argv[2], "devnull") == 0 ? open("/dev/null", O_WRONLY) : 2;
    char buf[64];
    memset(buf, 'x', sizeof buf);
    for (long i = 0; i < n; i++)
        if (write(fd, buf, sizeof buf) != sizeof buf) { perror("write"); return 1; }
    return 0;
}
