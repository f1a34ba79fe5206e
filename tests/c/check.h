/* A minimal test harness for the C tests: CHECK records a failure and goes
 * on; main returns the failure count, so ctest sees any failure. */
#ifndef THREADGUARD_TEST_CHECK_H
#define THREADGUARD_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

#include "threadguard.h"

static int check_failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

#ifndef THREADGUARD_NO_CHECK_HELPERS
/* One counter of the row whose kind is `kind` (first match), 0 if absent. */
__attribute__((unused)) static long long counter_of_kind(const char *kind, int field) {
    threadguard_stats *s = NULL;
    if (threadguard_stats_take(&s) != 0) return -1000;
    long long value = 0;
    for (int r = 0; r < threadguard_stats_rows(s); r++)
        if (strcmp(threadguard_stats_kind(s, r), kind) == 0) {
            value = threadguard_stats_get(s, r, field);
            break;
        }
    threadguard_stats_free(s);
    return value;
}

__attribute__((unused)) static long long total(int field) {
    threadguard_stats *s = NULL;
    if (threadguard_stats_take(&s) != 0) return -1000;
    long long value = threadguard_stats_get(s, THREADGUARD_TOTAL_ROW, field);
    threadguard_stats_free(s);
    return value;
}
#endif

#endif
