/* Headroom: how many more threads this process can start, and how many CPUs
 * it was given.  Measured from the kernel's own figures each time a pool is
 * sized, so a library loaded late is sized with the room left at that
 * moment.  Nothing here allocates: files are read into stack buffers and
 * directories with getdents64.
 *
 * Layer: state.  Calls allocation.c, config.c, glibc.c, ledger.c and procfs.c. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/sysinfo.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "limits.h"

#include "config.h"
#include "glibc.h"
#include "ledger.h"
#include "policy.h"
#include "procfs.h"
#include "registry.h"

/* What threadguard applied at start and the headroom then: written once
 * by shaping.c at initialisation; the arenas change the headroom here. */
struct tg_applied tg_applied;
struct tg_headroom tg_headroom_at_start;

/* Whole file (up to size-1 bytes) into buf; -1 when unreadable. */
static long read_file(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t used = 0;
    while (used < size - 1) {
        ssize_t n = read(fd, buf + used, size - 1 - used);
        if (n <= 0) break;
        used += (size_t)n;
        /* /proc and /sys fill a read as far as they can: a short one is
         * the end (one read call fewer per file, on every measurement). */
        if (used < size - 1) break;
    }
    close(fd);
    buf[used] = '\0';
    return (long)used;
}

/* A non-negative decimal at the start of s; -1 otherwise. */
static long long leading_number(const char *s) {
    while (*s == ' ' || *s == '\t') s++;
    if (*s < '0' || *s > '9') return -1;
    long long n = 0;
    for (; *s >= '0' && *s <= '9' && n < (1LL << 50); s++) n = n * 10 + (*s - '0');
    return n;
}

/* A file holding one number, or "max" (-1). */
static long long read_number(const char *path) {
    char buf[64];
    if (read_file(path, buf, sizeof buf) <= 0) return -1;
    return leading_number(buf);
}

static void take_min(long long *acc, long long value) {
    if (value >= 0 && (*acc < 0 || value < *acc)) *acc = value;
}

/* ---- tasks of the real uid -------------------------------------------- */

/* RLIMIT_NPROC counts every task of the real uid, in every process.
 * Counting them walks /proc: one fstatat per process on the node, whoever
 * owns it (about 3 us each here: 30 ms with 10,000 processes of another
 * user), and pool decisions are made under the ledger's lock, so a burst of
 * processes paid it one after another.  A decision needs the count only
 * when the tasks left may be fewer than its pool wants, so the count is
 * bounded from above, cheapest first, and walked only when the bound leaves
 * the decision in doubt (the decision calls tg_headroom_refine):
 *   1. every task on the node: /proc/loadavg's total, read anyway;
 *   2. the last walk's count plus every task created on the node since:
 *      the kernel counts each task it creates ("processes" in /proc/stat,
 *      whose length grows with CPUs, never with processes), so the uid
 *      cannot have gained more.  The last walk of this process or of any
 *      guarded process of the user (kept in the ledger), whichever bound
 *      is smaller;
 *   3. a walk, which refreshes both.
 * Tasks that end only loosen a bound.  What a bound misses: a process
 * created before the last walk that takes this uid after it (a daemon's
 * setuid), a window of a few tasks that the reserve covers. */

/* "Uid:\t<real>\t..." and "Threads:\t<n>" of /proc/<pid>/status. */
static long long threads_if_uid(const char *pid, uid_t uid) {
    char path[300], buf[4096];
    snprintf(path, sizeof path, "/proc/%s/status", pid);
    if (read_file(path, buf, sizeof buf) <= 0) return 0;
    const char *u = strstr(buf, "\nUid:");
    const char *t = strstr(buf, "\nThreads:");
    if (u == NULL || t == NULL || leading_number(u + 5) != (long long)uid) return 0;
    long long n = leading_number(t + 9);
    return n > 0 ? n : 0;
}

/* Tasks of the uid in other processes.  /proc/<pid> belongs to the
 * process's effective uid, so one fstatat skips other users' processes
 * without reading their status (a node's thousand processes cost about
 * 17 ms to read in full, 1-2 ms this way).  Missed: processes of this uid
 * running with another effective uid (setuid programs) or marked
 * non-dumpable (owned by root) - a few tasks, which the reserve covers. */
