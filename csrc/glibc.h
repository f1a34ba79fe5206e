/* glibc.c: the running glibc's optional facilities and the loader's view of
 * pthread_create (state; calls config.c, error.c). */
#ifndef THREADGUARD_GLIBC_H
#define THREADGUARD_GLIBC_H

#include "common.h"

/* glibc's struct dl_find_object (2.35) as laid out on x86-64 and aarch64,
 * with room to spare: the header that declares it may be older than the
 * glibc the library runs on. */
struct tg_dl_find_object {
    unsigned long long flags;
    void *map_start;
    void *map_end;
    struct link_map *link_map;
    void *eh_frame;
    unsigned long long reserved[16];
};

typedef int (*tg_find_object_fn)(void *, struct tg_dl_find_object *);
typedef const char *(*tg_errno_text_fn)(int);
typedef int (*tg_getattr_fn)(pthread_attr_t *);
typedef int (*tg_setattr_fn)(const pthread_attr_t *);

/* Facilities newer than the 2.17 baseline, NULL where the running glibc
 * lacks them (and until tg_glibc_complete has looked them up).  find_object
 * is read and written atomically: lookups start before it is known. */
struct tg_glibc {
    char version[24];              /* gnu_get_libc_version() */
    int pretend_minor;             /* THREADGUARD_TEST_GLIBC, -1: not set */
    tg_find_object_fn find_object; /* _dl_find_object, 2.35 */
    tg_errno_text_fn errno_name;   /* strerrorname_np, 2.32 */
    tg_errno_text_fn errno_desc;   /* strerrordesc_np, 2.32 */
    tg_getattr_fn getattr_default; /* pthread_getattr_default_np, 2.18 */
    tg_setattr_fn setattr_default; /* pthread_setattr_default_np, 2.18 */
    long long stack_at_start;      /* glibc's default stack, from RLIMIT_STACK */
    long long stack_override;      /* < 2.18: stack for threads without attributes */
};

TG_HIDDEN extern struct tg_glibc tg_glibc;
/* The version and the stack at start: async-signal-safe, initialisation's
 * first step. */
TG_HIDDEN void tg_glibc_init(void);
/* The facilities, looked up with dlvsym (the loader's lock, maybe malloc):
 * initialisation's second step, outside signal handlers. */
TG_HIDDEN void tg_glibc_complete(void);
/* The thread stack size new threads get by default, in bytes. */
TG_HIDDEN long long tg_default_stack(void);
/* Make bytes the default thread stack; 0 on success. */
TG_HIDDEN int tg_glibc_set_default_stack(long long bytes);
/* The attributes to create a thread with: attr itself, or, where the
 * default stack cannot be changed (glibc < 2.18) and the caller gave none,
 * scratch filled with the chosen stack.  Never allocates. */
TG_HIDDEN const pthread_attr_t *tg_glibc_attr_for(const pthread_attr_t *attr,
                                                  pthread_attr_t *scratch);
/* "EAGAIN" and "Resource temporarily unavailable", untranslated; NULL for
 * an errno neither glibc nor the fallback table knows.  Never allocate. */
TG_HIDDEN const char *tg_errno_name(int error);
TG_HIDDEN const char *tg_errno_text(int error);
/* The facilities the running glibc lacks, each with the fallback used
 * ("_dl_find_object (2.35): dladdr1"), into lines (at most max); returns
 * how many. */
TG_HIDDEN int tg_glibc_fallbacks(const char **lines, int max);
/* Promises that cannot be kept on the running glibc, one line each, into
 * lines (at most max); returns how many. */
TG_HIDDEN int tg_glibc_limitations(const char **lines, int max);

/* ---- the loader: which pthread_create is whose ---------------------- */

typedef int (*tg_create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

/* The pthread_create to call on to: the next one in the lookup chain after
 * this library (libc's, or another interposer's); NULL without one. */
TG_HIDDEN tg_create_fn tg_real_create(void);
/* Import mode: call on to the pthread_create symbol lookup gives the
 * process, rather than the next one after this library. */
TG_HIDDEN void tg_use_process_create(void);
/* 1 when addr lies in this copy of the library. */
TG_HIDDEN int tg_in_this_library(const void *addr);
/* 1 when symbol lookup reaches this library's pthread_create before
 * libc's (preloaded, or behind an interceptor such as a sanitizer's). */
TG_HIDDEN int tg_interposing(void);

#endif
