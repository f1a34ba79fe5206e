/* Import mode without Python: a program that is not linked with
 * threadguard opens it late (as `import threadguard` does), turns on import
 * mode, and then every thread is counted by its creator: the program's own
 * (its PLT slot patched), a library built with -fno-plt -Wl,-z,now (a
 * GLOB_DAT slot), one opened with RTLD_DEEPBIND, and threads a library's
 * constructor started during dlopen (adopted from /proc/self/task, and
 * their exits seen). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define THREADGUARD_NO_CHECK_HELPERS
#include "check.h"

static struct {
    int (*import_mode)(void);
    int (*mode)(void);
    int (*take)(threadguard_stats **);
    void (*release)(threadguard_stats *);
    int (*rows)(const threadguard_stats *);
    const char *(*name)(const threadguard_stats *, int);
    long long (*get)(const threadguard_stats *, int, int);
} tg;

static int load_threadguard(void) {
    void *h = dlopen(THREADGUARD_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "cannot open %s: %s\n", THREADGUARD_LIBRARY, dlerror());
        return -1;
    }
    *(void **)&tg.import_mode = dlsym(h, "threadguard_import_mode");
    *(void **)&tg.mode = dlsym(h, "threadguard_mode");
    *(void **)&tg.take = dlsym(h, "threadguard_stats_take");
    *(void **)&tg.release = dlsym(h, "threadguard_stats_free");
    *(void **)&tg.rows = dlsym(h, "threadguard_stats_rows");
    *(void **)&tg.name = dlsym(h, "threadguard_stats_name");
    *(void **)&tg.get = dlsym(h, "threadguard_stats_get");
    return tg.import_mode && tg.mode && tg.take && tg.release && tg.rows && tg.name && tg.get ? 0
                                                                                              : -1;
}

/* A counter of the row whose library name starts with prefix (0 if none). */
static long long counter(const char *prefix, int field) {
    threadguard_stats *s = NULL;
    if (tg.take(&s) != 0) return -1000;
    long long value = 0;
    for (int r = 0; r < tg.rows(s); r++)
        if (strncmp(tg.name(s, r), prefix, strlen(prefix)) == 0) value = tg.get(s, r, field);
    tg.release(s);
    return value;
}

static void *returns(void *arg) { return arg; }

static int (*run_in(void *handle))(int) {
    return handle ? (int (*)(int))dlsym(handle, "spawner_run") : NULL;
}

int main(void) {
    if (load_threadguard() != 0) return 1;
    CHECK(tg.mode() == THREADGUARD_MODE_OFF, "mode %d before import mode", tg.mode());
    CHECK(tg.import_mode() == THREADGUARD_OK, "import mode failed");
    CHECK(tg.mode() == THREADGUARD_MODE_IMPORT, "mode %d after import mode", tg.mode());
    CHECK(tg.import_mode() == THREADGUARD_OK, "a second call must be harmless");

    /* The program's own PLT slot. */
    for (int i = 0; i < 3; i++) {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, returns, NULL) == 0, "create");
        pthread_join(t, NULL);
    }
    CHECK(counter("test_import_mode", THREADGUARD_CREATED) == 3, "program created %lld, want 3",
          counter("test_import_mode", THREADGUARD_CREATED));

    /* -fno-plt -Wl,-z,now: called through a GLOB_DAT slot, loaded later. */
    int (*noplt)(int) = run_in(dlopen(SPAWNER_NOPLT, RTLD_NOW));
    CHECK(noplt != NULL, "open %s: %s", SPAWNER_NOPLT, dlerror());
    if (noplt) CHECK(noplt(4) == 4, "noplt run");
    CHECK(counter("libtg_spawner_noplt", THREADGUARD_CREATED) == 4, "noplt created %lld, want 4",
          counter("libtg_spawner_noplt", THREADGUARD_CREATED));

    /* RTLD_DEEPBIND: its own scope first, which an LD_PRELOAD would miss.
     * Sanitizer runtimes refuse RTLD_DEEPBIND, so those builds skip it. */
#ifndef UNDER_SANITIZER
    int (*deep)(int) = run_in(dlopen(SPAWNER_DEEP, RTLD_NOW | RTLD_DEEPBIND));
    CHECK(deep != NULL, "open %s: %s", SPAWNER_DEEP, dlerror());
    if (deep) CHECK(deep(5) == 5, "deep run");
    CHECK(counter("libtg_spawner_deep", THREADGUARD_CREATED) == 5, "deepbind created %lld, want 5",
          counter("libtg_spawner_deep", THREADGUARD_CREATED));
#endif

    /* Threads started by a constructor, before any patch could apply. */
    void *ctor = dlopen(SPAWNER_CTOR, RTLD_NOW);
    CHECK(ctor != NULL, "open %s: %s", SPAWNER_CTOR, dlerror());
    CHECK(counter("libtg_spawner_ctor", THREADGUARD_CREATED) == 2, "ctor created %lld, want 2",
          counter("libtg_spawner_ctor", THREADGUARD_CREATED));
    CHECK(counter("libtg_spawner_ctor", THREADGUARD_LIVE) == 2, "ctor live %lld, want 2",
          counter("libtg_spawner_ctor", THREADGUARD_LIVE));
    int (*stop)(void) = ctor ? (int (*)(void))dlsym(ctor, "spawner_stop") : NULL;
    if (stop) CHECK(stop() == 2, "stop");
    CHECK(counter("libtg_spawner_ctor", THREADGUARD_LIVE) == 0,
          "ctor live %lld after its threads ended, want 0",
          counter("libtg_spawner_ctor", THREADGUARD_LIVE));
    return check_failures;
}
