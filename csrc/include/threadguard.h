/*
 * threadguard: count, attribute and budget the threads of a process.
 *
 * libthreadguard.so wraps pthread_create when it is preloaded
 * (LD_PRELOAD=libthreadguard.so CMD), or, opened late, once
 * threadguard_import_mode() has patched the process's GOT slots (what
 * `import threadguard` does).  This header is its whole public
 * interface.  Preloaded, the library also defines getenv (to size thread
 * pools when OpenBLAS, libgomp, MKL, BLIS and torch read their
 * *_NUM_THREADS variables), omp_set_num_threads, openblas_set_num_threads,
 * mkl_set_num_threads and torch's at::set_num_threads /
 * at::set_num_interop_threads (clamped, then forwarded to the definition
 * the caller would have reached); those are not meant to be called
 * directly.  Only ints, `const char *` and opaque pointers cross it, so the
 * Python package can open the library with cffi in ABI mode.
 *
 * Every function here is safe to call from any thread at any time; none of
 * them aborts the host process.  Functions returning int give 0 on success
 * and a THREADGUARD_E* code otherwise; threadguard_last_error() then holds a
 * message for the calling thread.
 */
#ifndef THREADGUARD_H
#define THREADGUARD_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(THREADGUARD_BUILDING)
#define THREADGUARD_API __attribute__((visibility("default")))
#else
#define THREADGUARD_API
#endif

#define THREADGUARD_VERSION_STRING "0.1.0"

/* Error codes. */
enum threadguard_error {
    THREADGUARD_OK = 0,
    THREADGUARD_EINVAL = 1,      /* a bad argument (null pointer, row out of range) */
    THREADGUARD_ENOMEM = 2,      /* a snapshot could not be allocated */
    THREADGUARD_EUNSUPPORTED = 3 /* not possible on this platform */
};

/* How threads are being counted, from threadguard_mode(). */
enum threadguard_mode {
    THREADGUARD_MODE_OFF = 0,     /* not counting: not preloaded, import mode not enabled */
    THREADGUARD_MODE_PRELOAD = 1, /* preloaded: this library's pthread_create is the process's */
    THREADGUARD_MODE_IMPORT = 2   /* loaded late; GOT slots of loaded objects are patched */
};

/* Counter fields, for threadguard_stats_get(). */
enum threadguard_field {
    THREADGUARD_CREATED = 0,   /* pthread_create calls that succeeded */
    THREADGUARD_LIVE = 1,      /* created and not yet exited */
    THREADGUARD_PEAK = 2,      /* highest LIVE seen */
    THREADGUARD_FAILED = 3,    /* pthread_create calls that failed */
    THREADGUARD_DENIED = 4,    /* creations refused by threadguard itself */
    THREADGUARD_LAST_ERRNO = 5 /* errno of the last failure, 0 if none */
};
#define THREADGUARD_FIELD_COUNT 6

/* The row index of the process-wide totals in threadguard_stats_get(). */
#define THREADGUARD_TOTAL_ROW (-1)

/* An immutable copy of every counter, taken at one moment. */
typedef struct threadguard_stats threadguard_stats;

/* "0.1.0": the library's version. */
THREADGUARD_API const char *threadguard_version(void);

/* The message of the last failed call on this thread ("" if none). */
THREADGUARD_API const char *threadguard_last_error(void);

/* 1 when the process's pthread_create is this library's (it was preloaded),
 * so threads are being counted; 0 otherwise. */
THREADGUARD_API int threadguard_interposing(void);

/* Count without a preload: point the pthread_create and dlopen GOT slots
 * of every loaded object at this library, and of every object loaded
 * later through dlopen (which keeps the caller's RUNPATH/$ORIGIN search).
 * Threads that library constructors start during a dlopen are adopted from
 * /proc/self/task and attributed to the library loaded.  Does nothing when
 * the library is preloaded, or when THREADGUARD_IMPORT=off (a user's way
 * to keep threadguard out of a process's GOT).  Safe to call more than once.
 * THREADGUARD_EUNSUPPORTED on architectures other than x86-64 and aarch64. */
THREADGUARD_API int threadguard_import_mode(void);

/* Size every pool that starts from now on to threads (1 to 4096), as
 * THREADGUARD_POOL_THREADS does (still lowered to fit the headroom); -1
 * clears it.  Returns the previous value (-1 for none), or -2 with
 * THREADGUARD_EINVAL for a bad value. */
THREADGUARD_API long long threadguard_set_pool_threads(long long threads);

/* The sizing policy as JSON: the reserve of threads kept free, the largest
 * pool, the address-space figures (arena, OpenBLAS buffer, the share kept
 * for data as its divisor), the names of the limits and the variables
 * answered as pool sizes.  Same contract as threadguard_report_json. */
THREADGUARD_API long long threadguard_policy_json(char *buffer, size_t size);

/* Address space one new thread of this library kind ("openblas", "openmp",
 * ...) costs with this stack: the stack, a guard page, a malloc arena
 * unless arenas_capped, and OpenBLAS's 32 MiB buffer.  A negative
 * THREADGUARD_E* code for a NULL kind or a stack below 0. */
