/* The report as JSON: the counters, the settings and what was applied, the
 * pool decisions, the failures with their limits, the platform and the
 * headroom, and the table (written by report_table.c) as one string.
 *
 * Layer: output.  Calls output.c, report_table.c, stats.c and reads the
 * state: registry.c, limits.c, failures.c, config.c, glibc.c. */
#include <stdio.h>
#include <string.h>

#include "report_json.h"

#include "config.h"
#include "publish.h"
#include "failures.h"
#include "glibc.h"
#include "registry.h"
#include "shaping.h"
#include "stats.h"

static const char *const field_names[THREADGUARD_FIELD_COUNT] = {"created", "live",   "peak",
                                                                 "failed",  "denied", "last_errno"};

#if defined(__x86_64__)
#define TG_ARCH "x86_64"
#elif defined(__aarch64__)
#define TG_ARCH "aarch64"
#else
#define TG_ARCH "other"
#endif

static void put_json_counters(struct tg_out *o, const threadguard_stats *s, int row) {
    for (int f = 0; f < THREADGUARD_FIELD_COUNT; f++)
        tg_put(o, "%s\"%s\": %lld", f ? ", " : "", field_names[f],
               threadguard_stats_get(s, row, f));
}

static void put_json_growth(struct tg_out *o, const struct tg_growth_view *g) {
    tg_put(o, "\"growth\": {\"steps\": %lld, \"settled\": %lld, \"leaking\": %s}", g->steps,
           g->settled, g->leaking ? "true" : "false");
}

/* "python_sites": Python threads by the code that started them. */
static void put_json_sites(struct tg_out *o, const struct tg_counter_block *b) {
    tg_put(o, "  \"python_sites\": [");
    int first = 1;
    for (unsigned i = 0; i < TG_MAX_SITES; i++) {
        const struct tg_site *site = &b->sites[i];
        if (i != TG_OTHER_SITES && atomic_load_explicit(&site->key, memory_order_acquire) == 0)
            break; /* rows fill in order */
        if (!atomic_load_explicit(&site->ready, memory_order_acquire)) continue;
        long long created = atomic_load_explicit(&site->c.created, memory_order_relaxed);
        long long failed = atomic_load_explicit(&site->c.failed, memory_order_relaxed);
        if (created == 0 && failed == 0) continue;
        long long live = atomic_load_explicit(&site->c.live, memory_order_relaxed);
        struct tg_growth_view g;
        tg_growth_view_of(&g, &site->growth, &site->c, 0);
        tg_put(o, "%s\n    {\"where\": ", first ? "" : ",");
        first = 0;
        tg_put_json_string(o, site->where);
        tg_put(o, ", \"created\": %lld, \"live\": %lld, \"peak\": %lld, \"failed\": %lld, ",
               created, live > 0 ? live : 0,
               atomic_load_explicit(&site->c.peak, memory_order_relaxed), failed);
        put_json_growth(o, &g);
        tg_put(o, "}");
    }
    tg_put(o, "%s],\n", first ? "" : "\n  ");
}

/* The leak seen at a failure: the row, its kind, and its growth. */
static void put_json_leak(struct tg_out *o, const struct tg_leak *l) {
    if (!l->found) {
        tg_put(o, "null");
        return;
    }
    const struct tg_lib *lib = &tg_libs[l->row];
    tg_put(o, "{\"library\": ");
    tg_put_json_string(o, l->is_site ? "" : lib->name);
    tg_put(o, ", \"path\": ");
    tg_put_json_string(o, l->is_site ? "" : lib->path);
    tg_put(o, ", \"kind\": \"%s\", \"site\": ", l->is_site ? "python" : tg_kind_name(lib->kind));
    if (l->is_site)
        tg_put_json_string(o, tg_sites[l->row].where);
    else
        tg_put(o, "null");
    tg_put(o, ", \"live\": %lld, \"created\": %lld, \"settled\": %lld, \"steps\": %lld}", l->live,
           l->created, l->settled, l->steps);
}

