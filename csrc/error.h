/* error.c: per-thread error messages and stderr warnings (a helper: calls nothing). */
#ifndef THREADGUARD_ERROR_H
#define THREADGUARD_ERROR_H

#include "common.h"

TG_HIDDEN int tg_set_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
TG_HIDDEN void tg_clear_error(void);
/* One line on stderr, prefixed "threadguard: ", without allocating.  Never
 * raises SIGPIPE; silent once fd 2 is no longer the stderr of the start. */
TG_HIDDEN void tg_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Where tg_warn writes (THREADGUARD_OUTPUT); path: the file, or the syslog
 * socket. */
enum tg_output_kind { TG_OUTPUT_STDERR = 0, TG_OUTPUT_OFF, TG_OUTPUT_FILE, TG_OUTPUT_SYSLOG };
#define TG_OUTPUT_PATH_MAX 256
TG_HIDDEN void tg_output_set(int kind, const char *path);
/* Record which file fd 2 is (at initialisation). */
TG_HIDDEN void tg_stderr_remember(void);
/* 1 while fd 2 is still the file it was at initialisation. */
TG_HIDDEN int tg_stderr_unchanged(void);
/* Write all of buf to fd without raising SIGPIPE; 0 or the errno. */
TG_HIDDEN int tg_write_quietly(int fd, const char *buf, size_t len);
/* tg_write_quietly to fd 2, only while it is the stderr of the start. */
TG_HIDDEN int tg_write_stderr(const char *buf, size_t len);

#endif