THREADGUARD_API long long threadguard_thread_cost(const char *kind, long long stack,
                                                  int arenas_capped);

/* Bytes new threads may take under an address-space limit as_limit with
 * vmsize mapped and `arenas` capped malloc arenas still to come (0 when
 * arenas are not capped): what is left, less the share kept for data.  A
 * negative THREADGUARD_E* code for a figure below 0. */
THREADGUARD_API long long threadguard_address_space_usable(long long as_limit, long long vmsize,
                                                           int arenas);

/* Record, for the report, a pool size that the caller set and cannot put
 * back: `what` ("set_num_interop_threads()") lowered from `was` to
 * value, in the row of the library that address lies in (any
 * address inside it).  threadguard.limit() calls it for torch's inter-op
 * pool, which torch lets a process size once.  THREADGUARD_EINVAL for a
 * NULL address or name or a size below 1. */
THREADGUARD_API int threadguard_note_unrestored(const void *address, const char *what,
                                                long long value, long long was);

/* Python threads by the Python code that started them.  The Python
 * package names a start site (`where`: "path:line in function (via)")
 * and gets its id, 1 or more; ids past the table's capacity share one row,
 * "(other sites)".  0 when where is NULL or threadguard is not initialised.
 * Around Thread.start it calls threadguard_python_site_set(id): the
 * threads the calling thread creates until the next call are counted
 * under that site (0: none) as well as under their library; it returns
 * the id it replaces. */
THREADGUARD_API int threadguard_python_site(const char *where);
THREADGUARD_API int threadguard_python_site_set(int site);

/* The active enum threadguard_mode. */
THREADGUARD_API int threadguard_mode(void);

/* GOT slots rewritten so far by import mode. */
THREADGUARD_API long long threadguard_import_slots(void);

/* Take a snapshot into *out; free it with threadguard_stats_free(). */
THREADGUARD_API int threadguard_stats_take(threadguard_stats **out);
THREADGUARD_API void threadguard_stats_free(threadguard_stats *stats);

/* Number of library rows in the snapshot (0 or more). */
THREADGUARD_API int threadguard_stats_rows(const threadguard_stats *stats);

/* Row details: short file name, full path, and the library's kind
 * ("python", "openblas", "openmp", "mkl", "torch", "main", "system", "other",
 * "unknown").  NULL when row is out of range. */
THREADGUARD_API const char *threadguard_stats_name(const threadguard_stats *stats, int row);
THREADGUARD_API const char *threadguard_stats_path(const threadguard_stats *stats, int row);
THREADGUARD_API const char *threadguard_stats_kind(const threadguard_stats *stats, int row);

/* One counter of one row, or of the totals with THREADGUARD_TOTAL_ROW.
 * -1 when row or field is out of range. */
THREADGUARD_API long long threadguard_stats_get(const threadguard_stats *stats, int row, int field);

/* Tasks listed in /proc/self/task when the snapshot was taken, or -1 if it
 * could not be read. */
THREADGUARD_API long long threadguard_stats_tasks(const threadguard_stats *stats);

/* Threads alive that threadguard did not see created (started before it
 * took over, or by a path that bypasses the wrapper): tasks - 1 - live,
 * never below 0; -1 when tasks is unknown. */
THREADGUARD_API long long threadguard_stats_untracked(const threadguard_stats *stats);

/* Threads besides the main one in /proc/self/task when threadguard
 * initialised in this process (or -1 if unreadable). */
THREADGUARD_API long long threadguard_stats_tasks_at_start(const threadguard_stats *stats);

/* The report as JSON (the same document THREADGUARD_REPORT=PATH.json
 * writes at exit: counters, settings, pool sizes and headroom, measured
 * now).  Writes at most size bytes including the terminating NUL and
 * returns the full length, so a caller can retry with length + 1 bytes;
 * a negative THREADGUARD_E* code on error. */
THREADGUARD_API long long threadguard_report_json(char *buffer, size_t size);

/* The file this process publishes its counters in, for `threadguard top`
 * and `threadguard stats --pid` (/dev/shm/threadguard-UID/PID.START.live);
 * "" when it publishes none (THREADGUARD_PUBLISH=0, secure execution, no
 * usable /dev/shm). */
THREADGUARD_API const char *threadguard_published_path(void);

/* Another guarded process's report, read from the file it publishes: the
 * same JSON document as threadguard_report_json (its "headroom" "now" is
 * empty: only the process can measure it), with the same length
 * convention.  The file is only read, never mapped or written.  A negative
 * THREADGUARD_E* code on error: THREADGUARD_EINVAL when the file is not a
 * process file this version can read (threadguard_last_error() says why in
 * one line, naming the path). */
THREADGUARD_API long long threadguard_read_published(const char *path, char *buffer, size_t size);

/* 0 when value is valid for the THREADGUARD_* setting name; otherwise
 * THREADGUARD_EINVAL, and threadguard_last_error() says what is expected
 * (the line the library prints when it meets that value at start). */
THREADGUARD_API int threadguard_check_setting(const char *name, const char *value);

#ifdef __cplusplus
}
#endif

#endif /* THREADGUARD_H */
