/* Every THREADGUARD_* variable is parsed here, once, strictly.  A bad value
 * gets one line on stderr naming the variable and what is expected, and the
 * default; threadguard never stops its host over a setting.
 *
 * The parsers are pure functions of the value, shared by tg_config_load()
 * (which warns) and threadguard_check_setting() (which the command line and
 * the fuzz tests call), so there is one definition of a valid value.
 *
 * Layer: state.  Calls error.c and procfs.c; read by every module that has a setting to
 * honour. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "config.h"

#include "error.h"
#include "policy.h"
#include "procfs.h"

struct tg_config tg_config;

static int secure_execution(void) { return getauxval(AT_SECURE) != 0; }

/* ---- value parsers: 0 = accepted, -1 = rejected with a message -------- */

struct parsed {
    long long number;
    int mode;
    char path[sizeof tg_config.report_path];
};

static int is_ascii_digit(char c) { return c >= '0' && c <= '9'; }

/* The decimal digits at *p (at most 12), advancing *p; -1 if there are none. */
static int take_digits(const char **p, long long *out) {
    long long n = 0;
    int digits = 0;
    for (; is_ascii_digit(**p); (*p)++) {
        if (++digits > 12) return -1;
        n = n * 10 + (**p - '0');
    }
    *out = n;
    return digits ? 0 : -1;
}

/* A decimal integer of at most 12 digits, nothing else. */
static int parse_count(const char *value, long long *out) {
    return take_digits(&value, out) == 0 && *value == '\0' ? 0 : -1;
}

/* "524288", "512k", "512K", "512KiB", "2M", "1g", "1GB". */
static int parse_size(const char *value, long long *out) {
    long long n;
    const char *p = value;
    if (take_digits(&p, &n) != 0) return -1;
    long long unit = 1;
    switch (*p) {
    case 'k':
    case 'K':
        unit = TG_KIB;
        p++;
        break;
    case 'm':
    case 'M':
        unit = TG_MIB;
        p++;
        break;
    case 'g':
    case 'G':
        unit = TG_GIB;
        p++;
        break;
    default: break;
    }
    if (unit > 1 && *p == 'i') p++;
    if (*p == 'b' || *p == 'B') p++;
    if (*p != '\0') return -1;
    if (n > (1LL << 62) / unit) return -1; /* overflow */
    *out = n * unit;
    return 0;
}

static int parse_flag(const char *value, long long *out) {
    static const char *const on[] = {"1", "on", "yes", "true"};
    static const char *const off[] = {"0", "off", "no", "false"};
    for (unsigned i = 0; i < 4; i++) {
        if (strcasecmp(value, on[i]) == 0) return *out = 1, 0;
        if (strcasecmp(value, off[i]) == 0) return *out = 0, 0;
    }
    return -1;
}

/* ---- the settings ------------------------------------------------------ */

struct setting {
    const char *name;
    const char *expected;    /* what a valid value looks like */
    const char *default_doc; /* what happens when it is unset or bad */
    int (*parse)(const char *value, struct parsed *out, char *why, size_t why_size);
};

static int parse_report(const char *value, struct parsed *out, char *why, size_t why_size) {
    out->mode = TG_REPORT_OFF;
    if (strcmp(value, "off") == 0 || strcmp(value, "0") == 0) return 0;
    if (strcmp(value, "stderr") == 0) {
        out->mode = TG_REPORT_STDERR;
        return 0;
    }
    size_t len = strlen(value);
    if (len >= sizeof out->path - 32) {
        snprintf(why, why_size, "is %zu characters long", len);
        return -1;
    }
    if (len < 6 || strcmp(value + len - 5, ".json") != 0) return -1;
    memcpy(out->path, value, len + 1);
    out->mode = TG_REPORT_JSON;
    return 0;
}

