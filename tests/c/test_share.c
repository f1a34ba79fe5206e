/* A job's processes share its CPUs: the children's table in the parent's
 * published file, read from the children themselves.
 *
 *  - four forked children, each reading its report once all four exist,
 *    see "4 workers of pid PARENT" and four processes sharing;
 *  - children that end through _exit release their entries (the table,
 *    read directly, no longer names them even before they are reaped); one
 *    killed by SIGKILL and not reaped yet (a zombie) keeps its entry but is
 *    not counted: a child forked afterwards is the only worker;
 *  - the parent's own report names no sharing;
 *  - a pool the parent configured (a stand-in OpenBLAS of 8, its variables
 *    exported, or hidden and named only by the file's symbol table) is
 *    resized in a forked child to the child's share, and left alone in the
 *    parent.
 * Runs plain, under ASan/UBSan and TSan (the children register and count
 * while other children release). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "publish.h" /* the file's layout: the children's table is read directly */

#define CHILDREN 4

static char buffer[1 << 20];

/* The live report's headroom "now": its cpus_from and sharing processes. */
static int read_share(char *from, size_t size, int *processes) {
    long long n = threadguard_report_json(buffer, sizeof buffer);
    if (n < 0 || n >= (long long)sizeof buffer) return -1;
    const char *now = strstr(buffer, "\"now\": {");
    if (now == NULL) return -1;
    const char *key = strstr(now, "\"cpus_from\": \"");
    if (key == NULL) return -1;
    key += strlen("\"cpus_from\": \"");
    size_t len = strcspn(key, "\"");
    if (len >= size) len = size - 1;
    memcpy(from, key, len);
    from[len] = '\0';
    const char *sharing = strstr(now, "\"sharing\": ");
    *processes = 0;
    if (sharing && strncmp(sharing + strlen("\"sharing\": "), "null", 4) != 0) {
        const char *p = strstr(sharing, "\"processes\": ");
        if (p) *processes = atoi(p + strlen("\"processes\": "));
    }
    return 0;
}

/* In a child (registered by its fork handler before fork returned here):
 * say so, wait for the go byte, read the share, send back "processes from",
 * then end through _exit at the next go byte (or linger until killed). */
static int bye[2]; /* a byte for each child to end */

/* The pids in this process's own children's table. */
static int table_pids(int *pids, int max) {
    static struct tg_published copy;
    FILE *f = fopen(threadguard_published_path(), "rb");
    if (f == NULL) return -1;
    size_t n = fread(&copy, 1, sizeof copy, f);
    fclose(f);
    if (n != sizeof copy) return -1;
    int found = 0;
    for (int i = 0; i < copy.children.used && i < TG_MAX_CHILDREN; i++)
        if (copy.children.entry[i].pid != 0 && found < max)
            pids[found++] = copy.children.entry[i].pid;
    return found;
}

static void child(int ready, int go, int out, int linger) {
    char byte = 'r';
    if (write(ready, &byte, 1) != 1 || read(go, &byte, 1) != 1) _exit(3);
    char from[128];
    int processes = -1;
    char line[256];
    if (read_share(from, sizeof from, &processes) != 0) snprintf(from, sizeof from, "?");
    int n = snprintf(line, sizeof line, "%d %s\n", processes, from);
    if (write(out, line, (size_t)n) != n) _exit(4);
    if (linger) pause();                       /* until killed */
    if (read(bye[0], &byte, 1) != 1) _exit(5); /* every sibling has looked */
    _exit(0);
}

/* The "cpus" of the live report's headroom "now". */
static long long cpus_now(void) {
    long long n = threadguard_report_json(buffer, sizeof buffer);
    const char *now = n > 0 ? strstr(buffer, "\"now\": {") : NULL;
    const char *cpus = now ? strstr(now, ", \"cpus\": ") : NULL;
    return cpus ? atoll(cpus + strlen(", \"cpus\": ")) : -1;
}

