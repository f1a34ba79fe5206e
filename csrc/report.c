/* THREADGUARD_REPORT: the counters at exit, as a table on stderr or as JSON
 * in a file.  Runs from the library's destructor; it must never fail its
 * host, so every error becomes one line on stderr.
 *
 * The same writers serve another process's report, read from the file it
 * publishes (publish.c): the counters and pool decisions from its counter
 * block, the rest from the document it keeps there, which this file also
 * writes (tg_report_publish).
 *
 * Layer: output.  Calls stats.c and reads the state: threads.c, registry.c,
 * shaping.c's decisions, limits.c, failures.c, config.c, glibc.c,
 * publish.c, procfs.c; writes through error.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "report.h"

#include "config.h"
#include "error.h"
#include "failures.h"
#include "glibc.h"
#include "procfs.h"
#include "publish.h"
#include "registry.h"
#include "shaping.h"
#include "stats.h"
#include "threads.h"

/* Output goes to a file descriptor, or (fd < 0) into mem, counting what
 * did not fit so the caller can ask again with a bigger buffer. */
struct out {
    int fd;
    int failed;
    size_t used;
    char *mem;
    size_t mem_size;
    size_t mem_total;
    int in_string; /* put() output goes inside a JSON string: escape it */
    char buf[8192];
};

static void flush(struct out *o) {
    if (o->fd < 0) {
        for (size_t i = 0; i < o->used; i++, o->mem_total++)
            if (o->mem_total + 1 < o->mem_size) o->mem[o->mem_total] = o->buf[i];
        if (o->mem_size) o->mem[o->mem_total < o->mem_size ? o->mem_total : o->mem_size - 1] = 0;
        o->used = 0;
        return;
    }
    if (!o->failed && o->used > 0)
        o->failed = o->fd == STDERR_FILENO ? tg_write_stderr(o->buf, o->used)
                                           : tg_write_quietly(o->fd, o->buf, o->used);
    o->used = 0;
}

static void append(struct out *o, const char *text, size_t len) {
    if (o->used + len > sizeof o->buf) flush(o);
    memcpy(o->buf + o->used, text, len);
    o->used += len;
}

