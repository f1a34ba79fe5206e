/* The per-user headroom ledger: guarded processes of one user share the
 * tasks RLIMIT_NPROC (and a cgroup's pids.max) leave them.
 *
 * Each process sizing a pool used to measure the headroom alone: six numpy
 * processes started at once under a 40-task limit each saw about 33 free,
 * each took 33, and most died.  Now a process records in a shared mapping
 * the pool workers it has promised but not started yet, and every process
 * counts the other processes' promises as taken.  Pool sizing holds the
 * ledger's lock while it measures and records, so two processes cannot
 * both take the same room; started threads leave the promise and show up
 * in the kernel's task count instead.
 *
 * The mapping is the file "ledger" in the user's shared directory
 * (/dev/shm/threadguard-UID, where each process also publishes its counters,
 * publish.c), mode 0600, owned by the user: a fixed array of entries (pid, start time, promised), so nothing is
 * allocated.  It stays when the user's processes end (12 KiB): it also
 * carries the user's last task count, so that the next process need not
 * walk /proc (limits.c).  A process's entry is freed at exit; entries of processes that
 * died (SIGKILL) or exec'ed are reclaimed by the next process that sizes a
 * pool (a pid whose start time no longer matches is another process).
 * Nothing is shared under secure execution, for root (RLIMIT_NPROC does
 * not apply to it) or when the file is not the user's own.
 *
 * Layer: state.  Calls threads.c (is this a forked child), registry.c,
 * procfs.c and publish.c (the directory);
 * shaping.c and the wrapper call it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ledger.h"

#include "procfs.h"
#include "publish.h"
#include "registry.h"
#include "threads.h"

#define LEDGER_MAGIC 0x31646c6774ULL /* "tgld1" */
#define LEDGER_ENTRIES 512
/* The lock is held for one measurement: a /proc scan, a millisecond or two
 * alone, but tens of milliseconds when every worker of a pool sizes at once
 * on a busy node.  A holder that is gone frees it at once (kill(pid, 0)); a
 * live one is waited for up to this long before the caller goes on
 * unlocked, which risks the oversubscription the ledger prevents (200 ms
 * was too short: a spawn pool under CI load once lost a worker). */
#define LOCK_WAIT_US 2000000
/* Spins before waiting between tries: waiters that only yield take CPU
 * from the holder on a node with fewer cores than waiters. */
#define LOCK_SPINS 64

struct ledger_entry {
    _Atomic int pid;
    _Atomic long long start_time; /* /proc/PID/stat field 22 */
    _Atomic long long promised;   /* pool workers promised, not started */
};

struct ledger {
    _Atomic unsigned long long magic;
    _Atomic int lock; /* pid of the holder, 0 when free */
    int pad;
    struct ledger_entry entries[LEDGER_ENTRIES];
    /* The user's last count of its tasks (limits.c packs it with the node's
     * task creations then).  Added after the entries: a file an older
     * version made is extended, and the older version never reads it. */
    _Atomic unsigned long long uid_count;
};

static struct ledger *_Atomic shared;
static _Atomic int opened;                /* 0: not tried, 1: tried */
static struct ledger_entry *_Atomic mine; /* this process's entry */
static __thread volatile int holding __attribute__((tls_model("initial-exec")));

static int alive(const struct ledger_entry *e, int pid) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return 0;
    long long started = tg_start_time_of(pid);
    return started < 0 || started == atomic_load_explicit(&e->start_time, memory_order_relaxed);
}

static struct ledger *open_ledger(void) {
    if (getauxval(AT_SECURE) || getuid() == 0 || geteuid() != getuid()) return NULL;
    int dir = tg_shared_dir(1);
    if (dir < 0) return NULL;
    int fd = openat(dir, "ledger", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno == ENOENT) { /* the directory went empty and was removed meanwhile */
        close(dir);
        if ((dir = tg_shared_dir(1)) < 0) return NULL;
        fd = openat(dir, "ledger", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    }
    close(dir);
    if (fd < 0) return NULL;
    struct stat st;
    struct ledger *l = NULL;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == getuid() &&
        (st.st_mode & 077) == 0 &&
        (st.st_size >= (off_t)sizeof *l || ftruncate(fd, sizeof *l) == 0)) {
        void *mem = mmap(NULL, sizeof *l, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (mem != MAP_FAILED) l = mem;
    }
    close(fd);
    if (l == NULL) return NULL;
    unsigned long long expected = 0;
    if (!atomic_compare_exchange_strong_explicit(&l->magic, &expected, LEDGER_MAGIC,
                                                 memory_order_acq_rel, memory_order_acquire) &&
        expected != LEDGER_MAGIC) {
        munmap(l, sizeof *l); /* another layout: not ours to use */
        return NULL;
    }
    return l;
}

/* The ledger, opened on first use; NULL where there is none. */
static struct ledger *ledger(void) {
    struct ledger *l = atomic_load_explicit(&shared, memory_order_acquire);
    if (l != NULL || atomic_exchange_explicit(&opened, 1, memory_order_acq_rel)) return l;
    l = open_ledger();
    atomic_store_explicit(&shared, l, memory_order_release);
    return l;
}

int tg_ledger_lock(void) {
    if (holding) return 0; /* re-entered (a signal handler): go on without */
    struct ledger *l = ledger();
    if (l == NULL) return 0;
    int self = (int)getpid();
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int spins = 0;
    for (;;) {
        int expected = 0;
        if (atomic_compare_exchange_weak_explicit(&l->lock, &expected, self, memory_order_acquire,
                                                  memory_order_relaxed)) {
            holding = 1;
            return 1;
        }
        /* A holder that died (or this process before an exec) frees it. */
        if (expected != 0 && (expected == self || (kill(expected, 0) != 0 && errno == ESRCH)))
            atomic_compare_exchange_strong_explicit(&l->lock, &expected, 0, memory_order_acq_rel,
                                                    memory_order_relaxed);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000000LL + (now.tv_nsec - start.tv_nsec) / 1000 >
            LOCK_WAIT_US)
            return 0; /* go on unlocked rather than stall the program */
        if (++spins < LOCK_SPINS) {
            sched_yield();
        } else {
            struct timespec pause = {0, 500000}; /* 0.5 ms */
            nanosleep(&pause, NULL);
        }
    }
}

