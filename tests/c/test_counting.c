/* Exit counting for every way a thread ends, failures, fork, and the
 * snapshot API's handling of bad arguments. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static void *returns(void *arg) { return arg; }

static void *exits(void *arg) {
    pthread_exit(arg);
    return NULL;
}

static void *blocks_until_cancelled(void *arg) {
    (void)arg;
    for (;;) pause(); /* pause() is a cancellation point */
    return NULL;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Wait up to 5 s for the total live count to reach `want`. */
static long long wait_total_live(long long want) {
    long long live = total(THREADGUARD_LIVE);
    for (int i = 0; i < 500 && live != want; i++) {
        sleep_ms(10);
        live = total(THREADGUARD_LIVE);
    }
    return live;
}

static void run_and_join(void *(*routine)(void *), int n, const char *what) {
    long long created0 = counter_of_kind("main", THREADGUARD_CREATED);
    pthread_t t[16];
    for (int i = 0; i < n; i++) CHECK(pthread_create(&t[i], NULL, routine, NULL) == 0, "%s", what);
    CHECK(counter_of_kind("main", THREADGUARD_LIVE) <= n, "%s: live over %d", what, n);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    CHECK(counter_of_kind("main", THREADGUARD_CREATED) == created0 + n,
          "%s: created %lld, want %lld", what, counter_of_kind("main", THREADGUARD_CREATED),
          created0 + n);
    CHECK(counter_of_kind("main", THREADGUARD_LIVE) == 0, "%s: live %lld after join", what,
          counter_of_kind("main", THREADGUARD_LIVE));
}

static void test_return_and_exit(void) {
    run_and_join(returns, 8, "return");
    run_and_join(exits, 8, "pthread_exit");
    CHECK(counter_of_kind("main", THREADGUARD_PEAK) >= 1, "peak not recorded");
}

static void test_cancel(void) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, blocks_until_cancelled, NULL);
    CHECK(wait_total_live(4) == 4, "4 blocked threads, live %lld", total(THREADGUARD_LIVE));
    for (int i = 0; i < 4; i++) pthread_cancel(t[i]);
    for (int i = 0; i < 4; i++) {
        void *result;
        pthread_join(t[i], &result);
        CHECK(result == PTHREAD_CANCELED, "thread %d was not cancelled", i);
    }
    CHECK(total(THREADGUARD_LIVE) == 0, "after cancel live %lld", total(THREADGUARD_LIVE));
}

static void test_detached(void) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    long long created0 = total(THREADGUARD_CREATED);
    for (int i = 0; i < 6; i++) {
        pthread_t t;
        CHECK(pthread_create(&t, &attr, i % 2 ? returns : exits, NULL) == 0, "detached create");
    }
    pthread_attr_destroy(&attr);
    CHECK(wait_total_live(0) == 0, "detached threads still live: %lld", total(THREADGUARD_LIVE));
    CHECK(total(THREADGUARD_CREATED) == created0 + 6, "detached created %lld",
          total(THREADGUARD_CREATED) - created0);
}

static void test_failure_counted(void) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    /* A stack no machine can map: the real pthread_create fails. */
    pthread_attr_setstacksize(&attr, (size_t)1 << 46);
    long long failed0 = total(THREADGUARD_FAILED);
    pthread_t t;
    int rc = pthread_create(&t, &attr, returns, NULL);
    pthread_attr_destroy(&attr);
    CHECK(rc != 0, "a 64 TiB stack was granted");
    CHECK(total(THREADGUARD_FAILED) == failed0 + 1, "failed %lld", total(THREADGUARD_FAILED));
    CHECK(counter_of_kind("main", THREADGUARD_LAST_ERRNO) == rc, "last errno %lld, rc %d",
          counter_of_kind("main", THREADGUARD_LAST_ERRNO), rc);
    CHECK(total(THREADGUARD_LIVE) == 0, "a failed create left live %lld", total(THREADGUARD_LIVE));

    /* The failure is recorded with the stack it needed and the limits of
     * the moment; no limit is full, so the cause is unknown. */
    static char json[1 << 16];
    long long n = threadguard_report_json(json, sizeof json);
    CHECK(n > 0 && (size_t)n < sizeof json, "report of %lld bytes", n);
    CHECK(strstr(json, "\"failures_total\": 1,") != NULL, "no failure recorded:\n%s", json);
    CHECK(strstr(json, "\"stack\": 70368744177664") != NULL, "no 64 TiB stack in:\n%s", json);
    CHECK(strstr(json, "\"cause\": \"unknown\"") != NULL, "cause not unknown:\n%s", json);
    char thread[64]; /* the failed one is main's thread created + 1 */
    snprintf(thread, sizeof thread, "\"thread\": %lld,",
             counter_of_kind("main", THREADGUARD_CREATED) + 1);
    CHECK(strstr(json, thread) != NULL, "no %s in:\n%s", thread, json);
    /* The errno by name and text: glibc's strerrorname_np/strerrordesc_np,
     * or threadguard's own table before glibc 2.32 (THREADGUARD_TEST_GLIBC). */
    CHECK(rc == EAGAIN || rc == ENOMEM, "a 64 TiB stack failed with %d", rc);
    CHECK(strstr(json, rc == EAGAIN ? "\"error\": \"EAGAIN\", \"message\": \"Resource "
                                      "temporarily unavailable\""
                                    : "\"error\": \"ENOMEM\", \"message\": \"Cannot allocate "
                                      "memory\"") != NULL,
          "errno %d not named in:\n%s", rc, json);
    /* Under THREADGUARD_REPORT=PATH.json the failures are written at once
     * to PATH.failures.json: a process may die of the failure. */
    const char *report = getenv("THREADGUARD_REPORT");
    if (report != NULL && strlen(report) > 5 && strlen(report) < 900) {
        char path[1024];
        snprintf(path, sizeof path, "%.*s.failures.json", (int)(strlen(report) - 5), report);
        FILE *f = fopen(path, "r");
        CHECK(f != NULL, "no %s", path);
        if (f != NULL) {
            size_t got = fread(json, 1, sizeof json - 1, f);
            json[got] = 0;
            fclose(f);
            CHECK(strstr(json, "\"stack\": 70368744177664") != NULL, "%s holds:\n%s", path, json);
        }
    }
}

