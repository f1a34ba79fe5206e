/* The pthread_create wrapper.
 *
 * Preloaded, this definition of pthread_create comes before libc's in
 * symbol lookup, for callers bound to either of glibc's versions (an
 * unversioned interposer catches GLIBC_2.2.5 and GLIBC_2.34 alike).  It
 * attributes the new thread to its creator in the parent, counts it,
 * enforces THREADGUARD_MAX_THREADS, and starts it through threads.c's
 * trampoline, which counts its exit on return, pthread_exit and
 * cancellation.  It never allocates.
 *
 * Layer: entry point.  Calls lifecycle.c (tg_init), threads.c, registry.c,
 * glibc.c (the real pthread_create), config.c, failures.c, ledger.c,
 * report.c (the failures file) and error.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "interpose.h"

#include "config.h"
#include "error.h"
#include "failures.h"
#include "glibc.h"
#include "ledger.h"
#include "lifecycle.h"
#include "registry.h"
#include "report.h"
#include "threads.h"

/* THREADGUARD_MAX_THREADS: live threads besides the main one, counting
 * those that existed before threadguard started.  Returns 1 when this
 * creation must be refused (deny mode); warns once per library either way.
 * Pools are sized to fit the budget, so this is the backstop for threads
 * nobody sized. */
static int over_budget(unsigned slot, long long live_total) {
    long long budget = tg_config.max_threads;
    if (budget <= 0) return 0;
    long long before = tg_tasks_at_start() > 0 ? tg_tasks_at_start() : 0;
    long long in_process = live_total + before;
    if (in_process <= budget) return 0;
    struct tg_lib *lib = &tg_libs[slot];
    int deny = tg_config.on_limit == TG_ON_LIMIT_DENY && !tg_config.observe;
    if (deny) {
        atomic_fetch_add_explicit(&lib->c.denied, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&tg_total.denied, 1, memory_order_relaxed);
    }
    if (atomic_exchange_explicit(&lib->warned, 1, memory_order_relaxed) == 0) {
        if (deny)
            tg_warn("denied thread %lld to %s: THREADGUARD_MAX_THREADS=%lld and %lld thread%s "
                    "live; pthread_create returns EAGAIN (THREADGUARD_ON_LIMIT=deny)",
                    in_process, lib->name, budget, in_process - 1,
                    in_process - 1 == 1 ? " is" : "s are");
        else
            tg_warn("%s started thread %lld, over THREADGUARD_MAX_THREADS=%lld; allowed "
                    "(THREADGUARD_ON_LIMIT=warn; set it to deny to refuse such threads)",
                    lib->name, in_process, budget);
    }
    return deny;
}

/* Whether attr leaves the stack to glibc: none, or a size equal to the
 * default (pthread_attr_init's), and no stack of the caller's own. */
static int default_stack_attr(const pthread_attr_t *attr) {
    if (attr == NULL) return 1;
    void *low = NULL;
    size_t size = 0;
    if (pthread_attr_getstack(attr, &low, &size) == 0 && (uintptr_t)low + size != 0) return 0;
    return pthread_attr_getstacksize(attr, &size) == 0 && (long long)size == tg_default_stack();
}

/* The real pthread_create, with the stack threadguard chose: the smaller
 * stack of a pool it sized under RLIMIT_AS (only for threads whose creator
 * left the stack to glibc), or, where glibc (< 2.18) cannot change the
 * default, THREADGUARD_STACK for threads created without attributes.
 * Nothing is allocated: attribute objects live on this stack, and a copy
 * of the caller's is never destroyed (it shares the caller's extension). */
