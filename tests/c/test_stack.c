/* THREADGUARD_STACK (set to 2M by ctest: ThreadSanitizer keeps about 800k
 * of thread-local data on each thread's stack, so smaller stacks cannot
 * start a thread under it) reaches the threads it promises to, on every
 * glibc:
 *
 *  - glibc >= 2.18: the process default changes (pthread_setattr_default_np),
 *    so threads created without attributes and with default attributes
 *    both get it;
 *  - glibc < 2.18 (THREADGUARD_TEST_GLIBC=2.17 stands in for it): only
 *    threads created without attributes get it, and the report says so in
 *    its platform limitations;
 *
 * and a thread whose creator chose a stack size keeps at least that either
 * way.  Threads run in this order on purpose: glibc reuses a cached stack
 * for a smaller request, so the small stacks are measured first. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define KIB 1024L

static void *own_stack_size(void *out) {
    pthread_attr_t attr;
    size_t size = 0;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_getstacksize(&attr, &size);
        pthread_attr_destroy(&attr);
    }
    *(size_t *)out = size;
    return NULL;
}

static size_t stack_of_thread(const pthread_attr_t *attr) {
    size_t size = 0;
    pthread_t t;
    if (pthread_create(&t, attr, own_stack_size, &size) != 0) return 0;
    pthread_join(t, NULL);
    return size;
}

/* glibc may round a stack up by a page or a guard: near enough. */
static int near(size_t size, long want) {
    return (long)size >= want - 64 * KIB && (long)size <= want + 64 * KIB;
}

int main(void) {
    const char *pretend = getenv("THREADGUARD_TEST_GLIBC");
    int old_glibc = pretend != NULL && strcmp(pretend, "2.17") == 0;

    const long set = 2048 * KIB;
    size_t no_attr = stack_of_thread(NULL);
    CHECK(near(no_attr, set), "thread without attributes got %zu bytes of stack, want 2M", no_attr);

    pthread_attr_t defaults;
    pthread_attr_init(&defaults);
    size_t default_attr = stack_of_thread(&defaults);
    pthread_attr_destroy(&defaults);
    if (old_glibc)
        CHECK((long)default_attr > set + 64 * KIB,
              "glibc < 2.18 cannot change the default, yet default attributes got %zu bytes",
              default_attr);
    else
        CHECK(near(default_attr, set),
              "thread with default attributes got %zu bytes of stack, want 2M", default_attr);

    pthread_attr_t chosen;
    pthread_attr_init(&chosen);
    pthread_attr_setstacksize(&chosen, 6144 * KIB);
    size_t chosen_size = stack_of_thread(&chosen);
    pthread_attr_destroy(&chosen);
    /* At least what was asked: glibc may hand over a bigger stack from its
     * cache of exited threads' stacks (up to 4 times the size asked). */
    CHECK((long)chosen_size >= 6144 * KIB - 64 * KIB, "a chosen 6M stack became %zu bytes",
          chosen_size);

    static char json[1 << 16];
    long long n = threadguard_report_json(json, sizeof json);
    CHECK(n > 0 && (size_t)n < sizeof json, "report_json returned %lld", n);
    CHECK(strstr(json, "\"stack\": {\"value\": 2097152, \"source\": \"user\"}") != NULL,
          "applied stack is not 2M from the user in:\n%s", json);
    const char *limitation = strstr(json, "pthread_setattr_default_np: a thread stack");
    if (old_glibc) {
        CHECK(limitation != NULL, "no stack limitation stated for glibc 2.17 in:\n%s", json);
        CHECK(strstr(json, "\"glibc\": \"2.17 (test)\"") != NULL, "glibc version not shown");
    } else {
        CHECK(limitation == NULL, "a stack limitation stated on this glibc:\n%s", json);
    }
    return check_failures;
}