static long long other_processes_tasks(uid_t uid) {
    int fd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    char self[24];
    snprintf(self, sizeof self, "%d", (int)getpid());
    char buf[8192] __attribute__((aligned(8)));
    long long count = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (n <= 0) break;
        for (long off = 0; off < n;) {
            struct dirent64 *d = (struct dirent64 *)(void *)(buf + off);
            off += d->d_reclen;
            struct stat st;
            if (d->d_name[0] < '1' || d->d_name[0] > '9' || strcmp(d->d_name, self) == 0 ||
                fstatat(fd, d->d_name, &st, 0) != 0 || st.st_uid != uid)
                continue;
            count += threads_if_uid(d->d_name, uid);
        }
    }
    close(fd);
    return count;
}

/* Tasks the kernel has created on the node since boot, "processes N" in
 * /proc/stat (after a line per CPU and the interrupt counts, so it is read
 * a block at a time); -1 when there is no such line. */
static long long tasks_created(void) {
    static const char key[] = "\nprocesses ";
    int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buf[4096 + 64];
    size_t kept = 0;
    long long created = -1;
    for (;;) {
        ssize_t n = read(fd, buf + kept, sizeof buf - 1 - kept);
        if (n <= 0) break;
        size_t used = kept + (size_t)n;
        buf[used] = '\0';
        const char *at = strstr(buf, key);
        if (at != NULL && strchr(at + sizeof key - 1, '\n') != NULL) {
            created = leading_number(at + sizeof key - 1);
            break;
        }
        /* The line may straddle two blocks: the last 64 bytes hold its start. */
        kept = used < 64 ? used : 64;
        memmove(buf, buf + used - kept, kept);
    }
    close(fd);
    return created;
}

/* A walk's count and the node's creations before it, in one word (count in
 * the low 24 bits, creations modulo 2^40 above them), so that a reader in
 * another process never sees half of one; 0 is none. */
#define COUNT_BITS 24
#define COUNT_MASK ((1ULL << COUNT_BITS) - 1)
#define CREATED_MASK ((1ULL << (64 - COUNT_BITS)) - 1)

static unsigned long long pack_count(long long created, long long count) {
    if (created < 0 || count <= 0 || (unsigned long long)count >= COUNT_MASK) return 0;
    return ((unsigned long long)created << COUNT_BITS) | (unsigned long long)count;
}

/* The uid's tasks now are at most the count plus every task created since
 * (modulo 2^40: a counter that started again, after a reboot, reads as a
 * bound too large to help). */
static long long bound_since(unsigned long long packed, long long created_now) {
    if (packed == 0) return -1;
    unsigned long long since =
        ((unsigned long long)created_now - (packed >> COUNT_BITS)) & CREATED_MASK;
    return (long long)((packed & COUNT_MASK) + since);
}

static _Atomic unsigned long long last_count; /* this process's last walk */
static _Atomic long long walks;

/* The exact count: every task of the uid, this process's included. */
static long long count_uid_tasks(uid_t uid) {
    long long created = tasks_created(); /* before: a task made during the walk counts twice */
    long long others = other_processes_tasks(uid);
    long long own = tg_count_tasks();
    atomic_fetch_add_explicit(&walks, 1, memory_order_relaxed);
    if (others < 0 || own < 0) return -1;
    unsigned long long packed = pack_count(created, others + own);
    if (packed != 0) {
        atomic_store_explicit(&last_count, packed, memory_order_relaxed);
        tg_ledger_note_uid_count(packed);
    }
    return others + own;
}

long long tg_uid_task_walks(void) { return atomic_load_explicit(&walks, memory_order_relaxed); }

/* Bound 2: the smaller of this process's last count and the user's (the
 * ledger) plus the tasks created since; -1 without either. */
static long long bound_by_last_count(void) {
    unsigned long long own = atomic_load_explicit(&last_count, memory_order_relaxed);
    unsigned long long shared = tg_ledger_uid_count();
    if (own == 0 && shared == 0) return -1;
    long long created = tasks_created();
    if (created < 0) return -1;
    long long a = bound_since(own, created), b = bound_since(shared, created);
    return a < 0 || (b >= 0 && b < a) ? b : a;
}

static void set_uid_tasks(struct tg_headroom *h, long long tasks, int from) {
    h->uid_tasks = tasks;
    h->uid_tasks_from = from;
    h->nproc_free = -1;
    if (tasks < 0) return;
    h->nproc_free = h->nproc_soft > tasks ? h->nproc_soft - tasks : 0;
    /* Workers other guarded processes of this user promised and have not
     * started yet are taken, though no task shows them yet. */
    if (h->nproc_free > 0)
        h->nproc_free = h->nproc_free > h->reserved_others ? h->nproc_free - h->reserved_others : 0;
}

