/* Times omp_set_num_threads in a loop: `omp_setter region N` calls
 * omp_set_num_threads(2) and then runs a small parallel region, N times
 * (how programs call it: before a parallel section); `omp_setter call N`
 * calls only the setter, N times (its bare cost, a few nanoseconds, is all
 * there is to compare with).  Prints nanoseconds per iteration and whether
 * threadguard's wrapper was in effect. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static volatile double sink;

int main(int argc, char **argv) {
    int region = argc > 1 && strcmp(argv[1], "region") == 0;
    long n = argc > 2 ? atol(argv[2]) : 100000;
    double start = now_ns();
    for (long i = 0; i < n; i++) {
        omp_set_num_threads(2);
        if (region) {
            double sum = 0;
#pragma omp parallel for reduction(+ : sum)
            for (int j = 0; j < 2000; j++) sum += j * 0.5;
            sink = sum;
        }
    }
    double elapsed = now_ns() - start;
    int (*interposing)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "threadguard_interposing");
    printf("%.1f %d\n", elapsed / (double)n, interposing ? interposing() : 0);
    return 0;
}
