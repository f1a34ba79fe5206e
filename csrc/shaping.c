/* Pool shaping: every pool is sized before it starts.
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
 * mkl_set_num_threads) are defined here too and lowered to what fits before
 * being forwarded to the definition the caller would have reached without
 * threadguard, so two OpenMP runtimes in one process stay apart. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* Threads kept free for the program's own use (its thread pools, a
 * DataLoader, the interpreter's helpers) when pools are sized. */
#define TG_RESERVE 2

struct tg_decision tg_decisions[TG_MAX_DECISIONS];
_Atomic int tg_decision_count;
struct tg_applied tg_applied;
struct tg_headroom tg_headroom_at_start;

static int creates_threads(int kind) {
    return kind == TG_KIND_OPENBLAS || kind == TG_KIND_OPENMP || kind == TG_KIND_MKL ||
           kind == TG_KIND_BLIS;
}

/* torch and MKL run their parallel regions on the OpenMP runtime's threads:
 * its pool is theirs. */
static int shares_pool(int asking_kind, int other_kind) {
    return (asking_kind == TG_KIND_TORCH || asking_kind == TG_KIND_MKL) &&
           other_kind == TG_KIND_OPENMP;
}

/* The largest pool (workers + the calling thread) library `slot` can have
 * now: the headroom, less the reserve and the workers promised to other
 * libraries but not started yet, plus the workers it already has. */
static long long pool_fit(unsigned slot, int kind, const struct tg_headroom *h) {
    if (h->free < 0) return -1; /* no limit anywhere */
    long long outstanding = 0, own_live = 0;
    for (unsigned i = 0; i < TG_MAX_LIBS; i++) {
        if (!atomic_load_explicit(&tg_libs[i].ready, memory_order_acquire)) continue;
        long long live = atomic_load_explicit(&tg_libs[i].c.live, memory_order_relaxed);
        if (i == slot || shares_pool(kind, tg_libs[i].kind)) {
            own_live += live;
            continue;
        }
        long long promised = atomic_load_explicit(&tg_libs[i].promised, memory_order_relaxed);
        if (promised > live) outstanding += promised - live;
    }
    long long fit = h->free - TG_RESERVE - outstanding + own_live + 1;
    return fit > 1 ? fit : 1;
}

/* A pool size the way the libraries read one: the leading positive number
 * ("4", "4,2" for nested OpenMP); -1 when there is none. */
static long long user_pool_size(const char *value) {
    if (value == NULL || *value < '1' || *value > '9') return -1;
    long long n = 0;
    for (; *value >= '0' && *value <= '9'; value++)
        if ((n = n * 10 + (*value - '0')) > 1000000) return 1000000;
    return n;
}

static const char *library_name(unsigned slot) {
    /* Slot 0 only asks on behalf of numexpr, through the environment. */
    return slot == TG_UNKNOWN_SLOT ? "numexpr" : tg_libs[slot].name;
}

_Atomic long long tg_decisions_dropped;

/* One pool-size decision before it is recorded. */
struct sizing {
    long long value;      /* what the library gets */
    long long requested;  /* what was asked (the program's value, a setter's n); -1 none */
    int source;           /* enum tg_source */
    const char *lowered_by; /* NULL when value is what was asked */
    unsigned caller;      /* the slot of the library that made the call */
};

/* The operator's ceiling, THREADGUARD_POOL_THREADS (or limit()), then the
 * headroom: *s is lowered to the first that is below it. */
static const char CEILING[] = "THREADGUARD_POOL_THREADS";

static void lower_to_fit(struct sizing *s, long long fit, const struct tg_headroom *h) {
    long long ceiling = tg_pool_threads();
    if (ceiling > 0 && s->value > ceiling) {
        s->value = ceiling;
        s->lowered_by = CEILING;
    }
    if (fit > 0 && fit < s->value) {
        s->value = fit;
        s->lowered_by = h->limit;
    }
}