/* Bound 3, the count (a bound is kept where /proc cannot be walked). */
static void walk_uid_tasks(struct tg_headroom *h) {
    h->uid_tasks_walked = 1;
    long long counted = count_uid_tasks(getuid());
    if (counted >= 0) set_uid_tasks(h, counted, TG_TASKS_COUNTED);
}

/* The next tighter figure for the uid's tasks: bound 2 where it is
 * tighter, else a walk (tried once).  0 when nothing is left to try. */
static int tighten_uid_tasks(struct tg_headroom *h) {
    if (h->uid_tasks_from == TG_TASKS_NONE || h->uid_tasks_from == TG_TASKS_COUNTED ||
        h->uid_tasks_walked)
        return 0;
    if (h->uid_tasks_from != TG_TASKS_CREATED) {
        long long bound = bound_by_last_count();
        if (bound >= 0 && (h->uid_tasks < 0 || bound < h->uid_tasks)) {
            set_uid_tasks(h, bound, TG_TASKS_CREATED);
            return 1;
        }
    }
    walk_uid_tasks(h);
    return 1;
}

/* ---- cgroups (v1 and v2) ---------------------------------------------- */

typedef void (*cgroup_visit)(const char *dir, void *ctx);

static int has_controller(const char *list, size_t len, const char *controller) {
    size_t want = strlen(controller);
    const char *p = list, *end = list + len;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        size_t n = comma ? (size_t)(comma - p) : (size_t)(end - p);
        if (n == want && strncmp(p, controller, n) == 0) return 1;
        p += n + 1;
    }
    return 0;
}

static void walk_up(const char *mount, const char *path, size_t path_len, cgroup_visit visit,
                    void *ctx) {
    char dir[1024];
    int n = snprintf(dir, sizeof dir, "%s%.*s", mount, (int)path_len, path);
    if (n <= 0 || (size_t)n >= sizeof dir) return;
    size_t root = strlen(mount);
    for (;;) {
        visit(dir, ctx);
        char *slash = strrchr(dir + root, '/');
        if (slash == NULL) break;
        *slash = '\0';
        if (strlen(dir) < root) break;
    }
}

/* A v1 hierarchy's mount points, tried in order: the first that exists is
 * looked up once per process (mounts do not move while it runs; two
 * threads racing both look, and find the same). */
struct v1_mounts {
    _Atomic int found;        /* 0: not looked up; else 1 + the index, or -1: none */
    const char *const *paths; /* NULL-terminated */
};

static const char *v1_mount_path(struct v1_mounts *m) {
    int found = atomic_load_explicit(&m->found, memory_order_relaxed);
    if (found == 0) {
        found = -1;
        for (int i = 0; m->paths[i]; i++)
            if (access(m->paths[i], F_OK) == 0) {
                found = 1 + i;
                break;
            }
        atomic_store_explicit(&m->found, found, memory_order_relaxed);
    }
    return found > 0 ? m->paths[found - 1] : NULL;
}

/* One line of /proc/self/cgroup, "ID:CONTROLLERS:PATH" (a path of "/" has
 * length 0). */
struct cgroup_line {
    int v2; /* "0::" */
    const char *controllers, *path;
    size_t controllers_len, path_len;
};

/* The line at *cursor into *line, *cursor moved past it; 0 at the end.
 * A line without two colons comes back with controllers NULL. */
static int next_cgroup_line(const char **cursor, struct cgroup_line *line) {
    const char *at = *cursor;
    if (*at == '\0') return 0;
    const char *next = strchr(at, '\n');
    size_t len = next ? (size_t)(next - at) : strlen(at);
    *cursor = next ? next + 1 : at + len;
    const char *c1 = memchr(at, ':', len);
    const char *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - at)) : NULL;
    memset(line, 0, sizeof *line);
    if (c2 == NULL) return 1;
    line->controllers = c1 + 1;
    line->controllers_len = (size_t)(c2 - c1 - 1);
    line->v2 = line->controllers_len == 0 && strncmp(at, "0:", 2) == 0;
    line->path = c2 + 1;
    line->path_len = len - (size_t)(line->path - at);
    if (line->path_len == 1 && line->path[0] == '/') line->path_len = 0;
    return 1;
}

