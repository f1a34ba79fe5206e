/* Child-process harness for the "never harm the host" tests: each case runs
 * this program again (exec, so threadguard initialises afresh) with
 * TG_HOST_CASE naming the case, a timeout, and stderr where the parent says. */
#ifndef THREADGUARD_TEST_HOST_H
#define THREADGUARD_TEST_HOST_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef HOST_PROGRAM
#define HOST_PROGRAM "test_host"
#endif

/* Exit code the harness gives a child that ran past its timeout. */
#define HOST_TIMED_OUT 1000

struct host_run {
    const char *name;   /* TG_HOST_CASE */
    const char *env[8]; /* "NAME=value", NULL-terminated */
    int stderr_fd;      /* -1: inherit */
    int seconds;        /* timeout */
};

/* Status as waitpid gives it, or HOST_TIMED_OUT (the child is killed). */
static int host_run_case(const struct host_run *run) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (run->stderr_fd >= 0) dup2(run->stderr_fd, STDERR_FILENO);
        setenv("TG_HOST_CASE", run->name, 1);
        for (int i = 0; i < 8 && run->env[i]; i++) putenv((char *)run->env[i]);
        execl("/proc/self/exe", HOST_PROGRAM, (char *)NULL);
        _exit(127);
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int status = 0;
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (done == pid) return status;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > run->seconds) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return HOST_TIMED_OUT;
        }
        struct timespec pause_ = {0, 2000000};
        nanosleep(&pause_, NULL);
    }
}

static const char *host_describe(int status, char *buf, size_t size) {
    if (status == HOST_TIMED_OUT)
        snprintf(buf, size, "hung (killed after the timeout)");
    else if (WIFSIGNALED(status))
        snprintf(buf, size, "killed by signal %d", WTERMSIG(status));
    else if (WIFEXITED(status))
        snprintf(buf, size, "exit %d", WEXITSTATUS(status));
    else
        snprintf(buf, size, "status %d", status);
    return buf;
}

#endif
