/* Sharing the CPUs among a job's processes.
 *
 * The commonest oversubscription is many processes that each start a full
 * team: a multiprocessing Pool of numpy workers, DataLoader workers, a
 * fan-out of scripts.  Each guarded child registers with its guarded parent
 * in a table that lives in the parent's published file (publish.h, struct
 * tg_children): its pid and start time, claimed by compare-and-swap,
 * released at its exit (exit, _exit) and recognised as gone by its start
 * time when it was killed.  A pool sized in a child then counts the
 * parent's live children and gets the parent's CPUs divided among them.
 *
 * Why a table in the parent's file rather than a walk of /proc or of the
 * directory: counting costs one /proc read per sibling, not one per process
 * on the node, and a reader needs nothing but the parent's pid.  Why the
 * children register rather than the parent at fork: spawn, forkserver and
 * subprocess children reach their parent through fork and exec, vfork
 * included, which no wrapper in the parent can follow; every child
 * initialises.
 *
 * Only a preloaded process leads a job this way (`import threadguard` in a
 * notebook or a test runner counts its own threads; its allocation is not
 * its children's to divide).  The parent keeps its own pools: it usually
 * waits for its workers.  Its
 * CPUs are its own allocation as last measured (cpus_now in its header),
 * which is itself divided when the parent is another process's child, so
 * nested pools compose.  multiprocessing's helpers (the resource tracker,
 * the forkserver) run no pools and do not register.
 *
 * Layer: state.  Calls publish.c, procfs.c and config.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "share.h"

#include "config.h"
#include "procfs.h"
#include "publish.h"

/* The parent's header and children's table: the first pages of its file. */
#define PARENT_MAP_SIZE offsetof(struct tg_published, block)

struct parent_file {
    struct tg_published *map; /* only the first PARENT_MAP_SIZE bytes */
    int pid;
    long long start;
};

static struct parent_file parent;
static int my_entry = -1;
static int my_pid;
static int preloaded_process;

static int map_file_of(int pid, long long start, struct parent_file *out) {
    if (pid <= 1 || start < 0) return -1;
    char path[128];
    tg_publish_file_path(path, sizeof path, pid, start);
    int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    void *mem = MAP_FAILED;
    /* The same user's file, of this layout (its size says so). */
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == getuid() &&
        st.st_size == (off_t)sizeof(struct tg_published))
        mem = mmap(NULL, PARENT_MAP_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (mem == MAP_FAILED) return -1;
    struct tg_published *p = mem;
    if (__atomic_load_n(&p->header.magic, __ATOMIC_ACQUIRE) != TG_PUBLISH_MAGIC ||
        p->header.layout != TG_PUBLISH_LAYOUT || p->header.pid != pid) {
        munmap(mem, PARENT_MAP_SIZE);
        return -1;
    }
    out->map = p;
    out->pid = pid;
    out->start = start;
    return 0;
}

/* multiprocessing's own helper processes run no pools: they are not workers. */
static int multiprocessing_helper(void) {
    char cmdline[1024];
    long long n = tg_read_small_file("/proc/self/cmdline", cmdline, sizeof cmdline);
    for (long long i = 0; i < n; i++)
        if (cmdline[i] == '\0') cmdline[i] = ' ';
    return n > 0 && (strstr(cmdline, "multiprocessing.resource_tracker") != NULL ||
                     strstr(cmdline, "multiprocessing.forkserver") != NULL ||
                     strstr(cmdline, "multiprocessing.semaphore_tracker") != NULL);
}

static int entry_live(const struct tg_child *e, int *pid_out) {
    int pid = atomic_load_explicit(&e->pid, memory_order_acquire);
    if (pid <= 0) return 0;
    long long start = atomic_load_explicit(&e->start_time, memory_order_relaxed);
    if (pid_out) *pid_out = pid;
    return pid == my_pid || tg_running_start_time_of(pid) == start;
}

/* This process's entry, made before it exec'ed (a child forked, registered
 * in its fork handler, then exec'ed: the same pid and start time). */
static int entries_used(struct tg_children *c) {
    int used = atomic_load_explicit(&c->used, memory_order_acquire);
    return used < 0 ? 0 : used > TG_MAX_CHILDREN ? TG_MAX_CHILDREN : used;
}

static int own_entry(struct tg_children *c, long long start) {
    for (int i = 0; i < entries_used(c); i++)
        if (atomic_load_explicit(&c->entry[i].pid, memory_order_acquire) == my_pid &&
            atomic_load_explicit(&c->entry[i].start_time, memory_order_relaxed) == start)
            return i;
    return -1;
}

/* A free entry, or one whose process is gone: claimed as -1 (being
 * written).  Entries are taken lowest first, so the table's used part stays
 * at its start (readers scan only that far). */
static int claim(struct tg_children *c) {
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < TG_MAX_CHILDREN; i++) {
            struct tg_child *e = &c->entry[i];
            int pid = atomic_load_explicit(&e->pid, memory_order_relaxed);
            if (pass == 0 ? pid != 0 : (pid <= 0 || entry_live(e, NULL))) continue;
            if (atomic_compare_exchange_strong_explicit(&e->pid, &pid, -1, memory_order_acq_rel,
                                                        memory_order_relaxed)) {
                int used = atomic_load_explicit(&c->used, memory_order_relaxed);
                while (used < i + 1 &&
                       !atomic_compare_exchange_weak_explicit(
                           &c->used, &used, i + 1, memory_order_acq_rel, memory_order_relaxed)) {}
                return i;
            }
        }
    return -1;
}

