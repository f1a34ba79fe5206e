/* objects.c: which loaded object holds an address, answered without the
 * loader's lock (see the file's comment for the rules). */
#ifndef THREADGUARD_OBJECTS_H
#define THREADGUARD_OBJECTS_H

#include "common.h"

/* Objects the table holds; more are counted in tg_objects_overflow(). */
#define TG_OBJECTS_MAX 1024

/* The object that holds pc: its load address and its link-map name ("" for
 * the main program).  0 when found, -1 when the table has no fresh answer.
 * Lock-free and allocation-free: safe in a signal handler. */
TG_HIDDEN int tg_objects_find(const void *pc, uintptr_t *base, const char **path);

/* The same from the loader's own list, read without its lock.  Used only
 * where the table has no answer (an object whose constructor runs inside
 * dlopen, before anything outside a signal handler could refresh the
 * table); gives up (-1) while a dlclose is under way. */
TG_HIDDEN int tg_objects_walk(const void *pc, uintptr_t *base, const char **path);

/* Rebuild the table from dl_iterate_phdr.  Takes the loader's lock: never
 * from getenv or anything a signal handler reaches.  Returns 0 when the
 * table is fresh afterwards. */
TG_HIDDEN int tg_objects_refresh(void);

/* Whether the table misses loads or unloads since it was built: asks the
 * loader (its lock, briefly).  Not for signal context either. */
TG_HIDDEN int tg_objects_stale(void);

/* Around every dlclose threadguard sees: the table and the list walk stop
 * trusting what they hold until the next refresh. */
TG_HIDDEN void tg_objects_unload_begin(void);
TG_HIDDEN void tg_objects_unload_end(void);
/* Bumped by each unload: callers' caches keyed on it (the setters'). */
TG_HIDDEN unsigned tg_objects_unload_generation(void);

/* Whether this library comes before libc in the global scope (it then
 * interposes libc's functions), read from the loader's list without its
 * lock: called at initialisation, which may run in a signal handler. */
TG_HIDDEN int tg_objects_before_libc(void);

TG_HIDDEN long long tg_objects_overflow(void);

#endif
