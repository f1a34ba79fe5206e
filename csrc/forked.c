/* Pools a forked child inherits.
 *
 * A child started by fork() carries its parent's configured pools: OpenBLAS
 * shuts its threads down before fork and re-creates them at the child's
 * first parallel call with the parent's count (64 on a 64-CPU node, in each
 * of a Pool's workers), and an OpenMP runtime keeps the parent's team size.
 * No getenv is read again, so the child must be resized before that first
 * call, to its share of the parent's CPUs (share.c):
 *
 *   - at fork, in the child, with the siblings registered then;
 *   - in a Python child, once more before its first bytecode runs (a
 *     pending call), after its siblings have started: a Pool, a
 *     ProcessPoolExecutor or a DataLoader forks its workers one after
 *     another, and the first one would otherwise count itself alone.  The
 *     wait ends when no sibling has registered for QUIET_MS (MAX_WAIT_MS at
 *     most), and only a child that inherited a pool to resize waits.
 *
 * OpenBLAS's pool is resized through the variables its own setter uses
 * (blas_num_threads: the threads it starts; blas_cpu_number: the threads a
 * call uses), written only while its server is down (blas_server_avail is
 * 0 after fork): its setter would re-create every thread first.  Some
 * builds export them (dlsym finds them); others keep them local, and the
 * file's symbol table names them (elfsyms.c); a stripped build is left as
 * it is.  An OpenMP
 * runtime's team is resized with its own omp_set_num_threads (the calling
 * thread's setting: the child's only thread).  The controls are found in
 * the parent before each fork, once per pool (dlopen RTLD_NOLOAD of a
 * library already loaded, then dlsym): never in the child, where the
 * loader's lock may be held by a thread that did not cross the fork.  The
 * handle is kept: the library then stays loaded, and the controls found in
 * it stay valid.
 *
 * Layer: policy.  Calls shaping.c, share.c, registry.c, config.c and elfsyms.c. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "forked.h"

#include "config.h"
#include "elfsyms.h"
#include "registry.h"
#include "shaping.h"
#include "share.h"

#define QUIET_MS 20
#define MAX_WAIT_MS 250
#define MAX_POOLS 8

typedef void (*set_fn)(int);
typedef int (*get_fn)(void);

struct pool_controls {
    unsigned slot;
    int kind;
    /* OpenBLAS */
    int *num_threads, *cpu_number;
    const void *server_avail;
    int avail_size; /* bytes: an int, or a long in some versions */
    /* OpenMP */
    set_fn omp_set;
    get_fn omp_get;
    /* In the child: what it inherited (0: nothing to resize). */
    long long inherited_threads, inherited_cpus;
};

static struct pool_controls pools[MAX_POOLS];
static int pool_count;
static unsigned char looked_at[TG_MAX_LIBS];

/* Python's, where the process is an interpreter (found in the parent). */
typedef int (*pending_fn)(int (*)(void *), void *);
static pending_fn add_pending_call;
static get_fn python_initialized;
static int python_looked_up;

/* OpenBLAS's variables from the file's symbol table, where it does not
 * export them: 1 when all three were found with the sizes expected. */
static int openblas_locals(void *handle, const char *path, struct pool_controls *c) {
    struct link_map *map = NULL;
    if (dlinfo(handle, RTLD_DI_LINKMAP, &map) != 0 || map == NULL) return 0;
    struct tg_elf_symbol want[] = {
        {"blas_num_threads", 0, 0}, {"blas_cpu_number", 0, 0}, {"blas_server_avail", 0, 0}};
    if (tg_elf_lookup(path, want, 3) != 3 || want[0].size != sizeof(int) ||
        want[1].size != sizeof(int) ||
        (want[2].size != sizeof(int) && want[2].size != sizeof(long)))
        return 0;
    c->num_threads = (int *)(map->l_addr + want[0].value);
    c->cpu_number = (int *)(map->l_addr + want[1].value);
    c->server_avail = (const void *)(map->l_addr + want[2].value);
    c->avail_size = (int)want[2].size;
    return 1;
}

static int server_up(const struct pool_controls *c) {
    return c->avail_size == sizeof(long) ? *(const volatile long *)c->server_avail != 0
                                         : *(const volatile int *)c->server_avail != 0;
}

