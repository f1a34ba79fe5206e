/* Reports that were lost or bent (issue: never harm the host), each case a
 * fresh child process:
 *
 *  no_heap:     the heap is exhausted under RLIMIT_AS when the program
 *               exits; the report still comes (it used to need calloc).
 *  raw_bytes:   a library whose path holds a byte that is not UTF-8; the
 *               JSON stays valid (the byte is written as \udcXX).
 *  failures:    70 failed creations and an unwritable report path: one
 *               "cannot write" line, not one per rewrite; with a writable
 *               path the failures file counts all 70 (it stopped at 64).
 *  chdir:       a relative report path is resolved at start, not after the
 *               program's chdir.
 *  fifo/symlink: what the user put at the report path is written into,
 *               not replaced by a regular file.
 *  main_exit:   main calls pthread_exit; the report still names the
 *               program and sees no thread it did not see created.
 *  no_threads:  a pool was sized but no thread was created; the stderr
 *               table still shows the decision and the headroom (it said
 *               only "no threads created"). */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "check.h"
#include "host.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#else
#define UNDER_SANITIZER 0
#endif

static void *returns(void *arg) { return arg; }

static void *naps(void *arg) {
    struct timespec ts = {0, 50000000};
    nanosleep(&ts, NULL);
    return arg;
}

static void one_thread(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, returns, NULL) == 0) pthread_join(t, NULL);
}

/* ---- children ------------------------------------------------------------ */

static int child_no_heap(void) {
    one_thread();
    struct rlimit r = {256L << 20, RLIM_INFINITY};
    char statm[128] = "";
    int fd = open("/proc/self/statm", O_RDONLY);
    if (fd >= 0 && read(fd, statm, sizeof statm - 1) > 0)
        r.rlim_cur = (rlim_t)atol(statm) * (rlim_t)sysconf(_SC_PAGESIZE) + (8L << 20);
    if (fd >= 0) close(fd);
    if (setrlimit(RLIMIT_AS, &r) != 0) return 5;
    size_t size = 1 << 20;
    while (size >= 64)
        if (malloc(size) == NULL) size /= 2;
    return calloc(1, 100000) == NULL ? 0 : 6; /* the heap is spent */
}

static int child_raw_bytes(void) {
    void *lib = dlopen(getenv("TG_HOST_LIB"), RTLD_NOW);
    if (lib == NULL) return 5;
    int (*run)(int) = (int (*)(int))dlsym(lib, "spawner_run");
    return run != NULL && run(2) == 2 ? 0 : 6;
}

static int child_failures(void) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    /* A stack no machine can map: pthread_create fails with EAGAIN. */
    pthread_attr_setstacksize(&attr, (size_t)1 << 46);
    int failed = 0;
    for (int i = 0; i < 70; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, returns, NULL) != 0)
            failed++;
        else
            pthread_join(t, NULL);
    }
    pthread_attr_destroy(&attr);
    return failed == 70 ? 0 : 5;
}

static int child_chdir(void) {
    one_thread();
    return chdir(getenv("TG_HOST_ELSEWHERE")) == 0 ? 0 : 5;
}

static int child_main_exit(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, naps, NULL) != 0) return 5;
    pthread_detach(t);
    pthread_exit(NULL);
}

static int child_no_threads(void) {
    void *lib = dlopen(getenv("TG_HOST_LIB"), RTLD_NOW);
    if (lib == NULL) return 5;
    int (*ask)(void) = (int (*)(void))dlsym(lib, "tables_ask");
    if (ask == NULL) return 6;
    ask(); /* OPENBLAS_NUM_THREADS read: a pool decision, no thread */
    return 0;
}

/* ---- the parent's checks ------------------------------------------------- */

static char scratch[PATH_MAX];

static void read_text(const char *path, char *text, size_t size) {
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, text, size - 1) : -1;
    text[n > 0 ? n : 0] = '\0';
    if (fd >= 0) close(fd);
}

static int run_ok(struct host_run *run) {
    char why[64];
    int status = host_run_case(run);
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    CHECK(ok, "%s: %s", run->name, host_describe(status, why, sizeof why));
    return ok;
}

static void path_in(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", scratch, name);
}