/* THREADGUARD_OUTPUT: where warnings go. */
static int parse_output(const char *value, struct parsed *out, char *why, size_t why_size) {
    const char *path = NULL;
    if (strcmp(value, "stderr") == 0) {
        out->mode = TG_OUTPUT_STDERR;
    } else if (strcmp(value, "off") == 0) {
        out->mode = TG_OUTPUT_OFF;
    } else if (strcmp(value, "syslog") == 0) {
        out->mode = TG_OUTPUT_SYSLOG;
        path = "/dev/log";
    } else if (strncmp(value, "syslog:/", 8) == 0) {
        out->mode = TG_OUTPUT_SYSLOG;
        path = value + 7;
    } else if (value[0] == '/') {
        out->mode = TG_OUTPUT_FILE;
        path = value;
    } else {
        return -1;
    }
    out->path[0] = '\0';
    if (path != NULL) {
        size_t len = strlen(path);
        if (len >= TG_OUTPUT_PATH_MAX) {
            snprintf(why, why_size, "is %zu characters long", len);
            return -1;
        }
        memcpy(out->path, path, len + 1);
    }
    return 0;
}

/* THREADGUARD_SKIP: program names (or full paths) separated by ':'. */
static int parse_skip(const char *value, struct parsed *out, char *why, size_t why_size) {
    (void)out;
    size_t len = strlen(value);
    if (len >= 1024) {
        snprintf(why, why_size, "is %zu characters long", len);
        return -1;
    }
    for (const char *p = value; *p; p++)
        if (*p == ':' && (p == value || p[1] == ':' || p[1] == '\0')) {
            snprintf(why, why_size, "has an empty name");
            return -1;
        }
    return 0;
}

static int parse_count_in(const char *value, struct parsed *out, long long lo, long long hi,
                          char *why, size_t why_size) {
    if (parse_count(value, &out->number) != 0) return -1;
    if (out->number < lo || out->number > hi) {
        snprintf(why, why_size, "is out of range");
        return -1;
    }
    return 0;
}

static int parse_max_threads(const char *value, struct parsed *out, char *why, size_t n) {
    return parse_count_in(value, out, 1, 1000000, why, n);
}

static int parse_pool_threads(const char *value, struct parsed *out, char *why, size_t n) {
    return parse_count_in(value, out, 1, TG_MAX_POOL_THREADS, why, n);
}

static int parse_arenas(const char *value, struct parsed *out, char *why, size_t n) {
    return parse_count_in(value, out, 1, 1024, why, n);
}

static int parse_on_limit(const char *value, struct parsed *out, char *why, size_t n) {
    (void)why, (void)n;
    if (strcmp(value, "warn") == 0) return out->mode = TG_ON_LIMIT_WARN, 0;
    if (strcmp(value, "deny") == 0) return out->mode = TG_ON_LIMIT_DENY, 0;
    return -1;
}

static int parse_stack(const char *value, struct parsed *out, char *why, size_t n) {
    if (parse_size(value, &out->number) != 0) return -1;
    if (out->number > TG_GIB) {
        snprintf(why, n, "is over 1G");
        return -1;
    }
    return 0; /* under the 256 KiB floor: raised by the caller, with a message */
}

static int parse_nproc(const char *value, struct parsed *out, char *why, size_t n) {
    if (strcmp(value, "max") == 0) return out->number = TG_NPROC_MAX, 0;
    return parse_count_in(value, out, 1, 1LL << 30, why, n);
}

static int parse_debug(const char *value, struct parsed *out, char *why, size_t n) {
    (void)why, (void)n;
    return parse_flag(value, &out->number);
}

