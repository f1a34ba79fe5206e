/* report.c: the exit report, the failures file and the JSON report (output;
 * calls stats.c and reads the state modules). */
#ifndef THREADGUARD_REPORT_H
#define THREADGUARD_REPORT_H

#include "common.h"

TG_HIDDEN void tg_report_at_exit(void);
/* Rewrite PATH.failures.json for THREADGUARD_REPORT=PATH.json now: a
 * process that dies of the failure (OpenBLAS raises SIGINT, libgomp exits)
 * may never write its report at exit. */
TG_HIDDEN void tg_report_failures_now(void);
/* threadguard_report_json, once the library is initialised. */
TG_HIDDEN long long tg_report_json(char *buffer, size_t size);

/* Rewrite the document this process publishes (publish.c): at start, and
 * after what it describes changed. */
TG_HIDDEN void tg_report_publish(void);
/* The same, only when something changed since (one atomic load if not):
 * entry points call it after pool sizing and failures. */
TG_HIDDEN void tg_report_publish_if_stale(void);
/* threadguard_read_published: another process's report, as JSON, from the
 * file it publishes. */
TG_HIDDEN long long tg_report_published_json(const char *path, char *buffer, size_t size);

#endif
