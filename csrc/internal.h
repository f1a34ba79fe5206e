/* Declarations shared between threadguard's translation units.  Nothing here
 * is exported: the library is built with -fvisibility=hidden. */
#ifndef THREADGUARD_INTERNAL_H
#define THREADGUARD_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "threadguard.h"

#define TG_HIDDEN __attribute__((visibility("hidden")))

#define TG_KIB 1024LL
#define TG_MIB (1024LL * TG_KIB)
#define TG_GIB (1024LL * TG_MIB)

/* ---- shared-object names -------------------------------------------- */

static inline const char *tg_base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* "s" after a count that is not 1: "1 thread", "2 threads". */
static inline const char *tg_s(long long n) { return n == 1 ? "" : "s"; }

static inline int tg_starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Sanitizer runtimes intercept pthread_create in front of us and call on
 * through dlsym. */
static inline int tg_is_sanitizer_runtime(const char *name) {
    return tg_starts_with(name, "libasan") || tg_starts_with(name, "libtsan") ||
           tg_starts_with(name, "libubsan") || tg_starts_with(name, "liblsan") ||
           tg_starts_with(name, "libhwasan");
}

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
    TG_KIND_BLIS,
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
    /* Pool workers threadguard sized this library for and that it has not
     * started yet are promised: later pools must leave room for them. */
    _Atomic long long promised;
    _Atomic int warned; /* over budget, warned once */
    /* The stack threadguard gives this pool's workers (0: glibc's): set only
     * when RLIMIT_AS leaves no room for the pool at the default stack. */
    _Atomic long long pool_stack;
};

TG_HIDDEN extern struct tg_lib tg_libs[TG_MAX_LIBS];
TG_HIDDEN extern struct tg_counters tg_total;
/* Lookups that found the table full and fell back to (unknown). */
TG_HIDDEN extern _Atomic long long tg_registry_overflow;

TG_HIDDEN void tg_registry_init(void);
/* The slot of the library that asked for a thread, given the return address
 * of the pthread_create call.  Walks past system libraries (std::thread). */
TG_HIDDEN unsigned tg_creator_slot(void *return_address);
TG_HIDDEN const char *tg_kind_name(int kind);
/* The slot of the object holding the return address itself, without
 * unwinding past system libraries (never loads anything). */
TG_HIDDEN unsigned tg_caller_slot(void *return_address);
/* The slot of the library holding addr (claimed if new). */
TG_HIDDEN unsigned tg_slot_for_address(const void *addr);
/* Zero every counter (after fork); library identities are kept. */
TG_HIDDEN void tg_registry_reset_counters(void);

/* ---- counters (interpose.c) ----------------------------------------- */

TG_HIDDEN long long tg_tasks_at_start(void);
/* Incremented in a forked child; threads of an older generation do not
 * count their exit. */
TG_HIDDEN extern _Atomic unsigned tg_fork_generation;
TG_HIDDEN int tg_is_forked_child(void);
/* 1 in a thread whose exit has been counted (it is in its last moments). */
TG_HIDDEN int tg_exit_counted_here(void);
/* Initialise once; 1 when ready, 0 when the caller must fall through to
 * the real function (re-entered during initialisation). */
