/* Macros and inline helpers every translation unit uses.  Nothing here is
 * exported: the library is built with -fvisibility=hidden, and each .c file's
 * declarations are in the header of the same name. */
#ifndef THREADGUARD_COMMON_H
#define THREADGUARD_COMMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "threadguard.h"

#define TG_HIDDEN __attribute__((visibility("hidden")))

#define TG_KIB 1024LL
#define TG_MIB (1024LL * TG_KIB)
#define TG_GIB (1024LL * TG_MIB)

static inline const char *tg_base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* "s" after a count that is not 1: "1 thread", "2 threads". */
static inline const char *tg_s(long long n) { return n == 1 ? "" : "s"; }

static inline int tg_starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Sanitizer runtimes intercept pthread_create in front of us and call on
 * through dlsym. */
static inline int tg_is_sanitizer_runtime(const char *name) {
    return tg_starts_with(name, "libasan") || tg_starts_with(name, "libtsan") ||
           tg_starts_with(name, "libubsan") || tg_starts_with(name, "liblsan") ||
           tg_starts_with(name, "libhwasan");
}

/* Raise *peak to at least v; the peak before when this raised it, else -1. */
static inline long long tg_raise_peak(_Atomic long long *peak, long long v) {
    long long p = atomic_load_explicit(peak, memory_order_relaxed);
    while (v > p) {
        if (atomic_compare_exchange_weak_explicit(peak, &p, v, memory_order_relaxed,
                                                  memory_order_relaxed))
            return p;
    }
    return -1;
}

#endif
