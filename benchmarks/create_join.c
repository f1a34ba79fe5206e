/* Times create+join of threads: `create_join N` starts and joins N threads
 * one after another (two creators at once), and prints the nanoseconds per
 * create+join and whether threadguard's wrapper was in effect. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long per_creator;

static void *leaf(void *arg) { return arg; }

static void *creator(void *arg) {
    for (long i = 0; i < per_creator; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, leaf, NULL) != 0) abort();
        pthread_join(t, NULL);
    }
    return arg;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000;
    per_creator = n / 2;
    double start = now_ns();
    pthread_t a, b;
    pthread_create(&a, NULL, creator, NULL);
    pthread_create(&b, NULL, creator, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    double elapsed = now_ns() - start;
    int (*interposing)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "threadguard_interposing");
    printf("%.1f %d\n", elapsed / (double)(2 * per_creator), interposing ? interposing() : 0);
    return 0;
}
