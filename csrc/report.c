/* THREADGUARD_REPORT: the counters at exit, as a table on stderr or as JSON
 * in a file.  Runs from the library's destructor; it must never fail its
 * host, so every error becomes one line on stderr.
 *
 * The same writers serve another process's report, read from the file it
 * publishes (publish.c): the counters and pool decisions from its counter
 * block, the rest from the document it keeps there, which this file also
 * writes (tg_report_publish).
 *
 * The writers are in files of their own: output.c (the buffered writer),
 * report_json.c (JSON), report_table.c (the table), report_file.c (a
 * file written whole).  This file chooses what to write where: the exit
 * report, the failures file, threadguard_report_json, the published
 * document and another process's report.
 *
 * Layer: output.  Calls the writers above, stats.c, publish.c, threads.c,
 * config.c and error.c. */
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
#include "output.h"
#include "procfs.h"
#include "publish.h"
#include "registry.h"
#include "report_file.h"
#include "report_json.h"
#include "report_table.h"
#include "stats.h"
#include "threads.h"

/* This process as the subject of its report. */
static struct tg_report_subject self(void) {
    struct tg_report_subject who = {(int)getpid(), tg_program_path(), tg_mode(), tg_block, NULL};
    return who;
}

struct report_ctx {
    const threadguard_stats *s;
    const struct tg_report_subject *who;
};

static void report_body(struct tg_out *o, void *p) {
    const struct report_ctx *ctx = p;
    tg_write_json(o, ctx->s, ctx->who, "at exit");
}

static void report_json(const threadguard_stats *s, const struct tg_report_subject *who) {
    char path[1100];
    if (tg_report_expand_path(tg_config.report_path, path, sizeof path) != 0) {
        tg_warn("THREADGUARD_REPORT: path too long after expanding %%p; no report written");
        return;
    }
    static struct tg_out o;
    memset(&o, 0, sizeof o);
    o.fd = -1;
    struct report_ctx ctx = {s, who};
    tg_report_write_file(path, &o, report_body, &ctx);
}

static void failures_body(struct tg_out *o, void *ctx) {
    (void)ctx;
    tg_put(o, "{\n  \"threadguard\": \"%s\",\n  \"pid\": %d,\n", THREADGUARD_VERSION_STRING,
           (int)getpid());
    tg_put_json_failures(o);
    tg_put(o, "  \"complete\": false\n}\n");
}

/* The failures file: one writer at a time, in a static buffer (the create
 * path may run on a small stack and must not allocate).  A failure that
 * comes while another thread writes marks the file dirty and the writer
 * goes round again. */
static struct tg_out failures_out;
static _Atomic int failures_writing, failures_dirty;

void tg_report_failures_now(void) {
    if (tg_config.report_mode != TG_REPORT_JSON) return;
    if (tg_is_forked_child() && strstr(tg_config.report_path, "%p") == NULL) return;
    atomic_store_explicit(&failures_dirty, 1, memory_order_release);
    if (atomic_exchange_explicit(&failures_writing, 1, memory_order_acquire)) return;
    char path[1100];
    size_t n;
    if (tg_report_expand_path(tg_config.report_path, path, sizeof path) == 0 &&
        (n = strlen(path)) > 5 && n + 10 < sizeof path) {
        /* PATH.json -> PATH.failures.json */
        memcpy(path + n - 5, ".failures.json", sizeof ".failures.json");
        while (atomic_exchange_explicit(&failures_dirty, 0, memory_order_acq_rel)) {
            memset(&failures_out, 0, sizeof failures_out);
            tg_report_write_file(path, &failures_out, failures_body, NULL);
        }
    }
    atomic_store_explicit(&failures_writing, 0, memory_order_release);
}

long long tg_report_json(char *buffer, size_t size) {
    if (buffer == NULL && size != 0)
        return tg_set_error(THREADGUARD_EINVAL, "threadguard_report_json: buffer is NULL") * -1LL;
    threadguard_stats *s = NULL;
    if (tg_stats_take(&s) != THREADGUARD_OK) return -(long long)THREADGUARD_ENOMEM;
    struct tg_report_subject who = self();
    struct tg_out *o = calloc(1, sizeof *o);
    if (o == NULL) {
        threadguard_stats_free(s);
        return -(long long)tg_set_error(THREADGUARD_ENOMEM,
                                        "threadguard_report_json: out of memory");
    }
    o->fd = -1;
    o->mem = buffer;
    o->mem_size = size;
    tg_write_json(o, s, &who, "now");
    tg_out_flush(o);
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
    struct tg_report_subject who = self();
    if (mode == TG_REPORT_STDERR) {
        static struct tg_out o; /* 8 KiB: static, the stack may be small */
        memset(&o, 0, sizeof o);
        o.fd = STDERR_FILENO;
        tg_write_table(&o, s, &who, "at exit");
        tg_out_flush(&o);
    } else {
        report_json(s, &who);
    }
    errno = saved_errno;
}

/* ---- the published document ------------------------------------------ */

/* One text of the document at doc + *at, NUL-terminated; 0 when it fit. */
static int render_part(struct tg_out *o, char *doc, size_t size, size_t *at,
                       void (*body)(struct tg_out *)) {
    memset(o, 0, sizeof *o);
    o->fd = -1;
    o->mem = doc + *at;
    o->mem_size = size - *at;
    body(o);
    tg_out_flush(o);
    if (o->mem_total + 1 >= o->mem_size) return -1;
    *at += o->mem_total + 1;
    return 0;
}

static void doc_json(struct tg_out *o) {
    tg_put_json_platform(o);
    tg_put_json_job(o);
    tg_put_json_settings(o);
    tg_put_json_failures(o);
}

static void doc_at_start(struct tg_out *o) { tg_put_json_headroom(o, &tg_headroom_at_start, -1); }

static void doc_truncated(struct tg_out *o) { tg_put(o, "  \"document_truncated\": true,\n"); }

static void doc_empty(struct tg_out *o) { (void)o; }

static _Atomic unsigned long long rendered;

/* Rewrite the document in this process's file (one writer at a time, in
 * static storage: a failed creation calls this from the create path). */
void tg_report_publish(void) {
    size_t size;
    char *doc = tg_publish_doc_begin(&size);
    if (doc == NULL) return;
    static struct tg_out o;
    int again;
    do {
        atomic_store_explicit(&rendered, tg_publish_generation(), memory_order_release);
        size_t at = 0, at_start = 0, budget = 0;
        if (render_part(&o, doc, size, &at, doc_json) != 0 ||
            (at_start = at, render_part(&o, doc, size, &at, doc_at_start)) != 0 ||
            (budget = at, render_part(&o, doc, size, &at, tg_write_table_rest)) != 0) {
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
                                   tg_report_local_acted(), tg_mode(), tg_tasks_at_start());
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
    struct tg_out *o = calloc(1, sizeof *o);
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
        struct tg_report_subject who = {pid, copy->header.program, copy->header.mode, &copy->block,
                                        &doc};
        if (tg_stats_of_block(&s, &copy->block, tg_count_tasks_of(pid),
                              copy->header.tasks_at_start) != THREADGUARD_OK) {
            result = -(long long)THREADGUARD_ENOMEM;
        } else {
            o->fd = -1;
            o->mem = buffer;
            o->mem_size = size;
            tg_write_json(o, s, &who, "now");
            tg_out_flush(o);
            result = (long long)o->mem_total;
            tg_clear_error();
        }
    }
    threadguard_stats_free(s);
    free(o);
    free(copy);
    return result;
}