static int same_decision(const struct tg_decision *d, unsigned slot, const char *variable,
                         const struct sizing *s) {
    return d->slot == slot && d->value == s->value && d->requested == s->requested &&
           d->source == s->source && d->lowered == (s->lowered_by != NULL) &&
           d->lowered_by == s->lowered_by &&
           strncmp(d->caller, library_name(s->caller), sizeof d->caller - 1) == 0 &&
           strncmp(d->variable, variable, sizeof d->variable - 1) == 0;
}

/* One row per distinct decision, with a count: a program that calls
 * omp_set_num_threads(2) in a loop fills nothing.  Returns the row, or -1
 * when the table is full (counted in tg_decisions_dropped). */
static int record(unsigned slot, const char *variable, const struct sizing *s,
                  const struct tg_headroom *h) {
    int made = atomic_load_explicit(&tg_decision_count, memory_order_acquire);
    if (made > TG_MAX_DECISIONS) made = TG_MAX_DECISIONS;
    for (int i = 0; i < made; i++) {
        struct tg_decision *d = &tg_decisions[i];
        if (atomic_load_explicit(&d->ready, memory_order_acquire) &&
            same_decision(d, slot, variable, s)) {
            atomic_fetch_add_explicit(&d->count, 1, memory_order_relaxed);
            return i;
        }
    }
    int i = atomic_fetch_add_explicit(&tg_decision_count, 1, memory_order_relaxed);
    if (i >= TG_MAX_DECISIONS) {
        atomic_fetch_add_explicit(&tg_decisions_dropped, 1, memory_order_relaxed);
        return -1;
    }
    struct tg_decision *d = &tg_decisions[i];
    d->slot = slot;
    snprintf(d->library, sizeof d->library, "%s", library_name(slot));
    snprintf(d->variable, sizeof d->variable, "%s", variable);
    snprintf(d->caller, sizeof d->caller, "%s", library_name(s->caller));
    d->value = s->value;
    d->requested = s->requested;
    d->source = s->source;
    d->lowered = s->lowered_by != NULL;
    d->lowered_by = s->lowered_by;
    d->free = h->free;
    d->limit = h->limit;
    d->cpus = h->cpus;
    atomic_store_explicit(&d->count, 1, memory_order_relaxed);
    atomic_store_explicit(&d->ready, 1, memory_order_release);
    return i;
}

static void describe(unsigned slot, const char *variable, const struct sizing *s,
                     const struct tg_headroom *h) {
    if (s->lowered_by == CEILING) {
        tg_warn("%s=%lld lowered to %lld for %s: THREADGUARD_POOL_THREADS=%lld is the ceiling "
                "of every pool",
                variable, s->requested, s->value, library_name(slot), s->value);
    } else if (s->lowered_by != NULL) {
        tg_warn("%s=%lld lowered to %lld for %s: %lld thread%s free under %s (keeping %d in "
                "reserve)",
                variable, s->requested, s->value, library_name(slot), h->free, tg_s(h->free),
                h->limit, TG_RESERVE);
    } else if (tg_config.debug) {
        tg_warn("debug: %s=%lld for %s (%lld CPU%s from %s; %lld thread%s free under %s)",
                variable, s->value, library_name(slot), h->cpus, tg_s(h->cpus), h->cpus_from,
                h->free, tg_s(h->free), h->limit);
    }
}

/* ---- answers to getenv -------------------------------------------------- */

/* Answers live in a ring: a caller reads its number right away. */
#define ANSWERS 64
static char answers[ANSWERS][24];
static _Atomic unsigned next_answer;

static char *answer(long long value) {
    unsigned i = atomic_fetch_add_explicit(&next_answer, 1, memory_order_relaxed) % ANSWERS;
    snprintf(answers[i], sizeof answers[i], "%lld", value);
    return answers[i];
}

struct pool_variable {
    const char *name;
    int kind;               /* the library kind that reads it as its pool size */
    const char *fallback;   /* another variable that library also obeys, or NULL */
};

/* OpenBLAS obeys OPENBLAS_NUM_THREADS before GOTO_NUM_THREADS and
 * OMP_NUM_THREADS, so answering the first one decides its pool. */
