/* Failed thread creations, recorded with the limits of the moment.
 *
 * glibc returns EAGAIN both when the kernel refuses the task (RLIMIT_NPROC,
 * a cgroup's pids.max, kernel threads-max) and when the new thread's stack
 * cannot be mapped (RLIMIT_AS): the errno alone cannot tell them apart, and
 * the libraries guess (OpenBLAS always prints RLIMIT_NPROC).  The figures
 * measured right after the failure can: the limit that is full is the one
 * that was hit.  This runs on the pthread_create path, so it never
 * allocates: records are a fixed array and /proc is read into stack
 * buffers.
 *
 * Layer: state.  Calls limits.c, registry.c, glibc.c and publish.c; the wrapper
 * records, report.c writes. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

#include "failures.h"

#include "glibc.h"
#include "policy.h"
#include "publish.h"
#include "registry.h"

struct tg_failure tg_failures[TG_MAX_FAILURES];
_Atomic int tg_failure_count;

/* Tasks may exit between the refusal and the measurement: a limit within
 * this many tasks of full counts as full. */
#define TASK_SLACK 2
/* Likewise for address space: other threads may unmap a little meanwhile. */
#define AS_SLACK (1 * TG_MIB)

static int tasks_full(long long used, long long limit) {
    return used >= 0 && limit >= 0 && used + TASK_SLACK >= limit;
}

const char *tg_failure_cause(int error, long long stack, const struct tg_headroom *h) {
    if (error == EPERM) return "EPERM (seccomp or a security policy refused clone)";
    if (error == EINVAL) return "invalid thread attributes";
    if (error != EAGAIN && error != ENOMEM) return "unknown";
    /* The kernel never applies RLIMIT_NPROC to root (uid_tasks is then -1). */
    if (tasks_full(h->uid_tasks, h->nproc_soft)) return TG_LIMIT_NPROC;
    if (tasks_full(h->pids_current, h->pids_max)) return TG_LIMIT_PIDS;
    if (h->as_limit >= 0 && h->vmsize >= 0 &&
        h->vmsize + stack + sysconf(_SC_PAGESIZE) + AS_SLACK > h->as_limit)
        return TG_LIMIT_AS;
    if (tasks_full(h->threads_total, h->threads_max)) return TG_LIMIT_KERNEL;
    return "unknown";
}

static long long needed_stack(const pthread_attr_t *attr) {
    if (attr == NULL) return tg_default_stack();
    void *low = NULL;
    size_t size = 0;
    /* glibc gives the top of a caller-supplied stack less its size; with
     * none supplied the top is NULL. */
    if (pthread_attr_getstack(attr, &low, &size) == 0 && (uintptr_t)low + size != 0) return 0;
    if (pthread_attr_getstacksize(attr, &size) != 0 || size == 0) return tg_default_stack();
    return (long long)size;
}

void tg_record_failure(unsigned slot, unsigned site, int error, const pthread_attr_t *attr,
                       long long thread) {
    int i = atomic_fetch_add_explicit(&tg_failure_count, 1, memory_order_relaxed);
    int saved_errno = errno;
    if (i >= TG_MAX_FAILURES) return; /* not listed, but counted: the failures file says how many */
    struct tg_failure *f = &tg_failures[i];
    f->slot = slot;
    f->error = error;
    f->thread = thread;
    f->stack = needed_stack(attr);
    tg_headroom_measure_exact(&f->h, tg_libs[slot].kind);
    f->cause = tg_failure_cause(error, f->stack, &f->h);
    f->site = site;
    tg_find_leak(&f->leak);
    tg_publish_changed();
    atomic_store_explicit(&f->ready, 1, memory_order_release);
    errno = saved_errno;
}

void tg_failures_reset(void) {
    for (int i = 0; i < TG_MAX_FAILURES; i++)
        atomic_store_explicit(&tg_failures[i].ready, 0, memory_order_relaxed);
    atomic_store_explicit(&tg_failure_count, 0, memory_order_relaxed);
}
