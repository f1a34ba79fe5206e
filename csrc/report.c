/* THREADGUARD_REPORT: the counters at exit, as a table on stderr or as JSON
 * in a file.  Runs from the library's destructor; it must never fail its
 * host, so every error becomes one line on stderr. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

struct out {
    int fd;
    int failed;
    size_t used;
    char buf[8192];
};

static void flush(struct out *o) {
    size_t done = 0;
    while (done < o->used && !o->failed) {
        ssize_t n = write(o->fd, o->buf + done, o->used - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) o->failed = errno ? errno : EIO;
        else done += (size_t)n;
    }
    o->used = 0;
}

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...) {
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    if (o->used + len > sizeof o->buf) flush(o);
    memcpy(o->buf + o->used, line, len);
    o->used += len;
}

/* A JSON string: quotes, backslashes and control characters escaped; other
 * bytes pass through (paths are UTF-8 in practice). */
static void put_json_string(struct out *o, const char *s) {
    put(o, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') put(o, "\\%c", c);
        else if (c < 0x20) put(o, "\\u%04x", c);
        else put(o, "%c", c);
    }
    put(o, "\"");
}

static const char *const field_names[THREADGUARD_FIELD_COUNT] = {
    "created", "live", "peak", "failed", "denied", "last_errno"};

static void put_json_counters(struct out *o, const threadguard_stats *s, int row) {
    for (int f = 0; f < THREADGUARD_FIELD_COUNT; f++)
        put(o, "%s\"%s\": %lld", f ? ", " : "", field_names[f], threadguard_stats_get(s, row, f));
}

static void write_json(struct out *o, const threadguard_stats *s, const char *program) {
    put(o, "{\n  \"threadguard\": \"%s\",\n  \"pid\": %d,\n  \"program\": ",
        THREADGUARD_VERSION_STRING, (int)getpid());
    put_json_string(o, program);
    put(o, ",\n  \"interposing\": %s,\n", threadguard_interposing() ? "true" : "false");
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
    put(o, "}\n}\n");
}

static void write_table(struct out *o, const threadguard_stats *s, const char *program) {
    const char *base = strrchr(program, '/');
    base = base ? base + 1 : program;
    int rows = threadguard_stats_rows(s);
    long long tasks = threadguard_stats_tasks(s);
    if (!threadguard_interposing()) {
        put(o, "threadguard: pid %d (%s): not preloaded, threads were not counted; "
               "%lld tasks at exit\n", (int)getpid(), base, tasks);
        return;
    }
    if (rows == 0 && tasks <= 1) {
        put(o, "threadguard: pid %d (%s): no threads created\n", (int)getpid(), base);
        return;
    }
    put(o, "threadguard: pid %d (%s): threads by creating library, at exit\n", (int)getpid(),
        base);
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
        if (err) put(o, "  last error: %s", strerror((int)err));
        put(o, "\n");
    }
    int t = THREADGUARD_TOTAL_ROW;
    put(o, "  %-36s %-9s %8lld %6lld %6lld %7lld %7lld\n", "total", "",
        threadguard_stats_get(s, t, THREADGUARD_CREATED), threadguard_stats_get(s, t, THREADGUARD_LIVE),
        threadguard_stats_get(s, t, THREADGUARD_PEAK), threadguard_stats_get(s, t, THREADGUARD_FAILED),
        threadguard_stats_get(s, t, THREADGUARD_DENIED));
    put(o, "  tasks at exit: %lld (main thread + %lld counted live + %lld not seen created; "
           "%lld existed before threadguard started)\n",
        tasks, threadguard_stats_get(s, t, THREADGUARD_LIVE), threadguard_stats_untracked(s),
        threadguard_stats_tasks_at_start(s));
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

static void report_json(const threadguard_stats *s, const char *program) {
    char path[1100], temp[1200];
    if (expand_path(tg_config.report_path, path, sizeof path) != 0) {
        tg_warn("THREADGUARD_REPORT: path too long after expanding %%p; no report written");
        return;
    }
    /* Write beside the target and rename, so a reader never sees half a file. */
    snprintf(temp, sizeof temp, "%s.%d.tmp", path, (int)getpid());
    struct out o = {.fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
    if (o.fd < 0) {
        tg_warn("cannot write the report THREADGUARD_REPORT='%s': %s; set it to 'stderr' or a "
                "writable .json path",
                path, strerror(errno));
        return;
    }
    write_json(&o, s, program);
    flush(&o);
    if (close(o.fd) != 0 && !o.failed) o.failed = errno;
    if (o.failed == 0 && rename(temp, path) != 0) o.failed = errno;
    if (o.failed) {
        tg_warn("cannot write the report THREADGUARD_REPORT='%s': %s", path, strerror(o.failed));
        unlink(temp);
    }
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
    threadguard_stats *s = NULL;
    if (threadguard_stats_take(&s) != THREADGUARD_OK) {
        tg_warn("no report: %s", threadguard_last_error());
        errno = saved_errno;
        return;
    }
    char program[512];
    tg_exe_path(program, sizeof program);
    if (mode == TG_REPORT_STDERR) {
        struct out o = {.fd = STDERR_FILENO};
        write_table(&o, s, program);
        flush(&o);
    } else {
        report_json(s, program);
    }
    threadguard_stats_free(s);
    errno = saved_errno;
}
