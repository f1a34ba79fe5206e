/* failures.c: failed creations, recorded with the limits of the moment
 * (state; calls limits.c, registry.c, glibc.c, publish.c). */
#ifndef THREADGUARD_FAILURES_H
#define THREADGUARD_FAILURES_H

#include "limits.h"
#include "registry.h"

/* Each failed pthread_create is recorded with the limits measured at that
 * moment, so a report can say which limit was really hit (OpenBLAS blames
 * RLIMIT_NPROC for any EAGAIN, but under RLIMIT_AS the stack mmap failed). */
#define TG_MAX_FAILURES 64

struct tg_failure {
    _Atomic int ready;
    unsigned slot;    /* the library that asked */
    int error;        /* what pthread_create returned */
    long long thread; /* the library's nth thread (created + failed, this one included) */
    long long stack;  /* bytes of stack the new thread needed (0: caller's own stack) */
    struct tg_headroom h;
    const char *cause;   /* "RLIMIT_NPROC", "cgroup pids.max", "RLIMIT_AS", ... */
    unsigned site;       /* the Python start site of the thread that failed (0: none) */
    struct tg_leak leak; /* the leak under way then, if any */
};

TG_HIDDEN extern struct tg_failure tg_failures[TG_MAX_FAILURES];
TG_HIDDEN extern _Atomic int tg_failure_count; /* may exceed TG_MAX_FAILURES */
/* Record a failed creation (the caller then writes the failures file with
 * report.c).  Never allocates. */
TG_HIDDEN void tg_record_failure(unsigned slot, unsigned site, int error,
                                 const pthread_attr_t *attr, long long thread);
/* Which limit explains error, given the figures measured right after it. */
TG_HIDDEN const char *tg_failure_cause(int error, long long stack, const struct tg_headroom *h);
/* In a forked child: the parent's failures are the parent's. */
TG_HIDDEN void tg_failures_reset(void);

#endif
