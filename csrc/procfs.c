/* Reading /proc without malloc: opendir() allocates, getdents64 does not.
 *
 * Layer: helper.  Calls nothing of threadguard's. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "procfs.h"

/* Thread ids listed in /proc/self/task, into tids when it is not NULL
 * (up to max); the count, or -1 if unreadable or over max. */
static int read_tasks(const char *dir, int *tids, int max) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buf[4096] __attribute__((aligned(8)));
    int count = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (n <= 0) {
            if (n < 0) count = -1;
            break;
        }
        for (long off = 0; off < n && count >= 0;) {
            struct dirent64 *d = (struct dirent64 *)(void *)(buf + off);
            off += d->d_reclen;
            if (d->d_name[0] < '0' || d->d_name[0] > '9') continue;
            if (tids != NULL) {
                if (count == max) {
                    count = -1;
                    break;
                }
                tids[count] = atoi(d->d_name);
            }
            count++;
        }
        if (count < 0) break;
    }
    close(fd);
    return count;
}

long long tg_count_tasks(void) { return read_tasks("/proc/self/task", NULL, 0); }

/* "/proc/PID/" + rest into buf, without printf (this runs in a forked
 * child, where only async-signal-safe calls belong). */
static void proc_path(char *buf, size_t size, int pid, const char *rest) {
    char digits[16];
    int n = 0;
    unsigned v = (unsigned)pid;
    do digits[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0 && n < (int)sizeof digits);
    size_t used = 0;
    for (const char *p = "/proc/"; *p && used + 1 < size; p++) buf[used++] = *p;
    while (n > 0 && used + 1 < size) buf[used++] = digits[--n];
    for (const char *p = rest; *p && used + 1 < size; p++) buf[used++] = *p;
    buf[used] = '\0';
}

long long tg_count_tasks_of(int pid) {
    char path[64];
    proc_path(path, sizeof path, pid, "/task");
    return read_tasks(path, NULL, 0);
}

/* Field 22 of /proc/PID/stat; *state: field 3 (R, S, Z, ...); *threads:
 * field 20. */
static long long stat_fields(int pid, char *state, long long *threads) {
    char path[64], buf[1024];
    proc_path(path, sizeof path, pid, "/stat");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command may hold spaces */
    if (p == NULL) return -1;
    if (state) *state = p[1] == ' ' ? p[2] : '?';
    for (int field = 2; *p && field < 22; p++) {
        if (*p != ' ') continue;
        if (++field == 20 && threads) {
            long long n = 0;
            for (const char *d = p + 1; *d >= '0' && *d <= '9'; d++) n = n * 10 + (*d - '0');
            *threads = n;
        }
    }
    long long v = 0;
    for (; *p >= '0' && *p <= '9'; p++) v = v * 10 + (*p - '0');
    return v;
}

static long long stat_start_time(int pid, char *state) { return stat_fields(pid, state, NULL); }

long long tg_start_time_of(int pid) { return stat_start_time(pid, NULL); }

/* This process's start time never changes: read once per process (a forked
 * child, with another pid, reads its own). */
static _Atomic long long own_start = -1;
static _Atomic int own_pid;

long long tg_own_stat(long long *threads) {
    int pid = (int)getpid();
    if (threads == NULL && atomic_load_explicit(&own_pid, memory_order_acquire) == pid)
        return atomic_load_explicit(&own_start, memory_order_relaxed);
    long long start = stat_fields(pid, NULL, threads);
    if (start >= 0) {
        atomic_store_explicit(&own_start, start, memory_order_relaxed);
        atomic_store_explicit(&own_pid, pid, memory_order_release);
    }
    return start;
}

long long tg_running_start_time_of(int pid) {
    char state = '?';
    long long start = stat_start_time(pid, &state);
    return state == 'Z' || state == 'X' || state == 'x' ? -1 : start;
}

long long tg_read_small_file(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = '\0';
    return n;
}

int tg_list_tasks(int *tids, int max) {
    int count = read_tasks("/proc/self/task", tids, max);
    for (int i = 1; i < count; i++) /* insertion sort: lists are nearly sorted */
        for (int j = i; j > 0 && tids[j - 1] > tids[j]; j--) {
            int t = tids[j];
            tids[j] = tids[j - 1];
            tids[j - 1] = t;
        }
    return count;
}

void tg_exe_path(char *buf, size_t size) {
    ssize_t n = readlink("/proc/self/exe", buf, size - 1);
    buf[n > 0 ? n : 0] = '\0';
}