static void check_no_heap(void) {
    if (UNDER_SANITIZER) {
        fprintf(stderr, "no_heap: skipped (a sanitizer's shadow memory cannot fit an RLIMIT_AS)\n");
        return;
    }
    char report[PATH_MAX + 32], env[PATH_MAX + 64], text[65536];
    path_in(report, sizeof report, "no_heap.json");
    snprintf(env, sizeof env, "THREADGUARD_REPORT=%s", report);
    struct host_run run = {"no_heap", {env, NULL}, -1, 60};
    if (!run_ok(&run)) return;
    read_text(report, text, sizeof text);
    CHECK(strstr(text, "\"created\": 1") != NULL, "no report after the heap ran out: [%.200s]",
          text);
}

static void check_raw_bytes(void) {
    char lib[PATH_MAX + 32], env_lib[PATH_MAX + 64], report[PATH_MAX + 32], env[PATH_MAX + 64],
        text[65536];
    snprintf(lib, sizeof lib, "%s/libraw\xff\xfe.so", scratch);
    int in = open(SPAWNER_LIB, O_RDONLY), out = open(lib, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    char buf[65536];
    ssize_t n;
    while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof buf)) > 0) (void)!write(out, buf, n);
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    path_in(report, sizeof report, "raw.json");
    snprintf(env, sizeof env, "THREADGUARD_REPORT=%s", report);
    snprintf(env_lib, sizeof env_lib, "TG_HOST_LIB=%s", lib);
    struct host_run run = {"raw_bytes", {env, env_lib, NULL}, -1, 60};
    if (!run_ok(&run)) return;
    read_text(report, text, sizeof text);
    CHECK(strstr(text, "libraw\\udcff\\udcfe.so") != NULL, "the raw bytes are not escaped");
    int raw = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) raw += *p >= 0x80;
    CHECK(raw == 0, "%d bytes outside ASCII in a report of ASCII paths", raw);
}

static int count_lines_with(const char *text, const char *needle) {
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p++) n++;
    return n;
}

static void check_failed_creations(void) {
    char errpath[PATH_MAX + 32], text[65536];
    path_in(errpath, sizeof errpath, "failures.err");
    int err = open(errpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
    struct host_run run = {
        "failures", {"THREADGUARD_REPORT=/nonexistent-dir/r.json", NULL}, err, 60};
    run_ok(&run);
    close(err);
    read_text(errpath, text, sizeof text);
    CHECK(count_lines_with(text, "cannot write the report") == 1,
          "expected one 'cannot write' line, got %d:\n%.600s",
          count_lines_with(text, "cannot write the report"), text);

    char report[PATH_MAX + 32], failures[PATH_MAX + 48], env[PATH_MAX + 64];
    path_in(report, sizeof report, "fail.json");
    path_in(failures, sizeof failures, "fail.failures.json");
    snprintf(env, sizeof env, "THREADGUARD_REPORT=%s", report);
    struct host_run again = {"failures", {env, NULL}, -1, 60};
    if (!run_ok(&again)) return;
    read_text(failures, text, sizeof text);
    CHECK(strstr(text, "\"failures_total\": 70") != NULL,
          "the failures file stopped short of 70: %.300s", text);
    read_text(report, text, sizeof text);
    CHECK(strstr(text, "\"failures_total\": 70") && strstr(text, "\"failures_recorded\": 64"),
          "the report does not say 70 failed and 64 are listed");
}

static void check_chdir(void) {
    char home[PATH_MAX + 32], elsewhere[PATH_MAX + 32], env_else[PATH_MAX + 64],
        want[PATH_MAX + 64], stray[PATH_MAX + 64];
    path_in(home, sizeof home, "home");
    path_in(elsewhere, sizeof elsewhere, "elsewhere");
    mkdir(home, 0700);
    mkdir(elsewhere, 0700);
    snprintf(env_else, sizeof env_else, "TG_HOST_ELSEWHERE=%s", elsewhere);
    snprintf(want, sizeof want, "%s/rel.json", home);
    snprintf(stray, sizeof stray, "%s/rel.json", elsewhere);
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == NULL || chdir(home) != 0) return;
    struct host_run run = {"chdir", {"THREADGUARD_REPORT=rel.json", env_else, NULL}, -1, 60};
    run_ok(&run);
    (void)!chdir(cwd);
    CHECK(access(want, F_OK) == 0, "no report where the program started");
    CHECK(access(stray, F_OK) != 0, "the report followed the program's chdir");
}

