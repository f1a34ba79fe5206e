/* Fixed tables that filled silently, and rows that followed an address
 * (issue: never harm the host); each case a fresh child with a JSON report:
 *
 *  reused_address: a library unloaded with dlclose and another loaded at
 *                  its address; the new one used to inherit the old row's
 *                  name and kind ("other"), so the OpenBLAS there got no
 *                  pool decision.  Rows follow the object now.
 *  setter_loop:    300 identical omp_set_num_threads(2) calls are one row
 *                  counted 300 times; then 300 distinct calls overflow the
 *                  256-row table and the report says how many were dropped.
 *  many_libraries: 300 libraries each start a thread: all are counted, and
 *                  the lookups past the 128-row table are reported.
 *  fifo_burst:     a SCHED_FIFO parent starts 1500 threads on one CPU
 *                  before any of them runs; every one is counted (start
 *                  records past the static 1024 are mapped), none spun for. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdint.h>
#include <sys/stat.h>
#include <pthread.h>
#include <sched.h>

#include "check.h"
#include "host.h"

void omp_set_num_threads(int n);
int tables_omp_value(void);

static void *returns(void *arg) { return arg; }

/* ---- children ------------------------------------------------------------ */

static int child_reused_address(void) {
    void *a = dlopen(getenv("TG_LIB_OTHER"), RTLD_NOW | RTLD_LOCAL);
    if (a == NULL) return 5;
    int (*spawn)(void) = (int (*)(void))dlsym(a, "tables_spawn");
    uintptr_t at_a = (uintptr_t)spawn;
    if (spawn() != 0) return 6;
    dlclose(a);
    void *b = dlopen(getenv("TG_LIB_OPENBLAS"), RTLD_NOW | RTLD_LOCAL);
    if (b == NULL) return 7;
    spawn = (int (*)(void))dlsym(b, "tables_spawn");
    int (*ask)(void) = (int (*)(void))dlsym(b, "tables_ask");
    if ((uintptr_t)spawn != at_a) return 77; /* not loaded at the same address */
    (void)ask();
    return spawn() == 0 ? 0 : 8;
}

static int child_setter_loop(void) {
    for (int i = 0; i < 300; i++) omp_set_num_threads(2);
    if (tables_omp_value() != 2) return 5;
    for (int n = 3; n < 303; n++) omp_set_num_threads(n);
    return tables_omp_value() == 302 ? 0 : 6;
}

static int child_many_libraries(void) {
    const char *dir = getenv("TG_LIB_DIR");
    for (int i = 0; i < 300; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/libmany%03d.so", dir, i);
        void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (lib == NULL) return 5;
        int (*spawn)(void) = (int (*)(void))dlsym(lib, "tables_spawn");
        if (spawn == NULL || spawn() != 0) return 6;
    }
    return 0;
}

#define BURST 1500

static int child_fifo_burst(void) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) return 77;
    struct sched_param fifo = {.sched_priority = 10}, other = {.sched_priority = 0};
    if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &fifo) != 0) return 77;
    /* The children run at normal priority on the same CPU: none starts
     * (and releases its start record) while this thread creates. */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED);
    pthread_attr_setschedpolicy(&attr, SCHED_OTHER);
    pthread_attr_setschedparam(&attr, &other);
    pthread_attr_setstacksize(&attr, 1 << 20);
    static pthread_t threads[BURST];
    int started = 0;
    for (int i = 0; i < BURST; i++)
        if (pthread_create(&threads[i], &attr, returns, NULL) == 0) started++;
    pthread_setschedparam(pthread_self(), SCHED_OTHER, &other);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    pthread_attr_destroy(&attr);
    return started == BURST ? 0 : 5;
}

/* ---- the parent's checks ------------------------------------------------- */

static char scratch[PATH_MAX];
static char text[1 << 20];

static int run_case(const char *name, const char *extra, const char *extra2) {
    char report[PATH_MAX + 32], env[PATH_MAX + 64], why[64];
    snprintf(report, sizeof report, "%s/%s.json", scratch, name);
    snprintf(env, sizeof env, "THREADGUARD_REPORT=%s", report);
    struct host_run run = {name, {env, extra, extra2, NULL}, -1, 120};
    int status = host_run_case(&run);
    text[0] = '\0';
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77) return 77;
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: %s", name,
          host_describe(status, why, sizeof why));
    int fd = open(report, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, text, sizeof text - 1) : -1;
    text[n > 0 ? n : 0] = '\0';
    if (fd >= 0) close(fd);
    return 0;
}

