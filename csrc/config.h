/* config.c: the THREADGUARD_* settings, parsed once (state; calls error.c). */
#ifndef THREADGUARD_CONFIG_H
#define THREADGUARD_CONFIG_H

#include "common.h"

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
    TG_SET_PUBLISH,
    TG_SET_OUTPUT,
    TG_SET_DISABLE,
    TG_SET_SKIP,
    TG_SETTING_COUNT
};

#define TG_MIN_STACK (256 * TG_KIB)
#define TG_NPROC_MAX (-2LL)

struct tg_config {
    long long max_threads;  /* -1: no budget */
    long long pool_threads; /* -1: not set */
    int on_limit;
    long long stack;  /* bytes; 0: not set */
    long long arenas; /* 0: not set */
    long long nproc;  /* -1: not set; TG_NPROC_MAX: the hard limit */
    int debug;
    int import_off;  /* THREADGUARD_IMPORT=off: import threadguard patches nothing */
    int observe;     /* THREADGUARD_OBSERVE=1: count and report, change nothing */
    int publish_off; /* THREADGUARD_PUBLISH=0: no file for `threadguard top` */
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
 * stderr (or where THREADGUARD_OUTPUT says) and the default. */
TG_HIDDEN void tg_config_load(void);
/* Whether threadguard must leave this process alone: secure execution
 * (setuid, setgid, file capabilities), THREADGUARD_DISABLE, or the program
 * named in THREADGUARD_SKIP.  Read before anything else, says nothing (a
 * bad value there is reported by tg_config_load in processes that are not
 * left alone), async-signal-safe. */
TG_HIDDEN int tg_config_stays_out(void);
TG_HIDDEN const char *tg_setting_name(int which);
TG_HIDDEN const char *tg_source_name(int source);

/* The process environment's value of name, read from environ directly so
 * that threadguard's own getenv() answers never feed back into it. */
TG_HIDDEN const char *tg_environ_get(const char *name);

/* limit() in Python: set the pool size for libraries that start from now
 * on (as THREADGUARD_POOL_THREADS); -1 clears it.  Returns the previous
 * value, or -2 (with the error set) for a value out of range. */
TG_HIDDEN long long tg_set_pool_threads(long long threads);

#endif