TG_HIDDEN int tg_init(void);
/* Threads created while initialisation ran, started uncounted. */
TG_HIDDEN extern _Atomic long long tg_started_during_init;
/* Start records mapped beyond the static 1024 (threads started at once). */
TG_HIDDEN extern _Atomic long long tg_records_mapped;
/* Threads started without a record (no memory to map one): not counted. */
TG_HIDDEN extern _Atomic long long tg_started_uncounted;
/* This copy's own pthread_create wrapper (GOT slots are pointed at it). */
TG_HIDDEN int tg_own_pthread_create(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
/* Import mode: call on to the pthread_create symbol lookup gives the
 * process, rather than the next one after this library. */
TG_HIDDEN void tg_use_process_create(void);

/* ---- import mode (got.c) -------------------------------------------- */

/* Count the exits of threads adopted from /proc/self/task. */
TG_HIDDEN void tg_got_reap(void);
TG_HIDDEN void tg_got_after_fork_in_child(void);

/* ---- /proc helpers (procfs.c) --------------------------------------- */

/* Entries of /proc/self/task, without allocating; -1 if unreadable. */
TG_HIDDEN long long tg_count_tasks(void);
/* The thread ids in /proc/self/task into tids, sorted ascending; -1 if
 * unreadable or there are more than max. */
TG_HIDDEN int tg_list_tasks(int *tids, int max);
/* Path of the running executable into buf ("" if unknown). */
TG_HIDDEN void tg_exe_path(char *buf, size_t size);

/* ---- configuration (config.c) --------------------------------------- */

enum tg_report_mode { TG_REPORT_OFF = 0, TG_REPORT_STDERR, TG_REPORT_JSON };
enum tg_on_limit { TG_ON_LIMIT_WARN = 0, TG_ON_LIMIT_DENY };
/* Where a value came from, as the report says it. */
/* LIBRARY: a setter a threaded library called on its own (libtorch_cpu's
 * omp_set_num_threads), not the program. */
enum tg_source { TG_SOURCE_DEFAULT = 0, TG_SOURCE_USER, TG_SOURCE_THREADGUARD, TG_SOURCE_LIBRARY };

enum tg_setting_id {
    TG_SET_MAX_THREADS = 0,
    TG_SET_POOL_THREADS,
    TG_SET_ON_LIMIT,
    TG_SET_STACK,
    TG_SET_ARENAS,
    TG_SET_NPROC,
    TG_SET_REPORT,
    TG_SET_DEBUG,
    TG_SET_IMPORT,
    TG_SET_OBSERVE,
    TG_SETTING_COUNT
};

#define TG_MIN_STACK (256 * TG_KIB)
#define TG_NPROC_MAX (-2LL)

struct tg_config {
    long long max_threads;  /* -1: no budget */
    long long pool_threads; /* -1: not set */
    int on_limit;
    long long stack; /* bytes; 0: not set */
    long long arenas; /* 0: not set */
    long long nproc; /* -1: not set; TG_NPROC_MAX: the hard limit */
    int debug;
    int import_off; /* THREADGUARD_IMPORT=off: import threadguard patches nothing */
    int observe;    /* THREADGUARD_OBSERVE=1: count and report, change nothing */
    int report_mode;
    char report_path[1024];
    /* Per setting: the value as given (printable) and whether it was used. */
    char raw[TG_SETTING_COUNT][64];
    int source[TG_SETTING_COUNT];
    int rejected[TG_SETTING_COUNT];
};

TG_HIDDEN extern struct tg_config tg_config;
/* THREADGUARD_POOL_THREADS, or what limit() set since (-1: none). */
static inline long long tg_pool_threads(void) {
    return __atomic_load_n(&tg_config.pool_threads, __ATOMIC_ACQUIRE);
}
/* Parse every THREADGUARD_* variable once; bad values get one line on
 * stderr and the default. */
TG_HIDDEN void tg_config_load(void);
TG_HIDDEN const char *tg_setting_name(int which);
TG_HIDDEN const char *tg_source_name(int source);

/* The process environment's value of name, read from environ directly so
 * that threadguard's own getenv() answers never feed back into it. */
TG_HIDDEN const char *tg_environ_get(const char *name);

/* ---- headroom (limits.c) -------------------------------------------- */

/* Figures are -1 where unknown or unlimited. */
struct tg_headroom {
    long long nproc_soft, nproc_hard, uid_tasks, nproc_free;
    long long reserved_others; /* workers other guarded processes promised (the ledger) */
    long long pids_max, pids_current, pids_free;
    long long threads_max, threads_total, threads_free;
    long long as_limit, vmsize, thread_cost, as_free_threads;
    long long budget, process_threads, budget_free;
    long long free;      /* the smallest of the *_free figures */
    const char *limit;   /* which limit gave it ("none") */
    long long cpus_affinity, cpus_quota, slurm_cpus_per_task, slurm_cpus_on_node,
        omp_thread_limit;
    long long cpus;        /* the CPU allocation: smallest of the above */
    const char *cpus_from; /* which one gave it */
};

/* Measure every limit now.  kind selects the per-thread address-space cost
 * (an OpenBLAS thread also maps a buffer). */
TG_HIDDEN void tg_headroom_measure(struct tg_headroom *h, int kind);
/* The same, for threads with the given stack (bytes) rather than the default. */
TG_HIDDEN void tg_headroom_measure_stack(struct tg_headroom *h, int kind, long long stack);
/* The thread stack size new threads get by default, in bytes. */
TG_HIDDEN long long tg_default_stack(void);
/* True when malloc arenas are capped (by threadguard or the user). */
TG_HIDDEN int tg_arenas_capped(void);

/* ---- pool shaping (shaping.c) --------------------------------------- */

/* Apply stack, arenas and RLIMIT_NPROC settings; set variables read through
 * Python's os.environ.  Runs once, at initialisation. */
TG_HIDDEN void tg_shaping_init(void);

#define TG_MAX_DECISIONS 256

struct tg_decision {
    _Atomic int ready;
    unsigned slot;       /* the library that asked */
    char library[64];    /* its name */
    char variable[40];   /* OPENBLAS_NUM_THREADS, omp_set_num_threads(), ... */
    long long value;     /* what it got; -1 = passed through unchanged */
    long long requested; /* the user's value, -1 = none */
    int source;          /* enum tg_source */
    int lowered;         /* the value asked for was lowered */
    const char *lowered_by; /* THREADGUARD_POOL_THREADS or the headroom's limit; NULL */
    char caller[64];     /* the library that made the call (a setter's call site) */
    long long free;      /* headroom used */
    const char *limit;
    long long cpus;
    _Atomic long long count; /* how many times this same decision was made */
};

TG_HIDDEN extern struct tg_decision tg_decisions[TG_MAX_DECISIONS];
TG_HIDDEN extern _Atomic int tg_decision_count;
/* Distinct decisions that found the table full. */
TG_HIDDEN extern _Atomic long long tg_decisions_dropped;
/* The values threadguard applied itself at start. */
struct tg_applied {
    long long stack;
    int stack_source;
    /* Pool workers' stack where RLIMIT_AS required a smaller one (0: none). */
    _Atomic long long pool_stack;
    long long arenas;
    int arenas_source;
    long long nproc_soft;
    int nproc_source;
};
TG_HIDDEN extern struct tg_applied tg_applied;
TG_HIDDEN extern struct tg_headroom tg_headroom_at_start;

/* ---- failed creations (failures.c) ---------------------------------- */

/* Each failed pthread_create is recorded with the limits measured at that
 * moment, so a report can say which limit was really hit (OpenBLAS blames
 * RLIMIT_NPROC for any EAGAIN, but under RLIMIT_AS the stack mmap failed). */
#define TG_MAX_FAILURES 64

struct tg_failure {
    _Atomic int ready;
    unsigned slot;      /* the library that asked */
    int error;          /* what pthread_create returned */
    long long thread;   /* the library's nth thread (created + failed, this one included) */
    long long stack;    /* bytes of stack the new thread needed (0: caller's own stack) */
    struct tg_headroom h;
    const char *cause;  /* "RLIMIT_NPROC", "cgroup pids.max", "RLIMIT_AS", ... */
};

TG_HIDDEN extern struct tg_failure tg_failures[TG_MAX_FAILURES];
TG_HIDDEN extern _Atomic int tg_failure_count; /* may exceed TG_MAX_FAILURES */
/* Record a failed creation; writes the failures file when a JSON report is
 * on.  Never allocates. */
TG_HIDDEN void tg_record_failure(unsigned slot, int error, const pthread_attr_t *attr,
                                 long long thread);
/* Which limit explains error, given the figures measured right after it. */
TG_HIDDEN const char *tg_failure_cause(int error, long long stack, const struct tg_headroom *h);
/* Rewrite PATH.failures.json for THREADGUARD_REPORT=PATH.json now: a
 * process that dies of the failure (OpenBLAS raises SIGINT, libgomp exits)
 * may never write its report at exit. */
TG_HIDDEN void tg_report_failures_now(void);
/* In a forked child: the parent's failures are the parent's. */
TG_HIDDEN void tg_failures_reset(void);

/* ---- the per-user headroom ledger (ledger.c) ------------------------ */

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
/* Publish this process's promised, unstarted workers. */
TG_HIDDEN void tg_ledger_update(void);
/* At exit: this process's promises end. */
TG_HIDDEN void tg_ledger_release(void);
TG_HIDDEN void tg_ledger_after_fork_in_child(void);

/* ---- the running glibc (glibc.c) ------------------------------------ */

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
 * lacks them.  Written once by tg_glibc_init, before anything reads them. */
struct tg_glibc {
    char version[24];                 /* gnu_get_libc_version() */
    int pretend_minor;                /* THREADGUARD_TEST_GLIBC, -1: not set */
    tg_find_object_fn find_object;    /* _dl_find_object, 2.35 */
    tg_errno_text_fn errno_name;      /* strerrorname_np, 2.32 */
    tg_errno_text_fn errno_desc;      /* strerrordesc_np, 2.32 */
    tg_getattr_fn getattr_default;    /* pthread_getattr_default_np, 2.18 */
    tg_setattr_fn setattr_default;    /* pthread_setattr_default_np, 2.18 */
    long long stack_at_start;         /* glibc's default stack, from RLIMIT_STACK */
    long long stack_override;         /* < 2.18: stack for threads without attributes */
};

TG_HIDDEN extern struct tg_glibc tg_glibc;
TG_HIDDEN void tg_glibc_init(void);
/* (tg_default_stack, declared with the headroom, is defined in glibc.c.) */
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

/* ---- errors (error.c) ----------------------------------------------- */

TG_HIDDEN int tg_set_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
TG_HIDDEN void tg_clear_error(void);
/* One line on stderr, prefixed "threadguard: ", without allocating.  Never
 * raises SIGPIPE; silent once fd 2 is no longer the stderr of the start. */
TG_HIDDEN void tg_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Record which file fd 2 is (at initialisation). */
TG_HIDDEN void tg_stderr_remember(void);
/* 1 while fd 2 is still the file it was at initialisation. */
TG_HIDDEN int tg_stderr_unchanged(void);
/* Write all of buf to fd without raising SIGPIPE; 0 or the errno. */
TG_HIDDEN int tg_write_quietly(int fd, const char *buf, size_t len);
/* tg_write_quietly to fd 2, only while it is the stderr of the start. */
TG_HIDDEN int tg_write_stderr(const char *buf, size_t len);

/* ---- report (report.c) ---------------------------------------------- */

TG_HIDDEN void tg_report_at_exit(void);
/* A snapshot in static storage, for the exit report (no heap needed). */
TG_HIDDEN const threadguard_stats *tg_stats_at_exit(void);
/* The program's path, read at initialisation (after the main thread calls
 * pthread_exit, /proc/self/exe can no longer be read). */
TG_HIDDEN const char *tg_program_path(void);

/* Raise *peak to at least v. */
static inline void tg_raise_peak(_Atomic long long *peak, long long v) {
    long long p = atomic_load_explicit(peak, memory_order_relaxed);
    while (v > p && !atomic_compare_exchange_weak_explicit(peak, &p, v, memory_order_relaxed,
                                                           memory_order_relaxed)) {
    }
}

#endif