static int call_real(tg_create_fn real, unsigned slot, pthread_t *thread,
                     const pthread_attr_t *attr, void *(*routine)(void *), void *arg) {
    pthread_attr_t scratch;
    const pthread_attr_t *given = tg_glibc_attr_for(attr, &scratch);
    long long pool_stack = atomic_load_explicit(&tg_libs[slot].pool_stack, memory_order_relaxed);
    int destroy = given == &scratch;
    if (pool_stack > 0 && default_stack_attr(attr)) {
        if (attr == NULL && !destroy)
            destroy = pthread_attr_init(&scratch) == 0;
        else if (attr != NULL)
            memcpy(&scratch, attr, sizeof scratch);
        if (attr != NULL || destroy) {
            pthread_attr_setstacksize(&scratch, (size_t)pool_stack);
            given = &scratch;
        }
    }
    int rc = real(thread, given, routine, arg);
    if (destroy) pthread_attr_destroy(&scratch);
    return rc;
}

static int __attribute__((noinline))
create_counted(void *caller, pthread_t *thread, const pthread_attr_t *attr,
               void *(*routine)(void *), void *arg) {
    int ready = tg_init();
    tg_create_fn real = tg_real_create();
    if (real == NULL) return EAGAIN; /* no libc pthread_create: cannot happen with glibc */
    if (!ready) {
        /* Created while threadguard initialises (from a signal handler or
         * another thread): started as it would be without us, and counted
         * among the threads not seen created. */
        atomic_fetch_add_explicit(&tg_started_during_init, 1, memory_order_relaxed);
        return real(thread, attr, routine, arg);
    }

    unsigned slot = tg_creator_slot(caller);
    unsigned site = tg_python_site_now();
    struct tg_counters *lib = &tg_libs[slot].c;
    struct tg_start_record *record = tg_record_claim(slot, site, routine, arg);
    if (record == NULL) {
        /* No record and no memory to map more: start the thread uncounted
         * rather than fail it, and say so in the report. */
        atomic_fetch_add_explicit(&tg_started_uncounted, 1, memory_order_relaxed);
        return call_real(real, slot, thread, attr, routine, arg);
    }
    long long live_total, live_lib;
    tg_count_start(slot, &live_total, &live_lib);
    if (over_budget(slot, live_total)) {
        tg_count_exit(slot);
        tg_record_release(record);
        return EAGAIN;
    }
    tg_site_count(site, TG_SITE_STARTING);
    int rc = call_real(real, slot, thread, attr, tg_trampoline, record);
    if (rc != 0) {
        tg_site_count(site, TG_SITE_FAILED);
        tg_count_exit(slot);
        tg_record_release(record);
        long long failed = atomic_fetch_add_explicit(&lib->failed, 1, memory_order_relaxed) + 1;
        atomic_fetch_add_explicit(&tg_total.failed, 1, memory_order_relaxed);
        atomic_store_explicit(&lib->last_errno, rc, memory_order_relaxed);
        atomic_store_explicit(&tg_total.last_errno, rc, memory_order_relaxed);
        int saved_errno = errno;
        tg_record_failure(slot, site, rc, attr,
                          atomic_load_explicit(&lib->created, memory_order_relaxed) + failed);
        tg_report_failures_now();
        tg_report_publish_if_stale();
        errno = saved_errno;
        return rc;
    }
    tg_count_created(slot, live_lib);
    tg_site_count(site, TG_SITE_STARTED);
    atomic_fetch_add_explicit(&tg_total.created, 1, memory_order_relaxed);
    /* A promised pool worker started: it now counts as a task, not as a
     * promise in the per-user ledger. */
    if (atomic_load_explicit(&tg_libs[slot].promised, memory_order_relaxed) > 0) tg_ledger_update();
    tg_raise_peak(&tg_total.peak, live_total);
    return 0;
}

THREADGUARD_API int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                                   void *(*routine)(void *), void *arg) {
    return create_counted(__builtin_return_address(0), thread, attr, routine, arg);
}

/* This copy's own pthread_create: taking the address of the exported name
 * would go through the GOT and give whichever definition the process uses. */
extern __typeof__(pthread_create) tg_own_pthread_create
    __attribute__((alias("pthread_create"), visibility("hidden"), nothrow));
