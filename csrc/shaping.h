/* shaping.c: pool sizing, the decisions it made, and what is applied at start
 * (policy; calls limits.c, ledger.c, publish.c, registry.c, config.c, glibc.c,
 * error.c). */
#ifndef THREADGUARD_SHAPING_H
#define THREADGUARD_SHAPING_H

#include "limits.h"

/* Initialisation's first step (async-signal-safe): apply RLIMIT_NPROC and
 * measure the headroom at start. */
TG_HIDDEN void tg_shaping_init(void);
/* Its second step: the default stack, malloc arenas, and the variables read
 * through Python's os.environ (glibc's locks and malloc: never in a signal
 * handler). */
TG_HIDDEN void tg_shaping_complete(void);

/* The answer to getenv(variable) read by library `slot` as its pool size
 * (user_text: the environment's value; fallback: another variable that
 * library obeys): user_text itself when it stands, else a number in static
 * storage. */
TG_HIDDEN char *tg_size_pool(unsigned slot, int kind, const char *variable, const char *user_text,
                             const char *fallback);
/* A pool a forked child inherited with `current` threads: its size in the
 * child (at most current), from `variable` (then `fallback`) where the
 * program set one, else the allocation now; `label` names the decision. */
TG_HIDDEN long long tg_size_inherited(unsigned slot, int kind, const char *variable,
                                      const char *label, const char *fallback, long long current);
/* The answer to an OpenMP runtime's getenv("OMP_THREAD_LIMIT"). */
TG_HIDDEN char *tg_limit_openmp(unsigned slot, const char *user_text);
/* A pool-size setter `function` of library `slot`, called from library
 * `caller` with n > 1: what fits (each member past the first costing
 * `cost` threads).  *decision: the decision's row, -1 if none. */
TG_HIDDEN int tg_size_setter(unsigned slot, unsigned caller, const char *function, int kind,
                             int cost, int n, int *decision);
/* Under THREADGUARD_OBSERVE: record the setter call, change nothing. */
TG_HIDDEN void tg_observe_setter(unsigned slot, unsigned caller, const char *function, int kind,
                                 int n);

/* The decisions live in the counter block (registry.h): tg_decisions,
 * tg_decision_count, tg_decisions_dropped. */

/* Record a pool size set from Python that cannot be restored: what
 * ("torch.set_num_interop_threads()") lowered from previous to value, in
 * the row of the library at slot. */
TG_HIDDEN void tg_note_unrestored(unsigned slot, const char *what, long long value,
                                  long long previous);

#endif
