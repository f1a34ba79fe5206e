/* Test-only shim: report THREADGUARD_TEST_CPUS CPUs to the libraries that
 * size their pools by the CPU count (OpenBLAS, libgomp, torch's MKL), so a
 * 2-core machine can stand in for a bigger node.  THREADGUARD_TEST_NODE_CPUS,
 * when set, is the node's online CPUs (get_nprocs, sysconf) while the
 * affinity stays THREADGUARD_TEST_CPUS: a process bound to part of a node.
 * Preloaded by the tests; never shipped. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>

static int fake_cpus(void) {
    const char *value = getenv("THREADGUARD_TEST_CPUS");
    int n = value ? atoi(value) : 0;
    return n > 0 && n <= CPU_SETSIZE ? n : 0;
}

/* The node's CPUs: THREADGUARD_TEST_NODE_CPUS, else the affinity's. */
static int fake_node_cpus(void) {
    const char *value = getenv("THREADGUARD_TEST_NODE_CPUS");
    int n = value ? atoi(value) : 0;
    return n > 0 && n <= CPU_SETSIZE ? n : fake_cpus();
}

static void fill(size_t size, cpu_set_t *mask, int n) {
    CPU_ZERO_S(size, mask);
    for (int i = 0; i < n && (size_t)i < size * 8; i++) CPU_SET_S(i, size, mask);
}

int sched_getaffinity(pid_t pid, size_t size, cpu_set_t *mask) {
    int n = fake_cpus();
    if (n == 0) {
        int (*real)(pid_t, size_t, cpu_set_t *) = dlsym(RTLD_NEXT, "sched_getaffinity");
        return real(pid, size, mask);
    }
    fill(size, mask, n);
    return 0;
}

int pthread_getaffinity_np(pthread_t thread, size_t size, cpu_set_t *mask) {
    int n = fake_cpus();
    if (n == 0) {
        int (*real)(pthread_t, size_t, cpu_set_t *) = dlsym(RTLD_NEXT, "pthread_getaffinity_np");
        return real(thread, size, mask);
    }
    fill(size, mask, n);
    return 0;
}

int get_nprocs(void) {
    int n = fake_node_cpus();
    if (n) return n;
    int (*real)(void) = dlsym(RTLD_NEXT, "get_nprocs");
    return real();
}

int get_nprocs_conf(void) {
    int n = fake_node_cpus();
    if (n) return n;
    int (*real)(void) = dlsym(RTLD_NEXT, "get_nprocs_conf");
    return real();
}

long sysconf(int name) {
    int n = fake_node_cpus();
    if (n && (name == _SC_NPROCESSORS_ONLN || name == _SC_NPROCESSORS_CONF)) return n;
    long (*real)(int) = dlsym(RTLD_NEXT, "sysconf");
    return real(name);
}