/* walks: the /proc walks this process made to count the uid's tasks,
 * shown with the headroom now (-1: not shown). */
void tg_put_json_headroom(struct tg_out *o, const struct tg_headroom *h, long long walks) {
    tg_put(o, "{");
    if (walks >= 0) tg_put(o, "\"uid_task_walks\": %lld, ", walks);
    tg_put_json_number(o, "rlimit_nproc_soft", h->nproc_soft, ", ");
    tg_put_json_number(o, "rlimit_nproc_hard", h->nproc_hard, ", ");
    tg_put_json_number(o, "uid_tasks", h->uid_tasks, ", ");
    tg_put(o, "\"uid_tasks_from\": ");
    tg_put_json_string_or_null(o, tg_tasks_from_name(h->uid_tasks_from));
    tg_put(o, ", ");
    tg_put_json_number(o, "nproc_free", h->nproc_free, ", ");
    tg_put_json_number(o, "reserved_by_others", h->reserved_others, ",\n      ");
    tg_put_json_number(o, "pids_max", h->pids_max, ", ");
    tg_put_json_number(o, "pids_current", h->pids_current, ", ");
    tg_put_json_number(o, "pids_free", h->pids_free, ",\n      ");
    tg_put_json_number(o, "threads_max", h->threads_max, ", ");
    tg_put_json_number(o, "threads_total", h->threads_total, ", ");
    tg_put_json_number(o, "threads_free", h->threads_free, ",\n      ");
    tg_put_json_number(o, "rlimit_as", h->as_limit, ", ");
    tg_put_json_number(o, "vmsize", h->vmsize, ", ");
    tg_put_json_number(o, "thread_cost", h->thread_cost, ", ");
    tg_put_json_number(o, "as_free_threads", h->as_free_threads, ",\n      ");
    tg_put_json_number(o, "max_threads", h->budget, ", ");
    tg_put_json_number(o, "process_threads", h->process_threads, ", ");
    tg_put_json_number(o, "budget_free", h->budget_free, ",\n      ");
    tg_put_json_number(o, "free", h->free, ", ");
    tg_put(o,
           "\"free_at_least\": %s, \"limit\": ", tg_headroom_free_at_least(h) ? "true" : "false");
    tg_put_json_string(o, h->limit);
    tg_put(o, ",\n      ");
    tg_put_json_number(o, "cpus_affinity", h->cpus_affinity, ", ");
    tg_put_json_number(o, "cpus_quota", h->cpus_quota, ", ");
    tg_put_json_number(o, "slurm_cpus_per_task", h->allocation.slurm_cpus_per_task, ", ");
    tg_put_json_number(o, "slurm_cpus_on_node", h->allocation.slurm_cpus_on_node, ", ");
    tg_put_json_number(o, "omp_thread_limit", h->allocation.omp_thread_limit, ",\n      ");
    tg_put_json_number(o, "cpus", h->cpus, ", ");
    tg_put(o, "\"cpus_from\": ");
    tg_put_json_string(o, h->cpus_from);
    tg_put(o, ", \"cpu_sources\": [");
    for (int i = 0; i < h->allocation.count; i++) {
        tg_put(o, "%s{\"source\": ", i ? ", " : "");
        tg_put_json_string(o, h->allocation.seen[i].name);
        tg_put(o, ", \"cpus\": %lld}", h->allocation.seen[i].cpus);
    }
    tg_put(o, "], ");
    tg_put_json_number(o, "node_cpus", h->allocation.node_cpus, ", ");
    tg_put(o, "\"local_ranks\": %d, \"sharing\": ", h->allocation.local_ranks);
    const struct tg_sharing *s = &h->allocation.sharing;
    if (s->parent <= 0) {
        tg_put(o, "null");
    } else {
        tg_put(o, "{\"parent\": %d, \"parent_cpus\": %lld, \"processes\": %d, \"pids\": [",
               s->parent, s->parent_cpus, s->processes);
        for (int i = 0; i < s->listed; i++) tg_put(o, "%s%d", i ? ", " : "", s->pids[i]);
        tg_put(o, "]}");
    }
    tg_put(o, "}");
}