static const struct setting settings[TG_SETTING_COUNT] = {
    [TG_SET_MAX_THREADS] = {"THREADGUARD_MAX_THREADS",
                            "a whole number of threads from 1 to 1000000", "no budget",
                            parse_max_threads},
    [TG_SET_POOL_THREADS] = {"THREADGUARD_POOL_THREADS",
                             "a whole number of threads from 1 to " TG_TEXT(TG_MAX_POOL_THREADS),
                             "pools sized by CPU allocation and headroom", parse_pool_threads},
    [TG_SET_ON_LIMIT] = {"THREADGUARD_ON_LIMIT", "'warn' or 'deny'", "warn", parse_on_limit},
    [TG_SET_STACK] =
        {"THREADGUARD_STACK", "a size like 512k or 2M, at least 256k and at most 1G",
         "the system's thread stack; under an address-space limit, 1M for the pools that need it",
         parse_stack},
    [TG_SET_ARENAS] = {"THREADGUARD_ARENAS", "a whole number of malloc arenas from 1 to 1024",
                       "glibc's, or 2 under an address-space limit", parse_arenas},
    [TG_SET_NPROC] = {"THREADGUARD_NPROC", "'max' or a whole number of tasks",
                      "RLIMIT_NPROC unchanged", parse_nproc},
    [TG_SET_REPORT] = {"THREADGUARD_REPORT", "'stderr', 'off' or a file path ending in .json",
                       "no report", parse_report},
    [TG_SET_DEBUG] = {"THREADGUARD_DEBUG", "1, 0, on, off, yes, no, true or false", "off",
                      parse_debug},
    [TG_SET_IMPORT] = {"THREADGUARD_IMPORT", "1, 0, on, off, yes, no, true or false", "on",
                       parse_debug},
    [TG_SET_OBSERVE] = {"THREADGUARD_OBSERVE", "1, 0, on, off, yes, no, true or false", "off",
                        parse_debug},
    [TG_SET_PUBLISH] = {"THREADGUARD_PUBLISH", "1, 0, on, off, yes, no, true or false", "on",
                        parse_debug},
    [TG_SET_OUTPUT] = {"THREADGUARD_OUTPUT",
                       "'stderr', 'off', 'syslog', 'syslog:/SOCKET' or an absolute file path",
                       "stderr", parse_output},
    [TG_SET_DISABLE] = {"THREADGUARD_DISABLE", "1, 0, on, off, yes, no, true or false", "off",
                        parse_debug},
    [TG_SET_SKIP] = {"THREADGUARD_SKIP", "program names or absolute paths separated by ':'",
                     "no program skipped", parse_skip},
};

const char *tg_setting_name(int which) { return settings[which].name; }

const char *tg_source_name(int source) {
    switch (source) {
    case TG_SOURCE_USER: return "user";
    case TG_SOURCE_THREADGUARD: return "threadguard";
    case TG_SOURCE_LIBRARY: return "library";
    default: return "default";
    }
}

extern char **environ;