static void find_controls(unsigned slot) {
    struct tg_lib *lib = &tg_libs[slot];
    if (pool_count >= MAX_POOLS || lib->path[0] == '\0') return;
    void *handle = dlopen(lib->path, RTLD_LAZY | RTLD_NOLOAD);
    if (handle == NULL) return;
    struct pool_controls c = {slot, lib->kind, NULL, NULL, NULL, sizeof(int), NULL, NULL, 0, 0};
    if (lib->kind == TG_KIND_OPENBLAS) {
        c.num_threads = dlsym(handle, "blas_num_threads");
        c.cpu_number = dlsym(handle, "blas_cpu_number");
        c.server_avail = dlsym(handle, "blas_server_avail");
        if ((c.num_threads && c.cpu_number && c.server_avail) ||
            openblas_locals(handle, lib->path, &c))
            pools[pool_count++] = c;
    } else {
        c.omp_set = (set_fn)dlsym(handle, "omp_set_num_threads");
        c.omp_get = (get_fn)dlsym(handle, "omp_get_max_threads");
        if (c.omp_set && c.omp_get) pools[pool_count++] = c;
    }
}

void tg_forked_prepare(void) {
    if (tg_config.observe) return;
    if (!python_looked_up) {
        python_looked_up = 1;
        add_pending_call = (pending_fn)dlsym(RTLD_DEFAULT, "Py_AddPendingCall");
        python_initialized = (get_fn)dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    }
    for (unsigned i = 1; i < TG_MAX_LIBS && !tg_lib_past_end(i); i++) {
        int kind = tg_libs[i].kind;
        if (looked_at[i] || !atomic_load_explicit(&tg_libs[i].ready, memory_order_acquire) ||
            (kind != TG_KIND_OPENBLAS && kind != TG_KIND_OPENMP))
            continue;
        looked_at[i] = 1;
        find_controls(i);
    }
}

/* Resize every inherited pool to the share now.  1 when one is still
 * waiting for its first parallel call. */
static int resize(void) {
    int waiting = 0;
    for (int i = 0; i < pool_count; i++) {
        struct pool_controls *c = &pools[i];
        if (c->inherited_threads <= 1) continue;
        if (c->kind == TG_KIND_OPENBLAS) {
            if (server_up(c)) continue; /* its threads are back: too late */
            long long n = tg_size_inherited(c->slot, c->kind, "OPENBLAS_NUM_THREADS",
                                            "OPENBLAS_NUM_THREADS (fork)", "OMP_NUM_THREADS",
                                            c->inherited_threads);
            *c->num_threads = (int)n;
            *c->cpu_number = (int)(n < c->inherited_cpus ? n : c->inherited_cpus);
            waiting = 1;
        } else {
            long long n = tg_size_inherited(c->slot, c->kind, "OMP_NUM_THREADS",
                                            "OMP_NUM_THREADS (fork)", NULL, c->inherited_threads);
            c->omp_set((int)n);
            waiting = 1;
        }
    }
    return waiting;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Run by the interpreter in the child before its first bytecode: wait for
 * the siblings a pool is still forking, then resize. */
static int after_siblings_started(void *unused) {
    (void)unused;
    long long start = now_ms(), changed = start;
    unsigned generation = tg_share_generation();
    while (now_ms() - changed < QUIET_MS && now_ms() - start < MAX_WAIT_MS) {
        struct timespec pause = {0, 2000000}; /* 2 ms */
        nanosleep(&pause, NULL);
        unsigned now = tg_share_generation();
        if (now != generation) {
            generation = now;
            changed = now_ms();
        }
    }
    resize();
    return 0;
}

void tg_forked_child(void) {
    if (tg_config.observe) return;
    int inherited = 0;
    for (int i = 0; i < pool_count; i++) {
        struct pool_controls *c = &pools[i];
        c->inherited_threads = 0;
        if (c->kind == TG_KIND_OPENBLAS) {
            if (server_up(c)) continue;
            c->inherited_threads = *c->num_threads;
            c->inherited_cpus = *c->cpu_number;
        } else {
            c->inherited_threads = c->omp_get();
        }
        if (c->inherited_threads > 1) inherited = 1;
    }
    if (!inherited || !resize()) return;
    if (tg_share_generation() == 0) return; /* no guarded parent: nobody to wait for */
    if (add_pending_call && python_initialized && python_initialized())
        add_pending_call(after_siblings_started, NULL);
}