/* "key": {"value": v or null, "source": ...} */
static void put_applied(struct tg_out *o, const char *key, long long value, int source,
                        const char *sep) {
    tg_put(o, "\"%s\": {", key);
    tg_put_json_number(o, "value", value, ", ");
    tg_put(o, "\"source\": \"%s\"}%s", tg_source_name(source), sep);
}

void tg_put_json_settings(struct tg_out *o) {
    tg_put(o, "  \"settings\": [");
    for (int i = 0; i < TG_SETTING_COUNT; i++) {
        tg_put(o, "%s\n    {\"name\": \"%s\", \"value\": ", i ? "," : "", tg_setting_name(i));
        if (tg_config.raw[i][0] || tg_config.source[i] == TG_SOURCE_USER)
            tg_put_json_string(o, tg_config.raw[i]);
        else
            tg_put(o, "null");
        tg_put(o, ", \"source\": \"%s\", \"rejected\": %s}", tg_source_name(tg_config.source[i]),
               tg_config.rejected[i] ? "true" : "false");
    }
    tg_put(o, "\n  ],\n  \"applied\": {");
    put_applied(o, "stack", tg_applied.stack, tg_applied.stack_source, ", ");
    long long pool_stack = atomic_load_explicit(&tg_applied.pool_stack, memory_order_relaxed);
    put_applied(o, "pool_stack", pool_stack > 0 ? pool_stack : -1,
                pool_stack > 0 ? TG_SOURCE_THREADGUARD : TG_SOURCE_DEFAULT, ", ");
    /* arenas 0: not capped */
    put_applied(o, "arenas", tg_applied.arenas > 0 ? tg_applied.arenas : -1,
                tg_applied.arenas_source, ", ");
    put_applied(o, "rlimit_nproc", tg_applied.nproc_soft, tg_applied.nproc_source, "},\n");
}

static void put_json_pools(struct tg_out *o, const struct tg_counter_block *b) {
    tg_put(o, "  \"pools\": [");
    int n = tg_decisions_made(b), first = 1;
    for (int i = 0; i < n; i++) {
        const struct tg_decision *d = &b->decisions[i];
        if (!atomic_load_explicit(&d->ready, memory_order_acquire)) continue;
        tg_put(o, "%s\n    {\"library\": ", first ? "" : ",");
        first = 0;
        tg_put_json_string(o, d->library);
        tg_put(o, ", \"kind\": \"%s\", \"variable\": ", tg_kind_name(b->libs[d->slot].kind));
        tg_put_json_string(o, d->variable);
        tg_put(o, ", \"value\": %lld, ", d->value);
        tg_put_json_number(o, "requested", d->requested, ", ");
        tg_put(o,
               "\"source\": \"%s\", \"lowered\": %s, \"lowered_by\": ", tg_source_name(d->source),
               d->lowered ? "true" : "false");
        if (d->lowered_by[0])
            tg_put_json_string(o, d->lowered_by);
        else
            tg_put(o, "null");
        tg_put(o, ", \"caller\": ");
        tg_put_json_string(o, d->caller);
        tg_put(o, ", ");
        tg_put_json_number(o, "free", d->free, ", ");
        tg_put(o, "\"free_at_least\": %s, \"limit\": ", d->free_at_least ? "true" : "false");
        tg_put_json_string(o, d->limit);
        tg_put(o, ", \"cpus\": %lld, \"cpus_from\": ", d->cpus);
        tg_put_json_string(o, d->cpus_from);
        tg_put(o, ", \"count\": %lld}", atomic_load_explicit(&d->count, memory_order_relaxed));
    }
    tg_put(o, "%s],\n", first ? "" : "\n  ");
}

/* What did not fit in a fixed table, or was started without being counted:
 * never silent. */
