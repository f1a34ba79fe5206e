/* The report as the table people read: threads by creating library, the
 * pool sizes and where they came from, what did not fit, the settings and
 * the headroom at start.  The exit report on stderr, `threadguard stats`
 * and Stats.format_table() all print this one table.
 *
 * Layer: output.  Calls output.c, stats.c and reads the state: registry.c,
 * limits.c, config.c, glibc.c. */
#include <stdio.h>
#include <string.h>

#include "report_table.h"

#include "config.h"
#include "publish.h"
#include "limits.h"
#include "shaping.h"
#include "stats.h"

static void put_figure(struct tg_out *o, const char *label, long long v) {
    if (v >= 0) tg_put(o, " %s %lld", label, v);
}

static void put_table_pools(struct tg_out *o, const struct tg_counter_block *b) {
    int n = tg_decisions_made(b);
    if (n > 0) {
        tg_put(o, "  pool sizes (value, where it came from):\n");
        for (int i = 0; i < n; i++) {
            const struct tg_decision *d = &b->decisions[i];
            if (!atomic_load_explicit(&d->ready, memory_order_acquire)) continue;
            tg_put(o, "    %-32.32s %-28.28s %4lld  %s", d->library, d->variable, d->value,
                   tg_source_name(d->source));
            if (d->source == TG_SOURCE_LIBRARY) tg_put(o, " %s", d->caller);
            if (d->lowered) tg_put(o, ", lowered from %lld", d->requested);
            /* The headroom's limit is named next; a ceiling is named here. */
            if (d->lowered && d->lowered_by[0] && strcmp(d->lowered_by, d->limit) != 0)
                tg_put(o, " by %s", d->lowered_by);
            /* Sized to a share of the CPUs: whose share. */
            if (d->source == TG_SOURCE_THREADGUARD && d->value == d->cpus && d->cpus_from[0] &&
                strcmp(d->cpus_from, "affinity") != 0)
                tg_put(o, ", %lld CPU%s: %s", d->cpus, tg_s(d->cpus), d->cpus_from);
            if (d->free >= 0)
                tg_put(o, " (%s%lld free under %s)", d->free_at_least ? "at least " : "", d->free,
                       d->limit);
            long long count = atomic_load_explicit(&d->count, memory_order_relaxed);
            if (count > 1) tg_put(o, " x%lld", count);
            tg_put(o, "\n");
        }
    }
}

/* The leak mark of a row: its growth when the leak rule holds. */
static void put_leak_mark(struct tg_out *o, const struct tg_growth_view *g) {
    if (g != NULL && g->leaking)
        tg_put(o, "  LEAKING: grew from %lld in %lld steps", g->settled, g->steps);
}

/* Python threads by the code that started them (the busiest sites first
 * would need sorting; rows come in the order the sites were first seen). */
static void put_table_sites(struct tg_out *o, const struct tg_counter_block *b) {
    int first = 1;
    for (unsigned i = 0; i < TG_MAX_SITES; i++) {
        const struct tg_site *site = &b->sites[i];
        if (i != TG_OTHER_SITES && atomic_load_explicit(&site->key, memory_order_acquire) == 0)
            break;
        if (!atomic_load_explicit(&site->ready, memory_order_acquire)) continue;
        long long created = atomic_load_explicit(&site->c.created, memory_order_relaxed);
        long long failed = atomic_load_explicit(&site->c.failed, memory_order_relaxed);
        if (created == 0 && failed == 0) continue;
        if (first) tg_put(o, "  Python threads by start site (created, live, peak, failed):\n");
        first = 0;
        long long live = atomic_load_explicit(&site->c.live, memory_order_relaxed);
        tg_put(o, "    %s  %lld %lld %lld %lld", site->where, created, live > 0 ? live : 0,
               atomic_load_explicit(&site->c.peak, memory_order_relaxed), failed);
        struct tg_growth_view g;
        tg_growth_view_of(&g, &site->growth, &site->c, 0);
        put_leak_mark(o, &g);
        tg_put(o, "\n");
    }
}

