/* procfs.c: /proc read without allocating (a helper: calls nothing). */
#ifndef THREADGUARD_PROCFS_H
#define THREADGUARD_PROCFS_H

#include "common.h"

/* Entries of /proc/self/task, without allocating; -1 if unreadable. */
TG_HIDDEN long long tg_count_tasks(void);
/* The thread ids in /proc/self/task into tids, sorted ascending; -1 if
 * unreadable or there are more than max. */
TG_HIDDEN int tg_list_tasks(int *tids, int max);
/* Entries of /proc/PID/task (another process's threads); -1 if unreadable. */
TG_HIDDEN long long tg_count_tasks_of(int pid);
/* Field 22 of /proc/PID/stat, the start time in clock ticks since boot: with
 * the pid, it names one process (a pid is reused, the pair is not); -1 if
 * the process is gone. */
TG_HIDDEN long long tg_start_time_of(int pid);
/* The same, -1 also for a process that has ended and not been reaped yet
 * (a zombie): only a running process counts as one sharing the CPUs. */
TG_HIDDEN long long tg_running_start_time_of(int pid);
/* Up to size - 1 bytes of a file into buf, terminated: the bytes read, or -1. */
TG_HIDDEN long long tg_read_small_file(const char *path, char *buf, size_t size);
/* Path of the running executable into buf ("" if unknown). */
TG_HIDDEN void tg_exe_path(char *buf, size_t size);

/* This process's start time (field 22 of /proc/self/stat), read once per
 * process; with threads, read now, and *threads set to its thread count. */
TG_HIDDEN long long tg_own_stat(long long *threads);

#endif