static void put_json_overflow(struct tg_out *o, const struct tg_counter_block *b) {
    tg_put(o,
           "  \"overflow\": {\"pools_dropped\": %lld, \"library_lookups_unknown\": %lld, "
           "\"start_records_mapped\": %lld, \"threads_uncounted\": %lld, "
           "\"threads_during_init\": %lld},\n",
           atomic_load_explicit(&b->decisions_dropped, memory_order_relaxed),
           atomic_load_explicit(&b->registry_overflow, memory_order_relaxed),
           atomic_load_explicit(&b->records_mapped, memory_order_relaxed),
           atomic_load_explicit(&b->started_uncounted, memory_order_relaxed),
           atomic_load_explicit(&b->started_during_init, memory_order_relaxed));
}

/* "failures": [...] - each failed creation with the limits measured then. */
void tg_put_json_failures(struct tg_out *o) {
    int n = atomic_load_explicit(&tg_failure_count, memory_order_acquire);
    /* Past TG_MAX_FAILURES only the count goes on: failures_total is every
     * one, failures_recorded those listed. */
    tg_put(o, "  \"failures_total\": %d,\n  \"failures_recorded\": %d,\n  \"failures\": [", n,
           n < TG_MAX_FAILURES ? n : TG_MAX_FAILURES);
    if (n > TG_MAX_FAILURES) n = TG_MAX_FAILURES;
    int first = 1;
    for (int i = 0; i < n; i++) {
        const struct tg_failure *f = &tg_failures[i];
        if (!atomic_load_explicit(&f->ready, memory_order_acquire)) continue;
        const struct tg_lib *lib = &tg_libs[f->slot];
        tg_put(o, "%s\n    {\"library\": ", first ? "" : ",");
        first = 0;
        tg_put_json_string(o, f->slot == TG_UNKNOWN_SLOT ? "unknown" : lib->name);
        tg_put(o, ", \"path\": ");
        tg_put_json_string(o, f->slot == TG_UNKNOWN_SLOT ? "" : lib->path);
        tg_put(o,
               ", \"kind\": \"%s\", \"thread\": %lld, \"errno\": %d, \"error\": \"%s\", "
               "\"message\": ",
               tg_kind_name(lib->kind), f->thread, f->error, tg_report_error_name(f->error));
        tg_put_json_string(o, tg_report_error_text(f->error));
        tg_put(o, ",\n      \"cause\": ");
        tg_put_json_string(o, f->cause);
        tg_put(o, ", \"stack\": %lld, \"site\": ", f->stack);
        if (f->site > 0)
            tg_put_json_string(o, tg_sites[f->site - 1].where);
        else
            tg_put(o, "null");
        tg_put(o, ",\n      \"leak\": ");
        put_json_leak(o, &f->leak);
        tg_put(o, ", \"limits\": ");
        tg_put_json_headroom(o, &f->h, -1);
        tg_put(o, "}");
    }
    tg_put(o, "%s],\n", first ? "" : "\n  ");
}

/* "platform": the glibc running, the facilities it lacks that have a
 * fallback, and the promises that cannot be kept on it. */
void tg_put_json_platform(struct tg_out *o) {
    tg_put(o, "  \"platform\": {\"arch\": \"%s\", \"glibc\": ", TG_ARCH);
    tg_put_json_string(o, tg_glibc.version);
    const char *lines[4];
    tg_put(o, ", \"fallbacks\": ");
    tg_put_json_strings(o, lines, tg_glibc_fallbacks(lines, 4));
    tg_put(o, ", \"limitations\": ");
    tg_put_json_strings(o, lines, tg_glibc_limitations(lines, 4));
    tg_put(o, "},\n");
}

/* The batch job this process belongs to, from the scheduler's variables:
 * a report written under a site-wide deployment (no `threadguard run` in
 * the job script) says which job step it came from. */
void tg_put_json_job(struct tg_out *o) {
    const char *job = tg_environ_get("SLURM_JOB_ID");
    if (job == NULL) {
        tg_put(o, "  \"job\": null,\n");
        return;
    }
    tg_put(o, "  \"job\": {\"scheduler\": \"slurm\", \"job_id\": ");
    tg_put_json_string(o, job);
    tg_put(o, ", \"step_id\": ");
    tg_put_json_string_or_null(o, tg_environ_get("SLURM_STEP_ID"));
    tg_put(o, ", \"task\": ");
    tg_put_json_string_or_null(o, tg_environ_get("SLURM_PROCID"));
    tg_put(o, "},\n");
}

