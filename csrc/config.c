/* Every THREADGUARD_* variable is parsed here, once, strictly.  A bad value
 * gets one line on stderr naming the variable and what is expected, and the
 * default; threadguard never stops its host over a setting. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

#include "internal.h"

struct tg_config tg_config;

static int secure_execution(void) { return getauxval(AT_SECURE) != 0; }

static void parse_report(const char *value) {
    tg_config.report_mode = TG_REPORT_OFF;
    if (value == NULL) return;
    if (strcmp(value, "") == 0 || strcmp(value, "off") == 0 || strcmp(value, "0") == 0) return;
    if (strcmp(value, "stderr") == 0) {
        tg_config.report_mode = TG_REPORT_STDERR;
        return;
    }
    if (secure_execution()) {
        tg_warn("THREADGUARD_REPORT: path settings are ignored in a setuid/setgid program; "
                "no report");
        return;
    }
    size_t len = strlen(value);
    if (len >= sizeof tg_config.report_path - 32) {
        tg_warn("THREADGUARD_REPORT is %zu characters long; expected 'stderr' or a file path "
                "shorter than %zu; no report",
                len, sizeof tg_config.report_path - 32);
        return;
    }
    if (len < 6 || strcmp(value + len - 5, ".json") != 0) {
        tg_warn("THREADGUARD_REPORT='%.200s' is neither 'stderr' nor a path ending in .json; "
                "no report",
                value);
        return;
    }
    memcpy(tg_config.report_path, value, len + 1);
    tg_config.report_mode = TG_REPORT_JSON;
}

void tg_config_load(void) { parse_report(getenv("THREADGUARD_REPORT")); }
