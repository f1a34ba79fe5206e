/* report_table.c: the report as the table people read (output). */
#ifndef THREADGUARD_REPORT_TABLE_H
#define THREADGUARD_REPORT_TABLE_H

#include "common.h"
#include "glibc.h"
#include "output.h"
#include "registry.h"

/* Whose report this is: this process (doc NULL: its state is read
 * directly), or another one read from its published file. */
struct tg_report_subject {
    int pid;
    const char *program;
    int mode;
    const struct tg_counter_block *block;
    const struct tg_doc_view *doc;
};

/* Pool decisions recorded (the table holds TG_MAX_DECISIONS). */
static inline int tg_decisions_made(const struct tg_counter_block *b) {
    int n = atomic_load_explicit(&b->decision_count, memory_order_acquire);
    return n < TG_MAX_DECISIONS ? n : TG_MAX_DECISIONS;
}

/* An errno's name and text, never NULL. */
static inline const char *tg_report_error_name(int error) {
    const char *name = tg_errno_name(error);
    return name ? name : "unknown";
}

static inline const char *tg_report_error_text(int error) {
    const char *text = tg_errno_text(error);
    return text ? text : "unknown error";
}

/* The table; when: "at exit" or "now". */
TG_HIDDEN void tg_write_table(struct tg_out *o, const threadguard_stats *s,
                              const struct tg_report_subject *who, const char *when);
/* The table's lines about settings and start-up: this process's. */
TG_HIDDEN void tg_write_table_rest(struct tg_out *o);
/* Whether threadguard changed anything besides pool sizes here. */
TG_HIDDEN int tg_report_local_acted(void);

#endif