void tg_ledger_unlock(int locked) {
    if (!locked) return;
    struct ledger *l = atomic_load_explicit(&shared, memory_order_acquire);
    holding = 0;
    if (l != NULL) atomic_store_explicit(&l->lock, 0, memory_order_release);
}

/* Reclaim the entries of processes that are gone (under the lock).  Only
 * entries holding promises change anyone's figures, so only they are
 * checked (a kill and a /proc read each) on every sizing; the others only
 * when the table is full (every entry). */
static void reclaim(struct ledger *l, int every_entry) {
    int self = (int)getpid();
    struct ledger_entry *own = atomic_load_explicit(&mine, memory_order_acquire);
    for (int i = 0; i < LEDGER_ENTRIES; i++) {
        struct ledger_entry *e = &l->entries[i];
        int pid = atomic_load_explicit(&e->pid, memory_order_acquire);
        if (pid == 0 || e == own) continue;
        if (!every_entry && atomic_load_explicit(&e->promised, memory_order_relaxed) <= 0) continue;
        /* Our own pid in another entry: left by this process before exec. */
        if (pid == self || !alive(e, pid)) {
            atomic_store_explicit(&e->promised, 0, memory_order_relaxed);
            atomic_compare_exchange_strong_explicit(&e->pid, &pid, 0, memory_order_acq_rel,
                                                    memory_order_relaxed);
        }
    }
}

long long tg_ledger_others(void) {
    struct ledger *l = atomic_load_explicit(&shared, memory_order_acquire);
    if (l == NULL) return 0;
    struct ledger_entry *own = atomic_load_explicit(&mine, memory_order_acquire);
    long long sum = 0;
    for (int i = 0; i < LEDGER_ENTRIES; i++) {
        struct ledger_entry *e = &l->entries[i];
        if (e == own || atomic_load_explicit(&e->pid, memory_order_acquire) == 0) continue;
        long long p = atomic_load_explicit(&e->promised, memory_order_relaxed);
        if (p > 0) sum += p;
    }
    return sum;
}

unsigned long long tg_ledger_uid_count(void) {
    struct ledger *l = ledger();
    return l == NULL ? 0 : atomic_load_explicit(&l->uid_count, memory_order_relaxed);
}

void tg_ledger_note_uid_count(unsigned long long packed) {
    struct ledger *l = ledger();
    if (l != NULL) atomic_store_explicit(&l->uid_count, packed, memory_order_relaxed);
}

void tg_ledger_prepare(void) {
    struct ledger *l = atomic_load_explicit(&shared, memory_order_acquire);
    if (l != NULL && holding) reclaim(l, 0);
}

/* This process's promised workers: for each library, those it was promised
 * and has not started. */
static long long outstanding(void) {
    long long sum = 0;
    for (unsigned i = 0; i < TG_MAX_LIBS && !tg_lib_past_end(i); i++) {
        long long promised = atomic_load_explicit(&tg_libs[i].promised, memory_order_relaxed);
        if (promised <= 0) continue;
        long long live = atomic_load_explicit(&tg_libs[i].c.live, memory_order_relaxed);
        if (promised > live) sum += promised - live;
    }
    return sum;
}

static struct ledger_entry *claim_entry(struct ledger *l) {
    int self = (int)getpid();
    for (int i = 0; i < 2 * LEDGER_ENTRIES; i++) {
        if (i == LEDGER_ENTRIES) reclaim(l, 1); /* full: free what the dead left */
        struct ledger_entry *e = &l->entries[i % LEDGER_ENTRIES];
        int expected = 0;
        if (atomic_compare_exchange_strong_explicit(&e->pid, &expected, self, memory_order_acq_rel,
                                                    memory_order_relaxed)) {
            atomic_store_explicit(&e->start_time, tg_own_stat(NULL), memory_order_relaxed);
            atomic_store_explicit(&mine, e, memory_order_release);
            return e;
        }
    }
    return NULL; /* full: this process's promises go unshared */
}

void tg_ledger_update(void) {
    struct ledger *l = atomic_load_explicit(&shared, memory_order_acquire);
    if (l == NULL || tg_is_forked_child()) return;
    struct ledger_entry *e = atomic_load_explicit(&mine, memory_order_acquire);
    long long now = outstanding();
    if (e == NULL) {
        if (now == 0 || !holding) return; /* entries are claimed under the lock */
        e = claim_entry(l);
        if (e == NULL) return;
    }
    atomic_store_explicit(&e->promised, now, memory_order_relaxed);
}

void tg_ledger_release(void) {
    struct ledger_entry *e = atomic_exchange_explicit(&mine, NULL, memory_order_acq_rel);
    if (e == NULL) return;
    atomic_store_explicit(&e->promised, 0, memory_order_relaxed);
    int self = (int)getpid();
    atomic_compare_exchange_strong_explicit(&e->pid, &self, 0, memory_order_acq_rel,
                                            memory_order_relaxed);
}

void tg_ledger_after_fork_in_child(void) {
    /* The parent's entry stays the parent's; the child's lock state too. */
    atomic_store_explicit(&mine, NULL, memory_order_release);
    holding = 0;
}
