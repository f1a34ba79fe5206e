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
#include "procfs.h"
#include "registry.h"

/* What threadguard applied at start and the headroom then: written once
 * by shaping.c at initialisation; the arenas change the headroom here. */
struct tg_applied tg_applied;
struct tg_headroom tg_headroom_at_start;

/* glibc reserves a 64 MiB heap for each malloc arena it adds. */
#define ARENA_COST (64 * TG_MIB)
/* Each OpenBLAS worker maps a 32 MiB buffer (BUFFER_SIZE in its sources);
 * measured here: about 40 MB of VmSize per worker with 8 MiB stacks. */
#define OPENBLAS_BUFFER_COST (32 * TG_MIB)

/* Whole file (up to size-1 bytes) into buf; -1 when unreadable. */
static long read_file(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t used = 0;
    while (used < size - 1) {
        ssize_t n = read(fd, buf + used, size - 1 - used);
        if (n <= 0) break;
        used += (size_t)n;
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

/* RLIMIT_NPROC counts every task (thread) of the real uid: this process's
 * and the other processes', read fresh each time a pool is sized (a cached
 * figure was stale exactly when processes start together). */
static long long uid_tasks(uid_t uid) {
    long long others = other_processes_tasks(uid);
    long long own = tg_count_tasks();
    if (others < 0 || own < 0) return -1;
    return others + own;
}

/* ---- cgroups (v1 and v2) ---------------------------------------------- */

/* For each cgroup hierarchy line of /proc/self/cgroup whose controllers
 * include `controller` (v1) or the unified one (v2), call visit with the
 * cgroup's directory and each of its ancestors. */
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

static void walk_up(const char *mount, const char *path, cgroup_visit visit, void *ctx) {
    char dir[1024];
    int n = snprintf(dir, sizeof dir, "%s%s", mount, path);
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

static void for_each_cgroup(const char *controller, const char *const *v1_mounts,
                            cgroup_visit visit, void *ctx) {
    char buf[4096];
    if (read_file("/proc/self/cgroup", buf, sizeof buf) <= 0) return;
    for (char *line = buf; *line;) {
        char *next = strchr(line, '\n');
        if (next) *next = '\0';
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (c2 != NULL) {
            const char *path = c2 + 1;
            if (strcmp(path, "/") == 0) path = "";
            size_t list_len = (size_t)(c2 - c1 - 1);
            if (list_len == 0 && strncmp(line, "0:", 2) == 0) {
                /* v2: /sys/fs/cgroup on a pure v2 host, .../unified on a
                 * hybrid one. */
                walk_up(access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0
                            ? "/sys/fs/cgroup"
                            : "/sys/fs/cgroup/unified",
                        path, visit, ctx);
            } else if (has_controller(c1 + 1, list_len, controller)) {
                for (const char *const *m = v1_mounts; *m; m++)
                    if (access(*m, F_OK) == 0) {
                        walk_up(*m, path, visit, ctx);
                        break;
                    }
            }
        }
        if (!next) break;
        line = next + 1;
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
        quota = read_number(path); /* -1: no quota */
        snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
        period = read_number(path);
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
    long long cost = stack + sysconf(_SC_PAGESIZE);
    long long reserved = 0;
    if (tg_arenas_capped()) reserved = (tg_applied.arenas > 0 ? tg_applied.arenas : 2) * ARENA_COST;
    else cost += ARENA_COST;
    if (kind == TG_KIND_OPENBLAS) cost += OPENBLAS_BUFFER_COST;
    h->thread_cost = cost;
    if (h->vmsize < 0) return;
    /* A quarter of what is left stays for the program's own data. */
    long long left = h->as_limit - h->vmsize - reserved;
    left = left > 0 ? left - left / 4 : 0;
    h->as_free_threads = left / cost;
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
static long long node_cpus(long long affinity) {
    long long cpuset = -1;
    static const char *const cpuset_mounts[] = {"/sys/fs/cgroup/cpuset", NULL};
    for_each_cgroup("cpuset", cpuset_mounts, visit_cpuset, &cpuset);
    /* Through the PLT on purpose, like the affinity. */
    long long online = get_nprocs();
    if (cpuset > 0 && cpuset >= affinity && (online <= 0 || cpuset <= online)) return cpuset;
    return online > 0 ? online : -1;
}

static void consider(struct tg_headroom *h, long long free, const char *limit) {
    if (free >= 0 && (h->free < 0 || free < h->free)) {
        h->free = free;
        h->limit = limit;
    }
}

void tg_headroom_measure(struct tg_headroom *h, int kind) {
    tg_headroom_measure_stack(h, kind, tg_default_stack());
}

void tg_headroom_measure_stack(struct tg_headroom *h, int kind, long long stack) {
    memset(h, 0xff, sizeof *h); /* every figure -1 */
    h->limit = "none";
    h->cpus_from = "unknown";

    struct rlimit nproc;
    if (getrlimit(RLIMIT_NPROC, &nproc) == 0) {
        h->nproc_soft = nproc.rlim_cur == RLIM_INFINITY ? -1 : (long long)nproc.rlim_cur;
        h->nproc_hard = nproc.rlim_max == RLIM_INFINITY ? -1 : (long long)nproc.rlim_max;
        uid_t uid = getuid();
        /* The kernel never applies RLIMIT_NPROC to root. */
        if (h->nproc_soft >= 0 && uid != 0) {
            h->uid_tasks = uid_tasks(uid);
            if (h->uid_tasks >= 0)
                h->nproc_free = h->nproc_soft > h->uid_tasks ? h->nproc_soft - h->uid_tasks : 0;
        }
    }
    /* Workers other guarded processes of this user promised and have not
     * started yet are taken, though no task shows them yet. */
    h->reserved_others = tg_ledger_others();
    if (h->nproc_free > 0)
        h->nproc_free = h->nproc_free > h->reserved_others ? h->nproc_free - h->reserved_others : 0;
    consider(h, h->nproc_free, "RLIMIT_NPROC");

    static const char *const pids_mounts[] = {"/sys/fs/cgroup/pids", NULL};
    for_each_cgroup("pids", pids_mounts, visit_pids, h);
    if (h->pids_free > 0)
        h->pids_free = h->pids_free > h->reserved_others ? h->pids_free - h->reserved_others : 0;
    consider(h, h->pids_free, "cgroup pids.max");

    char buf[128];
    h->threads_max = read_number("/proc/sys/kernel/threads-max");
    if (read_file("/proc/loadavg", buf, sizeof buf) > 0) { /* "0.00 0.01 0.05 1/234 5678" */
        const char *slash = strchr(buf, '/');
        if (slash) h->threads_total = leading_number(slash + 1);
    }
    if (h->threads_max > 0 && h->threads_total >= 0)
        h->threads_free = h->threads_max > h->threads_total ? h->threads_max - h->threads_total : 0;
    consider(h, h->threads_free, "kernel threads-max");

    measure_address_space(h, kind, stack);
    consider(h, h->as_free_threads, "RLIMIT_AS");

    long long tasks = tg_count_tasks();
    h->process_threads = tasks > 0 ? tasks - 1 : tasks;
    if (tg_config.max_threads > 0) {
        h->budget = tg_config.max_threads;
        if (h->process_threads >= 0)
            h->budget_free = h->budget > h->process_threads ? h->budget - h->process_threads : 0;
    }
    consider(h, h->budget_free, "THREADGUARD_MAX_THREADS");

    h->cpus_affinity = affinity_cpus();
    static const char *const cpu_mounts[] = {"/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu",
                                             NULL};
    long long quota = -1;
    for_each_cgroup("cpu", cpu_mounts, visit_cpu, &quota);
    h->cpus_quota = quota;
    tg_allocation_measure(&h->allocation, h->cpus_affinity, h->cpus_quota,
                          tg_local_ranks_set() ? node_cpus(h->cpus_affinity) : -1);
    h->cpus = h->allocation.cpus;
    h->cpus_from = h->allocation.from;
}
