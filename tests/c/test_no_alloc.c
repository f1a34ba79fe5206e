/* The create path does not allocate: the same create+join loop is run
 * through libc's pthread_create and through threadguard's, and the heap
 * allocations counted in each (glibc's own included) must be equal.
 * malloc/calloc/realloc are interposed by this executable. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "check.h"

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

static _Atomic long allocations;

void *malloc(size_t n) {
    atomic_fetch_add(&allocations, 1);
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size) {
    atomic_fetch_add(&allocations, 1);
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n) {
    atomic_fetch_add(&allocations, 1);
    return __libc_realloc(p, n);
}

typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

static void *leaf(void *arg) { return arg; }

static long allocations_for(create_fn create, int n) {
    long before = atomic_load(&allocations);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (create(&t, NULL, leaf, NULL) != 0) return -1;
        pthread_join(t, NULL);
    }
    return atomic_load(&allocations) - before;
}

int main(void) {
    /* glibc's own pthread_create: in libc since 2.34, in libpthread before. */
    create_fn real = NULL;
    const char *const homes[] = {"libc.so.6", "libpthread.so.0"};
    for (unsigned i = 0; i < 2 && real == NULL; i++) {
        void *lib = dlopen(homes[i], RTLD_LAZY | RTLD_NOLOAD);
        real = lib ? (create_fn)dlsym(lib, "pthread_create") : NULL;
    }
    CHECK(real != NULL && real != (create_fn)pthread_create, "glibc's pthread_create not found");
    if (real == NULL) return 1;
    /* Warm up both: glibc caches stacks and TLS blocks after the first use,
     * threadguard registers this executable's slot on its first create. */
    allocations_for(real, 8);
    allocations_for(pthread_create, 8);
    long bare = allocations_for(real, 200);
    long guarded = allocations_for(pthread_create, 200);
    CHECK(threadguard_interposing() == 1, "not interposing");
    CHECK(total(THREADGUARD_CREATED) == 208, "created %lld", total(THREADGUARD_CREATED));
    CHECK(bare >= 0 && guarded >= 0, "a pthread_create failed");
    CHECK(guarded == bare, "200 create+join: %ld allocations through threadguard, %ld through libc",
          guarded, bare);
    if (check_failures == 0)
        printf("test_no_alloc: %ld allocations in 200 create+join either way\n", bare);
    return check_failures != 0;
}
