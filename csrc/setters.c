/* getenv and the pool-size setters: where threaded libraries ask for a
 * pool size, and shaping.c answers.
 *
 * Mechanism: threadguard defines getenv().  OpenBLAS, libgomp, MKL, BLIS and
 * torch read their pool size through getenv at the moment each initialises
 * (measured: OpenBLAS in its load-time constructor, libgomp at load,
 * libtorch_cpu at its first parallel use), so answering that call is
 * exactly "just in time": the answer is computed from the headroom at that
 * moment, a library loaded late (numpy imported when 12 tasks are left) is
 * sized with the room left then, and the return address says which library
 * asked.  The alternatives were worse here: environment set once in the
 * constructor cannot see later headroom and leaks into every child; a
 * dlopen hook must re-implement the caller's RUNPATH/$ORIGIN search; an
 * LD_AUDIT module needs a second variable and slows every load.  The user's
 * own environment is never edited for these, so os.environ and child
 * processes see what the user set.  A library that reaches getenv through
 * a tail call (`return getenv(name);`) shows its caller's return address
 * and is not recognised; the libraries above read and parse the value.
 *
 * Pool-size setters (omp_set_num_threads, openblas_set_num_threads,
 * mkl_set_num_threads, torch's) are defined here too and lowered to what
 * fits before being forwarded to the definition the caller would have
 * reached without threadguard, so two OpenMP runtimes in one process stay
 * apart.
 *
 * Layer: entry point.  Calls lifecycle.c (tg_init), shaping.c, registry.c, objects.c,
 * glibc.c and config.c. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "glibc.h"
#include "lifecycle.h"
#include "objects.h"
#include "registry.h"
#include "report.h"
#include "shaping.h"

struct pool_variable {
    const char *name;
    int kind;             /* the library kind that reads it as its pool size */
    const char *fallback; /* another variable that library also obeys, or NULL */
};

/* OpenBLAS obeys OPENBLAS_NUM_THREADS before GOTO_NUM_THREADS and
 * OMP_NUM_THREADS, so answering the first one decides its pool. */
static const struct pool_variable pool_variables[] = {
    {"OPENBLAS_NUM_THREADS", TG_KIND_OPENBLAS, "OMP_NUM_THREADS"},
    {"OMP_NUM_THREADS", TG_KIND_OPENMP, NULL},
    {"OMP_NUM_THREADS", TG_KIND_TORCH, NULL},
    {"MKL_NUM_THREADS", TG_KIND_TORCH, "OMP_NUM_THREADS"}, /* torch: MKL first, then OMP */
    {"MKL_NUM_THREADS", TG_KIND_MKL, "OMP_NUM_THREADS"},
    {"OMP_NUM_THREADS", TG_KIND_MKL, NULL},
    {"BLIS_NUM_THREADS", TG_KIND_BLIS, "OMP_NUM_THREADS"},
};

static int managed_name(const char *name) {
    switch (name[0]) {
    case 'O':
        return strcmp(name, "OMP_NUM_THREADS") == 0 || strcmp(name, "OMP_THREAD_LIMIT") == 0 ||
               strcmp(name, "OPENBLAS_NUM_THREADS") == 0;
    case 'M': return strcmp(name, "MKL_NUM_THREADS") == 0;
    case 'B': return strcmp(name, "BLIS_NUM_THREADS") == 0;
    default: return 0;
    }
}

static char *answer_getenv(const char *name, const char *value, void *caller);

/* glibc's getenv never touches errno; ours reads /proc, so it keeps errno
 * as it found it (a signal handler's getenv must not change the errno of
 * the code it interrupted). */
THREADGUARD_API char *getenv(const char *name) {
    const char *value = tg_environ_get(name);
    if (!managed_name(name)) return (char *)value;
    int saved = errno;
    char *result = answer_getenv(name, value, __builtin_return_address(0));
    errno = saved;
    return result;
}

static int pool_kind(int kind) {
    return kind == TG_KIND_OPENBLAS || kind == TG_KIND_OPENMP || kind == TG_KIND_MKL ||
           kind == TG_KIND_BLIS || kind == TG_KIND_TORCH;
}

static char *answer_getenv(const char *name, const char *value, void *caller) {
    /* Only a pool asking initialises threadguard (a lazily started process
     * may be a shell or coreutils reading the variable for itself). */
    if (!pool_kind(tg_caller_kind(caller))) return (char *)value;
    /* Re-entered while initialising (a signal handler): the real answer. */
    if (!tg_init_answer() || tg_config.observe) return (char *)value;
    /* The direct caller only: unwinding from here could dlopen, and a
     * getenv reached through libc (a tail call from a signal handler) is
     * not a pool asking. */
    unsigned slot = tg_caller_slot(caller);
    int kind = tg_libs[slot].kind;
    if (strcmp(name, "OMP_THREAD_LIMIT") == 0)
        return kind == TG_KIND_OPENMP ? tg_limit_openmp(slot, value) : (char *)value;
    for (size_t i = 0; i < sizeof pool_variables / sizeof pool_variables[0]; i++) {
        const struct pool_variable *v = &pool_variables[i];
        if (v->kind == kind && strcmp(v->name, name) == 0) {
            char *answer = tg_size_pool(slot, kind, name, value, v->fallback);
            tg_report_publish_if_stale(); /* a pool's stack may have changed */
            return answer;
        }
    }
    return (char *)value;
}

