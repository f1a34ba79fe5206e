/* Snapshots: an immutable copy of the counters for callers outside the
 * create path (Python, the exit report).  Allocation is fine here.
 *
 * Layer: output.  Calls threads.c, registry.c, procfs.c and error.c. */
#include <stdlib.h>
#include <string.h>

#include "stats.h"

#include "error.h"
#include "procfs.h"
#include "registry.h"
#include "threads.h"

struct row {
    char name[128];
    char path[512];
    const char *kind;
    long long values[THREADGUARD_FIELD_COUNT];
    struct tg_growth_view growth;
};

struct threadguard_stats {
    int rows;
    long long tasks;
    long long tasks_at_start;
    int exiting; /* taken by a thread whose exit was already counted */
    long long total[THREADGUARD_FIELD_COUNT];
    struct row row[TG_MAX_LIBS];
};

static void read_counters(const struct tg_counters *c, long long *out) {
    out[THREADGUARD_CREATED] = atomic_load_explicit(&c->created, memory_order_relaxed);
    out[THREADGUARD_LIVE] = atomic_load_explicit(&c->live, memory_order_relaxed);
    out[THREADGUARD_PEAK] = atomic_load_explicit(&c->peak, memory_order_relaxed);
    out[THREADGUARD_FAILED] = atomic_load_explicit(&c->failed, memory_order_relaxed);
    out[THREADGUARD_DENIED] = atomic_load_explicit(&c->denied, memory_order_relaxed);
    out[THREADGUARD_LAST_ERRNO] = atomic_load_explicit(&c->last_errno, memory_order_relaxed);
    /* A thread can exit between our reads of created and live. */
    if (out[THREADGUARD_LIVE] < 0) out[THREADGUARD_LIVE] = 0;
}

void tg_growth_view_of(struct tg_growth_view *v, const struct tg_growth *g,
                       const struct tg_counters *c, long long bound) {
    v->steps = atomic_load_explicit(&g->steps, memory_order_relaxed);
    v->settled = atomic_load_explicit(&g->settled, memory_order_relaxed);
    v->leaking = tg_growth_is_leak(g, c, bound);
}

static int row_has_activity(const long long *v) {
    return v[THREADGUARD_CREATED] || v[THREADGUARD_LIVE] || v[THREADGUARD_FAILED] ||
           v[THREADGUARD_DENIED];
}

static void fill_from(threadguard_stats *s, const struct tg_counter_block *b) {
    read_counters(&b->total, s->total);
    for (unsigned i = 0; i < TG_MAX_LIBS; i++) {
        const struct tg_lib *lib = &b->libs[i];
        if (i != TG_UNKNOWN_SLOT && atomic_load_explicit(&lib->base, memory_order_acquire) == 0)
            break; /* slots fill in order */
        if (!atomic_load_explicit(&lib->ready, memory_order_acquire)) continue;
        struct row *r = &s->row[s->rows];
        read_counters(&lib->c, r->values);
        if (!row_has_activity(r->values)) continue;
        tg_growth_view_of(&r->growth, &lib->growth, &lib->c, tg_lib_pool_bound(b, lib));
        memcpy(r->name, lib->name, sizeof r->name);
        memcpy(r->path, lib->path, sizeof r->path);
        r->kind = tg_kind_name(lib->kind);
        s->rows++;
    }
}

static void fill(threadguard_stats *s) {
    tg_reap_adopted(); /* adopted threads that exited since */
    fill_from(s, tg_block);
    s->tasks = tg_count_tasks();
    s->tasks_at_start = tg_tasks_at_start();
    s->exiting = tg_exit_counted_here();
}

int tg_stats_take(threadguard_stats **out) {
    if (out == NULL) return tg_set_error(THREADGUARD_EINVAL, "threadguard_stats_take: out is NULL");
    threadguard_stats *s = calloc(1, sizeof *s);
    if (s == NULL) {
        *out = NULL;
        return tg_set_error(THREADGUARD_ENOMEM, "threadguard_stats_take: out of memory");
    }
    fill(s);
    tg_clear_error();
    *out = s;
    return THREADGUARD_OK;
}

int tg_stats_of_block(threadguard_stats **out, const struct tg_counter_block *block,
                      long long tasks, long long tasks_at_start) {
    threadguard_stats *s = calloc(1, sizeof *s);
    *out = s;
    if (s == NULL)
        return tg_set_error(THREADGUARD_ENOMEM, "threadguard_read_published: out of memory");
    fill_from(s, block);
    s->tasks = tasks;
    s->tasks_at_start = tasks_at_start;
    return THREADGUARD_OK;
}

/* The exit report's snapshot lives in static storage: at exit the heap may
 * be exhausted (malloc failing under RLIMIT_AS is a reason to want the
 * report), and the report runs once. */
const threadguard_stats *tg_stats_at_exit(void) {
    static threadguard_stats at_exit;
    memset(&at_exit, 0, sizeof at_exit);
    fill(&at_exit);
    return &at_exit;
}

THREADGUARD_API void threadguard_stats_free(threadguard_stats *stats) { free(stats); }

THREADGUARD_API int threadguard_stats_rows(const threadguard_stats *s) { return s ? s->rows : 0; }

static const struct row *row_at(const threadguard_stats *s, int row) {
    if (s == NULL || row < 0 || row >= s->rows) return NULL;
    return &s->row[row];
}

THREADGUARD_API const char *threadguard_stats_name(const threadguard_stats *s, int row) {
    const struct row *r = row_at(s, row);
    return r ? r->name : NULL;
}

THREADGUARD_API const char *threadguard_stats_path(const threadguard_stats *s, int row) {
    const struct row *r = row_at(s, row);
    return r ? r->path : NULL;
}

THREADGUARD_API const char *threadguard_stats_kind(const threadguard_stats *s, int row) {
    const struct row *r = row_at(s, row);
    return r ? r->kind : NULL;
}

THREADGUARD_API long long threadguard_stats_get(const threadguard_stats *s, int row, int field) {
    if (s == NULL || field < 0 || field >= THREADGUARD_FIELD_COUNT) return -1;
    if (row == THREADGUARD_TOTAL_ROW) return s->total[field];
    const struct row *r = row_at(s, row);
    return r ? r->values[field] : -1;
}

const struct tg_growth_view *tg_stats_growth(const threadguard_stats *s, int row) {
    const struct row *r = row_at(s, row);
    return r ? &r->growth : NULL;
}

THREADGUARD_API long long threadguard_stats_tasks(const threadguard_stats *s) {
    return s ? s->tasks : -1;
}

THREADGUARD_API long long threadguard_stats_untracked(const threadguard_stats *s) {
    if (s == NULL || s->tasks < 0) return -1;
    /* The main thread (listed even after pthread_exit), the counted live
     * threads, and the taker itself when its exit was already counted. */
    long long untracked = s->tasks - 1 - s->total[THREADGUARD_LIVE] - s->exiting;
    return untracked > 0 ? untracked : 0;
}

THREADGUARD_API long long threadguard_stats_tasks_at_start(const threadguard_stats *s) {
    return s ? s->tasks_at_start : -1;
}