static const struct pool_variable pool_variables[] = {
    {"OPENBLAS_NUM_THREADS", TG_KIND_OPENBLAS, "OMP_NUM_THREADS"},
    {"OMP_NUM_THREADS", TG_KIND_OPENMP, NULL},
    {"OMP_NUM_THREADS", TG_KIND_TORCH, NULL},
    {"MKL_NUM_THREADS", TG_KIND_TORCH, NULL},
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

/* The pool size for `variable` read by library `slot`: the user's value
 * when it fits, otherwise the CPU allocation, never more than fits.  NULL
 * keeps the library's own default (which is at most the CPUs it sees). */
/* Under RLIMIT_AS a pool that does not fit at the default thread stack may
 * fit at POOL_STACK: its workers (and only they) get it, never less than
 * what their creator asked for (call_real leaves chosen stacks alone). */
#define POOL_STACK (1 * TG_MIB)

static void shrink_pool_stack(unsigned slot, int kind, long long want, struct tg_headroom *h,
                              long long *fit) {
    if (!creates_threads(kind) || h->as_limit < 0 || *fit < 0 || *fit >= want ||
        tg_config.stack > 0 || POOL_STACK >= tg_default_stack())
        return;
    struct tg_headroom small;
    tg_headroom_measure_stack(&small, kind, POOL_STACK);
    long long small_fit = pool_fit(slot, kind, &small);
    if (small_fit <= *fit) return;
    long long before = *fit;
    *h = small;
    *fit = small_fit;
    atomic_store_explicit(&tg_libs[slot].pool_stack, POOL_STACK, memory_order_relaxed);
    atomic_store_explicit(&tg_applied.pool_stack, POOL_STACK, memory_order_relaxed);
    tg_warn("%s workers get 1M stacks instead of %lldk: RLIMIT_AS leaves room for %lld of them "
            "at the default, %lld at 1M (other threads keep theirs)",
            library_name(slot), tg_default_stack() / TG_KIB, before, small_fit);
}

/* Pools are sized holding the per-user ledger's lock (where there is a
 * shared limit): measure, decide, promise, publish - so that processes
 * sizing at the same moment see each other's promises. */
static int shared_limit(void) {
    if (getuid() == 0) return 0; /* RLIMIT_NPROC never applies to root */
    struct rlimit r;
    return getrlimit(RLIMIT_NPROC, &r) == 0 && r.rlim_cur != RLIM_INFINITY;
}

static int sizing_begins(void) {
    int locked = shared_limit() ? tg_ledger_lock() : 0;
    if (locked) tg_ledger_prepare();
    return locked;
}

static void sizing_ends(int locked) {
    tg_ledger_update();
    tg_ledger_unlock(locked);
}

static char *size_pool_locked(unsigned slot, int kind, const char *variable,
                              const char *user_text, const char *fallback);

static char *size_pool(unsigned slot, int kind, const char *variable, const char *user_text,
                       const char *fallback) {
    int locked = sizing_begins();
    char *result = size_pool_locked(slot, kind, variable, user_text, fallback);
    sizing_ends(locked);
    return result;
}

static char *size_pool_locked(unsigned slot, int kind, const char *variable,
                              const char *user_text, const char *fallback) {
    struct tg_headroom h;
    tg_headroom_measure(&h, kind);
    long long fit = pool_fit(slot, kind, &h);
    /* The program's own value, then THREADGUARD_POOL_THREADS (the size of
     * every pool the program leaves unsized, and the ceiling of those it
     * sizes), then the CPU allocation; lowered to fit the headroom. */
    long long ceiling = tg_pool_threads();
    const char *given = user_text;
    struct sizing s = {user_pool_size(user_text), -1, TG_SOURCE_USER, NULL, slot};
    if (s.value < 0 && fallback) s.value = user_pool_size(given = tg_environ_get(fallback));
    if (s.value < 0) {
        s.source = TG_SOURCE_THREADGUARD;
        s.value = ceiling > 0 ? ceiling : h.cpus;
    } else {
        s.requested = s.value;
    }
    if (!tg_config.observe) shrink_pool_stack(slot, kind, s.value, &h, &fit);
    lower_to_fit(&s, fit, &h);
    char *result;
    if (s.source == TG_SOURCE_THREADGUARD && ceiling < 0 && s.value >= h.cpus_affinity &&
        h.cpus_affinity > 0) {
        /* The library's own default (at most the CPUs it sees) fits. */
        s.source = TG_SOURCE_DEFAULT;
        s.value = h.cpus_affinity;
        s.lowered_by = NULL;
        result = (char *)user_text;
    } else if (s.source == TG_SOURCE_USER && s.lowered_by == NULL && given == user_text) {
        result = (char *)user_text; /* unchanged, nested lists kept */
    } else {
        result = answer(s.value);
    }
    if (s.source != TG_SOURCE_USER) s.lowered_by = NULL; /* nothing the program asked was cut */
    if (creates_threads(kind))
        atomic_store_explicit(&tg_libs[slot].promised, s.value - 1, memory_order_relaxed);
    record(slot, variable, &s, &h);
    describe(slot, variable, &s, &h);
    return result;
}

/* OMP_THREAD_LIMIT caps every thread an OpenMP runtime starts, num_threads
 * clauses included: under a finite headroom it is a safety net beneath the
 * pool size. */
static char *limit_openmp(unsigned slot, const char *user_text) {
    struct tg_headroom h;
    tg_headroom_measure(&h, TG_KIND_OPENMP);
    long long fit = pool_fit(slot, TG_KIND_OPENMP, &h);
    long long user = user_pool_size(user_text);
    /* Only a limit within reach is worth a cap (threads-max alone is not). */
    if (fit < 0 || fit > 4096 || (user > 0 && user <= fit)) return (char *)user_text;
    struct sizing s = {fit, user, user > 0 ? TG_SOURCE_USER : TG_SOURCE_THREADGUARD,
                       user > 0 ? h.limit : NULL, slot};
    record(slot, "OMP_THREAD_LIMIT", &s, &h);
    describe(slot, "OMP_THREAD_LIMIT", &s, &h);
    return answer(fit);
}

static char *answer_getenv(const char *name, const char *value);

/* glibc's getenv never touches errno; ours reads /proc, so it keeps errno
 * as it found it (a signal handler's getenv must not change the errno of
 * the code it interrupted). */
THREADGUARD_API char *getenv(const char *name) {
    const char *value = tg_environ_get(name);
    if (!managed_name(name)) return (char *)value;
    int saved = errno;
    char *result = answer_getenv(name, value);
    errno = saved;
    return result;
}

static char *answer_getenv(const char *name, const char *value) {
    /* Re-entered while initialising (a signal handler): the real answer. */
    if (!tg_init() || tg_config.observe) return (char *)value;
    /* The direct caller only: unwinding from here could dlopen, and a
     * getenv reached through libc (a tail call from a signal handler) is
     * not a pool asking. */
    unsigned slot = tg_caller_slot(__builtin_return_address(0));
    int kind = tg_libs[slot].kind;
    if (strcmp(name, "OMP_THREAD_LIMIT") == 0)
        return kind == TG_KIND_OPENMP ? limit_openmp(slot, value) : (char *)value;
    for (size_t i = 0; i < sizeof pool_variables / sizeof pool_variables[0]; i++) {
        const struct pool_variable *v = &pool_variables[i];
        if (v->kind == kind && strcmp(v->name, name) == 0)
            return size_pool(slot, kind, name, value, v->fallback);
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
static int in_threadguard(const void *fn) {
    Dl_info a, b;
    return dladdr(fn, &a) != 0 && dladdr((const void *)tg_init, &b) != 0 &&
           a.dli_fbase == b.dli_fbase;
}

static void *lookup_definition(const char *name, void *caller) {
    Dl_info info;
    struct link_map *map = NULL;
    if (dladdr1(caller, &info, (void **)&map, RTLD_DL_LINKMAP) != 0 && map != NULL &&
        map->l_name != NULL && map->l_name[0] != '\0') {
        void *handle = dlopen(map->l_name, RTLD_LAZY | RTLD_NOLOAD);
        if (handle != NULL) {
            void *fn = dlsym(handle, name);
            dlclose(handle);
            if (fn != NULL && !in_threadguard(fn)) return fn;
        }
    }
    void *fn = dlsym(RTLD_NEXT, name);
    return fn != NULL && !in_threadguard(fn) ? fn : NULL;
}

/* Bumped after every dlclose: a cached definition may belong to an object
 * that is gone, and another object may now sit at a cached call site. */
static _Atomic unsigned unload_generation;

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
    int rc = fn(handle);
    atomic_fetch_add_explicit(&unload_generation, 1, memory_order_acq_rel);
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
    unsigned generation = atomic_load_explicit(&unload_generation, memory_order_acquire);
    if (atomic_load_explicit(&site->caller, memory_order_acquire) == key) {
        uintptr_t fn = atomic_load_explicit(&site->fn, memory_order_acquire);
        if (atomic_load_explicit(&site->name, memory_order_acquire) == name && fn != 0 &&
            atomic_load_explicit(&site->generation, memory_order_acquire) == generation &&
            atomic_load_explicit(&site->caller, memory_order_acquire) == key)
            return (void *)fn;
    }
    void *found = lookup_definition(name, caller);
    if (found != NULL) {
        generation = atomic_load_explicit(&unload_generation, memory_order_acquire);
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
        coarse_ms() - at > REUSE_MS ||
        generation != atomic_load_explicit(&unload_generation, memory_order_acquire))
        return 0;
    *granted = (int)(ng & 0xffffffffu);
    if (decision >= 0 && decision < TG_MAX_DECISIONS)
        atomic_fetch_add_explicit(&tg_decisions[decision].count, 1, memory_order_relaxed);
    return 1;
}

static void remember_grant(void *target, void *call_site, int n, int granted,
                           long long ceiling, int decision) {
    struct grant *g = &grants[((uintptr_t)target >> 4) % GRANTS];
    atomic_store_explicit(&g->target, 0, memory_order_release);
    atomic_store_explicit(&g->asked_granted,
                          (unsigned long long)(unsigned)n << 32 | (unsigned)granted,
                          memory_order_release);
    atomic_store_explicit(&g->ceiling, ceiling, memory_order_relaxed);
    atomic_store_explicit(&g->call_site, (uintptr_t)call_site, memory_order_relaxed);
    atomic_store_explicit(&g->at_ms, coarse_ms(), memory_order_relaxed);
    atomic_store_explicit(&g->decision, decision, memory_order_relaxed);
    atomic_store_explicit(&g->generation,
                          atomic_load_explicit(&unload_generation, memory_order_acquire),
                          memory_order_relaxed);
    atomic_store_explicit(&g->target, (uintptr_t)target, memory_order_release);
}

/* A setter call a threaded runtime made on its own (libtorch_cpu calling
 * omp_set_num_threads inside at::set_num_threads or at its first parallel
 * region; libtorch_python calling it at import), as opposed to the
 * program's.  The one exception is torch's Python binding, libtorch_python,
 * calling a torch setter: that is the program's torch.set_num_threads. */
static int made_by_library(unsigned caller, int setter_kind) {
    int kind = tg_libs[caller].kind;
    if (caller == TG_UNKNOWN_SLOT || !(creates_threads(kind) || kind == TG_KIND_TORCH))
        return 0;
    return !(setter_kind == TG_KIND_TORCH &&
             tg_starts_with(tg_libs[caller].name, "libtorch_python"));
}

/* n lowered to the ceiling and to what fits for the library that defines
 * `target`; each pool member past the first costs `cost` new threads.
 * call_site: the setter's return address, which names who called it. */
static int clamp_setter(const char *function, void *target, void *call_site, int kind, int cost,
                        int n) {
    if (n <= 1) return n;
    if (!tg_init()) return n;
    if (tg_config.observe) {
        /* Changed nothing, but recorded: `threadguard doctor -- CMD` must
         * know that the program sizes a pool itself, which no variable
         * overrides. */
        unsigned caller = tg_caller_slot(call_site);
        struct sizing s = {n, n, made_by_library(caller, kind) ? TG_SOURCE_LIBRARY : TG_SOURCE_USER,
                           NULL, caller};
        record(tg_creator_slot(target), function, &s, &tg_headroom_at_start);
        return n;
    }
    int granted;
    if (repeat_grant(target, call_site, n, &granted)) return granted;
    unsigned slot = tg_creator_slot(target);
    unsigned caller = tg_caller_slot(call_site);
    struct sizing s = {n, n, made_by_library(caller, kind) ? TG_SOURCE_LIBRARY : TG_SOURCE_USER, NULL,
                       caller};
    struct tg_headroom h;
    int locked = sizing_begins();
    tg_headroom_measure(&h, kind);
    long long fit = pool_fit(slot, kind, &h);
    if (fit > 0) fit = 1 + (fit - 1) / cost;
    long long ceiling = tg_pool_threads();
    lower_to_fit(&s, fit, &h);
    granted = (int)s.value;
    if (creates_threads(tg_libs[slot].kind))
        atomic_store_explicit(&tg_libs[slot].promised, granted - 1, memory_order_relaxed);
    sizing_ends(locked);
    int decision = record(slot, function, &s, &h);
    describe(slot, function, &s, &h);
    remember_grant(target, call_site, n, granted, ceiling, decision);
    return granted;
}

typedef void (*set_threads_fn)(int);

#define TG_STR_(x) #x
#define TG_STR(x) TG_STR_(x)

#define CLAMPED_SETTER(fname, label, kind, cost)                                         \
    THREADGUARD_API void fname(int n) {                                                   \
        set_threads_fn real =                                                             \
            (set_threads_fn)definition_for(TG_STR(fname), __builtin_return_address(0));   \
        if (real == NULL) return; /* no such library within the caller's reach */         \
        real(clamp_setter(label, (void *)real, __builtin_return_address(0), kind, cost, n)); \
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

/* ---- applied at start ---------------------------------------------------- */

static void apply_nproc(void) {
    tg_applied.nproc_source = TG_SOURCE_DEFAULT;
    struct rlimit r;
    if (getrlimit(RLIMIT_NPROC, &r) != 0) return;
    tg_applied.nproc_soft = r.rlim_cur == RLIM_INFINITY ? -1 : (long long)r.rlim_cur;
    if (tg_config.observe || tg_config.nproc == -1 || r.rlim_cur == RLIM_INFINITY) return;
    rlim_t want = tg_config.nproc == TG_NPROC_MAX ? r.rlim_max : (rlim_t)tg_config.nproc;
    if (want > r.rlim_max) {
        tg_warn("THREADGUARD_NPROC=%lld is above the hard RLIMIT_NPROC; raising to the hard "
                "limit, %llu",
                tg_config.nproc, (unsigned long long)r.rlim_max);
        want = r.rlim_max;
    }
    if (want <= r.rlim_cur) return;
    r.rlim_cur = want;
    if (setrlimit(RLIMIT_NPROC, &r) != 0) {
        tg_warn("THREADGUARD_NPROC: could not raise RLIMIT_NPROC; left at %lld",
                tg_applied.nproc_soft);
        return;
    }
    tg_applied.nproc_soft = r.rlim_cur == RLIM_INFINITY ? -1 : (long long)r.rlim_cur;
    tg_applied.nproc_source = TG_SOURCE_USER;
}

static int address_space_limited(void) {
    struct rlimit r;
    return getrlimit(RLIMIT_AS, &r) == 0 && r.rlim_cur != RLIM_INFINITY;
}

static void set_default_stack(long long bytes) {
    if (tg_glibc_set_default_stack(bytes) != 0)
        tg_warn("could not set the default thread stack to %lld bytes; threads keep %lld",
                bytes, tg_default_stack());
}

static void apply_stack(void) {
    tg_applied.stack_source = TG_SOURCE_DEFAULT;
    if (tg_config.observe) {
        /* unchanged */
    } else if (tg_config.stack > 0) {
        set_default_stack(tg_config.stack);
        tg_applied.stack_source = TG_SOURCE_USER;
    }
    /* Under RLIMIT_AS the default stays: a program's own threads may need
     * all of it.  Pools that do not fit get smaller stacks when they are
     * sized (shrink_pool_stack). */
    tg_applied.stack = tg_default_stack();
}

static void apply_arenas(void) {
    tg_applied.arenas_source = TG_SOURCE_DEFAULT;
    long long arenas = 0;
    if (tg_config.observe) return;
    if (tg_config.arenas > 0) {
        arenas = tg_config.arenas;
        tg_applied.arenas_source = TG_SOURCE_USER;
    } else if (address_space_limited() && !tg_arenas_capped()) {
        /* Each arena reserves 64 MiB of address space. */
        arenas = 2;
        tg_applied.arenas_source = TG_SOURCE_THREADGUARD;
    }
    if (arenas > 0 && mallopt(M_ARENA_MAX, (int)arenas) == 1) tg_applied.arenas = arenas;
    else tg_applied.arenas_source = TG_SOURCE_DEFAULT;
}

/* numexpr reads NUMEXPR_MAX_THREADS through Python's os.environ, which is
 * copied from the environment at start: it has to be set there. */
static void size_numexpr(void) {
    if (tg_config.observe) return;
    const char *user = tg_environ_get("NUMEXPR_MAX_THREADS");
    struct tg_headroom *h = &tg_headroom_at_start;
    long long fit = pool_fit(TG_UNKNOWN_SLOT, TG_KIND_OTHER, h);
    long long ceiling = tg_pool_threads();
    struct sizing s = {user_pool_size(user), -1, TG_SOURCE_USER, NULL, TG_UNKNOWN_SLOT};
    if (s.value < 0) {
        s.value = ceiling > 0 ? ceiling : h->cpus;
        s.source = TG_SOURCE_THREADGUARD;
    } else {
        s.requested = s.value;
    }
    lower_to_fit(&s, fit, h);
    if (s.source == TG_SOURCE_USER && s.lowered_by == NULL) return; /* the program's, kept */
    if (s.source == TG_SOURCE_THREADGUARD && ceiling < 0 && s.value >= h->cpus_affinity)
        return; /* numexpr's own default fits */
    if (s.source != TG_SOURCE_USER) s.lowered_by = NULL;
    char text[24];
    snprintf(text, sizeof text, "%lld", s.value);
    if (setenv("NUMEXPR_MAX_THREADS", text, 1) != 0) return;
    record(TG_UNKNOWN_SLOT, "NUMEXPR_MAX_THREADS", &s, h);
    describe(TG_UNKNOWN_SLOT, "NUMEXPR_MAX_THREADS", &s, h);
}

/* Under THREADGUARD_OBSERVE each of these only reads what is there: the
 * process runs as it would without threadguard (what `threadguard doctor
 * -- CMD` needs to see). */
void tg_shaping_init(void) {
    apply_nproc();
    apply_stack();
    apply_arenas();
    tg_headroom_measure(&tg_headroom_at_start, TG_KIND_UNKNOWN);
    size_numexpr();
}

/* limit() in Python: the pool size for libraries that start from now on
 * (the same as THREADGUARD_POOL_THREADS).  Stored atomically: getenv
 * answers read it from any thread. */
THREADGUARD_API long long threadguard_set_pool_threads(long long threads) {
    tg_init();
    if (threads == 0 || threads < -1 || threads > 4096) {
        tg_set_error(THREADGUARD_EINVAL,
                     "threadguard_set_pool_threads: %lld is not a pool size; expected 1 to 4096, "
                     "or -1 to clear",
                     threads);
        return -2;
    }
    tg_clear_error();
    return __atomic_exchange_n(&tg_config.pool_threads, threads, __ATOMIC_ACQ_REL);
}
