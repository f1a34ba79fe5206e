/* Per-thread error messages and stderr warnings, without allocation.
 *
 * Every byte threadguard writes goes through tg_write_quietly: a write to a
 * pipe whose reader has gone must not deliver SIGPIPE to the host (the
 * program would die of a report it never asked to depend on), and stderr
 * is written only while fd 2 is still the file it was at start (a program
 * that closes fd 2 and opens a data file must not find our table in it).
 *
 * Layer: helper.  Calls nothing of threadguard's. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.h"

/* initial-exec: static TLS, so reading it never allocates even when the
 * library was dlopen'ed after the thread started. */
static __thread char tg_error_message[512] __attribute__((tls_model("initial-exec")));

int tg_set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tg_error_message, sizeof tg_error_message, fmt, ap);
    va_end(ap);
    return code;
}

void tg_clear_error(void) { tg_error_message[0] = '\0'; }

THREADGUARD_API const char *threadguard_last_error(void) { return tg_error_message; }

/* ---- stderr as it was at start ------------------------------------------ */

static struct {
    _Atomic int known; /* 1: identity recorded; -1: fd 2 was not open */
    dev_t dev;
    ino_t ino;
} start_stderr;

void tg_stderr_remember(void) {
    struct stat st;
    if (fstat(STDERR_FILENO, &st) != 0) {
        atomic_store_explicit(&start_stderr.known, -1, memory_order_release);
        return;
    }
    start_stderr.dev = st.st_dev;
    start_stderr.ino = st.st_ino;
    atomic_store_explicit(&start_stderr.known, 1, memory_order_release);
}

int tg_stderr_unchanged(void) {
    int known = atomic_load_explicit(&start_stderr.known, memory_order_acquire);
    if (known == 0) return 1; /* before initialisation: nothing to compare with */
    if (known < 0) return 0;
    struct stat st;
    return fstat(STDERR_FILENO, &st) == 0 && st.st_dev == start_stderr.dev &&
           st.st_ino == start_stderr.ino;
}

/* ---- writes that raise no signal ----------------------------------------- */

/* SIGPIPE is blocked in this thread for the write; one we raised ourselves
 * (EPIPE, and none was pending before) is taken back off the pending set,
 * so the host never sees it.  Every call here is async-signal-safe. */
int tg_write_quietly(int fd, const char *buf, size_t len) {
    sigset_t pipe_only, old, pending;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    int was_pending = 0;
    if (sigpending(&pending) == 0) was_pending = sigismember(&pending, SIGPIPE) == 1;
    int masked = pthread_sigmask(SIG_BLOCK, &pipe_only, &old) == 0;
    int error = 0;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, buf + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            error = n < 0 ? errno : EIO;
            break;
        }
        done += (size_t)n;
    }
    if (masked) {
        if (error == EPIPE && !was_pending) {
            struct timespec zero = {0, 0};
            int saved = errno;
            while (sigtimedwait(&pipe_only, NULL, &zero) < 0 && errno == EINTR) {}
            errno = saved;
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    return error;
}

int tg_write_stderr(const char *buf, size_t len) {
    if (!tg_stderr_unchanged()) return EBADF;
    return tg_write_quietly(STDERR_FILENO, buf, len);
}

void tg_warn(const char *fmt, ...) {
    char line[1024];
    int n = snprintf(line, sizeof line, "threadguard: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    line[len++] = '\n';
    /* One write() so lines from concurrent processes do not interleave. */
    int saved = errno;
    tg_write_stderr(line, len);
    errno = saved;
}
