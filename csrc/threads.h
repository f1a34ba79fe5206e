/* threads.c: thread accounting: start records, exit counting, adopted
 * threads and the counting mode (state; calls registry.c, glibc.c, procfs.c, publish.c). */
#ifndef THREADGUARD_THREADS_H
#define THREADGUARD_THREADS_H

#include "common.h"

/* How threads are being counted (enum threadguard_mode): import mode as
 * recorded by got.c, else preload when this library's pthread_create is
 * the process's, else off. */
TG_HIDDEN int tg_mode(void);
/* What got.c recorded (THREADGUARD_MODE_OFF until it records one). */
TG_HIDDEN int tg_recorded_mode(void);
TG_HIDDEN void tg_set_mode(int mode);

/* ---- start records and exit counting -------------------------------- */

/* A thread starts through tg_trampoline with a record that carries the
 * creator's routine and argument; records come from a fixed pool (and
 * mmap'ed chunks past it), never from the heap. */
struct tg_start_record;
/* NULL when no record can be had (the thread is then started uncounted). */
TG_HIDDEN struct tg_start_record *tg_record_claim(unsigned slot, unsigned site,
                                                  void *(*routine)(void *), void *arg);
/* For a creation that did not happen. */
TG_HIDDEN void tg_record_release(struct tg_start_record *record);
/* The start routine for a claimed record (the argument): counts the
 * thread's exit on return, pthread_exit and cancellation. */
TG_HIDDEN void *tg_trampoline(void *record);
/* Count a thread of library `slot` as live; gives the live counts after. */
TG_HIDDEN void tg_count_start(unsigned slot, long long *live_total, long long *live_lib);
TG_HIDDEN void tg_count_exit(unsigned slot);
/* A thread of library `slot` started: counted as created, and its high and
 * growth raised to live_lib. */
TG_HIDDEN void tg_count_created(unsigned slot, long long live_lib);

/* ---- Python start sites ---------------------------------------------- */

/* The Python start site (its row + 1; 0: none) of the threads this thread
 * starts from now on; gives the one it replaces. */
TG_HIDDEN unsigned tg_python_site_set(unsigned site);
TG_HIDDEN unsigned tg_python_site_now(void);
enum { TG_SITE_STARTING, TG_SITE_STARTED, TG_SITE_FAILED, TG_SITE_ENDED };
/* Count a thread of a site (0: none, nothing counted). */
TG_HIDDEN void tg_site_count(unsigned site, int event);

/* Tasks of the process when threadguard started, the main thread not
 * included (-1 if unreadable; 0 in a forked child). */
TG_HIDDEN long long tg_tasks_at_start(void);
TG_HIDDEN int tg_is_forked_child(void);
/* 1 in a thread whose exit has been counted (it is in its last moments). */
TG_HIDDEN int tg_exit_counted_here(void);

/* ---- adopted threads (import mode) ---------------------------------- */

/* A thread found in /proc/self/task that started before any patch could
 * see it (a constructor's pool during a dlopen): counted for `slot` until
 * it is gone. */
TG_HIDDEN void tg_adopt(int tid, unsigned slot);
/* Count the exits of adopted threads that have ended. */
TG_HIDDEN void tg_reap_adopted(void);

/* ---- lifecycle hooks ------------------------------------------------- */

TG_HIDDEN void tg_threads_init(void);
/* In a forked child: the parent's threads and records are not here. */
TG_HIDDEN void tg_threads_after_fork_in_child(void);

#endif
