/* The buffered writer every report is written with: into a file
 * descriptor, or into a caller's buffer (counting what did not fit), with
 * JSON strings escaped.  Never allocates.
 *
 * Layer: helper.  Calls error.c. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "output.h"

#include "error.h"

static void append_escaped(struct tg_out *o, const char *text);

void tg_out_flush(struct tg_out *o) {
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

void tg_out_append(struct tg_out *o, const char *text, size_t len) {
    if (o->used + len > sizeof o->buf) tg_out_flush(o);
    memcpy(o->buf + o->used, text, len);
    o->used += len;
}

void tg_put(struct tg_out *o, const char *fmt, ...) {
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (o->in_string)
        append_escaped(o, line);
    else
        tg_out_append(o, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
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
static void append_escaped(struct tg_out *o, const char *text) {
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
        tg_out_append(o, piece, strlen(piece));
        s += n;
    }
}

/* Text that may be longer than tg_put()'s line. */
void tg_put_text(struct tg_out *o, const char *text) {
    if (o->in_string)
        append_escaped(o, text);
    else
        tg_out_append(o, text, strlen(text));
}

void tg_put_json_string(struct tg_out *o, const char *str) {
    tg_out_append(o, "\"", 1);
    append_escaped(o, str);
    tg_out_append(o, "\"", 1);
}

void tg_put_json_string_or_null(struct tg_out *o, const char *str) {
    if (str == NULL)
        tg_put(o, "null");
    else
        tg_put_json_string(o, str);
}

void tg_put_json_number(struct tg_out *o, const char *key, long long v, const char *sep) {
    if (v < 0)
        tg_put(o, "\"%s\": null%s", key, sep);
    else
        tg_put(o, "\"%s\": %lld%s", key, v, sep);
}

void tg_put_json_strings(struct tg_out *o, const char *const *items, int n) {
    tg_put(o, "[");
    for (int i = 0; i < n; i++) {
        tg_put(o, "%s", i ? ", " : "");
        tg_put_json_string(o, items[i]);
    }
    tg_put(o, "]");
}

void tg_put_size(struct tg_out *o, long long bytes) {
    if (bytes >= 0 && bytes % (1024 * 1024) == 0)
        tg_put(o, "%lldM", bytes / (1024 * 1024));
    else if (bytes >= 0 && bytes % 1024 == 0)
        tg_put(o, "%lldk", bytes / 1024);
    else
        tg_put(o, "%lld", bytes);
}