static void append_escaped(struct out *o, const char *text);

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...) {
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (o->in_string)
        append_escaped(o, line);
    else
        append(o, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* Length of the valid UTF-8 sequence at s (1-4), 0 when the bytes there
 * are not one (a stray continuation byte, an overlong form, a surrogate). */
static int utf8_length(const unsigned char *s) {
    unsigned c = s[0];
    int n;
    unsigned min;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4, min = 0x10000;
    else
        return 0;
    unsigned cp = c & (0x3f >> (n - 1));
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return n;
}

/* A JSON string: quotes, backslashes and control characters escaped, valid
 * UTF-8 passed through, and each byte that is not UTF-8 (a library path is
 * bytes) written as \udcXX, the lone surrogate Python's surrogateescape
 * uses: json.loads reads it and os.fsencode gives the byte back. */
static void append_escaped(struct out *o, const char *text) {
    const unsigned char *s = (const unsigned char *)text;
    char piece[8];
    while (*s) {
        unsigned char c = *s;
        int n = 1;
        if (c == '"' || c == '\\')
            snprintf(piece, sizeof piece, "\\%c", c);
        else if (c == '\n')
            snprintf(piece, sizeof piece, "\\n");
        else if (c < 0x20 || c == 0x7f)
            snprintf(piece, sizeof piece, "\\u%04x", c);
        else if (c < 0x80)
            snprintf(piece, sizeof piece, "%c", c);
        else if ((n = utf8_length(s)) == 0)
            n = 1, snprintf(piece, sizeof piece, "\\udc%02x", c);
        else
            snprintf(piece, sizeof piece, "%.*s", n, (const char *)s);
        append(o, piece, strlen(piece));
        s += n;
    }
}

/* Text that may be longer than put()'s line. */
static void put_text(struct out *o, const char *text) {
    if (o->in_string)
        append_escaped(o, text);
    else
        append(o, text, strlen(text));
}

/* Whose report this is: this process (doc NULL: its state is read
 * directly), or another one read from its published file. */
struct subject {
    int pid;
    const char *program;
    int mode;
    const struct tg_counter_block *block;
    const struct tg_doc_view *doc;
};

static void put_json_string(struct out *o, const char *str) {
    append(o, "\"", 1);
    append_escaped(o, str);
    append(o, "\"", 1);
}

static const char *const field_names[THREADGUARD_FIELD_COUNT] = {"created", "live",   "peak",
                                                                 "failed",  "denied", "last_errno"};

static void put_json_counters(struct out *o, const threadguard_stats *s, int row) {
    for (int f = 0; f < THREADGUARD_FIELD_COUNT; f++)
        put(o, "%s\"%s\": %lld", f ? ", " : "", field_names[f], threadguard_stats_get(s, row, f));
}

static void put_json_string_or_null(struct out *o, const char *str) {
    if (str == NULL)
        put(o, "null");
    else
        put_json_string(o, str);
}

static void put_json_number(struct out *o, const char *key, long long v, const char *sep) {
    if (v < 0)
        put(o, "\"%s\": null%s", key, sep);
    else
        put(o, "\"%s\": %lld%s", key, v, sep);
}

/* walks: the /proc walks this process made to count the uid's tasks,
 * shown with the headroom now (-1: not shown). */
static void put_json_headroom(struct out *o, const struct tg_headroom *h, long long walks) {
    put(o, "{");
    if (walks >= 0) put(o, "\"uid_task_walks\": %lld, ", walks);
    put_json_number(o, "rlimit_nproc_soft", h->nproc_soft, ", ");
    put_json_number(o, "rlimit_nproc_hard", h->nproc_hard, ", ");
    put_json_number(o, "uid_tasks", h->uid_tasks, ", ");
    put(o, "\"uid_tasks_from\": ");
    put_json_string_or_null(o, tg_tasks_from_name(h->uid_tasks_from));
    put(o, ", ");
    put_json_number(o, "nproc_free", h->nproc_free, ", ");
    put_json_number(o, "reserved_by_others", h->reserved_others, ",\n      ");
    put_json_number(o, "pids_max", h->pids_max, ", ");
    put_json_number(o, "pids_current", h->pids_current, ", ");
    put_json_number(o, "pids_free", h->pids_free, ",\n      ");
    put_json_number(o, "threads_max", h->threads_max, ", ");
    put_json_number(o, "threads_total", h->threads_total, ", ");
    put_json_number(o, "threads_free", h->threads_free, ",\n      ");
    put_json_number(o, "rlimit_as", h->as_limit, ", ");
    put_json_number(o, "vmsize", h->vmsize, ", ");
    put_json_number(o, "thread_cost", h->thread_cost, ", ");
    put_json_number(o, "as_free_threads", h->as_free_threads, ",\n      ");
    put_json_number(o, "max_threads", h->budget, ", ");
    put_json_number(o, "process_threads", h->process_threads, ", ");
    put_json_number(o, "budget_free", h->budget_free, ",\n      ");
    put_json_number(o, "free", h->free, ", ");
    put(o, "\"free_at_least\": %s, \"limit\": ", tg_headroom_free_at_least(h) ? "true" : "false");
    put_json_string(o, h->limit);
    put(o, ",\n      ");
    put_json_number(o, "cpus_affinity", h->cpus_affinity, ", ");
    put_json_number(o, "cpus_quota", h->cpus_quota, ", ");
    put_json_number(o, "slurm_cpus_per_task", h->allocation.slurm_cpus_per_task, ", ");
    put_json_number(o, "slurm_cpus_on_node", h->allocation.slurm_cpus_on_node, ", ");
    put_json_number(o, "omp_thread_limit", h->allocation.omp_thread_limit, ",\n      ");
    put_json_number(o, "cpus", h->cpus, ", ");
    put(o, "\"cpus_from\": ");
    put_json_string(o, h->cpus_from);
    put(o, ", \"cpu_sources\": [");
    for (int i = 0; i < h->allocation.count; i++) {
        put(o, "%s{\"source\": ", i ? ", " : "");
        put_json_string(o, h->allocation.seen[i].name);
        put(o, ", \"cpus\": %lld}", h->allocation.seen[i].cpus);
    }
    put(o, "], ");
    put_json_number(o, "node_cpus", h->allocation.node_cpus, ", ");
    put(o, "\"local_ranks\": %d, \"sharing\": ", h->allocation.local_ranks);
    const struct tg_sharing *s = &h->allocation.sharing;
    if (s->parent <= 0) {
        put(o, "null");
    } else {
        put(o, "{\"parent\": %d, \"parent_cpus\": %lld, \"processes\": %d, \"pids\": [", s->parent,
            s->parent_cpus, s->processes);
        for (int i = 0; i < s->listed; i++) put(o, "%s%d", i ? ", " : "", s->pids[i]);
        put(o, "]}");
    }
    put(o, "}");
}

/* "key": {"value": v or null, "source": ...} */
static void put_applied(struct out *o, const char *key, long long value, int source,
                        const char *sep) {
    put(o, "\"%s\": {", key);
    put_json_number(o, "value", value, ", ");
    put(o, "\"source\": \"%s\"}%s", tg_source_name(source), sep);
}

static void put_json_settings(struct out *o) {
    put(o, "  \"settings\": [");
    for (int i = 0; i < TG_SETTING_COUNT; i++) {
        put(o, "%s\n    {\"name\": \"%s\", \"value\": ", i ? "," : "", tg_setting_name(i));
        if (tg_config.raw[i][0] || tg_config.source[i] == TG_SOURCE_USER)
            put_json_string(o, tg_config.raw[i]);
        else
            put(o, "null");
        put(o, ", \"source\": \"%s\", \"rejected\": %s}", tg_source_name(tg_config.source[i]),
            tg_config.rejected[i] ? "true" : "false");
    }
    put(o, "\n  ],\n  \"applied\": {");
    put_applied(o, "stack", tg_applied.stack, tg_applied.stack_source, ", ");
    long long pool_stack = atomic_load_explicit(&tg_applied.pool_stack, memory_order_relaxed);
    put_applied(o, "pool_stack", pool_stack > 0 ? pool_stack : -1,
                pool_stack > 0 ? TG_SOURCE_THREADGUARD : TG_SOURCE_DEFAULT, ", ");
    /* arenas 0: not capped */
    put_applied(o, "arenas", tg_applied.arenas > 0 ? tg_applied.arenas : -1,
                tg_applied.arenas_source, ", ");
    put_applied(o, "rlimit_nproc", tg_applied.nproc_soft, tg_applied.nproc_source, "},\n");
}

static int decisions_made(const struct tg_counter_block *b) {
    int n = atomic_load_explicit(&b->decision_count, memory_order_acquire);
    return n < TG_MAX_DECISIONS ? n : TG_MAX_DECISIONS;
}

static void put_json_pools(struct out *o, const struct tg_counter_block *b) {
    put(o, "  \"pools\": [");
    int n = decisions_made(b), first = 1;
    for (int i = 0; i < n; i++) {
        const struct tg_decision *d = &b->decisions[i];
        if (!atomic_load_explicit(&d->ready, memory_order_acquire)) continue;
        put(o, "%s\n    {\"library\": ", first ? "" : ",");
        first = 0;
        put_json_string(o, d->library);
        put(o, ", \"kind\": \"%s\", \"variable\": ", tg_kind_name(b->libs[d->slot].kind));
        put_json_string(o, d->variable);
        put(o, ", \"value\": %lld, ", d->value);
        put_json_number(o, "requested", d->requested, ", ");
        put(o, "\"source\": \"%s\", \"lowered\": %s, \"lowered_by\": ", tg_source_name(d->source),
            d->lowered ? "true" : "false");
        if (d->lowered_by[0])
            put_json_string(o, d->lowered_by);
        else
            put(o, "null");
        put(o, ", \"caller\": ");
        put_json_string(o, d->caller);
        put(o, ", ");
        put_json_number(o, "free", d->free, ", ");
        put(o, "\"free_at_least\": %s, \"limit\": ", d->free_at_least ? "true" : "false");
        put_json_string(o, d->limit);
        put(o, ", \"cpus\": %lld, \"cpus_from\": ", d->cpus);
        put_json_string(o, d->cpus_from);
        put(o, ", \"count\": %lld}", atomic_load_explicit(&d->count, memory_order_relaxed));
    }
    put(o, "%s],\n", first ? "" : "\n  ");
}

/* What did not fit in a fixed table, or was started without being counted:
 * never silent. */
static void put_json_overflow(struct out *o, const struct tg_counter_block *b) {
    put(o,
        "  \"overflow\": {\"pools_dropped\": %lld, \"library_lookups_unknown\": %lld, "
        "\"start_records_mapped\": %lld, \"threads_uncounted\": %lld, "
        "\"threads_during_init\": %lld},\n",
        atomic_load_explicit(&b->decisions_dropped, memory_order_relaxed),
        atomic_load_explicit(&b->registry_overflow, memory_order_relaxed),
        atomic_load_explicit(&b->records_mapped, memory_order_relaxed),
        atomic_load_explicit(&b->started_uncounted, memory_order_relaxed),
        atomic_load_explicit(&b->started_during_init, memory_order_relaxed));
}

static void put_table_overflow(struct out *o, const struct tg_counter_block *b) {
    long long dropped = atomic_load_explicit(&b->decisions_dropped, memory_order_relaxed);
    long long unknown = atomic_load_explicit(&b->registry_overflow, memory_order_relaxed);
    long long mapped = atomic_load_explicit(&b->records_mapped, memory_order_relaxed);
    long long uncounted = atomic_load_explicit(&b->started_uncounted, memory_order_relaxed);
    long long early = atomic_load_explicit(&b->started_during_init, memory_order_relaxed);
    if (dropped) put(o, "  pool decisions: the table was full; %lld more not listed\n", dropped);
    if (unknown)
        put(o,
            "  libraries: the table was full; %lld lookups of later libraries counted "
            "under (unknown)\n",
            unknown);
    if (mapped) put(o, "  start records: %lld more mapped for threads started at once\n", mapped);
    if (uncounted)
        put(o, "  %lld thread%s started uncounted (no memory for a start record)\n", uncounted,
            tg_s(uncounted));
    if (early)
        put(o, "  %lld thread%s started while threadguard initialised, uncounted\n", early,
            tg_s(early));
}

static const char *error_name(int error) {
    const char *name = tg_errno_name(error);
    return name ? name : "unknown";
}

static const char *error_text(int error) {
    const char *text = tg_errno_text(error);
    return text ? text : "unknown error";
}

/* "failures": [...] - each failed creation with the limits measured then. */
static void put_json_failures(struct out *o) {
    int n = atomic_load_explicit(&tg_failure_count, memory_order_acquire);
    /* Past TG_MAX_FAILURES only the count goes on: failures_total is every
     * one, failures_recorded those listed. */
    put(o, "  \"failures_total\": %d,\n  \"failures_recorded\": %d,\n  \"failures\": [", n,
        n < TG_MAX_FAILURES ? n : TG_MAX_FAILURES);
    if (n > TG_MAX_FAILURES) n = TG_MAX_FAILURES;
    int first = 1;
    for (int i = 0; i < n; i++) {
        const struct tg_failure *f = &tg_failures[i];
        if (!atomic_load_explicit(&f->ready, memory_order_acquire)) continue;
        const struct tg_lib *lib = &tg_libs[f->slot];
        put(o, "%s\n    {\"library\": ", first ? "" : ",");
        first = 0;
        put_json_string(o, f->slot == TG_UNKNOWN_SLOT ? "unknown" : lib->name);
        put(o, ", \"path\": ");
        put_json_string(o, f->slot == TG_UNKNOWN_SLOT ? "" : lib->path);
        put(o,
            ", \"kind\": \"%s\", \"thread\": %lld, \"errno\": %d, \"error\": \"%s\", "
            "\"message\": ",
            tg_kind_name(lib->kind), f->thread, f->error, error_name(f->error));
        put_json_string(o, error_text(f->error));
        put(o, ",\n      \"cause\": ");
        put_json_string(o, f->cause);
        put(o, ", \"stack\": %lld, \"limits\": ", f->stack);
        put_json_headroom(o, &f->h, -1);
        put(o, "}");
    }
    put(o, "%s],\n", first ? "" : "\n  ");
}

#if defined(__x86_64__)
#define TG_ARCH "x86_64"
#elif defined(__aarch64__)
#define TG_ARCH "aarch64"
#else
#define TG_ARCH "other"
#endif

static void put_json_strings(struct out *o, const char *const *items, int n) {
    put(o, "[");
    for (int i = 0; i < n; i++) {
        put(o, "%s", i ? ", " : "");
        put_json_string(o, items[i]);
    }
    put(o, "]");
}

/* "platform": the glibc running, the facilities it lacks that have a
 * fallback, and the promises that cannot be kept on it. */
static void put_json_platform(struct out *o) {
    put(o, "  \"platform\": {\"arch\": \"%s\", \"glibc\": ", TG_ARCH);
    put_json_string(o, tg_glibc.version);
    const char *lines[4];
    put(o, ", \"fallbacks\": ");
    put_json_strings(o, lines, tg_glibc_fallbacks(lines, 4));
    put(o, ", \"limitations\": ");
    put_json_strings(o, lines, tg_glibc_limitations(lines, 4));
    put(o, "},\n");
}

static const char *mode_name(int mode) {
    return mode == THREADGUARD_MODE_PRELOAD  ? "preload"
           : mode == THREADGUARD_MODE_IMPORT ? "import"
                                             : "off";
}

static void write_table(struct out *o, const threadguard_stats *s, const struct subject *who,
                        const char *when);

/* when: "at exit", or "now" for a live snapshot (Python's stats(), or
 * another process read through its file). */
static void write_json(struct out *o, const threadguard_stats *s, const struct subject *who,
                       const char *when) {
    put(o, "{\n  \"threadguard\": \"%s\",\n  \"pid\": %d,\n  \"program\": ",
        THREADGUARD_VERSION_STRING, who->pid);
    put_json_string(o, who->program);
    /* "interposing": threads are being counted, by either mode. */
    put(o, ",\n  \"interposing\": %s,\n  \"mode\": \"%s\",\n",
        who->mode != THREADGUARD_MODE_OFF ? "true" : "false", mode_name(who->mode));
    if (who->doc == NULL) put_json_platform(o);
    put(o, "  \"tasks\": %lld,\n  \"tasks_at_start\": %lld,\n  \"untracked\": %lld,\n",
        threadguard_stats_tasks(s), threadguard_stats_tasks_at_start(s),
        threadguard_stats_untracked(s));
    put(o, "  \"libraries\": [");
    int rows = threadguard_stats_rows(s);
    for (int r = 0; r < rows; r++) {
        put(o, "%s\n    {\"name\": ", r ? "," : "");
        put_json_string(o, threadguard_stats_name(s, r));
        put(o, ", \"path\": ");
        put_json_string(o, threadguard_stats_path(s, r));
        put(o, ", \"kind\": \"%s\", ", threadguard_stats_kind(s, r));
        put_json_counters(o, s, r);
        put(o, "}");
    }
    put(o, "%s],\n  \"total\": {", rows ? "\n  " : "");
    put_json_counters(o, s, THREADGUARD_TOTAL_ROW);
    put(o, "},\n");
    if (who->doc == NULL) put_json_settings(o);
    put_json_pools(o, who->block);
    put_json_overflow(o, who->block);
    if (who->doc == NULL) {
        put_json_failures(o);
        /* What counting the uid's tasks cost this process, before the
         * count the report itself makes. */
        long long walks = tg_uid_task_walks();
        struct tg_headroom now;
        tg_headroom_measure_exact(&now, TG_KIND_UNKNOWN);
        put(o, "  \"headroom\": {\n    \"at_start\": ");
        put_json_headroom(o, &tg_headroom_at_start, -1);
        put(o, ",\n    \"now\": ");
        put_json_headroom(o, &now, walks);
    } else {
        /* platform, settings, applied and failures, as the process wrote
         * them; the headroom now is the process's to measure. */
        put_text(o, who->doc->json);
        put(o, "  \"headroom\": {\n    \"at_start\": ");
        put_text(o, who->doc->at_start[0] ? who->doc->at_start : "{}");
        put(o, ",\n    \"now\": {}");
    }
    /* The human table, written by the same code as the exit table on
     * stderr: `threadguard stats REPORT.json` and Stats.format_table()
     * print it, so there is one formatter. */
    put(o, "\n  },\n  \"table\": \"");
    o->in_string = 1;
    write_table(o, s, who, when);
    o->in_string = 0;
    put(o, "\"\n}\n");
}

static void put_size(struct out *o, long long bytes) {
    if (bytes >= 0 && bytes % (1024 * 1024) == 0)
        put(o, "%lldM", bytes / (1024 * 1024));
    else if (bytes >= 0 && bytes % 1024 == 0)
        put(o, "%lldk", bytes / 1024);
    else
        put(o, "%lld", bytes);
}

static void put_figure(struct out *o, const char *label, long long v) {
    if (v >= 0) put(o, " %s %lld", label, v);
}

static void put_table_pools(struct out *o, const struct tg_counter_block *b) {
    int n = decisions_made(b);
    if (n > 0) {
        put(o, "  pool sizes (value, where it came from):\n");
        for (int i = 0; i < n; i++) {
            const struct tg_decision *d = &b->decisions[i];
            if (!atomic_load_explicit(&d->ready, memory_order_acquire)) continue;
            put(o, "    %-32.32s %-28.28s %4lld  %s", d->library, d->variable, d->value,
                tg_source_name(d->source));
            if (d->source == TG_SOURCE_LIBRARY) put(o, " %s", d->caller);
            if (d->lowered) put(o, ", lowered from %lld", d->requested);
            /* The headroom's limit is named next; a ceiling is named here. */
            if (d->lowered && d->lowered_by[0] && strcmp(d->lowered_by, d->limit) != 0)
                put(o, " by %s", d->lowered_by);
            /* Sized to a share of the CPUs: whose share. */
            if (d->source == TG_SOURCE_THREADGUARD && d->value == d->cpus && d->cpus_from[0] &&
                strcmp(d->cpus_from, "affinity") != 0)
                put(o, ", %lld CPU%s: %s", d->cpus, tg_s(d->cpus), d->cpus_from);
            if (d->free >= 0)
                put(o, " (%s%lld free under %s)", d->free_at_least ? "at least " : "", d->free,
                    d->limit);
            long long count = atomic_load_explicit(&d->count, memory_order_relaxed);
            if (count > 1) put(o, " x%lld", count);
            put(o, "\n");
        }
    }
}

/* The table's lines about settings and start-up: this process's. */
static void write_table_rest(struct out *o) {
    put(o, "  settings:");
    int any = 0;
    for (int i = 0; i < TG_SETTING_COUNT; i++) {
        if (tg_config.source[i] != TG_SOURCE_USER && !tg_config.rejected[i]) continue;
        put(o, " %s=%s%s", tg_setting_name(i), tg_config.raw[i],
            tg_config.rejected[i] ? " (ignored)" : "");
        any = 1;
    }
    put(o, "%s\n  stack ", any ? "" : " none");
    put_size(o, tg_applied.stack);
    put(o, " (%s)", tg_source_name(tg_applied.stack_source));
    long long pool_stack = atomic_load_explicit(&tg_applied.pool_stack, memory_order_relaxed);
    if (pool_stack > 0) {
        put(o, ", pool workers ");
        put_size(o, pool_stack);
        put(o, " (threadguard, RLIMIT_AS)");
    }
    put(o, ", arenas ");
    if (tg_applied.arenas > 0)
        put(o, "%lld", tg_applied.arenas);
    else
        put(o, "unlimited");
    put(o, " (%s)\n", tg_source_name(tg_applied.arenas_source));
    const struct tg_headroom *h = &tg_headroom_at_start;
    put(o, "  headroom at start: %lld CPU%s (%s);", h->cpus, tg_s(h->cpus), h->cpus_from);
    if (h->allocation.sharing.parent > 0)
        put(o, " pid %d's %lld CPU%s shared by %d process%s;", h->allocation.sharing.parent,
            h->allocation.sharing.parent_cpus, tg_s(h->allocation.sharing.parent_cpus),
            h->allocation.sharing.processes, h->allocation.sharing.processes == 1 ? "" : "es");
    if (h->free >= 0)
        put(o, " %s%lld thread%s free under %s;", tg_headroom_free_at_least(h) ? "at least " : "",
            h->free, tg_s(h->free), h->limit);
    put_figure(o, "RLIMIT_NPROC", h->nproc_soft);
    put_figure(o, h->uid_tasks_from == TG_TASKS_COUNTED ? "uid tasks" : "uid tasks at most",
               h->uid_tasks);
    put_figure(o, "pids.max", h->pids_max);
    put_figure(o, "pids.current", h->pids_current);
    put_figure(o, "threads-max", h->threads_max);
    if (h->as_limit >= 0) {
        put(o, " RLIMIT_AS ");
        put_size(o, h->as_limit);
        put(o, " VmSize ");
        put_size(o, h->vmsize);
        put(o, " per thread ");
        put_size(o, h->thread_cost);
    }
    put_figure(o, "THREADGUARD_MAX_THREADS", h->budget);
    put(o, "\n");
    const char *lines[4];
    int count = tg_glibc_limitations(lines, 4);
    for (int i = 0; i < count; i++) put(o, "  glibc %s: %s\n", tg_glibc.version, lines[i]);
}

static void write_table_budget(struct out *o, const struct subject *who) {
    put_table_pools(o, who->block);
    put_table_overflow(o, who->block);
    if (who->doc == NULL)
        write_table_rest(o);
    else
        put_text(o, who->doc->budget);
}

/* Whether threadguard changed anything besides pool sizes: a setting given,
 * something applied at start. */
static int local_acted(void) {
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
static int guard_acted(const struct subject *who) {
    if (decisions_made(who->block) > 0) return 1;
    return who->doc == NULL ? local_acted() : who->doc->acted;
}

static void write_table(struct out *o, const threadguard_stats *s, const struct subject *who,
                        const char *when) {
    const char *program = who->program;
    const char *base = strrchr(program, '/');
    base = base ? base + 1 : program;
    int rows = threadguard_stats_rows(s);
    long long tasks = threadguard_stats_tasks(s);
    int mode = who->mode, pid = who->pid;
    if (mode == THREADGUARD_MODE_OFF) {
        put(o,
            "threadguard: pid %d (%s): not preloaded, threads were not counted; "
            "%lld task%s %s\n",
            pid, base, tasks, tg_s(tasks), when);
        return;
    }
    if (rows == 0 && tasks <= 1) {
        put(o, "threadguard: pid %d (%s): no threads created%s\n", pid, base,
            mode == THREADGUARD_MODE_IMPORT ? " (import mode: GOT slots patched)" : "");
        /* What the guard did still matters (a pool sized to 1 under a full
         * task limit is why no thread was created): say it. */
        if (guard_acted(who)) write_table_budget(o, who);
        return;
    }
    put(o, "threadguard: pid %d (%s): threads by creating library%s, %s\n", pid, base,
        mode == THREADGUARD_MODE_IMPORT ? " (import mode: GOT slots patched)" : "", when);
    put(o, "  %-36s %-9s %8s %6s %6s %7s %7s\n", "library", "kind", "created", "live", "peak",
        "failed", "denied");
    for (int r = 0; r < rows; r++) {
        put(o, "  %-36.36s %-9s", threadguard_stats_name(s, r), threadguard_stats_kind(s, r));
        put(o, " %8lld %6lld %6lld %7lld %7lld", threadguard_stats_get(s, r, THREADGUARD_CREATED),
            threadguard_stats_get(s, r, THREADGUARD_LIVE),
            threadguard_stats_get(s, r, THREADGUARD_PEAK),
            threadguard_stats_get(s, r, THREADGUARD_FAILED),
            threadguard_stats_get(s, r, THREADGUARD_DENIED));
        long long err = threadguard_stats_get(s, r, THREADGUARD_LAST_ERRNO);
        if (err) put(o, "  last error: %s", error_text((int)err));
        put(o, "\n");
    }
    int t = THREADGUARD_TOTAL_ROW;
    put(o, "  %-36s %-9s %8lld %6lld %6lld %7lld %7lld\n", "total", "",
        threadguard_stats_get(s, t, THREADGUARD_CREATED),
        threadguard_stats_get(s, t, THREADGUARD_LIVE),
        threadguard_stats_get(s, t, THREADGUARD_PEAK),
        threadguard_stats_get(s, t, THREADGUARD_FAILED),
        threadguard_stats_get(s, t, THREADGUARD_DENIED));
    put(o,
        "  tasks %s: %lld (main thread + %lld counted live + %lld not seen created; "
        "%lld existed before threadguard started)\n",
        when, tasks, threadguard_stats_get(s, t, THREADGUARD_LIVE), threadguard_stats_untracked(s),
        threadguard_stats_tasks_at_start(s));
    write_table_budget(o, who);
}

/* PATH with every %p replaced by the pid; 0 on success. */
static int expand_path(const char *pattern, char *out, size_t size) {
    size_t used = 0;
    for (const char *p = pattern; *p; p++) {
        char piece[32];
        const char *add = piece;
        if (p[0] == '%' && p[1] == 'p') {
            snprintf(piece, sizeof piece, "%d", (int)getpid());
            p++;
        } else {
            piece[0] = *p;
            piece[1] = '\0';
        }
        size_t n = strlen(add);
        if (used + n >= size) return -1;
        memcpy(out + used, add, n);
        used += n;
    }
    out[used] = '\0';
    return 0;
}

/* One "cannot write the report" line per process, however often the
 * failures file is rewritten. */
static _Atomic int write_warned;

static void warn_unwritable(const char *path, int error, const char *hint) {
    if (atomic_exchange_explicit(&write_warned, 1, memory_order_relaxed)) return;
    tg_warn("cannot write the report THREADGUARD_REPORT='%s': %s%s", path, error_text(error), hint);
}

static void write_body(struct out *o, void (*body)(struct out *, void *), void *ctx) {
    body(o, ctx);
    flush(o);
}

/* Write beside path and rename, so a reader never sees half a file.  What
 * the user put at the path is respected: a symbolic link is followed (its
 * target is replaced, the link stays), and a FIFO or a device is written
 * into, never replaced by a regular file.  o comes in with only its buffer
 * state; fd is set here. */
static void write_file(const char *path, struct out *o, void (*body)(struct out *, void *),
                       void *ctx) {
    char target[1200];
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
        if (realpath(path, target) == NULL) { /* dangling: create what it names */
            o->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (o->fd < 0) return warn_unwritable(path, errno, "");
            write_body(o, body, ctx);
            if (close(o->fd) != 0 && !o->failed) o->failed = errno;
            if (o->failed) warn_unwritable(path, o->failed, "");
            return;
        }
        path = target;
    }
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        /* A FIFO with no reader would block the exit: open without waiting,
         * then write normally. */
        o->fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (o->fd < 0) return warn_unwritable(path, errno, " (nothing reads it)");
        fcntl(o->fd, F_SETFL, fcntl(o->fd, F_GETFL) & ~O_NONBLOCK);
        write_body(o, body, ctx);
        close(o->fd);
        if (o->failed) warn_unwritable(path, o->failed, "");
        return;
    }
    char temp[1300];
    snprintf(temp, sizeof temp, "%s.%d.tmp", path, (int)getpid());
    o->fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (o->fd < 0)
        return warn_unwritable(path, errno, "; set it to 'stderr' or a writable .json path");
    write_body(o, body, ctx);
    if (close(o->fd) != 0 && !o->failed) o->failed = errno;
    if (o->failed == 0 && rename(temp, path) != 0) o->failed = errno;
    if (o->failed) {
        warn_unwritable(path, o->failed, "");
        unlink(temp);
    }
}

/* This process as the subject of its report. */
static struct subject self(void) {
    struct subject who = {(int)getpid(), tg_program_path(), tg_mode(), tg_block, NULL};
    return who;
}

struct report_ctx {
    const threadguard_stats *s;
    const struct subject *who;
};

static void report_body(struct out *o, void *p) {
    const struct report_ctx *ctx = p;
    write_json(o, ctx->s, ctx->who, "at exit");
}

static void report_json(const threadguard_stats *s, const struct subject *who) {
    char path[1100];
    if (expand_path(tg_config.report_path, path, sizeof path) != 0) {
        tg_warn("THREADGUARD_REPORT: path too long after expanding %%p; no report written");
        return;
    }
    static struct out o;
    memset(&o, 0, sizeof o);
    o.fd = -1;
    struct report_ctx ctx = {s, who};
    write_file(path, &o, report_body, &ctx);
}

static void failures_body(struct out *o, void *ctx) {
    (void)ctx;
    put(o, "{\n  \"threadguard\": \"%s\",\n  \"pid\": %d,\n", THREADGUARD_VERSION_STRING,
        (int)getpid());
    put_json_failures(o);
    put(o, "  \"complete\": false\n}\n");
}

/* The failures file: one writer at a time, in a static buffer (the create
 * path may run on a small stack and must not allocate).  A failure that
 * comes while another thread writes marks the file dirty and the writer
 * goes round again. */
static struct out failures_out;
static _Atomic int failures_writing, failures_dirty;

void tg_report_failures_now(void) {
    if (tg_config.report_mode != TG_REPORT_JSON) return;
    if (tg_is_forked_child() && strstr(tg_config.report_path, "%p") == NULL) return;
    atomic_store_explicit(&failures_dirty, 1, memory_order_release);
    if (atomic_exchange_explicit(&failures_writing, 1, memory_order_acquire)) return;
    char path[1100];
    size_t n;
    if (expand_path(tg_config.report_path, path, sizeof path) == 0 && (n = strlen(path)) > 5 &&
        n + 10 < sizeof path) {
        /* PATH.json -> PATH.failures.json */
        memcpy(path + n - 5, ".failures.json", sizeof ".failures.json");
        while (atomic_exchange_explicit(&failures_dirty, 0, memory_order_acq_rel)) {
            memset(&failures_out, 0, sizeof failures_out);
            write_file(path, &failures_out, failures_body, NULL);
        }
    }
    atomic_store_explicit(&failures_writing, 0, memory_order_release);
}

long long tg_report_json(char *buffer, size_t size) {
    if (buffer == NULL && size != 0)
        return tg_set_error(THREADGUARD_EINVAL, "threadguard_report_json: buffer is NULL") * -1LL;
    threadguard_stats *s = NULL;
    if (tg_stats_take(&s) != THREADGUARD_OK) return -(long long)THREADGUARD_ENOMEM;
    struct subject who = self();
    struct out *o = calloc(1, sizeof *o);
    if (o == NULL) {
        threadguard_stats_free(s);
        return -(long long)tg_set_error(THREADGUARD_ENOMEM,
                                        "threadguard_report_json: out of memory");
    }
    o->fd = -1;
    o->mem = buffer;
    o->mem_size = size;
    write_json(o, s, &who, "now");
    flush(o);
    long long total = (long long)o->mem_total;
    free(o);
    threadguard_stats_free(s);
    tg_clear_error();
    return total;
}

void tg_report_at_exit(void) {
    int mode = tg_config.report_mode;
    if (mode == TG_REPORT_OFF) return;
    /* A fork()ed child shares its parent's report; it writes its own only
     * where the path asks for one per process. */
    if (tg_is_forked_child() &&
        !(mode == TG_REPORT_JSON && strstr(tg_config.report_path, "%p") != NULL))
        return;
    int saved_errno = errno;
    const threadguard_stats *s = tg_stats_at_exit();
    struct subject who = self();
    if (mode == TG_REPORT_STDERR) {
        static struct out o; /* 8 KiB: static, the stack may be small */
        memset(&o, 0, sizeof o);
        o.fd = STDERR_FILENO;
        write_table(&o, s, &who, "at exit");
        flush(&o);
    } else {
        report_json(s, &who);
    }
    errno = saved_errno;
}

/* ---- the published document ------------------------------------------ */

/* One text of the document at doc + *at, NUL-terminated; 0 when it fit. */
static int render_part(struct out *o, char *doc, size_t size, size_t *at,
                       void (*body)(struct out *)) {
    memset(o, 0, sizeof *o);
    o->fd = -1;
    o->mem = doc + *at;
    o->mem_size = size - *at;
    body(o);
    flush(o);
    if (o->mem_total + 1 >= o->mem_size) return -1;
    *at += o->mem_total + 1;
    return 0;
}

static void doc_json(struct out *o) {
    put_json_platform(o);
    put_json_settings(o);
    put_json_failures(o);
}

static void doc_at_start(struct out *o) { put_json_headroom(o, &tg_headroom_at_start, -1); }

static void doc_truncated(struct out *o) { put(o, "  \"document_truncated\": true,\n"); }

static void doc_empty(struct out *o) { (void)o; }

static _Atomic unsigned long long rendered;

/* Rewrite the document in this process's file (one writer at a time, in
 * static storage: a failed creation calls this from the create path). */
void tg_report_publish(void) {
    size_t size;
    char *doc = tg_publish_doc_begin(&size);
    if (doc == NULL) return;
    static struct out o;
    int again;
    do {
        atomic_store_explicit(&rendered, tg_publish_generation(), memory_order_release);
        size_t at = 0, at_start = 0, budget = 0;
        if (render_part(&o, doc, size, &at, doc_json) != 0 ||
            (at_start = at, render_part(&o, doc, size, &at, doc_at_start)) != 0 ||
            (budget = at, render_part(&o, doc, size, &at, write_table_rest)) != 0) {
            /* 64 failures with their limits fit many times over; should
             * the document not, readers get the counters and say so. */
            at = 0;
            render_part(&o, doc, size, &at, doc_truncated);
            at_start = at;
            render_part(&o, doc, size, &at, doc_empty);
            budget = at;
            render_part(&o, doc, size, &at, doc_empty);
        }
        again = tg_publish_doc_end((unsigned)at_start, (unsigned)budget, (unsigned)at,
                                   local_acted(), tg_mode(), tg_tasks_at_start());
    } while (again);
}

void tg_report_publish_if_stale(void) {
    if (atomic_load_explicit(&rendered, memory_order_acquire) != tg_publish_generation())
        tg_report_publish();
}

long long tg_report_published_json(const char *path, char *buffer, size_t size) {
    if (buffer == NULL && size != 0)
        return -(long long)tg_set_error(THREADGUARD_EINVAL,
                                        "threadguard_read_published: buffer is NULL");
    struct tg_published *copy = malloc(sizeof *copy);
    struct out *o = calloc(1, sizeof *o);
    threadguard_stats *s = NULL;
    long long result;
    if (copy == NULL || o == NULL) {
        result = -(long long)tg_set_error(THREADGUARD_ENOMEM,
                                          "threadguard_read_published: out of memory");
    } else if (tg_publish_read(path, copy) != THREADGUARD_OK) {
        result = -(long long)THREADGUARD_EINVAL;
    } else {
        int pid = copy->header.pid;
        struct tg_doc_view doc;
        tg_publish_doc_view(copy, &doc);
        struct subject who = {pid, copy->header.program, copy->header.mode, &copy->block, &doc};
        if (tg_stats_of_block(&s, &copy->block, tg_count_tasks_of(pid),
                              copy->header.tasks_at_start) != THREADGUARD_OK) {
            result = -(long long)THREADGUARD_ENOMEM;
        } else {
            o->fd = -1;
            o->mem = buffer;
            o->mem_size = size;
            write_json(o, s, &who, "now");
            flush(o);
            result = (long long)o->mem_total;
            tg_clear_error();
        }
    }
    threadguard_stats_free(s);
    free(o);
    free(copy);
    return result;
}
