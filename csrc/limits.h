/* limits.c: headroom, how many more threads fit under each limit, and the
 * CPU allocation (state; calls allocation.c, config.c, glibc.c, ledger.c, procfs.c). */
#ifndef THREADGUARD_LIMITS_H
#define THREADGUARD_LIMITS_H

#include "common.h"

#include "allocation.h"

/* Figures are -1 where unknown or unlimited. */
struct tg_headroom {
    long long nproc_soft, nproc_hard, uid_tasks, nproc_free;
    long long reserved_others; /* workers other guarded processes promised (the ledger) */
    long long pids_max, pids_current, pids_free;
    long long threads_max, threads_total, threads_free;
    long long as_limit, vmsize, thread_cost, as_free_threads;
    long long budget, process_threads, budget_free;
    long long free;      /* the smallest of the *_free figures */
    const char *limit;   /* which limit gave it ("none") */
    long long cpus_affinity, cpus_quota;
    struct tg_allocation allocation; /* every CPU figure seen, with its source */
    long long cpus;        /* the CPU allocation: the smallest figure */
    const char *cpus_from; /* which source gave it */
};

/* Measure every limit now.  kind selects the per-thread address-space cost
 * (an OpenBLAS thread also maps a buffer). */
TG_HIDDEN void tg_headroom_measure(struct tg_headroom *h, int kind);
/* The same, for threads with the given stack (bytes) rather than the default. */
TG_HIDDEN void tg_headroom_measure_stack(struct tg_headroom *h, int kind, long long stack);
/* True when malloc arenas are capped (by threadguard or the user). */
TG_HIDDEN int tg_arenas_capped(void);

/* The values threadguard applied itself at start. */
struct tg_applied {
    long long stack;
    int stack_source;
    /* Pool workers' stack where RLIMIT_AS required a smaller one (0: none). */
    _Atomic long long pool_stack;
    long long arenas;
    int arenas_source;
    long long nproc_soft;
    int nproc_source;
};
TG_HIDDEN extern struct tg_applied tg_applied;
/* The headroom measured at start (shaping.c writes it, once). */
TG_HIDDEN extern struct tg_headroom tg_headroom_at_start;

#endif
