/* Per-thread error messages and stderr warnings, without allocation. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

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
    ssize_t ignored = write(STDERR_FILENO, line, len);
    (void)ignored;
}
