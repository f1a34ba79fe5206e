/* output.c: the buffered writer the reports are written with (helper). */
#ifndef THREADGUARD_OUTPUT_H
#define THREADGUARD_OUTPUT_H

#include <stddef.h>

#include "common.h"

/* Output goes to a file descriptor, or (fd < 0) into mem, counting what
 * did not fit so the caller can ask again with a bigger buffer. */
struct tg_out {
    int fd;
    int failed;
    size_t used;
    char *mem;
    size_t mem_size;
    size_t mem_total;
    int in_string; /* tg_put() output goes inside a JSON string: escape it */
    char buf[8192];
};

/* Write out what is buffered (to the descriptor, or into mem). */
TG_HIDDEN void tg_out_flush(struct tg_out *o);
TG_HIDDEN void tg_out_append(struct tg_out *o, const char *text, size_t len);
/* printf into the output (escaped while o->in_string). */
TG_HIDDEN void tg_put(struct tg_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Text that may be longer than tg_put()'s line. */
TG_HIDDEN void tg_put_text(struct tg_out *o, const char *text);
/* JSON values: a string, a string or null, "key": number-or-null + sep,
 * a list of strings. */
TG_HIDDEN void tg_put_json_string(struct tg_out *o, const char *str);
TG_HIDDEN void tg_put_json_string_or_null(struct tg_out *o, const char *str);
TG_HIDDEN void tg_put_json_number(struct tg_out *o, const char *key, long long v, const char *sep);
TG_HIDDEN void tg_put_json_strings(struct tg_out *o, const char *const *items, int n);
/* A size in bytes as 512k, 8M or a plain number. */
TG_HIDDEN void tg_put_size(struct tg_out *o, long long bytes);

#endif
