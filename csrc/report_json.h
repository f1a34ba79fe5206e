/* report_json.c: the report as JSON (output). */
#ifndef THREADGUARD_REPORT_JSON_H
#define THREADGUARD_REPORT_JSON_H

#include "common.h"
#include "limits.h"
#include "output.h"
#include "report_table.h"

/* The whole report; when: "at exit", or "now" for a live snapshot
 * (Python's stats(), or another process read through its file). */
TG_HIDDEN void tg_write_json(struct tg_out *o, const threadguard_stats *s,
                             const struct tg_report_subject *who, const char *when);
/* Its parts that the published document and the failures file reuse.
 * walks: the uid-task walks to show with the headroom (-1: not shown). */
TG_HIDDEN void tg_put_json_headroom(struct tg_out *o, const struct tg_headroom *h, long long walks);
TG_HIDDEN void tg_put_json_settings(struct tg_out *o);
TG_HIDDEN void tg_put_json_failures(struct tg_out *o);
TG_HIDDEN void tg_put_json_platform(struct tg_out *o);
TG_HIDDEN void tg_put_json_job(struct tg_out *o);

#endif