static void check_fifo(void) {
    char fifo[PATH_MAX + 32], env[PATH_MAX + 64], text[65536];
    path_in(fifo, sizeof fifo, "report-fifo.json");
    if (mkfifo(fifo, 0600) != 0) return;
    int reader = open(fifo, O_RDONLY | O_NONBLOCK);
    snprintf(env, sizeof env, "THREADGUARD_REPORT=%s", fifo);
    struct host_run run = {"chdir", {env, "TG_HOST_ELSEWHERE=/", NULL}, -1, 60};
    run_ok(&run);
    ssize_t n = read(reader, text, sizeof text - 1);
    text[n > 0 ? n : 0] = '\0';
    close(reader);
    struct stat st;
    CHECK(lstat(fifo, &st) == 0 && S_ISFIFO(st.st_mode), "the FIFO was replaced");
    CHECK(strstr(text, "\"threadguard\"") != NULL, "nothing came through the FIFO");
}

static void check_symlink(void) {
    char link[PATH_MAX + 32], target[PATH_MAX + 32], env[PATH_MAX + 64], text[65536];
    path_in(link, sizeof link, "report-link.json");
    path_in(target, sizeof target, "report-target.json");
    if (symlink(target, link) != 0) return;
    snprintf(env, sizeof env, "THREADGUARD_REPORT=%s", link);
    struct host_run run = {"chdir", {env, "TG_HOST_ELSEWHERE=/", NULL}, -1, 60};
    run_ok(&run);
    struct stat st;
    CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode), "the symbolic link was replaced");
    read_text(target, text, sizeof text);
    CHECK(strstr(text, "\"threadguard\"") != NULL, "the link's target got no report");
}

static void check_main_exit(void) {
#if defined(__SANITIZE_THREAD__)
    /* A TSan program whose main calls pthread_exit never exits, with or
     * without threadguard (tried with a five-line program). */
    fprintf(stderr, "main_exit: skipped under ThreadSanitizer (it hangs such programs)\n");
    return;
#endif
    char report[PATH_MAX + 32], env[PATH_MAX + 64], text[65536];
    path_in(report, sizeof report, "main_exit.json");
    snprintf(env, sizeof env, "THREADGUARD_REPORT=%s", report);
    struct host_run run = {"main_exit", {env, NULL}, -1, 60};
    if (!run_ok(&run)) return;
    read_text(report, text, sizeof text);
    CHECK(strstr(text, "\"program\": \"\"") == NULL && strstr(text, "test_report_edges"),
          "the program is not named: %.200s", text);
    CHECK(strstr(text, "\"untracked\": 0,") != NULL, "a thread 'not seen created': %.400s",
          strstr(text, "\"tasks\"") ? strstr(text, "\"tasks\"") : text);
}

static void check_no_threads(void) {
    char errpath[PATH_MAX + 32], env_lib[PATH_MAX + 64], text[65536];
    path_in(errpath, sizeof errpath, "no_threads.err");
    snprintf(env_lib, sizeof env_lib, "TG_HOST_LIB=%s", OPENBLAS_LIB);
    int err = open(errpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
    struct host_run run = {"no_threads", {"THREADGUARD_REPORT=stderr", env_lib, NULL}, err, 60};
    run_ok(&run);
    close(err);
    read_text(errpath, text, sizeof text);
    CHECK(strstr(text, "no threads created") != NULL, "the table: %.400s", text);
    CHECK(strstr(text, "OPENBLAS_NUM_THREADS") && strstr(text, "headroom at start"),
          "the pool decision and headroom are missing when no thread was created:\n%.600s", text);
}

int main(void) {
    const char *which = getenv("TG_HOST_CASE");
    if (which != NULL) {
        if (strcmp(which, "no_heap") == 0) return child_no_heap();
        if (strcmp(which, "raw_bytes") == 0) return child_raw_bytes();
        if (strcmp(which, "failures") == 0) return child_failures();
        if (strcmp(which, "chdir") == 0) return child_chdir();
        if (strcmp(which, "main_exit") == 0) return child_main_exit();
        if (strcmp(which, "no_threads") == 0) return child_no_threads();
        return 99;
    }
    snprintf(scratch, sizeof scratch, "/tmp/threadguard-report-edges-XXXXXX");
    if (mkdtemp(scratch) == NULL) return 1;
    check_no_heap();
    check_raw_bytes();
    check_failed_creations();
    check_chdir();
    check_fifo();
    check_symlink();
    check_main_exit();
    check_no_threads();
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch);
    if (check_failures == 0)
        (void)!system(cmd);
    else
        fprintf(stderr, "files kept in %s\n", scratch);
    return check_failures;
}
