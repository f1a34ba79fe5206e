/* ledger.c: the per-user headroom ledger shared by guarded processes
 * (state; calls threads.c, registry.c, procfs.c, publish.c). */
#ifndef THREADGUARD_LEDGER_H
#define THREADGUARD_LEDGER_H

#include "common.h"

/* Take the ledger's lock before measuring the headroom for a pool; returns
 * 1 when held (pass it to tg_ledger_unlock), 0 where there is no ledger or
 * the wait ran out (the caller goes on alone).  Never waits long. */
TG_HIDDEN int tg_ledger_lock(void);
TG_HIDDEN void tg_ledger_unlock(int locked);
/* Under the lock: reclaim the entries of processes that are gone. */
TG_HIDDEN void tg_ledger_prepare(void);
/* Pool workers other guarded processes of this user promised and have not
 * started (0 without a ledger). */
TG_HIDDEN long long tg_ledger_others(void);
/* The user's last count of its tasks, as limits.c packed it (0: none
 * yet, or no ledger), and a new one.  Read and written whole, lock or not:
 * every count it holds is a true one. */
TG_HIDDEN unsigned long long tg_ledger_uid_count(void);
TG_HIDDEN void tg_ledger_note_uid_count(unsigned long long packed);
/* Publish this process's promised, unstarted workers. */
TG_HIDDEN void tg_ledger_update(void);
/* At exit: this process's promises end. */
TG_HIDDEN void tg_ledger_release(void);
TG_HIDDEN void tg_ledger_after_fork_in_child(void);

#endif