/* A forked child's view of a stand-in OpenBLAS pool of 8 loaded from path. */
static void check_inherited_pool(const char *path) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CHECK(lib != NULL, "dlopen %s: %s", path, dlerror());
    if (lib == NULL) return;
    int (*threads)(void) = (int (*)(void))dlsym(lib, "fake_openblas_threads");
    CHECK(threads && threads() == 8008, "the pool of 8 as loaded: %d", threads ? threads() : -1);
    int out[2];
    CHECK(pipe(out) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        long long seen[2] = {threads(), cpus_now()};
        _exit(write(out[1], seen, sizeof seen) == sizeof seen ? 0 : 1);
    }
    long long seen[2] = {-1, -1};
    CHECK(read(out[0], seen, sizeof seen) == sizeof seen, "the child's answer");
    waitpid(pid, NULL, 0);
    long long share = seen[1] < 8 ? seen[1] : 8;
    CHECK(seen[1] > 0 && seen[0] == share * 1000 + share,
          "%s in a forked child: %lld (its share %lld CPUs), expected %lld", path, seen[0], seen[1],
          share * 1001);
    CHECK(threads() == 8008, "the parent's pool stays: %d", threads());
    close(out[0]);
    close(out[1]);
}

int main(void) {
    int ready[2], go[2], out[2];
    CHECK(pipe(ready) == 0 && pipe(go) == 0 && pipe(out) == 0 && pipe(bye) == 0, "pipes");
    pid_t pids[CHILDREN + 1];
    for (int i = 0; i < CHILDREN; i++) {
        pids[i] = fork();
        if (pids[i] == 0) child(ready[1], go[0], out[1], i == CHILDREN - 1);
    }
    /* All four have registered: let them look. */
    char byte;
    for (int i = 0; i < CHILDREN; i++) CHECK(read(ready[0], &byte, 1) == 1, "ready");
    CHECK(write(go[1], "gggg", CHILDREN) == CHILDREN, "go");
    char expected[64];
    snprintf(expected, sizeof expected, "4 workers of pid %d", (int)getpid());
    for (int i = 0; i < CHILDREN; i++) {
        char line[256];
        int len = 0;
        while (len < (int)sizeof line - 1 && read(out[0], line + len, 1) == 1 && line[len] != '\n')
            len++;
        line[len] = '\0';
        int processes = atoi(line);
        const char *from = strchr(line, ' ');
        CHECK(processes == CHILDREN && from && strcmp(from + 1, expected) == 0,
              "a child saw '%s', expected '4 %s'", line, expected);
    }
    /* Three end through _exit and are reaped; the fourth is killed and left
     * a zombie. */
    CHECK(write(bye[1], "bbb", CHILDREN - 1) == CHILDREN - 1, "bye");
    siginfo_t info;
    for (int i = 0; i < CHILDREN - 1; i++) /* ended, not reaped yet */
        waitid(P_PID, (id_t)pids[i], &info, WEXITED | WNOWAIT);
    int listed[CHILDREN + 1];
    int count = table_pids(listed, CHILDREN + 1);
    CHECK(count == 1 && listed[0] == pids[CHILDREN - 1],
          "after three _exit: %d entries (the first %d), expected only %d", count,
          count > 0 ? listed[0] : 0, (int)pids[CHILDREN - 1]);
    for (int i = 0; i < CHILDREN - 1; i++) waitpid(pids[i], NULL, 0);
    kill(pids[CHILDREN - 1], SIGKILL);
    waitid(P_PID, (id_t)pids[CHILDREN - 1], &info, WEXITED | WNOWAIT); /* dead, not reaped */

    pids[CHILDREN] = fork();
    if (pids[CHILDREN] == 0) child(ready[1], go[0], out[1], 0);
    CHECK(read(ready[0], &byte, 1) == 1 && write(go[1], "g", 1) == 1 && write(bye[1], "b", 1) == 1,
          "go");
    char line[256];
    int len = 0;
    while (len < (int)sizeof line - 1 && read(out[0], line + len, 1) == 1 && line[len] != '\n')
        len++;
    line[len] = '\0';
    char want[64];
    snprintf(want, sizeof want, "1 1 worker of pid %d", (int)getpid());
    CHECK(strcmp(line, want) == 0, "after the others ended the fifth saw '%s', expected '%s'", line,
          want);
    waitpid(pids[CHILDREN], NULL, 0);
    waitpid(pids[CHILDREN - 1], NULL, 0);

    /* The parent itself is nobody's worker here. */
    char from[128];
    int processes = -1;
    CHECK(read_share(from, sizeof from, &processes) == 0 && processes == 0 &&
              strstr(from, "worker") == NULL,
          "the parent's own share: '%s', %d processes", from, processes);

    check_inherited_pool(FAKE_OPENBLAS_EXPORTED);
    check_inherited_pool(FAKE_OPENBLAS_HIDDEN);
    return check_failures;
}
