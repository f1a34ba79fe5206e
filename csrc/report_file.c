/* Writing a report file so that a reader never sees half of one: beside
 * the path, then renamed; links followed, FIFOs and devices written into.
 * Every error becomes one line on stderr, once per process.
 *
 * Layer: output.  Calls output.c, error.c and glibc.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "report_file.h"

#include "error.h"
#include "report_table.h"

/* PATH with every %p replaced by the pid; 0 on success. */
int tg_report_expand_path(const char *pattern, char *out, size_t size) {
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
    tg_warn("cannot write the report THREADGUARD_REPORT='%s': %s%s", path,
            tg_report_error_text(error), hint);
}

static void write_body(struct tg_out *o, void (*body)(struct tg_out *, void *), void *ctx) {
    body(o, ctx);
    tg_out_flush(o);
}

/* Write beside path and rename, so a reader never sees half a file.  What
 * the user put at the path is respected: a symbolic link is followed (its
 * target is replaced, the link stays), and a FIFO or a device is written
 * into, never replaced by a regular file.  o comes in with only its buffer
 * state; fd is set here. */
void tg_report_write_file(const char *path, struct tg_out *o, void (*body)(struct tg_out *, void *),
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
