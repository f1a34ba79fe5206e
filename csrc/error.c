/* Per-thread error messages and warnings, without allocation.
 *
 * Warnings go where THREADGUARD_OUTPUT says: stderr (the default), nowhere,
 * a file (appended, one line per warning, opened and closed each time so
 * that no descriptor stays open in the host), or syslog (a datagram to
 * /dev/log, or the socket given, written by hand: glibc's syslog() takes a
 * lock and allocates).  File and syslog lines name the program and pid,
 * since they mix many processes.
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
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
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

/* ---- where warnings go ---------------------------------------------------- */

static _Atomic int output_kind = TG_OUTPUT_STDERR;
static char output_path[TG_OUTPUT_PATH_MAX];

void tg_output_set(int kind, const char *path) {
    if (path != NULL) {
        size_t n = strlen(path);
        if (n >= sizeof output_path) return;
        memcpy(output_path, path, n + 1);
    }
    atomic_store_explicit(&output_kind, kind, memory_order_release);
}

/* The program's name as it was executed (the auxiliary vector: no read). */
static const char *program_name(void) {
    const char *path = (const char *)getauxval(AT_EXECFN);
    if (path == NULL) return "?";
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static void append_to_file(const char *line, size_t len) {
    int fd = open(output_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
    if (fd < 0) return;
    char head[160];
    int n = snprintf(head, sizeof head, "%.64s[%d]: ", program_name(), (int)getpid());
    if (n > 0 && (size_t)n < sizeof head && len < 1024) {
        char whole[1200];
        memcpy(whole, head, (size_t)n);
        memcpy(whole + n, line, len);
        tg_write_quietly(fd, whole, (size_t)n + len); /* one write: lines stay whole */
    }
    close(fd);
}

/* RFC 3164 without a timestamp (the daemon adds one): user facility,
 * warning severity. */
static void send_to_syslog(const char *line, size_t len) {
    struct sockaddr_un to;
    memset(&to, 0, sizeof to);
    to.sun_family = AF_UNIX;
    size_t path = strlen(output_path);
    if (path >= sizeof to.sun_path) return;
    memcpy(to.sun_path, output_path, path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    char datagram[1200];
    int n = snprintf(datagram, sizeof datagram, "<12>threadguard[%d]: %.64s: %.*s", (int)getpid(),
                     program_name(), (int)(len > 0 ? len - 1 : 0), line);
    if (n > 0)
        sendto(fd, datagram, (size_t)n < sizeof datagram ? (size_t)n : sizeof datagram - 1,
               MSG_NOSIGNAL | MSG_DONTWAIT, (const struct sockaddr *)&to, sizeof to);
    close(fd);
}

void tg_warn(const char *fmt, ...) {
    int kind = atomic_load_explicit(&output_kind, memory_order_acquire);
    if (kind == TG_OUTPUT_OFF) return;
    char line[1024];
    int n = snprintf(line, sizeof line, "threadguard: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    line[len++] = '\n';
    int saved = errno;
    if (kind == TG_OUTPUT_FILE)
        append_to_file(line, len);
    else if (kind == TG_OUTPUT_SYSLOG)
        send_to_syslog(line, len);
    else
        tg_write_stderr(line, len); /* one write() so lines from processes do not interleave */
    errno = saved;
}
