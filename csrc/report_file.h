/* report_file.c: writing a report file whole (output). */
#ifndef THREADGUARD_REPORT_FILE_H
#define THREADGUARD_REPORT_FILE_H

#include <stddef.h>

#include "common.h"
#include "output.h"

/* PATH with every %p replaced by the pid; 0 on success. */
TG_HIDDEN int tg_report_expand_path(const char *pattern, char *out, size_t size);
/* Write body(o, ctx) to path beside it and rename (see report_file.c);
 * one line on stderr if it cannot be written. */
TG_HIDDEN void tg_report_write_file(const char *path, struct tg_out *o,
                                    void (*body)(struct tg_out *, void *), void *ctx);

#endif