void tg_share_register(int exec_start, int preloaded) {
    if (exec_start) preloaded_process = preloaded; /* a forked child keeps its parent's */
    /* A forked child inherits the parent's registration: not its own. */
    if (parent.map != NULL) munmap(parent.map, PARENT_MAP_SIZE);
    parent.map = NULL;
    my_entry = -1;
    my_pid = (int)getpid();
    struct tg_published *self = tg_published_self();
    if (self == NULL || tg_config.publish_off) return; /* nothing shared without publishing */
    int ppid = (int)getppid();
    /* The parent's start time is read only where it may have a file: most
     * processes are started by a shell. */
    if (tg_publish_listed_parent(ppid) == 0 ||
        map_file_of(ppid, tg_start_time_of(ppid), &parent) != 0)
        return;
    struct tg_children *c = &parent.map->children;
    int i = own_entry(c, self->header.start_time);
    if (exec_start && multiprocessing_helper()) {
        /* Registered by its fork handler before it exec'ed into the helper. */
        if (i >= 0) {
            my_entry = i;
            tg_share_release();
        }
        munmap(parent.map, PARENT_MAP_SIZE);
        parent.map = NULL;
        return;
    }
    if (i >= 0) {
        my_entry = i;
    } else if ((i = claim(c)) < 0) {
        atomic_fetch_add_explicit(&c->overflow, 1, memory_order_relaxed);
    } else {
        atomic_store_explicit(&c->entry[i].start_time, self->header.start_time,
                              memory_order_relaxed);
        atomic_store_explicit(&c->entry[i].pid, my_pid, memory_order_release);
        my_entry = i;
    }
    atomic_fetch_add_explicit(&c->generation, 1, memory_order_acq_rel);
    atomic_store_explicit(&self->header.parent_start, parent.start, memory_order_relaxed);
    atomic_store_explicit(&self->header.parent_pid, parent.pid, memory_order_release);
}

void tg_share_release(void) {
    /* A vfork child runs in its parent's memory: the entry is not its own. */
    if (parent.map == NULL || my_entry < 0 || (int)getpid() != my_pid) return;
    struct tg_children *c = &parent.map->children;
    int me = my_pid;
    atomic_compare_exchange_strong_explicit(&c->entry[my_entry].pid, &me, 0, memory_order_acq_rel,
                                            memory_order_relaxed);
    atomic_fetch_add_explicit(&c->generation, 1, memory_order_acq_rel);
    my_entry = -1;
}

void tg_share_note_cpus(long long cpus) {
    struct tg_published *self = tg_published_self();
    if (self != NULL && cpus > 0 && preloaded_process)
        atomic_store_explicit(&self->header.cpus_now, cpus, memory_order_relaxed);
}

unsigned tg_share_generation(void) {
    return parent.map ? atomic_load_explicit(&parent.map->children.generation, memory_order_acquire)
                      : 0;
}

/* Live children in a table; the first few pids into s. */
static int live_children(struct tg_children *c, struct tg_sharing *s) {
    int n = 0;
    for (int i = 0; i < entries_used(c); i++) {
        int pid = 0;
        if (!entry_live(&c->entry[i], &pid)) continue;
        if (s && s->listed < TG_SHARING_PIDS) s->pids[s->listed++] = pid;
        n++;
    }
    return n;
}

/* The CPUs a process's pools may use, recomputed up its chain of guarded
 * ancestors (depth bounds the walk): its own figure, or less when its
 * parent's CPUs divided among their live children are fewer now. */
static long long cpus_of(const struct parent_file *f, int depth) {
    long long cpus = atomic_load_explicit(&f->map->header.cpus_now, memory_order_relaxed);
    int up_pid = atomic_load_explicit(&f->map->header.parent_pid, memory_order_acquire);
    if (depth <= 0 || up_pid <= 0) return cpus;
    struct parent_file up;
    long long up_start = atomic_load_explicit(&f->map->header.parent_start, memory_order_relaxed);
    if (tg_start_time_of(up_pid) != up_start || map_file_of(up_pid, up_start, &up) != 0)
        return cpus;
    long long up_cpus = cpus_of(&up, depth - 1);
    int siblings = live_children(&up.map->children, NULL);
    munmap(up.map, PARENT_MAP_SIZE);
    if (up_cpus > 0 && siblings > 0) {
        long long share = up_cpus / siblings > 0 ? up_cpus / siblings : 1;
        if (cpus <= 0 || share < cpus) cpus = share;
    }
    return cpus;
}

long long tg_share_workers(struct tg_sharing *s) {
    memset(s, 0, sizeof *s);
    if (parent.map == NULL || (int)getpid() != my_pid) return -1;
    long long cpus = cpus_of(&parent, 3);
    if (cpus <= 0) return -1;
    s->parent = parent.pid;
    s->parent_cpus = cpus;
    s->processes = live_children(&parent.map->children, s);
    if (my_entry < 0) s->processes++; /* the table was full: still one of them */
    if (s->processes < 1) s->processes = 1;
    long long share = cpus / s->processes;
    return share > 0 ? share : 1;
}
