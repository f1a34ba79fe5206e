/* Thread accounting: how each thread started through the wrapper is
 * counted until it ends, the threads import mode adopts, and the mode.
 *
 * The create path never allocates: the creator's routine and argument reach
 * the child through a fixed pool of start records, claimed with a
 * compare-and-swap and released by the child before it runs user code.
 *
 * Layer: state.  Calls registry.c (the counters per library), glibc.c (the
 * loader's view, for the mode), publish.c (a new mode) and procfs.c; called by the entry points,
 * lifecycle.c, stats.c, report.c and ledger.c. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "threads.h"

#include "glibc.h"
#include "procfs.h"
#include "publish.h"
#include "registry.h"

/* ---- the counting mode ------------------------------------------------ */

static _Atomic int recorded_mode; /* enum threadguard_mode */

int tg_recorded_mode(void) { return atomic_load_explicit(&recorded_mode, memory_order_acquire); }

void tg_set_mode(int mode) {
    if (atomic_exchange_explicit(&recorded_mode, mode, memory_order_acq_rel) != mode)
        tg_publish_changed();
}

int tg_mode(void) {
    int mode = tg_recorded_mode();
    if (mode != THREADGUARD_MODE_OFF) return mode;
    return tg_interposing() ? THREADGUARD_MODE_PRELOAD : THREADGUARD_MODE_OFF;
}

/* ---- start records ---------------------------------------------------- */

/* Incremented in a forked child; threads of an older generation do not
 * count their exit. */
static _Atomic unsigned fork_generation;

/* 1024 static records cover any ordinary program.  When more threads are
 * being started at once than that (a SCHED_FIFO parent whose children do
 * not get to run), more records are mapped with mmap - a system call, not
 * the heap, safe on this path - in chunks that are never unmapped.  Only if
 * even that fails is a thread started uncounted, and that is counted. */
#define TG_START_RECORDS 1024
#define TG_CHUNK_RECORDS 4096
#define TG_MAX_CHUNKS 15

struct tg_start_record {
    _Atomic int busy;
    void *(*routine)(void *);
    void *arg;
    unsigned slot;
    unsigned site; /* the Python start site's id, 0: none */
    unsigned generation;
};

static struct tg_start_record records[TG_START_RECORDS];
static _Atomic unsigned record_hint;
static struct tg_start_record *_Atomic chunks[TG_MAX_CHUNKS];

static struct tg_start_record *claim_in(struct tg_start_record *pool, unsigned size) {
    for (unsigned tries = 0; tries < size; tries++) {
        unsigned i = atomic_fetch_add_explicit(&record_hint, 1, memory_order_relaxed) % size;
        int expected = 0;
        if (atomic_compare_exchange_strong_explicit(&pool[i].busy, &expected, 1,
                                                    memory_order_acquire, memory_order_relaxed))
            return &pool[i];
    }
    return NULL;
}