/* ---- pool-size setters -------------------------------------------------- */

/* A program may call a setter in a loop, before every parallel region, so
 * the setters keep O(1) caches: where each call site's definition is, and
 * what the last identical request was granted. */

/* The definition of `name` that `caller` reaches without threadguard: the
 * first one in the caller's own dependency scope, else the next one in the
 * global scope. */
static void *lookup_definition(const char *name, void *caller) {
    Dl_info info;
    struct link_map *map = NULL;
    if (dladdr1(caller, &info, (void **)&map, RTLD_DL_LINKMAP) != 0 && map != NULL &&
        map->l_name != NULL && map->l_name[0] != '\0') {
        void *handle = dlopen(map->l_name, RTLD_LAZY | RTLD_NOLOAD);
        if (handle != NULL) {
            void *fn = dlsym(handle, name);
            dlclose(handle);
            if (fn != NULL && !tg_in_this_library(fn)) return fn;
        }
    }
    void *fn = dlsym(RTLD_NEXT, name);
    return fn != NULL && !tg_in_this_library(fn) ? fn : NULL;
}

typedef int (*dlclose_fn)(void *);

/* Interposed (preload mode) only to learn that objects may have been
 * unloaded; the setters are interposed in that mode only, too. */
THREADGUARD_API int dlclose(void *handle) {
    static _Atomic(dlclose_fn) real;
    dlclose_fn fn = atomic_load_explicit(&real, memory_order_acquire);
    if (fn == NULL) {
        fn = (dlclose_fn)dlsym(RTLD_NEXT, "dlclose");
        if (fn == NULL) return -1;
        atomic_store_explicit(&real, fn, memory_order_release);
    }
    tg_objects_unload_begin();
    int rc = fn(handle);
    tg_objects_unload_end();
    return rc;
}

/* Call site -> definition, per setter name, valid for one unload
 * generation. */
#define CALL_SITES 64
struct call_site {
    _Atomic(uintptr_t) caller; /* 0 while being written */
    const char *_Atomic name;
    _Atomic(uintptr_t) fn;
    _Atomic unsigned generation;
};
static struct call_site call_sites[CALL_SITES];

static void *definition_for(const char *name, void *caller) {
    uintptr_t key = (uintptr_t)caller;
    struct call_site *site = &call_sites[(key >> 4) % CALL_SITES];
    /* Bumped by every dlclose: a cached definition may belong to an object
     * that is gone, and another object may now sit at a cached call site. */
    unsigned generation = tg_objects_unload_generation();
    if (atomic_load_explicit(&site->caller, memory_order_acquire) == key) {
        uintptr_t fn = atomic_load_explicit(&site->fn, memory_order_acquire);
        if (atomic_load_explicit(&site->name, memory_order_acquire) == name && fn != 0 &&
            atomic_load_explicit(&site->generation, memory_order_acquire) == generation &&
            atomic_load_explicit(&site->caller, memory_order_acquire) == key)
            return (void *)fn;
    }
    void *found = lookup_definition(name, caller);
    if (found != NULL) {
        generation = tg_objects_unload_generation();
        atomic_store_explicit(&site->caller, 0, memory_order_release);
        atomic_store_explicit(&site->name, name, memory_order_release);
        atomic_store_explicit(&site->fn, (uintptr_t)found, memory_order_release);
        atomic_store_explicit(&site->generation, generation, memory_order_release);
        atomic_store_explicit(&site->caller, key, memory_order_release);
    }
    return found;
}

/* Target -> the last request and what it was granted.  A repeat within
 * REUSE_MS is granted the same without measuring the headroom again (the
 * pool it sizes is the one sized a moment ago). */
#define REUSE_MS 100
#define GRANTS 16
struct grant {
    _Atomic(uintptr_t) target;
    _Atomic unsigned long long asked_granted; /* n << 32 | granted */
    _Atomic long long ceiling; /* THREADGUARD_POOL_THREADS then (limit() may change it) */
    _Atomic(uintptr_t) call_site;
    _Atomic long long at_ms;
    _Atomic int decision;
    _Atomic unsigned generation;
};
static struct grant grants[GRANTS];