/* 1 when this process's cgroup namespace is the initial one (whose root
 * is the real root): looked up once per process. */
static _Atomic int initial_namespace = -1;

static int in_initial_cgroup_namespace(void) {
    int known = atomic_load_explicit(&initial_namespace, memory_order_relaxed);
    if (known >= 0) return known;
    char link[64];
    ssize_t n = readlink("/proc/self/ns/cgroup", link, sizeof link - 1);
    link[n > 0 ? n : 0] = '\0';
    /* PROC_CGROUP_INIT_INO in the kernel's proc_ns.h. */
    known = strcmp(link, "cgroup:[4026531835]") == 0;
    atomic_store_explicit(&initial_namespace, known, memory_order_relaxed);
    return known;
}

/* For the line of /proc/self/cgroup (`lines`, read once per measurement)
 * whose hierarchy has `controller`, call visit with the cgroup's directory
 * and each of its ancestors.  The hierarchy is read from the lines alone:
 * only a "0::" line is a pure v2 host (/sys/fs/cgroup); beside v1 lines it
 * is the unified hierarchy of a hybrid one (.../unified), which has the
 * controller only where no v1 hierarchy does.  root_counts: whether the
 * real root's directory can hold the figure (a cpuset's does; pids.max and
 * a CPU quota never exist there). */
static void for_each_cgroup(const char *lines, const char *controller, int root_counts,
                            struct v1_mounts *v1, cgroup_visit visit, void *ctx) {
    int v1_host = 0, controller_on_v1 = 0;
    struct cgroup_line line;
    for (const char *cursor = lines; next_cgroup_line(&cursor, &line);) {
        if (line.controllers == NULL || line.v2) continue;
        v1_host = 1;
        if (has_controller(line.controllers, line.controllers_len, controller))
            controller_on_v1 = 1;
    }
    for (const char *cursor = lines; next_cgroup_line(&cursor, &line);) {
        if (line.controllers == NULL) continue;
        if (line.path_len == 0 && !root_counts && in_initial_cgroup_namespace()) {
            /* The real root: no pids.max and no quota there (the kernel
             * refuses both), so nothing to read. */
        } else if (line.v2) {
            if (!controller_on_v1)
                walk_up(v1_host ? "/sys/fs/cgroup/unified" : "/sys/fs/cgroup", line.path,
                        line.path_len, visit, ctx);
        } else if (has_controller(line.controllers, line.controllers_len, controller)) {
            const char *mount = v1_mount_path(v1);
            if (mount != NULL) walk_up(mount, line.path, line.path_len, visit, ctx);
        }
    }
}

static void visit_pids(const char *dir, void *ctx) {
    struct tg_headroom *h = ctx;
    char path[1100];
    snprintf(path, sizeof path, "%s/pids.max", dir);
    long long max = read_number(path); /* "max" reads as -1 */
    if (max < 0) return;
    snprintf(path, sizeof path, "%s/pids.current", dir);
    long long current = read_number(path);
    if (current < 0) return;
    long long free = max > current ? max - current : 0;
    if (h->pids_free < 0 || free < h->pids_free) {
        h->pids_free = free;
        h->pids_max = max;
        h->pids_current = current;
    }
}

static void visit_cpu(const char *dir, void *ctx) {
    long long *cpus = ctx;
    char path[1100], buf[128];
    long long quota = -1, period = -1;
    snprintf(path, sizeof path, "%s/cpu.max", dir);
    if (read_file(path, buf, sizeof buf) > 0) { /* v2: "quota period" or "max period" */
        quota = leading_number(buf);
        const char *space = strchr(buf, ' ');
        period = space ? leading_number(space + 1) : -1;
    } else {
        snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
        quota = read_number(path); /* -1: no quota, and no period to read */
        if (quota > 0) {
            snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
            period = read_number(path);
        }
    }
    if (quota > 0 && period > 0) take_min(cpus, (quota + period - 1) / period);
}

/* ---- address space ------------------------------------------------------ */

int tg_arenas_capped(void) {
    if (tg_applied.arenas > 0) return 1;
    if (tg_environ_get("MALLOC_ARENA_MAX") != NULL) return 1;
    const char *tunables = tg_environ_get("GLIBC_TUNABLES");
    return tunables != NULL && strstr(tunables, "glibc.malloc.arena_max") != NULL;
}

