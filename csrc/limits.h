/* limits.c: headroom, how many more threads fit under each limit, and the
 * CPU allocation (state; calls allocation.c, config.c, glibc.c, ledger.c, procfs.c). */
#ifndef THREADGUARD_LIMITS_H
#define THREADGUARD_LIMITS_H

#include "common.h"

#include "allocation.h"

/* How the real uid's task count (RLIMIT_NPROC) was found, from the
 * cheapest: an upper bound until a walk of /proc counts it (limits.c). */
enum tg_tasks_from {
    TG_TASKS_NONE,    /* not needed: root, or no RLIMIT_NPROC */
    TG_TASKS_NODE,    /* at most every task on the node (/proc/loadavg) */
    TG_TASKS_CREATED, /* at most a recent count plus the tasks created since */
    TG_TASKS_COUNTED, /* counted: a walk of /proc */
};

/* Figures are -1 where unknown or unlimited. */
struct tg_headroom {
    /* uid_tasks is an upper bound unless uid_tasks_from is TG_TASKS_COUNTED,
     * and nproc_free (and free, where it is RLIMIT_NPROC's) a lower bound. */
    long long nproc_soft, nproc_hard, uid_tasks, nproc_free;
    int uid_tasks_from;        /* enum tg_tasks_from */
    int uid_tasks_walked;      /* a walk was tried (refining ends there) */
    long long reserved_others; /* workers other guarded processes promised (the ledger) */
    long long pids_max, pids_current, pids_free;
    long long threads_max, threads_total, threads_free;
    long long as_limit, vmsize, thread_cost, as_free_threads;
    long long budget, process_threads, budget_free;
    long long free;    /* the smallest of the *_free figures */
    const char *limit; /* which limit gave it ("none") */
    long long cpus_affinity, cpus_quota;
    struct tg_allocation allocation; /* every CPU figure seen, with its source */
    long long cpus;                  /* the CPU allocation: the smallest figure */
    const char *cpus_from;           /* which source gave it */
};

/* Measure every limit now, each at the cost of a file read or two: the
 * uid's tasks only bounded from above (h->uid_tasks_from), which errs
 * towards smaller pools.  kind selects the per-thread address-space cost
 * (an OpenBLAS thread also maps a buffer). */
TG_HIDDEN void tg_headroom_measure(struct tg_headroom *h, int kind);
/* The same, for threads with the given stack (bytes) rather than the default. */
TG_HIDDEN void tg_headroom_measure_stack(struct tg_headroom *h, int kind, long long stack);
/* The same with the uid's tasks counted (a walk of /proc, whose cost grows
 * with the node's processes): what a report or a failure shows. */
TG_HIDDEN void tg_headroom_measure_exact(struct tg_headroom *h, int kind);
/* When RLIMIT_NPROC gives h's free figure and the uid's tasks are only
 * bounded: the next tighter figure (a recent count plus the tasks created
 * since, then a walk).  Returns 1 when h changed, 0 when nothing is left to
 * tighten.  A decision that the bound leaves in doubt calls it until its
 * pool fits or it returns 0. */
TG_HIDDEN int tg_headroom_refine(struct tg_headroom *h);
/* 1 when h->free is only a lower bound: RLIMIT_NPROC's, from a bound on
 * the uid's tasks. */
TG_HIDDEN int tg_headroom_free_at_least(const struct tg_headroom *h);
/* How the uid's tasks were found, for reports: "counted", "node" (at most
 * the node's tasks), "created" (at most a count plus the tasks created
 * since); NULL where they were not needed. */
TG_HIDDEN const char *tg_tasks_from_name(int from);
/* Walks of /proc this process made to count the uid's tasks (the report's
 * cost figure). */
TG_HIDDEN long long tg_uid_task_walks(void);
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
