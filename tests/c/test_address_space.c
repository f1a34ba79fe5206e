#define _GNU_SOURCE
/* Under RLIMIT_AS the program's own threads keep the default stack (issue:
 * never harm the host).  threadguard used to drop every thread's default
 * stack to 1 MiB under any RLIMIT_AS, and a program whose thread uses 3 MiB
 * of stack - fine bare under `prlimit --as=2G` - died of SIGSEGV guarded.
 * Now only the pools it sizes get smaller stacks, when the headroom needs
 * it (tests/test_budget.py covers that with numpy and torch).
 *
 * A sanitizer's shadow memory cannot live under a 2 GiB RLIMIT_AS: there
 * the child runs without one, and only the stack size is compared. */
#include <pthread.h>
#include <sys/resource.h>

#include "check.h"
#include "host.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#else
#define UNDER_SANITIZER 0
#endif

#define USES (3L << 20)

/* Touch USES bytes of this thread's stack, a page at a time. */
static __attribute__((noinline)) long deep(long left) {
    volatile char frame[4096];
    frame[0] = (char)left;
    if (left <= (long)sizeof frame) return frame[0];
    return deep(left - (long)sizeof frame) + frame[0];
}

static void *uses_stack(void *out) {
    pthread_attr_t attr;
    size_t size = 0;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_getstacksize(&attr, &size);
        pthread_attr_destroy(&attr);
    }
    *(size_t *)out = size;
    if (size >= (size_t)USES + (256L << 10)) deep(USES);
    return NULL;
}

static int child(void) {
    size_t size = 0;
    pthread_t t;
    if (pthread_create(&t, NULL, uses_stack, &size) != 0) return 5;
    pthread_join(t, NULL);
    /* Bare, the thread has glibc's default (8 MiB from RLIMIT_STACK here)
     * and uses 3 MiB of it. */
    if (size < (size_t)USES + (256L << 10)) {
        fprintf(stderr, "the thread got %zu bytes of stack, too few for the %ld it uses bare\n",
                size, USES);
        return 6;
    }
    return 0;
}

int main(void) {
    if (getenv("TG_HOST_CASE") != NULL) {
        if (!UNDER_SANITIZER) {
            struct rlimit r = {2L << 30, RLIM_INFINITY};
            if (setrlimit(RLIMIT_AS, &r) != 0) return 7;
            /* Re-exec so that threadguard initialises under the limit, as
             * under `prlimit --as=2G`. */
            if (getenv("TG_AS_SET") == NULL) {
                setenv("TG_AS_SET", "1", 1);
                execl("/proc/self/exe", "test_address_space", (char *)NULL);
                return 8;
            }
        }
        return child();
    }
    struct host_run run = {"as", {NULL}, -1, 60};
    char why[64];
    int status = host_run_case(&run);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "a thread using 3 MiB of stack under RLIMIT_AS=2G: %s",
          host_describe(status, why, sizeof why));
    return check_failures;
}