static long long vmsize_bytes(void) {
    char buf[256];
    if (read_file("/proc/self/statm", buf, sizeof buf) <= 0) return -1;
    long long pages = leading_number(buf);
    return pages < 0 ? -1 : pages * sysconf(_SC_PAGESIZE);
}

static void measure_address_space(struct tg_headroom *h, int kind, long long stack) {
    struct rlimit as;
    if (getrlimit(RLIMIT_AS, &as) != 0 || as.rlim_cur == RLIM_INFINITY) return;
    h->as_limit = (long long)as.rlim_cur;
    h->vmsize = vmsize_bytes();
    int capped = tg_arenas_capped();
    long long cost = tg_thread_cost(kind == TG_KIND_OPENBLAS, stack, capped);
    h->thread_cost = cost;
    if (h->vmsize < 0) return;
    int arenas = !capped ? 0 : tg_applied.arenas > 0 ? tg_applied.arenas : TG_CAPPED_ARENAS;
    h->as_free_threads = tg_address_space_usable(h->as_limit, h->vmsize, arenas) / cost;
}

/* ---- everything ------------------------------------------------------- */

static long long affinity_cpus(void) {
    cpu_set_t set;
    /* Through the PLT on purpose: a test shim may stand in for a bigger node. */
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    return CPU_COUNT(&set);
}

/* CPUs in a list like "0-3,8-11" (cpuset.cpus.effective); -1: none. */
static long long cpu_list_count(const char *s) {
    long long count = 0;
    while (*s >= '0' && *s <= '9') {
        long long first = leading_number(s), last = first;
        while (*s >= '0' && *s <= '9') s++;
        if (*s == '-') {
            last = leading_number(++s);
            while (*s >= '0' && *s <= '9') s++;
        }
        if (last >= first) count += last - first + 1;
        if (*s != ',') break;
        s++;
    }
    return count > 0 ? count : -1;
}

static void visit_cpuset(const char *dir, void *ctx) {
    long long *cpus = ctx;
    char path[1100], buf[1024];
    if (*cpus > 0) return; /* the innermost group's set is the one in force */
    snprintf(path, sizeof path, "%s/cpuset.cpus.effective", dir); /* v2 */
    if (read_file(path, buf, sizeof buf) <= 0) {
        snprintf(path, sizeof path, "%s/cpuset.effective_cpus", dir); /* v1 */
        if (read_file(path, buf, sizeof buf) <= 0) return;
    }
    *cpus = cpu_list_count(buf);
}

/* The job's CPUs on this node, which ranks started side by side divide:
 * the cgroup's cpuset (a container's or a scheduler's), else the online
 * CPUs.  A cpuset smaller than the affinity cannot be the job's (a test
 * shim stands in for a bigger node): the online CPUs then. */
static long long node_cpus(const char *cgroups, long long affinity) {
    long long cpuset = -1;
    static const char *const paths[] = {"/sys/fs/cgroup/cpuset", NULL};
    static struct v1_mounts cpuset_mounts = {0, paths};
    for_each_cgroup(cgroups, "cpuset", 1, &cpuset_mounts, visit_cpuset, &cpuset);
    /* Through the PLT on purpose, like the affinity. */
    long long online = get_nprocs();
    if (cpuset > 0 && cpuset >= affinity && (online <= 0 || cpuset <= online)) return cpuset;
    return online > 0 ? online : -1;
}

static const char NPROC_LIMIT[] = TG_LIMIT_NPROC;

static void consider(struct tg_headroom *h, long long free, const char *limit) {
    if (free >= 0 && (h->free < 0 || free < h->free)) {
        h->free = free;
        h->limit = limit;
    }
}

/* free and limit: the smallest of the *_free figures, ties to the first. */
static void choose_free(struct tg_headroom *h) {
    h->free = -1;
    h->limit = "none";
    consider(h, h->nproc_free, NPROC_LIMIT);
    consider(h, h->pids_free, TG_LIMIT_PIDS);
    consider(h, h->threads_free, TG_LIMIT_KERNEL);
    consider(h, h->as_free_threads, TG_LIMIT_AS);
    consider(h, h->budget_free, TG_LIMIT_BUDGET);
}