/* The number after "key": in the report, -1 if absent. */
static long long number_after(const char *key) {
    char pattern[128];
    snprintf(pattern, sizeof pattern, "\"%s\": ", key);
    const char *p = strstr(text, pattern);
    return p ? atoll(p + strlen(pattern)) : -1;
}

static long long total_created(void) {
    static const char key[] = "\"total\": {\"created\": ";
    const char *p = strstr(text, key);
    return p ? atoll(p + strlen(key)) : -1;
}

static void check_reused_address(void) {
    char other[PATH_MAX + 32], openblas[PATH_MAX + 32];
    snprintf(other, sizeof other, "TG_LIB_OTHER=%s", LIB_OTHER);
    snprintf(openblas, sizeof openblas, "TG_LIB_OPENBLAS=%s", LIB_OPENBLAS);
    if (run_case("reused_address", other, openblas) == 77) {
        fprintf(stderr, "reused_address: the second library was not loaded at the first's "
                        "address; nothing to check\n");
        return;
    }
    CHECK(strstr(text, "{\"library\": \"libtg_openblas_b.so\", \"kind\": \"openblas\", "
                       "\"variable\": \"OPENBLAS_NUM_THREADS\"") != NULL,
          "no OpenBLAS pool decision for the library at the reused address");
    CHECK(strstr(text, "{\"name\": \"libtg_openblas_b.so\"") != NULL,
          "the reused address kept the unloaded library's row");
    CHECK(strstr(text, "{\"name\": \"libtg_other_a.so\"") != NULL, "the first library's row");
}

static void check_setter_loop(void) {
    run_case("setter_loop", NULL, NULL);
    CHECK(strstr(text, "\"variable\": \"omp_set_num_threads()\", \"value\": 2,") != NULL,
          "no row for omp_set_num_threads(2)");
    const char *row = strstr(text, "\"variable\": \"omp_set_num_threads()\", \"value\": 2,");
    const char *count = row ? strstr(row, "\"count\": ") : NULL;
    CHECK(count && atoll(count + 9) == 300, "the 300 identical calls are not one row of 300: %.80s",
          count ? count : "");
    CHECK(number_after("pools_dropped") == 301 - 256, "pools_dropped %lld, expected %d",
          number_after("pools_dropped"), 301 - 256);
}

static void check_many_libraries(void) {
    char dir[PATH_MAX + 32], env[PATH_MAX + 64], buf[65536];
    snprintf(dir, sizeof dir, "%s/many", scratch);
    mkdir(dir, 0700);
    for (int i = 0; i < 300; i++) {
        char path[PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/libmany%03d.so", dir, i);
        int in = open(LIB_OTHER, O_RDONLY), out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0755);
        ssize_t n;
        while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof buf)) > 0)
            (void)!write(out, buf, (size_t)n);
        if (in >= 0) close(in);
        if (out >= 0) close(out);
    }
    snprintf(env, sizeof env, "TG_LIB_DIR=%s", dir);
    run_case("many_libraries", env, NULL);
    CHECK(total_created() == 300, "created %lld of 300", total_created());
    CHECK(number_after("library_lookups_unknown") > 0,
          "libraries past the table are not reported (%lld)",
          number_after("library_lookups_unknown"));
}

static void check_fifo_burst(void) {
    if (run_case("fifo_burst", NULL, NULL) == 77) {
        fprintf(stderr, "fifo_burst: skipped (SCHED_FIFO or CPU affinity not permitted here)\n");
        return;
    }
    CHECK(total_created() == BURST, "created %lld of %d", total_created(), BURST);
    CHECK(number_after("threads_uncounted") == 0, "threads started uncounted: %lld",
          number_after("threads_uncounted"));
    fprintf(stderr, "fifo_burst: %lld start records mapped past the static 1024\n",
            number_after("start_records_mapped"));
}

int main(void) {
    const char *which = getenv("TG_HOST_CASE");
    if (which != NULL) {
        if (strcmp(which, "reused_address") == 0) return child_reused_address();
        if (strcmp(which, "setter_loop") == 0) return child_setter_loop();
        if (strcmp(which, "many_libraries") == 0) return child_many_libraries();
        if (strcmp(which, "fifo_burst") == 0) return child_fifo_burst();
        return 99;
    }
    snprintf(scratch, sizeof scratch, "/tmp/threadguard-tables-XXXXXX");
    if (mkdtemp(scratch) == NULL) return 1;
    check_reused_address();
    check_setter_loop();
    check_many_libraries();
    check_fifo_burst();
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch);
    if (check_failures == 0)
        (void)!system(cmd);
    else
        fprintf(stderr, "files kept in %s\n", scratch);
    return check_failures;
}
