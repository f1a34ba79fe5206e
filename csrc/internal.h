/* Declarations shared between threadguard's translation units.  Nothing here
 * is exported: the library is built with -fvisibility=hidden. */
#ifndef THREADGUARD_INTERNAL_H
#define THREADGUARD_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "threadguard.h"

#define TG_HIDDEN __attribute__((visibility("hidden")))

/* ---- library registry (registry.c) ---------------------------------- */

/* Fixed capacity: the create path never allocates.  Slot 0 collects
 * creators that cannot be resolved and every library past the capacity. */
#define TG_MAX_LIBS 128
#define TG_UNKNOWN_SLOT 0

enum tg_kind {
    TG_KIND_UNKNOWN = 0,
    TG_KIND_PYTHON,
    TG_KIND_OPENBLAS,
    TG_KIND_OPENMP,
    TG_KIND_MKL,
    TG_KIND_TORCH,
    TG_KIND_MAIN,
    TG_KIND_SYSTEM, /* libc, libstdc++, libgcc_s: attributed to the caller above them */
    TG_KIND_SELF,   /* threadguard itself */
    TG_KIND_OTHER
};

struct tg_counters {
    _Atomic long long created;
    _Atomic long long live;
    _Atomic long long peak;
    _Atomic long long failed;
    _Atomic long long denied;
    _Atomic int last_errno;
};

struct tg_lib {
    _Atomic uintptr_t base; /* load address (map start); 0 = free slot */
    _Atomic int ready;      /* 1 once path/name/kind are written */
    int kind;
    char path[512];
    char name[128];
    struct tg_counters c;
};

TG_HIDDEN extern struct tg_lib tg_libs[TG_MAX_LIBS];
TG_HIDDEN extern struct tg_counters tg_total;

TG_HIDDEN void tg_registry_init(void);
/* The slot of the library that asked for a thread, given the return address
 * of the pthread_create call.  Walks past system libraries (std::thread). */
TG_HIDDEN unsigned tg_creator_slot(void *return_address);
TG_HIDDEN const char *tg_kind_name(int kind);
/* Zero every counter (after fork); library identities are kept. */
TG_HIDDEN void tg_registry_reset_counters(void);

/* ---- counters (interpose.c) ----------------------------------------- */

TG_HIDDEN long long tg_tasks_at_start(void);
/* Incremented in a forked child; threads of an older generation do not
 * count their exit. */
TG_HIDDEN extern _Atomic unsigned tg_fork_generation;
TG_HIDDEN int tg_is_forked_child(void);
TG_HIDDEN void tg_init(void);

/* ---- /proc helpers (procfs.c) --------------------------------------- */

/* Entries of /proc/self/task, without allocating; -1 if unreadable. */
TG_HIDDEN long long tg_count_tasks(void);
/* Path of the running executable into buf ("" if unknown). */
TG_HIDDEN void tg_exe_path(char *buf, size_t size);

/* ---- configuration (config.c) --------------------------------------- */

enum tg_report_mode { TG_REPORT_OFF = 0, TG_REPORT_STDERR, TG_REPORT_JSON };

struct tg_config {
    int report_mode;
    char report_path[1024];
};

TG_HIDDEN extern struct tg_config tg_config;
/* Parse every THREADGUARD_* variable once; bad values get one line on
 * stderr and the default. */
TG_HIDDEN void tg_config_load(void);

/* ---- errors (error.c) ----------------------------------------------- */

TG_HIDDEN int tg_set_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
TG_HIDDEN void tg_clear_error(void);
/* One line on stderr, prefixed "threadguard: ", without allocating. */
TG_HIDDEN void tg_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- report (report.c) ---------------------------------------------- */

TG_HIDDEN void tg_report_at_exit(void);

/* Raise *peak to at least v. */
static inline void tg_raise_peak(_Atomic long long *peak, long long v) {
    long long p = atomic_load_explicit(peak, memory_order_relaxed);
    while (v > p && !atomic_compare_exchange_weak_explicit(peak, &p, v, memory_order_relaxed,
                                                           memory_order_relaxed)) {
    }
}

#endif
