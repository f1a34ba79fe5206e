/* allocation.c: the CPU allocation, read the way each scheduler and launcher
 * defines it (state; calls config.c). */
#ifndef THREADGUARD_ALLOCATION_H
#define THREADGUARD_ALLOCATION_H

#include "common.h"

#include "share.h"

/* One figure that bounds the CPUs this process may use, and where it came
 * from (a static string: reports print it long after). */
struct tg_cpu_source {
    const char *name;
    long long cpus;
};

#define TG_MAX_CPU_SOURCES 16

struct tg_allocation {
    struct tg_cpu_source seen[TG_MAX_CPU_SOURCES];
    int count;
    long long cpus;   /* the smallest figure seen; 1 when none */
    const char *from; /* its source */
    /* The raw figures the report has always carried (-1: unset). */
    long long slurm_cpus_per_task, slurm_cpus_on_node, omp_thread_limit;
    /* The job's CPUs on this node that local ranks divide (the cgroup's
     * cpuset, else the online CPUs), and the processes sharing them. */
    long long node_cpus;
    int local_ranks; /* a launcher's ranks on this node; 0: none */
    struct tg_sharing sharing;
};

/* Every source in turn: affinity (the CPUs the kernel lets this process
 * run on), quota (the cgroup's CPU quota, rounded up) and node (the job's
 * CPUs on this node: its cpuset, else the online CPUs) as measured by the
 * caller (-1 when unknown), then the schedulers' and launchers' variables,
 * then the guarded parent's CPUs divided among its live children.
 * Allocates nothing. */
TG_HIDDEN void tg_allocation_measure(struct tg_allocation *a, long long affinity, long long quota,
                                     long long node);

/* True when a launcher says ranks run side by side here: only then is the
 * job's node figure (node, above) needed. */
TG_HIDDEN int tg_local_ranks_set(void);

/* At the process's start: remember whether a guarded ancestor started with
 * OMP_NUM_THREADS unset, and mark the same for this process's children
 * (may_setenv: only where the process is still single-threaded, as when
 * loaded by LD_PRELOAD). */
TG_HIDDEN void tg_allocation_note_start(int may_setenv);
/* True when `value` of `variable` is a launcher's forced default rather
 * than the user's: OMP_NUM_THREADS=1 in a torchrun worker whose guarded
 * ancestors started without it. */
TG_HIDDEN int tg_launcher_forced(const char *variable, const char *value);

#endif
