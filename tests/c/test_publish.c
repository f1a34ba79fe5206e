/* Publishing: the counters a reader outside the process sees, live.
 *
 * The process reads its own published file through the public reader, as
 * `threadguard top` reads another's: while threads wait, while others are
 * created and joined concurrently (the sanitizer builds check that the
 * writers and the reader do not race), after a fork (the child has a file
 * of its own and never resets the parent's counters), and a corrupt copy
 * is refused with one line. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

#define WAITERS 3
#define CHURNERS 2

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t go = PTHREAD_COND_INITIALIZER;
static int released;

static void *wait_for_go(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    while (!released) pthread_cond_wait(&go, &lock);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void *nothing(void *arg) { return arg; }

static void *churn(void *arg) {
    (void)arg;
    for (int i = 0; i < 300; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, nothing, NULL) == 0) pthread_join(t, NULL);
    }
    return NULL;
}

static char buffer[1 << 20];

/* The JSON a reader gets from path; NULL (and the error) when refused. */
static const char *read_published(const char *path) {
    long long n = threadguard_read_published(path, buffer, sizeof buffer);
    if (n < 0 || n >= (long long)sizeof buffer) return NULL;
    return buffer;
}

/* The "live" figure of the "total" object in a report. */
static long long total_live(const char *json) {
    const char *total = strstr(json, "\"total\": {");
    const char *live = total ? strstr(total, "\"live\": ") : NULL;
    return live ? atoll(live + strlen("\"live\": ")) : -1;
}

int main(void) {
    const char *own = threadguard_published_path();
    char path[256];
    snprintf(path, sizeof path, "%s", own);
    CHECK(strncmp(path, "/dev/shm/threadguard-", 21) == 0, "published at '%s'", path);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600 && st.st_uid == getuid(),
          "the file is the user's own, mode 0600");

    pthread_t waiters[WAITERS], churners[CHURNERS];
    for (int i = 0; i < WAITERS; i++) pthread_create(&waiters[i], NULL, wait_for_go, NULL);
    const char *json = read_published(path);
    CHECK(json != NULL, "read: %s", threadguard_last_error());
    if (json) {
        CHECK(total_live(json) == WAITERS, "live %lld, expected %d", total_live(json), WAITERS);
        CHECK(strstr(json, "\"table\": \"threadguard: pid ") != NULL, "the table is there");
    }

    /* Read while other threads create and join. */
    for (int i = 0; i < CHURNERS; i++) pthread_create(&churners[i], NULL, churn, NULL);
    int refused = 0;
    for (int i = 0; i < 100; i++)
        if (read_published(path) == NULL) refused++;
    for (int i = 0; i < CHURNERS; i++) pthread_join(churners[i], NULL);
    CHECK(refused == 0, "%d of 100 reads refused: %s", refused, threadguard_last_error());

    /* A forked child: its own file, counters from zero; the parent's stay. */
    int pipefd[2];
    CHECK(pipe(pipefd) == 0, "pipe");
    pid_t child = fork();
    if (child == 0) {
        const char *mine = threadguard_published_path();
        int ok = strcmp(mine, path) != 0 && mine[0] != '\0';
        const char *seen = ok ? read_published(mine) : NULL;
        ok = ok && seen != NULL && total_live(seen) == 0;
        if (write(pipefd[1], &ok, sizeof ok) != sizeof ok) _exit(2);
        _exit(0);
    }
    int ok = 0;
    CHECK(read(pipefd[0], &ok, sizeof ok) == sizeof ok && ok,
          "the child publishes its own file, from zero");
    waitpid(child, NULL, 0);
    json = read_published(path);
    CHECK(json != NULL && total_live(json) == WAITERS, "the parent's counters after the fork");

    /* A corrupt copy is refused, naming the file. */
    char corrupt[] = "/tmp/threadguard-test-publishXXXXXX";
    int fd = mkstemp(corrupt);
    int in = open(path, O_RDONLY);
    static char copy[1 << 19];
    ssize_t n = read(in, copy, sizeof copy);
    close(in);
    CHECK(n > 0, "copied");
    memcpy(copy, "garbage!", 8);
    CHECK(write(fd, copy, (size_t)n) == n, "wrote");
    close(fd);
    CHECK(read_published(corrupt) == NULL, "a corrupt copy is refused");
    CHECK(strstr(threadguard_last_error(), "rejected: ") != NULL &&
              strstr(threadguard_last_error(), corrupt) != NULL,
          "message: %s", threadguard_last_error());
    unlink(corrupt);

    pthread_mutex_lock(&lock);
    released = 1;
    pthread_cond_broadcast(&go);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < WAITERS; i++) pthread_join(waiters[i], NULL);
    return check_failures;
}