const char *tg_environ_get(const char *name) {
    size_t n = strlen(name);
    for (char **e = environ; e != NULL && *e != NULL; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

/* The value as it may be printed on one line: non-ASCII and control bytes
 * become \xNN, and long values are cut. */
static void printable(const char *value, char *out, size_t size) {
    size_t used = 0;
    for (const unsigned char *p = (const unsigned char *)value; *p && used + 8 < size; p++) {
        if (*p >= 0x20 && *p < 0x7f)
            out[used++] = (char)*p;
        else
            used += (size_t)snprintf(out + used, size - used, "\\x%02x", *p);
    }
    if (*value && used + 8 >= size) {
        memcpy(out + used, "...", 3);
        used += 3;
    }
    out[used] = '\0';
}

/* Parse one setting.  On rejection, message says what was wrong in one
 * line (without the "threadguard: " prefix). */
static int parse_one(int which, const char *value, struct parsed *out, char *message, size_t size) {
    const struct setting *s = &settings[which];
    char shown[96], why[96] = "";
    memset(out, 0, sizeof *out);
    printable(value, shown, sizeof shown);
    if (value[0] == '\0') {
        snprintf(message, size, "%s is set but empty; expected %s; using the default (%s)", s->name,
                 s->expected, s->default_doc);
        return -1;
    }
    if (s->parse(value, out, why, sizeof why) == 0) return 0;
    snprintf(message, size, "%s='%s' %s; expected %s; using the default (%s)", s->name, shown,
             why[0] ? why : "is not valid", s->expected, s->default_doc);
    return -1;
}

static int setting_index(const char *name) {
    for (int i = 0; i < TG_SETTING_COUNT; i++)
        if (strcmp(settings[i].name, name) == 0) return i;
    return -1;
}

THREADGUARD_API int threadguard_check_setting(const char *name, const char *value) {
    if (name == NULL || value == NULL)
        return tg_set_error(THREADGUARD_EINVAL, "threadguard_check_setting: NULL argument");
    int which = setting_index(name);
    if (which < 0)
        return tg_set_error(THREADGUARD_EINVAL, "%.100s is not a threadguard setting", name);
    struct parsed parsed;
    char message[512];
    if (parse_one(which, value, &parsed, message, sizeof message) != 0)
        return tg_set_error(THREADGUARD_EINVAL, "%s", message);
    /* The variable alone is raised to the floor at start (with a warning);
     * asked beforehand (the command line), a stack under it is refused. */
    if (which == TG_SET_STACK && parsed.number < TG_MIN_STACK) {
        char shown[96];
        printable(value, shown, sizeof shown);
        return tg_set_error(THREADGUARD_EINVAL,
                            "THREADGUARD_STACK='%s' is under the 256k that Python and the BLAS "
                            "libraries need; expected %s",
                            shown, settings[TG_SET_STACK].expected);
    }
    tg_clear_error();
    return THREADGUARD_OK;
}

/* ---- loading ------------------------------------------------------------ */

static void apply(int which, const struct parsed *p) {
    switch (which) {
    case TG_SET_MAX_THREADS: tg_config.max_threads = p->number; break;
    case TG_SET_POOL_THREADS: tg_config.pool_threads = p->number; break;
    case TG_SET_ON_LIMIT: tg_config.on_limit = p->mode; break;
    case TG_SET_STACK:
        if (p->number < TG_MIN_STACK) {
            tg_warn("THREADGUARD_STACK=%lld bytes is under the 256k that Python and the BLAS "
                    "libraries need; using 256k",
                    p->number);
            tg_config.stack = TG_MIN_STACK;
        } else {
            tg_config.stack = p->number;
        }
        break;
    case TG_SET_ARENAS: tg_config.arenas = p->number; break;
    case TG_SET_NPROC: tg_config.nproc = p->number; break;
    case TG_SET_REPORT:
        /* (Never under secure execution: tg_config_stays_out keeps
         * threadguard out of setuid programs altogether.) */
        tg_config.report_mode = p->mode;
        memcpy(tg_config.report_path, p->path, sizeof tg_config.report_path);
        if (p->mode == TG_REPORT_JSON && p->path[0] != '/') {
            /* Resolved now: the program may chdir before it exits. */
            char cwd[sizeof tg_config.report_path];
            size_t dir, name = strlen(p->path);
            if (getcwd(cwd, sizeof cwd) != NULL &&
                (dir = strlen(cwd)) + 1 + name < sizeof tg_config.report_path) {
                memcpy(tg_config.report_path, cwd, dir);
                tg_config.report_path[dir] = '/';
                memcpy(tg_config.report_path + dir + 1, p->path, name + 1);
            }
        }
        break;
    case TG_SET_DEBUG: tg_config.debug = (int)p->number; break;
    case TG_SET_IMPORT: tg_config.import_off = p->number == 0; break;
    case TG_SET_PUBLISH: tg_config.publish_off = p->number == 0; break;
    case TG_SET_OBSERVE: tg_config.observe = (int)p->number; break;
    case TG_SET_OUTPUT: tg_output_set(p->mode, p->path); break;
    default: break;
    }
}

void tg_config_load(void) {
    memset(&tg_config, 0, sizeof tg_config);
    tg_config.max_threads = -1;
    tg_config.pool_threads = -1;
    tg_config.on_limit = TG_ON_LIMIT_WARN;
    tg_config.nproc = -1;
    /* THREADGUARD_OUTPUT first: the other settings' warnings go there. */
    static const int order[TG_SETTING_COUNT] = {
        TG_SET_OUTPUT,  TG_SET_MAX_THREADS, TG_SET_POOL_THREADS, TG_SET_ON_LIMIT, TG_SET_STACK,
        TG_SET_ARENAS,  TG_SET_NPROC,       TG_SET_REPORT,       TG_SET_DEBUG,    TG_SET_IMPORT,
        TG_SET_OBSERVE, TG_SET_PUBLISH,     TG_SET_DISABLE,      TG_SET_SKIP};
    for (int k = 0; k < TG_SETTING_COUNT; k++) {
        int i = order[k];
        const char *value = tg_environ_get(settings[i].name);
        if (value == NULL) continue;
        /* THREADGUARD_REPORT= is the usual way to switch the report off. */
        if (i == TG_SET_REPORT && value[0] == '\0') continue;
        printable(value, tg_config.raw[i], sizeof tg_config.raw[i]);
        struct parsed parsed;
        char message[512];
        if (parse_one(i, value, &parsed, message, sizeof message) != 0) {
            tg_warn("%s", message);
            tg_config.source[i] = TG_SOURCE_DEFAULT;
            tg_config.rejected[i] = 1;
            continue;
        }
        tg_config.source[i] = TG_SOURCE_USER;
        apply(i, &parsed);
    }
}

/* ---- processes threadguard leaves alone ------------------------------------ */

/* Whether `name` (one entry of THREADGUARD_SKIP) names the program: a full
 * path against the executable's and the path it was run by, a bare name
 * against their last components. */
static int names_program(const char *name, size_t len, const char *exe, const char *run_as) {
    const char *candidates[2] = {exe, run_as};
    for (int i = 0; i < 2; i++) {
        const char *c = candidates[i];
        if (c == NULL || c[0] == '\0') continue;
        const char *compared = memchr(name, '/', len) ? c : tg_base_name(c);
        if (strlen(compared) == len && strncmp(compared, name, len) == 0) return 1;
    }
    return 0;
}

int tg_config_stays_out(void) {
    if (secure_execution()) return 1;
    struct parsed parsed;
    char why[96];
    const char *disable = tg_environ_get("THREADGUARD_DISABLE");
    if (disable != NULL && parse_debug(disable, &parsed, why, sizeof why) == 0 && parsed.number)
        return 1;
    const char *skip = tg_environ_get("THREADGUARD_SKIP");
    if (skip == NULL || skip[0] == '\0' || parse_skip(skip, &parsed, why, sizeof why) != 0)
        return 0;
    char exe[512];
    tg_exe_path(exe, sizeof exe);
    const char *run_as = (const char *)getauxval(AT_EXECFN);
    for (const char *p = skip; *p;) {
        const char *end = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (names_program(p, len, exe, run_as)) return 1;
        p += len + (end ? 1 : 0);
    }
    return 0;
}

/* Stored atomically: getenv answers read it from any thread. */
long long tg_set_pool_threads(long long threads) {
    if (threads == 0 || threads < -1 || threads > TG_MAX_POOL_THREADS) {
        tg_set_error(THREADGUARD_EINVAL,
                     "threadguard_set_pool_threads: %lld is not a pool size; expected 1 to %d, "
                     "or -1 to clear",
                     threads, TG_MAX_POOL_THREADS);
        return -2;
    }
    tg_clear_error();
    return __atomic_exchange_n(&tg_config.pool_threads, threads, __ATOMIC_ACQ_REL);
}
