/* THREADGUARD_MAX_THREADS with THREADGUARD_ON_LIMIT=deny and =warn.
 *
 * The settings are read when the library initialises, before main, so the
 * test re-executes itself with them in the environment: once per mode. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

#define BUDGET 4

static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;

/* Threads stay alive until the gate opens, so they all count as live. */
static void *hold(void *arg) {
    (void)arg;
    pthread_mutex_lock(&gate);
    pthread_mutex_unlock(&gate);
    return NULL;
}

/* The parent points the child's stderr at a file before exec (threadguard
 * writes only to the stderr a process had at start); what was written
 * there while threads were created is returned. */
static off_t capture_start(void) { return lseek(STDERR_FILENO, 0, SEEK_END); }

static void capture_stop(off_t from, char *text, size_t size) {
    ssize_t n = pread(STDERR_FILENO, text, size - 1, from);
    text[n > 0 ? n : 0] = '\0';
}

static int lines(const char *text) {
    int n = 0;
    for (; *text; text++) n += *text == '\n';
    return n;
}

static void run_mode(int deny) {
    pthread_t threads[BUDGET + 2];
    int results[BUDGET + 2];
    char text[4096];
    pthread_mutex_lock(&gate);
    off_t from = capture_start();
    for (int i = 0; i < BUDGET + 2; i++) results[i] = pthread_create(&threads[i], NULL, hold, NULL);
    capture_stop(from, text, sizeof text);
    pthread_mutex_unlock(&gate);

    for (int i = 0; i < BUDGET; i++) CHECK(results[i] == 0, "thread %d: %d", i + 1, results[i]);
    for (int i = BUDGET; i < BUDGET + 2; i++) {
        if (deny)
            CHECK(results[i] == EAGAIN, "thread %d over the budget: %d", i + 1, results[i]);
        else
            CHECK(results[i] == 0, "thread %d over the budget (warn): %d", i + 1, results[i]);
    }
    for (int i = 0; i < BUDGET + 2; i++)
        if (results[i] == 0) pthread_join(threads[i], NULL);

    /* One line, naming the creator (this program), the budget and the count. */
    CHECK(lines(text) == 1, "expected one line on stderr, got: %s", text);
    CHECK(strstr(text, "test_budget") != NULL, "the creator is not named: %s", text);
    CHECK(strstr(text, "THREADGUARD_MAX_THREADS=4") != NULL, "the budget is not named: %s", text);
    if (deny) {
        CHECK(strstr(text, "denied thread 5") && strstr(text, "4 threads are live"),
              "the count is not named: %s", text);
        CHECK(total(THREADGUARD_DENIED) == 2, "denied %lld", total(THREADGUARD_DENIED));
        CHECK(total(THREADGUARD_CREATED) == BUDGET, "created %lld", total(THREADGUARD_CREATED));
    } else {
        CHECK(strstr(text, "started thread 5") != NULL, "the count is not named: %s", text);
        CHECK(total(THREADGUARD_DENIED) == 0, "denied %lld", total(THREADGUARD_DENIED));
        CHECK(total(THREADGUARD_CREATED) == BUDGET + 2, "created %lld", total(THREADGUARD_CREATED));
    }

    /* With the threads gone there is room again. */
    pthread_t again;
    CHECK(pthread_create(&again, NULL, hold, NULL) == 0, "a thread after the others exited");
    pthread_join(again, NULL);
}

int main(int argc, char **argv) {
    (void)argc;
    const char *mode = getenv("THREADGUARD_ON_LIMIT");
    if (mode == NULL) {
        /* Parent: run each mode in a fresh process with the settings set. */
        int failures = 0;
        const char *modes[] = {"deny", "warn"};
        for (int m = 0; m < 2; m++) {
            char path[] = "/tmp/threadguard-budget-XXXXXX";
            int err = mkstemp(path);
            pid_t pid = fork();
            if (pid == 0) {
                dup2(err, STDERR_FILENO);
                setenv("THREADGUARD_MAX_THREADS", "4", 1);
                setenv("THREADGUARD_ON_LIMIT", modes[m], 1);
                execv("/proc/self/exe", argv);
                _exit(127);
            }
            int status = 0;
            waitpid(pid, &status, 0);
            char text[8192];
            ssize_t n = pread(err, text, sizeof text - 1, 0);
            text[n > 0 ? n : 0] = '\0';
            fputs(text, stderr); /* the child's stderr, visible in the test log */
            close(err);
            unlink(path);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "mode %s failed (status %d)\n", modes[m], status);
                failures++;
            }
        }
        return failures;
    }
    alarm(120);
    run_mode(strcmp(mode, "deny") == 0);
    return check_failures;
}