static const char *mode_name(int mode) {
    return mode == THREADGUARD_MODE_PRELOAD  ? "preload"
           : mode == THREADGUARD_MODE_IMPORT ? "import"
                                             : "off";
}

/* when: "at exit", or "now" for a live snapshot (Python's stats(), or
 * another process read through its file). */
void tg_write_json(struct tg_out *o, const threadguard_stats *s,
                   const struct tg_report_subject *who, const char *when) {
    tg_put(o, "{\n  \"threadguard\": \"%s\",\n  \"pid\": %d,\n  \"program\": ",
           THREADGUARD_VERSION_STRING, who->pid);
    tg_put_json_string(o, who->program);
    /* "interposing": threads are being counted, by either mode. */
    tg_put(o, ",\n  \"interposing\": %s,\n  \"mode\": \"%s\",\n",
           who->mode != THREADGUARD_MODE_OFF ? "true" : "false", mode_name(who->mode));
    if (who->doc == NULL) {
        tg_put_json_platform(o);
        tg_put_json_job(o);
    }
    tg_put(o, "  \"tasks\": %lld,\n  \"tasks_at_start\": %lld,\n  \"untracked\": %lld,\n",
           threadguard_stats_tasks(s), threadguard_stats_tasks_at_start(s),
           threadguard_stats_untracked(s));
    tg_put(o, "  \"libraries\": [");
    int rows = threadguard_stats_rows(s);
    for (int r = 0; r < rows; r++) {
        tg_put(o, "%s\n    {\"name\": ", r ? "," : "");
        tg_put_json_string(o, threadguard_stats_name(s, r));
        tg_put(o, ", \"path\": ");
        tg_put_json_string(o, threadguard_stats_path(s, r));
        tg_put(o, ", \"kind\": \"%s\", ", threadguard_stats_kind(s, r));
        put_json_counters(o, s, r);
        tg_put(o, ", ");
        put_json_growth(o, tg_stats_growth(s, r));
        tg_put(o, "}");
    }
    tg_put(o, "%s],\n  \"total\": {", rows ? "\n  " : "");
    put_json_counters(o, s, THREADGUARD_TOTAL_ROW);
    tg_put(o, "},\n");
    put_json_sites(o, who->block);
    if (who->doc == NULL) tg_put_json_settings(o);
    put_json_pools(o, who->block);
    put_json_overflow(o, who->block);
    if (who->doc == NULL) {
        tg_put_json_failures(o);
        /* What counting the uid's tasks cost this process, before the
         * count the report itself makes. */
        long long walks = tg_uid_task_walks();
        struct tg_headroom now;
        tg_headroom_measure_exact(&now, TG_KIND_UNKNOWN);
        tg_put(o, "  \"headroom\": {\n    \"at_start\": ");
        tg_put_json_headroom(o, &tg_headroom_at_start, -1);
        tg_put(o, ",\n    \"now\": ");
        tg_put_json_headroom(o, &now, walks);
    } else {
        /* platform, settings, applied and failures, as the process wrote
         * them; the headroom now is the process's to measure. */
        tg_put_text(o, who->doc->json);
        tg_put(o, "  \"headroom\": {\n    \"at_start\": ");
        tg_put_text(o, who->doc->at_start[0] ? who->doc->at_start : "{}");
        tg_put(o, ",\n    \"now\": {}");
    }
    /* The human table, written by the same code as the exit table on
     * stderr: `threadguard stats REPORT.json` and Stats.format_table()
     * print it, so there is one formatter. */
    tg_put(o, "\n  },\n  \"table\": \"");
    o->in_string = 1;
    tg_write_table(o, s, who, when);
    o->in_string = 0;
    tg_put(o, "\"\n}\n");
}