static long long coarse_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int repeat_grant(void *target, void *call_site, int n, int *granted) {
    struct grant *g = &grants[((uintptr_t)target >> 4) % GRANTS];
    if (atomic_load_explicit(&g->target, memory_order_acquire) != (uintptr_t)target) return 0;
    unsigned long long ng = atomic_load_explicit(&g->asked_granted, memory_order_acquire);
    long long ceiling = atomic_load_explicit(&g->ceiling, memory_order_relaxed);
    uintptr_t site = atomic_load_explicit(&g->call_site, memory_order_relaxed);
    long long at = atomic_load_explicit(&g->at_ms, memory_order_relaxed);
    int decision = atomic_load_explicit(&g->decision, memory_order_relaxed);
    unsigned generation = atomic_load_explicit(&g->generation, memory_order_relaxed);
    if (atomic_load_explicit(&g->target, memory_order_acquire) != (uintptr_t)target ||
        (int)(ng >> 32) != n || ceiling != tg_pool_threads() || site != (uintptr_t)call_site ||
        coarse_ms() - at > REUSE_MS || generation != tg_objects_unload_generation())
        return 0;
    *granted = (int)(ng & 0xffffffffu);
    if (decision >= 0 && decision < TG_MAX_DECISIONS)
        atomic_fetch_add_explicit(&tg_decisions[decision].count, 1, memory_order_relaxed);
    return 1;
}

static void remember_grant(void *target, void *call_site, int n, int granted, long long ceiling,
                           int decision) {
    struct grant *g = &grants[((uintptr_t)target >> 4) % GRANTS];
    atomic_store_explicit(&g->target, 0, memory_order_release);
    atomic_store_explicit(&g->asked_granted,
                          (unsigned long long)(unsigned)n << 32 | (unsigned)granted,
                          memory_order_release);
    atomic_store_explicit(&g->ceiling, ceiling, memory_order_relaxed);
    atomic_store_explicit(&g->call_site, (uintptr_t)call_site, memory_order_relaxed);
    atomic_store_explicit(&g->at_ms, coarse_ms(), memory_order_relaxed);
    atomic_store_explicit(&g->decision, decision, memory_order_relaxed);
    atomic_store_explicit(&g->generation, tg_objects_unload_generation(), memory_order_relaxed);
    atomic_store_explicit(&g->target, (uintptr_t)target, memory_order_release);
}

/* n lowered to the ceiling and to what fits for the library that defines
 * `target`; each pool member past the first costs `cost` new threads.
 * call_site: the setter's return address, which names who called it. */
static int clamp_setter(const char *function, void *target, void *call_site, int kind, int cost,
                        int n) {
    if (n <= 1) return n;
    if (!tg_init()) return n;
    if (tg_config.observe) {
        tg_observe_setter(tg_creator_slot(target), tg_caller_slot(call_site), function, kind, n);
        return n;
    }
    int granted;
    if (repeat_grant(target, call_site, n, &granted)) return granted;
    long long ceiling = tg_pool_threads(); /* what this grant is valid for */
    int decision;
    granted = tg_size_setter(tg_creator_slot(target), tg_caller_slot(call_site), function, kind,
                             cost, n, &decision);
    remember_grant(target, call_site, n, granted, ceiling, decision);
    tg_report_publish_if_stale();
    return granted;
}

typedef void (*set_threads_fn)(int);

#define TG_STR_(x) #x
#define TG_STR(x) TG_STR_(x)

#define CLAMPED_SETTER(fname, label, kind, cost)                                                   \
    THREADGUARD_API void fname(int n) {                                                            \
        set_threads_fn real =                                                                      \
            (set_threads_fn)definition_for(TG_STR(fname), __builtin_return_address(0));            \
        if (real == NULL) return; /* no such library within the caller's reach */                  \
        real(clamp_setter(label, (void *)real, __builtin_return_address(0), kind, cost, n));       \
    }

CLAMPED_SETTER(omp_set_num_threads, "omp_set_num_threads()", TG_KIND_OPENMP, 1)
CLAMPED_SETTER(openblas_set_num_threads, "openblas_set_num_threads()", TG_KIND_OPENBLAS, 1)
CLAMPED_SETTER(mkl_set_num_threads, "mkl_set_num_threads()", TG_KIND_MKL, 1)

/* torch.set_num_threads(n) calls at::set_num_threads, which resizes both
 * the OpenMP team and torch's own pthreadpool (n - 1 threads each, started
 * at once): every member past the first costs two threads.  The C++ names
 * are interposed the same way: libtorch_python calls them through its PLT. */
#define at_set_num_threads _ZN2at15set_num_threadsEi
#define at_set_num_interop_threads _ZN2at23set_num_interop_threadsEi
CLAMPED_SETTER(at_set_num_threads, "torch.set_num_threads()", TG_KIND_TORCH, 2)
CLAMPED_SETTER(at_set_num_interop_threads, "torch.set_num_interop_threads()", TG_KIND_TORCH, 1)
