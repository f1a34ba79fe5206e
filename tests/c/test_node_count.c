/* Counting the user's tasks under RLIMIT_NPROC, from many threads at once:
 * the bounds (the node's tasks, the last count plus the tasks created
 * since), the count shared in the ledger, and the walk when a bound leaves
 * a decision in doubt (csrc/limits.c).
 *
 * As root, the test re-executes itself as a fresh unprivileged uid (root is
 * exempt from the limit) under an RLIMIT_NPROC below the node's task count,
 * so that the cheapest bound never settles a decision.  There, 8 threads
 * make 50 pool decisions each for a stand-in OpenBLAS while 2 more write
 * reports (each of which counts).  Checked: every decision is recorded, the
 * report's figure now is a count that matches the process's own tasks, and
 * most decisions were settled by the last count plus the tasks created
 * since rather than by a walk of /proc.  Runs plain, under ASan/UBSan and
 * TSan (decisions race reports, walks race readers of the shared count). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <grp.h>
#include <linux/capability.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define ASKERS 8
#define ASKS 50
#define REPORTERS 2

static char buffers[REPORTERS + 1][1 << 20];
static int (*ask)(void);

static void *asker(void *arg) {
    (void)arg;
    for (int i = 0; i < ASKS; i++) ask();
    return NULL;
}

static void *reporter(void *arg) {
    char *buffer = buffers[(long)arg];
    for (int i = 0; i < 5; i++) threadguard_report_json(buffer, sizeof buffers[0]);
    return NULL;
}

/* The number after "key": in text, or -1. */
static long long number_after(const char *text, const char *key) {
    const char *at = text ? strstr(text, key) : NULL;
    return at ? atoll(at + strlen(key)) : -1;
}

static long long own_tasks(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long n = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "Threads:", 8) == 0) n = atoll(line + 8);
    if (f) fclose(f);
    return n;
}

static int child(void) {
    void *lib = dlopen(FAKE_OPENBLAS, RTLD_NOW | RTLD_LOCAL);
    CHECK(lib != NULL, "dlopen: %s", dlerror());
    if (lib == NULL) return check_failures;
    ask = (int (*)(void))dlsym(lib, "fake_openblas_ask");
    CHECK(ask != NULL, "fake_openblas_ask missing");
    if (ask == NULL) return check_failures;
    pthread_t threads[ASKERS + REPORTERS];
    for (long i = 0; i < ASKERS + REPORTERS; i++)
        CHECK(pthread_create(&threads[i], NULL, i < ASKERS ? asker : reporter,
                             (void *)(i - ASKERS)) == 0,
              "pthread_create %ld", i);
    for (int i = 0; i < ASKERS + REPORTERS; i++) pthread_join(threads[i], NULL);

    char *last = buffers[REPORTERS];
    long long n = threadguard_report_json(last, sizeof buffers[0]);
    long long tasks = own_tasks();
    CHECK(n > 0 && n < (long long)sizeof buffers[0], "report: %lld", n);
    if (n <= 0 || n >= (long long)sizeof buffers[0]) return check_failures;
    const char *now = strstr(last, "\"now\": {");
    /* Every decision is one row, counted (the same decision each time). */
    const char *pool = strstr(last, "\"variable\": \"OPENBLAS_NUM_THREADS\"");
    long long decisions = number_after(pool, "\"count\": ");
    CHECK(decisions >= ASKERS * ASKS, "decisions %lld", decisions);
    /* The figure now is a count: this process is the uid's only one. */
    CHECK(now && strstr(now, "\"uid_tasks_from\": \"counted\""), "now: %.300s", now);
    CHECK(number_after(now, "\"uid_tasks\": ") == tasks, "uid_tasks %lld, own %lld",
          number_after(now, "\"uid_tasks\": "), tasks);
    /* Walks: the first decision's, the reports' (5 each), and few others. */
    long long walks = number_after(now, "\"uid_task_walks\": ");
    CHECK(walks >= 1 && walks <= 1 + REPORTERS * 5 + 20, "walks %lld for %lld decisions", walks,
          decisions);
    dlclose(lib);
    return check_failures;
}

/* After setuid from root (with PR_SET_KEEPCAPS): keep only
 * CAP_DAC_READ_SEARCH, ambient so that it survives the exec, to read this
 * program and the library wherever the build lives (a directory only root
 * may enter).  The kernel exempts only CAP_SYS_RESOURCE and CAP_SYS_ADMIN
 * from RLIMIT_NPROC, so the limit applies in full. */
static int keep_read_search(void) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    data[0].effective = data[0].permitted = data[0].inheritable = 1u << CAP_DAC_READ_SEARCH;
    if (syscall(SYS_capset, &header, data) != 0) return -1;
    return prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) return child();
    if (geteuid() != 0) {
        printf("skipped: needs root, to run as an unprivileged uid under a task limit\n");
        return 77;
    }
    /* Below the node's tasks (kernel threads included), with room for ours. */
    FILE *f = fopen("/proc/loadavg", "r");
    long long running = 0, total = 0;
    CHECK(f && fscanf(f, "%*s %*s %*s %lld/%lld", &running, &total) == 2, "loadavg");
    if (f) fclose(f);
    long long limit = total - 5 > 60 ? total - 5 : 60;
    srand((unsigned)(time(NULL) ^ getpid()));
    uid_t uid = (uid_t)(3000000 + rand() % 1000000000);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit r = {(rlim_t)limit, (rlim_t)limit};
        if (setrlimit(RLIMIT_NPROC, &r) != 0 || prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 ||
            setgroups(0, NULL) != 0 || setgid(uid) != 0 || setuid(uid) != 0 ||
            keep_read_search() != 0)
            _exit(120);
        execl("/proc/self/exe", argv[0], "child", (char *)NULL);
        _exit(121);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d (limit %lld)", status,
          limit);
    char dir[64];
    snprintf(dir, sizeof dir, "/dev/shm/threadguard-%u", (unsigned)uid);
    char command[128];
    snprintf(command, sizeof command, "rm -rf %s", dir);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_failures;
}
