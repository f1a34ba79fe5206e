/* lifecycle.c: initialisation, fork and exit (calls the state, policy and
 * output modules; the entry points call it). */
#ifndef THREADGUARD_LIFECYCLE_H
#define THREADGUARD_LIFECYCLE_H

#include "common.h"

/* Initialise once; 1 when ready, 0 when the caller must fall through to
 * the real function (re-entered during initialisation, or another thread's
 * initialisation did not finish within a bounded wait).  Every entry point
 * (an interposed function, a public function) calls it first. */
TG_HIDDEN int tg_init(void);
/* Only initialisation's first step, which is async-signal-safe: for getenv,
 * which a signal handler may call before any constructor has run.  The
 * second step (dl* calls, malloc, glibc's locks) waits for tg_init, which
 * the constructor calls. */
TG_HIDDEN int tg_init_answer(void);

#endif
