/* Crash programs for crashwatch's tests: one binary, one mode per way to die.
 * Each mode prints facts the test checks (addresses, tids) on stdout, one "key=value" per line,
 * and flushes before dying. */
#define _GNU_SOURCE
#include <assert.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static void say(const char *k, unsigned long long v) { printf("%s=%llu\n", k, v); fflush(stdout); }

__attribute__((noinline)) static void null_write(void) {
    volatile int *p = (volatile int *)(uintptr_t)0x10;
    say("addr", (uintptr_t)p);
    *p = 42;
}

__attribute__((noinline)) static int divide(int a, int b) { return a / b; }

static void sigbus(void) {
    char path[] = "/tmp/crashwatch-busXXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || ftruncate(fd, 4096) != 0) { perror("bus setup"); exit(90); }
    char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(90); }
    unlink(path);
    if (ftruncate(fd, 0) != 0) { perror("truncate"); exit(90); }
    say("addr", (uintptr_t)p);
    p[0] = 1; /* the file no longer backs this page */
}

static void on_segv(int sig, siginfo_t *si, void *uc) {
    (void)sig; (void)uc;
    /* Skip past the faulting access by jumping away: longjmp-free recovery for the test. */
    say("handled_addr", (uintptr_t)si->si_addr);
    _exit(0);
}

static volatile sig_atomic_t usr1;
static void on_usr1(int sig) { (void)sig; usr1 = 1; }

/* Waits for SIGUSR1 (a container's first process gets no signal it does not handle), then
   faults inside libc: strlen of a NULL pointer. */
static void libc_on_usr1(void) {
    signal(SIGUSR1, on_usr1);
    while (!usr1) pause();
    say("len", strlen(getenv("CRASHWATCH_NEVER_SET")));
}

static void *second_thread(void *arg) {
    (void)arg;
    say("fault_tid", (unsigned long long)syscall(SYS_gettid));
    null_write();
    return NULL;
}

/* Dying words in a 64 KiB-aligned place of their own, far from every other constant (the
   kernel maps at most 64 KiB around a fault), so no page the program touched before maps
   them: the kernel's read of them as they are written finds their page not in memory. */
__attribute__((section(".rodata.cold_words"), aligned(65536)))
static const char cold_words[] = "fatal: cannot continue\n";

static void oom(void) {
    /* Touch memory until the cgroup's limit makes the OOM killer choose us. */
    for (size_t total = 0;; total += 1 << 20) {
        char *p = malloc(1 << 20);
        if (!p) { say("malloc_failed", total); exit(91); }
        memset(p, 1, 1 << 20);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s MODE\n", argv[0]); return 64; }
    const char *m = argv[1];
    say("pid", getpid());
    if (!strcmp(m, "null")) null_write();
    else if (!strcmp(m, "abort")) abort();
    else if (!strcmp(m, "fpe")) say("q", divide(argc, argc - 2));
    else if (!strcmp(m, "bus")) sigbus();
    else if (!strcmp(m, "sleep")) { sleep(120); return 0; }
    else if (!strcmp(m, "exit3")) exit(3);
    else if (!strcmp(m, "cold-abort")) { write(2, cold_words, sizeof cold_words - 1); abort(); }
    else if (!strcmp(m, "cold-exit")) { write(2, cold_words, sizeof cold_words - 1); exit(3); }
    else if (!strcmp(m, "ok")) return 0;
    else if (!strcmp(m, "survive")) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGSEGV, &sa, NULL);
        null_write();
    } else if (!strcmp(m, "thread")) {
        pthread_t t;
        pthread_create(&t, NULL, second_thread, NULL);
        pause();
    } else if (!strcmp(m, "oom")) oom();
    else if (!strcmp(m, "libc-on-usr1")) libc_on_usr1();
    /* Dying words from glibc: one write for the assertion, one writev for the double free. */
    else if (!strcmp(m, "assert")) { say("line", __LINE__); assert(argc < 2); }
    else if (!strcmp(m, "double-free")) {
        char *volatile p = malloc(32);
        free(p);
        free(p);
    }
    else { fprintf(stderr, "unknown mode %s\n", m); return 64; }
    return 99; /* a crash mode that did not crash */
}
