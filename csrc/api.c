/* The public functions that may be a program's first call into the
 * library: each initialises it, then asks the module that knows.  (The
 * others - threadguard_stats_* accessors, threadguard_check_setting,
 * threadguard_last_error, threadguard_import_mode - live with their module:
 * they read a snapshot or a string, or initialise themselves.)
 *
 * Layer: entry point.  Calls lifecycle.c (tg_init), glibc.c, threads.c,
 * stats.c, report.c, publish.c, config.c, error.c, policy.c, registry.c
 * and shaping.c (a pool size Python cannot restore). */
#include "common.h"

#include "config.h"
#include "error.h"
#include "glibc.h"
#include "lifecycle.h"
#include "policy.h"
#include "publish.h"
#include "registry.h"
#include "report.h"
#include "shaping.h"
#include "stats.h"
#include "threads.h"

THREADGUARD_API const char *threadguard_version(void) { return THREADGUARD_VERSION_STRING; }

THREADGUARD_API int threadguard_interposing(void) {
    tg_init();
    return tg_interposing();
}

THREADGUARD_API int threadguard_mode(void) {
    if (!tg_init()) return THREADGUARD_MODE_OFF; /* left alone, or initialising */
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

/* The policy and the cost of a thread: pure, nothing to initialise. */
THREADGUARD_API long long threadguard_policy_json(char *buffer, size_t size) {
    if (buffer == NULL && size > 0)
        return tg_set_error(THREADGUARD_EINVAL, "threadguard_policy_json: buffer is NULL");
    return tg_policy_json(buffer, size);
}

THREADGUARD_API long long threadguard_thread_cost(const char *kind, long long stack,
                                                  int arenas_capped) {
    if (kind == NULL || stack < 0)
        return tg_set_error(THREADGUARD_EINVAL, "threadguard_thread_cost: no kind, or a stack "
                                                "below 0");
    return tg_thread_cost(strcmp(kind, "openblas") == 0, stack, arenas_capped != 0);
}

THREADGUARD_API long long threadguard_address_space_usable(long long as_limit, long long vmsize,
                                                           int arenas) {
    if (as_limit < 0 || vmsize < 0 || arenas < 0)
        return tg_set_error(THREADGUARD_EINVAL,
                            "threadguard_address_space_usable: a figure below 0");
    return tg_address_space_usable(as_limit, vmsize, arenas);
}

/* limit() in Python, for what it cannot restore: recorded as a pool
 * decision in the row of the library address lies in. */
THREADGUARD_API int threadguard_note_unrestored(const void *address, const char *what,
                                                long long value, long long was) {
    if (address == NULL || what == NULL || value < 1 || was < 1)
        return tg_set_error(THREADGUARD_EINVAL,
                            "threadguard_note_unrestored: expected a library address, a name "
                            "and two pool sizes of 1 or more");
    if (!tg_init()) return tg_set_error(THREADGUARD_EINVAL, "threadguard is not initialised");
    tg_note_unrestored(tg_slot_for_address(address), what, value, was);
    tg_report_publish_if_stale();
    tg_clear_error();
    return THREADGUARD_OK;
}

/* limit() in Python (the same as THREADGUARD_POOL_THREADS, from now on). */
THREADGUARD_API long long threadguard_set_pool_threads(long long threads) {
    tg_init();
    return tg_set_pool_threads(threads);
}

THREADGUARD_API int threadguard_python_site(const char *where) {
    if (where == NULL || !tg_init()) return 0;
    return (int)tg_site_for(where) + 1;
}

THREADGUARD_API int threadguard_python_site_set(int site) {
    return (int)tg_python_site_set(site > 0 ? (unsigned)site : 0);
}
