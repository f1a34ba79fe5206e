/* The sizing policy's constants and the names of the limits: their one
 * owner.  The Python package reads them through threadguard_policy_json()
 * and threadguard_thread_cost() (include/threadguard.h) instead of
 * restating them (tests/test_policy.py fails when one is restated). */
#ifndef THREADGUARD_POLICY_H
#define THREADGUARD_POLICY_H

#include <stddef.h>

#include "common.h"

/* Threads kept free for the program's own use (its thread pools, a
 * DataLoader, the interpreter's helpers) when pools are sized. */
#define TG_RESERVE 2
/* The largest pool threadguard sizes (THREADGUARD_POOL_THREADS, limit()). */
#define TG_MAX_POOL_THREADS 4096
/* A constant as a string literal, for messages: TG_TEXT(TG_MAX_POOL_THREADS). */
#define TG_TEXT(constant) TG_TEXT_OF(constant)
#define TG_TEXT_OF(constant) #constant
/* glibc reserves a 64 MiB heap for each malloc arena it adds. */
#define TG_ARENA_COST (64 * TG_MIB)
/* The arenas counted when they are capped by a setting threadguard did
 * not make (MALLOC_ARENA_MAX, GLIBC_TUNABLES): the cap it would apply. */
#define TG_CAPPED_ARENAS 2
/* Each OpenBLAS worker maps a 32 MiB buffer (BUFFER_SIZE in its sources);
 * measured here: about 40 MB of VmSize per worker with 8 MiB stacks. */
#define TG_OPENBLAS_BUFFER_COST (32 * TG_MIB)
/* Of the address space left under RLIMIT_AS, 1/TG_DATA_SHARE stays for
 * the program's own data; threads get the rest. */
#define TG_DATA_SHARE 4

/* The limits a pool is fitted under, by the names the reports use. */
#define TG_LIMIT_NPROC "RLIMIT_NPROC"
#define TG_LIMIT_PIDS "cgroup pids.max"
#define TG_LIMIT_KERNEL "kernel threads-max"
#define TG_LIMIT_AS "RLIMIT_AS"
#define TG_LIMIT_BUDGET "THREADGUARD_MAX_THREADS"

/* A leak: live threads that keep growing while the threads created do not
 * end.  A row's live threads rise to a new high in steps; a rise more than
 * TG_GROWTH_QUIET_MS after the previous rise starts a new step, so a pool
 * that starts its workers at once, however many, is one step.  The row's
 * size after its first step is its settled size.  It is leaking when
 *  - its high rose in at least TG_LEAK_STEPS steps: a pool sized once, or
 *    re-created and shut down each time, never rises again;
 *  - it has at least doubled from its settled size and grown by at least
 *    TG_LEAK_GROWTH: a pool that grows lazily to its size (a thread pool
 *    executor adding a worker per busy submit) stops soon after;
 *  - at least half of the threads created since its settled size are still
 *    alive: churn (threads that end) with a slow drift is not a leak;
 *  - for a pool library (OpenBLAS, OpenMP, MKL, BLIS, torch), more live
 *    threads than its bound: the CPUs it may see and any size it was
 *    given.  A pool that starts slowly (under an emulator, on a loaded
 *    node: gaps past the quiet gap between its workers) is still a pool.
 * A loop that leaks faster than the quiet gap looks like one pool starting
 * until it pauses. */
#define TG_GROWTH_QUIET_MS 10
#define TG_LEAK_STEPS 4
#define TG_LEAK_GROWTH 8

/* Whether a row's growth is a leak (the rule above). */
TG_HIDDEN int tg_growth_leaking(long long steps, long long settled, long long live,
                                long long created, long long created_settled, long long bound);

/* Address space one new thread with this stack costs: the stack, a guard
 * page, a malloc arena of its own while arenas are not capped
 * (arenas_capped 0), and OpenBLAS's buffer for an OpenBLAS worker
 * (openblas 1). */
TG_HIDDEN long long tg_thread_cost(int openblas, long long stack, int arenas_capped);

/* Bytes of address space new threads may take under as_limit with vmsize
 * mapped and `arenas` capped arenas still to come (0: not capped). */
TG_HIDDEN long long tg_address_space_usable(long long as_limit, long long vmsize, int arenas);

/* The policy as JSON into buffer (at most size bytes with the NUL); the
 * full length. */
TG_HIDDEN long long tg_policy_json(char *buffer, size_t size);

#endif
