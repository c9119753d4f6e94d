/* Programs whose crash needs every thread to explain (tests/dumps.rs).
 *
 *   threads   eight threads, each blocked its own way in functions of its own, and one of
 *             them writes through a null pointer;
 *   deadlock  two threads each hold one lock and wait for the other's; main sees them
 *             stuck and aborts;
 *   big MIB   touches MIB mebibytes, then writes through a null pointer.
 *
 * Prints pid=, then threads= (how many the process has when it dies). */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t cm = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t all_started;
static int pipefd[2];
static volatile int sink;
static int *volatile nowhere;

NOINLINE static void park_on_cond(void) {
    pthread_mutex_lock(&cm);
    for (;;) pthread_cond_wait(&never, &cm);
}
NOINLINE static void park_on_pipe(void) {
    char c;
    for (;;) sink += read(pipefd[0], &c, 1);
}
NOINLINE static void park_in_sleep(void) {
    for (;;) sleep(1000);
}
NOINLINE static void park_on_mutex(void) {
    pthread_mutex_lock(&held);
}
NOINLINE static void park_in_pause(void) {
    for (;;) pause();
}
NOINLINE static void spin_forever(void) {
    for (;;) sink++;
}
NOINLINE static void crash_here(int *p) {
    *p = 42;
    sink++;
}
NOINLINE static void crash_after_the_others(void) {
    /* Everyone is parked before the fault. */
    usleep(300 * 1000);
    crash_here(nowhere);
}

typedef void (*job)(void);
static const struct { const char *name; job run; } jobs[] = {
    {"cond-waiter", park_on_cond},   {"pipe-reader", park_on_pipe},
    {"sleeper", park_in_sleep},      {"lock-waiter", park_on_mutex},
    {"pauser", park_in_pause},       {"spinner", spin_forever},
    {"crasher", crash_after_the_others},
};
#define NJOBS (sizeof jobs / sizeof jobs[0])

static void *worker(void *arg) {
    size_t i = (size_t)arg;
    pthread_setname_np(pthread_self(), jobs[i].name);
    pthread_barrier_wait(&all_started);
    jobs[i].run();
    return NULL;
}

/* deadlock */
static pthread_mutex_t first = PTHREAD_MUTEX_INITIALIZER, second = PTHREAD_MUTEX_INITIALIZER;

NOINLINE static void take_second_holding_first(void) { pthread_mutex_lock(&second); }
NOINLINE static void take_first_holding_second(void) { pthread_mutex_lock(&first); }
static void *holder_a(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "holder-a");
    pthread_mutex_lock(&first);
    pthread_barrier_wait(&all_started);
    take_second_holding_first();
    return NULL;
}
static void *holder_b(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "holder-b");
    pthread_mutex_lock(&second);
    pthread_barrier_wait(&all_started);
    take_first_holding_second();
    return NULL;
}
NOINLINE static void give_up_on_the_deadlock(void) {
    usleep(300 * 1000);
    abort();
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "threads";
    printf("pid=%d\n", getpid());
    pthread_t t;
    if (strcmp(mode, "big") == 0 && argc > 2) {
        size_t n = (size_t)atol(argv[2]) << 20;
        char *p = malloc(n);
        if (!p) return 2;
        memset(p, 1, n);
        if (argc > 3 && strcmp(argv[3], "noise") == 0) {
            /* Bytes no compressor shrinks (xorshift64), for the kept cores' quota. */
            unsigned long long x = 88172645463325252ULL;
            for (size_t i = 0; i + 8 <= n; i += 8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                memcpy(p + i, &x, 8);
            }
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        /* When it crashed, for the benchmark's hold time (xtask/src/bench/dumps.rs). */
        printf("threads=1\nat_ns=%lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
        fflush(stdout);
        crash_here(nowhere);
        return p[n - 1];
    }
    if (strcmp(mode, "wait") == 0) {
        /* A container's first process that outlives the crash of another in it. */
        fflush(stdout);
        pause();
        return 0;
    }
    if (strcmp(mode, "deadlock") == 0) {
        pthread_barrier_init(&all_started, NULL, 3);
        pthread_create(&t, NULL, holder_a, NULL);
        pthread_create(&t, NULL, holder_b, NULL);
        pthread_barrier_wait(&all_started);
        printf("threads=3\n");
        fflush(stdout);
        give_up_on_the_deadlock();
        return 0;
    }
    if (pipe(pipefd) != 0) return 2;
    pthread_mutex_lock(&held);
    pthread_barrier_init(&all_started, NULL, NJOBS + 1);
    for (size_t i = 0; i < NJOBS; i++) pthread_create(&t, NULL, worker, (void *)i);
    pthread_barrier_wait(&all_started);
    printf("threads=%zu\n", NJOBS + 1);
    fflush(stdout);
    pthread_join(t, NULL);
    return 0;
}
