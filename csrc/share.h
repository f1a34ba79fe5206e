/* share.c: the processes of one job that share its CPUs, as a guarded
 * process's guarded children (state; calls publish.c, procfs.c, config.c). */
#ifndef THREADGUARD_SHARE_H
#define THREADGUARD_SHARE_H

#include "common.h"

#define TG_SHARING_PIDS 8

/* Who this process shares its parent's CPUs with, as last counted. */
struct tg_sharing {
    int parent;                /* the guarded parent's pid; 0: none */
    int processes;             /* its live guarded children, this one included */
    long long parent_cpus;     /* the CPUs they divide */
    int pids[TG_SHARING_PIDS]; /* the first few of them */
    int listed;
};

/* Register with the guarded parent, if there is one: at initialisation
 * (exec'd: exec_start; preloaded: this library was preloaded, so this
 * process's children are a job's workers) and in a forked child.
 * Allocates nothing. */
TG_HIDDEN void tg_share_register(int exec_start, int preloaded);
/* This process is ending: its entry in the parent's table goes. */
TG_HIDDEN void tg_share_release(void);
/* This process's CPU allocation, measured now: what its own children divide
 * (published only by a preloaded process: `import threadguard` in a
 * notebook or a test runner counts its own threads and leads no job). */
TG_HIDDEN void tg_share_note_cpus(long long cpus);
/* The parent's CPUs divided among its live guarded children (this one
 * among them), counted now: CPUs, or -1 where there is no guarded parent.
 * *s says who shares. */
TG_HIDDEN long long tg_share_workers(struct tg_sharing *s);
/* Changes when a sibling registers or ends (0 without a parent): cheap. */
TG_HIDDEN unsigned tg_share_generation(void);

#endif