static int report_pipe[2];

static void *child_reporter(void *arg) {
    (void)arg;
    sleep_ms(200); /* let the thread that forked finish its routine first */
    long long result[2] = {total(THREADGUARD_CREATED), total(THREADGUARD_LIVE)};
    ssize_t ignored = write(report_pipe[1], result, sizeof result);
    (void)ignored;
    _exit(0);
}

static void *forks_then_returns(void *arg) {
    (void)arg;
    pid_t pid = fork();
    if (pid == 0) {
        /* In the child, this thread (a counted thread of the parent) creates
         * one thread, then returns: its exit must not count against the
         * child's own total. */
        pthread_t t;
        pthread_create(&t, NULL, child_reporter, NULL);
        return NULL;
    }
    return (void *)(intptr_t)pid;
}

__attribute__((unused)) static void test_fork(void) {
    pthread_t busy;
    pthread_create(&busy, NULL, blocks_until_cancelled, NULL);
    CHECK(pipe(report_pipe) == 0, "pipe");
    long long parent_created = total(THREADGUARD_CREATED);
    pthread_t forker;
    pthread_create(&forker, NULL, forks_then_returns, NULL);
    void *pid;
    pthread_join(forker, &pid);
    close(report_pipe[1]); /* a child that dies early then gives EOF, not a hang */
    long long child[2] = {-1, -1};
    CHECK(read(report_pipe[0], child, sizeof child) == sizeof child, "no report from child");
    int status = 0;
    waitpid((pid_t)(intptr_t)pid, &status, 0);
    CHECK(child[0] == 1, "child created %lld, want 1 (its own count)", child[0]);
    CHECK(child[1] == 1, "child live %lld, want 1", child[1]);
    CHECK(total(THREADGUARD_CREATED) == parent_created + 1, "parent count disturbed by child");
    pthread_cancel(busy);
    pthread_join(busy, NULL);
}

static void test_api(void) {
    CHECK(threadguard_interposing() == 1, "pthread_create is not threadguard's");
    CHECK(strcmp(threadguard_version(), THREADGUARD_VERSION_STRING) == 0, "version");
    CHECK(threadguard_stats_take(NULL) == THREADGUARD_EINVAL, "take(NULL)");
    CHECK(strstr(threadguard_last_error(), "NULL") != NULL, "message: %s",
          threadguard_last_error());
    threadguard_stats *s = NULL;
    CHECK(threadguard_stats_take(&s) == 0, "take");
    int rows = threadguard_stats_rows(s);
    CHECK(threadguard_stats_name(s, rows) == NULL, "row past the end has a name");
    CHECK(threadguard_stats_get(s, -2, 0) == -1, "row -2");
    CHECK(threadguard_stats_get(s, 0, THREADGUARD_FIELD_COUNT) == -1, "bad field");
    CHECK(threadguard_stats_tasks(s) >= 1, "tasks %lld", threadguard_stats_tasks(s));
    CHECK(threadguard_stats_untracked(s) >= 0, "untracked");
    threadguard_stats_free(s);
    threadguard_stats_free(NULL);
    CHECK(threadguard_stats_rows(NULL) == 0, "rows(NULL)");
}

int main(void) {
    alarm(120); /* a hang is a failure, not a stuck CI */
    test_api();
    test_return_and_exit();
    test_cancel();
    test_detached();
    test_failure_counted();
#ifdef __SANITIZE_THREAD__
    /* TSan cannot start threads in the child of a multi-threaded fork; the
     * fork test runs in the plain and ASan/UBSan builds. */
    printf("test_fork: skipped under ThreadSanitizer\n");
#else
    test_fork();
#endif
    if (check_failures == 0) printf("test_counting: all checks passed\n");
    return check_failures != 0;
}