static void put_table_overflow(struct tg_out *o, const struct tg_counter_block *b) {
    long long dropped = atomic_load_explicit(&b->decisions_dropped, memory_order_relaxed);
    long long unknown = atomic_load_explicit(&b->registry_overflow, memory_order_relaxed);
    long long mapped = atomic_load_explicit(&b->records_mapped, memory_order_relaxed);
    long long uncounted = atomic_load_explicit(&b->started_uncounted, memory_order_relaxed);
    long long early = atomic_load_explicit(&b->started_during_init, memory_order_relaxed);
    if (dropped) tg_put(o, "  pool decisions: the table was full; %lld more not listed\n", dropped);
    if (unknown)
        tg_put(o,
               "  libraries: the table was full; %lld lookups of later libraries counted "
               "under (unknown)\n",
               unknown);
    if (mapped)
        tg_put(o, "  start records: %lld more mapped for threads started at once\n", mapped);
    if (uncounted)
        tg_put(o, "  %lld thread%s started uncounted (no memory for a start record)\n", uncounted,
               tg_s(uncounted));
    if (early)
        tg_put(o, "  %lld thread%s started while threadguard initialised, uncounted\n", early,
               tg_s(early));
}

/* The table's lines about settings and start-up: this process's. */
void tg_write_table_rest(struct tg_out *o) {
    tg_put(o, "  settings:");
    int any = 0;
    for (int i = 0; i < TG_SETTING_COUNT; i++) {
        if (tg_config.source[i] != TG_SOURCE_USER && !tg_config.rejected[i]) continue;
        tg_put(o, " %s=%s%s", tg_setting_name(i), tg_config.raw[i],
               tg_config.rejected[i] ? " (ignored)" : "");
        any = 1;
    }
    tg_put(o, "%s\n  stack ", any ? "" : " none");
    tg_put_size(o, tg_applied.stack);
    tg_put(o, " (%s)", tg_source_name(tg_applied.stack_source));
    long long pool_stack = atomic_load_explicit(&tg_applied.pool_stack, memory_order_relaxed);
    if (pool_stack > 0) {
        tg_put(o, ", pool workers ");
        tg_put_size(o, pool_stack);
        tg_put(o, " (threadguard, RLIMIT_AS)");
    }
    tg_put(o, ", arenas ");
    if (tg_applied.arenas > 0)
        tg_put(o, "%lld", tg_applied.arenas);
    else
        tg_put(o, "unlimited");
    tg_put(o, " (%s)\n", tg_source_name(tg_applied.arenas_source));
    const struct tg_headroom *h = &tg_headroom_at_start;
    tg_put(o, "  headroom at start: %lld CPU%s (%s);", h->cpus, tg_s(h->cpus), h->cpus_from);
    if (h->allocation.sharing.parent > 0)
        tg_put(o, " pid %d's %lld CPU%s shared by %d process%s;", h->allocation.sharing.parent,
               h->allocation.sharing.parent_cpus, tg_s(h->allocation.sharing.parent_cpus),
               h->allocation.sharing.processes, h->allocation.sharing.processes == 1 ? "" : "es");
    if (h->free >= 0)
        tg_put(o, " %s%lld thread%s free under %s;",
               tg_headroom_free_at_least(h) ? "at least " : "", h->free, tg_s(h->free), h->limit);
    put_figure(o, "RLIMIT_NPROC", h->nproc_soft);
    put_figure(o, h->uid_tasks_from == TG_TASKS_COUNTED ? "uid tasks" : "uid tasks at most",
               h->uid_tasks);
    put_figure(o, "pids.max", h->pids_max);
    put_figure(o, "pids.current", h->pids_current);
    put_figure(o, "threads-max", h->threads_max);
    if (h->as_limit >= 0) {
        tg_put(o, " RLIMIT_AS ");
        tg_put_size(o, h->as_limit);
        tg_put(o, " VmSize ");
        tg_put_size(o, h->vmsize);
        tg_put(o, " per thread ");
        tg_put_size(o, h->thread_cost);
    }
    put_figure(o, "THREADGUARD_MAX_THREADS", h->budget);
    tg_put(o, "\n");
    const char *lines[4];
    int count = tg_glibc_limitations(lines, 4);
    for (int i = 0; i < count; i++) tg_put(o, "  glibc %s: %s\n", tg_glibc.version, lines[i]);
}

static void write_table_budget(struct tg_out *o, const struct tg_report_subject *who) {
    put_table_pools(o, who->block);
    put_table_overflow(o, who->block);
    if (who->doc == NULL)
        tg_write_table_rest(o);
    else
        tg_put_text(o, who->doc->budget);
}