static struct tg_start_record *claim_record(void) {
    struct tg_start_record *r = claim_in(records, TG_START_RECORDS);
    for (int c = 0; r == NULL && c < TG_MAX_CHUNKS; c++) {
        struct tg_start_record *chunk = atomic_load_explicit(&chunks[c], memory_order_acquire);
        if (chunk == NULL) {
            void *mem = mmap(NULL, TG_CHUNK_RECORDS * sizeof(struct tg_start_record),
                             PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (mem == MAP_FAILED) return NULL;
            struct tg_start_record *expected = NULL;
            if (atomic_compare_exchange_strong_explicit(
                    &chunks[c], &expected, mem, memory_order_acq_rel, memory_order_acquire)) {
                chunk = mem;
                atomic_fetch_add_explicit(&tg_records_mapped, TG_CHUNK_RECORDS,
                                          memory_order_relaxed);
            } else {
                munmap(mem, TG_CHUNK_RECORDS * sizeof(struct tg_start_record));
                chunk = expected; /* another thread mapped this chunk first */
            }
        }
        r = claim_in(chunk, TG_CHUNK_RECORDS);
    }
    return r;
}

struct tg_start_record *tg_record_claim(unsigned slot, unsigned site, void *(*routine)(void *),
                                        void *arg) {
    struct tg_start_record *record = claim_record();
    if (record == NULL) return NULL;
    record->routine = routine;
    record->arg = arg;
    record->slot = slot;
    record->site = site;
    record->generation = atomic_load_explicit(&fork_generation, memory_order_relaxed);
    return record;
}

void tg_record_release(struct tg_start_record *r) {
    atomic_store_explicit(&r->busy, 0, memory_order_release);
}

static void release_all_records(void) {
    for (unsigned i = 0; i < TG_START_RECORDS; i++)
        atomic_store_explicit(&records[i].busy, 0, memory_order_relaxed);
    for (int c = 0; c < TG_MAX_CHUNKS; c++) {
        struct tg_start_record *chunk = atomic_load_explicit(&chunks[c], memory_order_relaxed);
        for (unsigned i = 0; chunk != NULL && i < TG_CHUNK_RECORDS; i++)
            atomic_store_explicit(&chunk[i].busy, 0, memory_order_relaxed);
    }
}

/* ---- counting --------------------------------------------------------- */

static _Atomic int forked_child;

int tg_is_forked_child(void) { return atomic_load_explicit(&forked_child, memory_order_relaxed); }

void tg_count_start(unsigned slot, long long *live_after_total, long long *live_after_lib) {
    *live_after_lib = atomic_fetch_add_explicit(&tg_libs[slot].c.live, 1, memory_order_relaxed) + 1;
    *live_after_total = atomic_fetch_add_explicit(&tg_total.live, 1, memory_order_relaxed) + 1;
}

void tg_count_exit(unsigned slot) {
    atomic_fetch_sub_explicit(&tg_libs[slot].c.live, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&tg_total.live, 1, memory_order_relaxed);
}

void tg_count_created(unsigned slot, long long live_lib) {
    struct tg_lib *lib = &tg_libs[slot];
    long long created = atomic_fetch_add_explicit(&lib->c.created, 1, memory_order_relaxed) + 1;
    long long before = tg_raise_peak(&lib->c.peak, live_lib);
    if (before >= 0) tg_growth_rise(&lib->growth, before, created);
}

/* ---- Python start sites ------------------------------------------------ */

/* The site the Python package named for the threads this thread is about
 * to start (threadguard_python_site_set); 0: none. */
static __thread unsigned current_site __attribute__((tls_model("initial-exec")));

unsigned tg_python_site_set(unsigned site) {
    unsigned previous = current_site;
    current_site = site < 1 + TG_MAX_SITES ? site : 0;
    return previous;
}

unsigned tg_python_site_now(void) { return current_site; }

void tg_site_count(unsigned site, int event) {
    if (site == 0) return;
    struct tg_site *row = &tg_sites[site - 1];
    switch (event) {
    case TG_SITE_STARTING: atomic_fetch_add_explicit(&row->c.live, 1, memory_order_relaxed); break;
    case TG_SITE_ENDED: atomic_fetch_sub_explicit(&row->c.live, 1, memory_order_relaxed); break;
    case TG_SITE_FAILED:
        atomic_fetch_sub_explicit(&row->c.live, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&row->c.failed, 1, memory_order_relaxed);
        break;
    case TG_SITE_STARTED: {
        long long created = atomic_fetch_add_explicit(&row->c.created, 1, memory_order_relaxed) + 1;
        long long before =
            tg_raise_peak(&row->c.peak, atomic_load_explicit(&row->c.live, memory_order_relaxed));
        if (before >= 0) tg_growth_rise(&row->growth, before, created);
        break;
    }
    default: break;
    }
}

struct exit_token {
    unsigned slot;
    unsigned site;
    unsigned generation;
};

/* Set once this thread's exit is counted: when the main thread has called
 * pthread_exit, the report runs in the last thread after its own exit was
 * counted, and must not take it for a thread it never saw created. */
static __thread int exit_counted __attribute__((tls_model("initial-exec")));

int tg_exit_counted_here(void) { return exit_counted; }

static void on_thread_exit(void *p) {
    const struct exit_token *token = p;
    exit_counted = 1;
    /* A thread that crossed a fork() into a child belongs to the parent's
     * count, which the child reset. */
    if (token->generation == atomic_load_explicit(&fork_generation, memory_order_relaxed)) {
        tg_count_exit(token->slot);
        tg_site_count(token->site, TG_SITE_ENDED);
    }
}

/* Not instrumented by ASan: a cancelled thread comes back here by
 * longjmp from glibc's unwinder (pthread_cleanup_push in C is setjmp), past
 * frames whose stack ASan still has poisoned, and ASan's no-return hook
 * then aborts in its own CHECK (asan_thread.cpp: "kCurrentStackFrameMagic")
 * instead of letting the thread end.  Uninstrumented, the thread ends as in
 * the plain build, and ASan clears the stack's shadow for the next thread. */
#if defined(__SANITIZE_ADDRESS__)
#define TG_NO_ASAN __attribute__((no_sanitize_address))
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TG_NO_ASAN __attribute__((no_sanitize_address))
#endif
#endif
#ifndef TG_NO_ASAN
#define TG_NO_ASAN
#endif

TG_NO_ASAN void *tg_trampoline(void *p) {
    struct tg_start_record *record = p;
    void *(*routine)(void *) = record->routine;
    void *arg = record->arg;
    struct exit_token token = {record->slot, record->site, record->generation};
    tg_record_release(record);

    void *result;
    pthread_cleanup_push(on_thread_exit, &token);
    result = routine(arg);
    pthread_cleanup_pop(1);
    return result;
}

/* ---- adopting threads started before a patch could see them ---------- */

#define TG_MAX_ADOPTED 1024

struct adopted {
    int tid;
    unsigned long long start_time;
    unsigned slot;
};

static struct adopted adopted[TG_MAX_ADOPTED];

/* Field 22 of /proc/self/task/TID/stat: when the thread started.  0 when
 * the thread is gone. */
static unsigned long long start_time_of(int tid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
    if (p == NULL) return 0;
    for (int field = 2; field < 22 && p != NULL; field++) p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

static void count_adopted(unsigned slot, int delta) {
    struct tg_counters *c = &tg_libs[slot].c;
    if (delta > 0) {
        atomic_fetch_add_explicit(&c->created, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&tg_total.created, 1, memory_order_relaxed);
    }
    long long lib_live = atomic_fetch_add_explicit(&c->live, delta, memory_order_relaxed) + delta;
    long long total_live =
        atomic_fetch_add_explicit(&tg_total.live, delta, memory_order_relaxed) + delta;
    if (delta > 0) {
        tg_raise_peak(&c->peak, lib_live);
        tg_raise_peak(&tg_total.peak, total_live);
    }
}

/* Its own spin lock (a pthread mutex held by a parent thread at fork would
 * stay locked in the child); reset after fork. */
static atomic_flag adopt_lock = ATOMIC_FLAG_INIT;
static _Atomic int adopted_any;

static void lock_adopted(void) {
    while (atomic_flag_test_and_set_explicit(&adopt_lock, memory_order_acquire)) sched_yield();
}

static void unlock_adopted(void) { atomic_flag_clear_explicit(&adopt_lock, memory_order_release); }

/* Count the exits of adopted threads.  Caller holds the lock. */
static void reap(void) {
    for (int i = 0; i < TG_MAX_ADOPTED; i++) {
        if (adopted[i].tid == 0) continue;
        if (start_time_of(adopted[i].tid) != adopted[i].start_time) {
            count_adopted(adopted[i].slot, -1);
            adopted[i].tid = 0;
        }
    }
}

void tg_adopt(int tid, unsigned slot) {
    unsigned long long start = start_time_of(tid);
    if (start == 0) return; /* gone already */
    lock_adopted();
    for (int i = 0; i < TG_MAX_ADOPTED; i++) {
        if (adopted[i].tid != 0) continue;
        adopted[i] = (struct adopted){tid, start, slot};
        count_adopted(slot, +1);
        atomic_store_explicit(&adopted_any, 1, memory_order_release);
        break;
    }
    unlock_adopted();
}

void tg_reap_adopted(void) {
    if (!atomic_load_explicit(&adopted_any, memory_order_acquire)) return;
    lock_adopted();
    reap();
    unlock_adopted();
}

/* ---- lifecycle hooks -------------------------------------------------- */

static long long tasks_at_start = -1;

long long tg_tasks_at_start(void) { return tasks_at_start; }

void tg_threads_init(void) {
    /* One read for both: the start time names the published file. */
    long long tasks = -1;
    if (tg_own_stat(&tasks) < 0) tasks = tg_count_tasks();
    tasks_at_start = tasks > 0 ? tasks - 1 : tasks;
}

void tg_threads_after_fork_in_child(void) {
    atomic_fetch_add_explicit(&fork_generation, 1, memory_order_relaxed);
    atomic_store_explicit(&forked_child, 1, memory_order_relaxed);
    /* Creations in flight in other parent threads never finish here. */
    release_all_records();
    tasks_at_start = 0;
    atomic_flag_clear_explicit(&adopt_lock, memory_order_relaxed);
    memset(adopted, 0, sizeof adopted); /* the parent's threads are not here */
}