static void measure(struct tg_headroom *h, int kind, long long stack, int exact) {
    memset(h, 0xff, sizeof *h); /* every figure -1 */
    h->uid_tasks_from = TG_TASKS_NONE;
    h->uid_tasks_walked = 0;
    h->cpus_from = "unknown";

    char buf[128];
    h->threads_max = read_number("/proc/sys/kernel/threads-max");
    if (read_file("/proc/loadavg", buf, sizeof buf) > 0) { /* "0.00 0.01 0.05 1/234 5678" */
        const char *slash = strchr(buf, '/');
        if (slash) h->threads_total = leading_number(slash + 1);
    }
    if (h->threads_max > 0 && h->threads_total >= 0)
        h->threads_free = h->threads_max > h->threads_total ? h->threads_max - h->threads_total : 0;

    h->reserved_others = tg_ledger_others();
    struct rlimit nproc;
    if (getrlimit(RLIMIT_NPROC, &nproc) == 0) {
        h->nproc_soft = nproc.rlim_cur == RLIM_INFINITY ? -1 : (long long)nproc.rlim_cur;
        h->nproc_hard = nproc.rlim_max == RLIM_INFINITY ? -1 : (long long)nproc.rlim_max;
        /* The kernel never applies RLIMIT_NPROC to root. */
        if (h->nproc_soft >= 0 && getuid() != 0) {
            set_uid_tasks(h, h->threads_total, TG_TASKS_NODE); /* bound 1 */
            if (exact)
                walk_uid_tasks(h);
            else if (h->threads_total < 0)
                tighten_uid_tasks(h); /* no bound 1 */
        }
    }

    char cgroups[4096];
    if (read_file("/proc/self/cgroup", cgroups, sizeof cgroups) <= 0) cgroups[0] = '\0';
    static const char *const pids_paths[] = {"/sys/fs/cgroup/pids", NULL};
    static struct v1_mounts pids_mounts = {0, pids_paths};
    for_each_cgroup(cgroups, "pids", 0, &pids_mounts, visit_pids, h);
    if (h->pids_free > 0)
        h->pids_free = h->pids_free > h->reserved_others ? h->pids_free - h->reserved_others : 0;

    measure_address_space(h, kind, stack);

    /* This process's threads: for THREADGUARD_MAX_THREADS, and shown by a
     * report. */
    if (exact || tg_config.max_threads > 0) {
        long long tasks = tg_count_tasks();
        h->process_threads = tasks > 0 ? tasks - 1 : tasks;
    }
    if (tg_config.max_threads > 0) {
        h->budget = tg_config.max_threads;
        if (h->process_threads >= 0)
            h->budget_free = h->budget > h->process_threads ? h->budget - h->process_threads : 0;
    }
    choose_free(h);

    h->cpus_affinity = affinity_cpus();
    static const char *const cpu_paths[] = {"/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu",
                                            NULL};
    static struct v1_mounts cpu_mounts = {0, cpu_paths};
    long long quota = -1;
    for_each_cgroup(cgroups, "cpu", 0, &cpu_mounts, visit_cpu, &quota);
    h->cpus_quota = quota;
    tg_allocation_measure(&h->allocation, h->cpus_affinity, h->cpus_quota,
                          tg_local_ranks_set() ? node_cpus(cgroups, h->cpus_affinity) : -1);
    h->cpus = h->allocation.cpus;
    h->cpus_from = h->allocation.from;
}

void tg_headroom_measure(struct tg_headroom *h, int kind) {
    measure(h, kind, tg_default_stack(), 0);
}

void tg_headroom_measure_stack(struct tg_headroom *h, int kind, long long stack) {
    measure(h, kind, stack, 0);
}

void tg_headroom_measure_exact(struct tg_headroom *h, int kind) {
    measure(h, kind, tg_default_stack(), 1);
}

int tg_headroom_refine(struct tg_headroom *h) {
    if (h->limit != NPROC_LIMIT || !tighten_uid_tasks(h)) return 0;
    choose_free(h);
    return 1;
}

int tg_headroom_free_at_least(const struct tg_headroom *h) {
    return h->free >= 0 && h->limit == NPROC_LIMIT && h->uid_tasks_from != TG_TASKS_COUNTED;
}

const char *tg_tasks_from_name(int from) {
    switch (from) {
    case TG_TASKS_NODE: return "node";
    case TG_TASKS_CREATED: return "created";
    case TG_TASKS_COUNTED: return "counted";
    default: return NULL;
    }
}