/* Whether threadguard changed anything besides pool sizes: a setting given,
 * something applied at start. */
int tg_report_local_acted(void) {
    if (atomic_load_explicit(&tg_applied.pool_stack, memory_order_relaxed)) return 1;
    if (tg_applied.stack_source != TG_SOURCE_DEFAULT ||
        tg_applied.arenas_source != TG_SOURCE_DEFAULT ||
        tg_applied.nproc_source != TG_SOURCE_DEFAULT)
        return 1;
    for (int i = 0; i < TG_SETTING_COUNT; i++)
        if (tg_config.source[i] == TG_SOURCE_USER || tg_config.rejected[i]) return 1;
    return 0;
}

/* Whether threadguard changed anything: a pool decision, or the above. */
static int guard_acted(const struct tg_report_subject *who) {
    if (tg_decisions_made(who->block) > 0) return 1;
    return who->doc == NULL ? tg_report_local_acted() : who->doc->acted;
}

void tg_write_table(struct tg_out *o, const threadguard_stats *s,
                    const struct tg_report_subject *who, const char *when) {
    const char *program = who->program;
    const char *base = strrchr(program, '/');
    base = base ? base + 1 : program;
    int rows = threadguard_stats_rows(s);
    long long tasks = threadguard_stats_tasks(s);
    int mode = who->mode, pid = who->pid;
    if (mode == THREADGUARD_MODE_OFF) {
        tg_put(o,
               "threadguard: pid %d (%s): not preloaded, threads were not counted; "
               "%lld task%s %s\n",
               pid, base, tasks, tg_s(tasks), when);
        return;
    }
    if (rows == 0 && tasks <= 1) {
        tg_put(o, "threadguard: pid %d (%s): no threads created%s\n", pid, base,
               mode == THREADGUARD_MODE_IMPORT ? " (import mode: GOT slots patched)" : "");
        /* What the guard did still matters (a pool sized to 1 under a full
         * task limit is why no thread was created): say it. */
        if (guard_acted(who)) write_table_budget(o, who);
        return;
    }
    tg_put(o, "threadguard: pid %d (%s): threads by creating library%s, %s\n", pid, base,
           mode == THREADGUARD_MODE_IMPORT ? " (import mode: GOT slots patched)" : "", when);
    tg_put(o, "  %-36s %-9s %8s %6s %6s %7s %7s\n", "library", "kind", "created", "live", "peak",
           "failed", "denied");
    for (int r = 0; r < rows; r++) {
        tg_put(o, "  %-36.36s %-9s", threadguard_stats_name(s, r), threadguard_stats_kind(s, r));
        tg_put(o, " %8lld %6lld %6lld %7lld %7lld",
               threadguard_stats_get(s, r, THREADGUARD_CREATED),
               threadguard_stats_get(s, r, THREADGUARD_LIVE),
               threadguard_stats_get(s, r, THREADGUARD_PEAK),
               threadguard_stats_get(s, r, THREADGUARD_FAILED),
               threadguard_stats_get(s, r, THREADGUARD_DENIED));
        long long err = threadguard_stats_get(s, r, THREADGUARD_LAST_ERRNO);
        if (err) tg_put(o, "  last error: %s", tg_report_error_text((int)err));
        put_leak_mark(o, tg_stats_growth(s, r));
        tg_put(o, "\n");
    }
    int t = THREADGUARD_TOTAL_ROW;
    tg_put(o, "  %-36s %-9s %8lld %6lld %6lld %7lld %7lld\n", "total", "",
           threadguard_stats_get(s, t, THREADGUARD_CREATED),
           threadguard_stats_get(s, t, THREADGUARD_LIVE),
           threadguard_stats_get(s, t, THREADGUARD_PEAK),
           threadguard_stats_get(s, t, THREADGUARD_FAILED),
           threadguard_stats_get(s, t, THREADGUARD_DENIED));
    tg_put(o,
           "  tasks %s: %lld (main thread + %lld counted live + %lld not seen created; "
           "%lld existed before threadguard started)\n",
           when, tasks, threadguard_stats_get(s, t, THREADGUARD_LIVE),
           threadguard_stats_untracked(s), threadguard_stats_tasks_at_start(s));
    put_table_sites(o, who->block);
    write_table_budget(o, who);
}
