/* The public functions that may be a program's first call into the
 * library: each initialises it, then asks the module that knows.  (The
 * others - threadguard_stats_* accessors, threadguard_check_setting,
 * threadguard_last_error, threadguard_import_mode - live with their module:
 * they read a snapshot or a string, or initialise themselves.)
 *
 * Layer: entry point.  Calls lifecycle.c (tg_init), glibc.c, threads.c,
 * stats.c, report.c, publish.c and config.c. */
#include "common.h"

#include "config.h"
#include "glibc.h"
#include "lifecycle.h"
#include "publish.h"
#include "report.h"
#include "stats.h"
#include "threads.h"

THREADGUARD_API const char *threadguard_version(void) { return THREADGUARD_VERSION_STRING; }

THREADGUARD_API int threadguard_interposing(void) {
    tg_init();
    return tg_interposing();
}

THREADGUARD_API int threadguard_mode(void) {
    tg_init();
    return tg_mode();
}

THREADGUARD_API int threadguard_stats_take(threadguard_stats **out) {
    tg_init();
    return tg_stats_take(out);
}

THREADGUARD_API long long threadguard_report_json(char *buffer, size_t size) {
    tg_init();
    return tg_report_json(buffer, size);
}

THREADGUARD_API const char *threadguard_published_path(void) {
    tg_init();
    return tg_publish_path();
}

THREADGUARD_API long long threadguard_read_published(const char *path, char *buffer, size_t size) {
    tg_init();
    return tg_report_published_json(path, buffer, size);
}

/* limit() in Python (the same as THREADGUARD_POOL_THREADS, from now on). */
THREADGUARD_API long long threadguard_set_pool_threads(long long threads) {
    tg_init();
    return tg_set_pool_threads(threads);
}
