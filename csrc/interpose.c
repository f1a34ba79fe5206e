/* The pthread_create wrapper.
 *
 * Preloaded, this definition of pthread_create comes before libc's in
 * symbol lookup, for callers bound to either of glibc's versions (an
 * unversioned interposer catches GLIBC_2.2.5 and GLIBC_2.34 alike).  It
 * attributes the new thread to its creator in the parent, counts it, and
 * starts it through a trampoline that counts its exit on return,
 * pthread_exit and cancellation.
 *
 * The create path never allocates: the creator's routine and argument reach
 * the child through a fixed pool of start records, claimed with a
 * compare-and-swap and released by the child before it runs user code. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <string.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#include "internal.h"

typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

static _Atomic(create_fn) real_create;

/* Resolve the next pthread_create in the chain.  dlsym(RTLD_NEXT) keeps an
 * interposer after us (a sanitizer runtime, another preload) in the chain;
 * dlvsym with a version skips unversioned interposers and would jump
 * straight to libc.  Where both land in the same object (libc or
 * libpthread), take the newest versioned symbol.  Racing threads resolve the
 * same pointer, so a plain atomic store is enough. */
static create_fn resolve_real_create(void) {
    create_fn fn = atomic_load_explicit(&real_create, memory_order_acquire);
    if (fn != NULL) return fn;
    void *next = dlsym(RTLD_NEXT, "pthread_create");
    /* 2.34 moved it into libc; before, libpthread defines it at the base
     * version, GLIBC_2.2.5 on x86-64 and GLIBC_2.17 on aarch64. */
    void *versioned = dlvsym(RTLD_NEXT, "pthread_create", "GLIBC_2.34");
    if (versioned == NULL) versioned = dlvsym(RTLD_NEXT, "pthread_create", "GLIBC_2.2.5");
    if (versioned == NULL) versioned = dlvsym(RTLD_NEXT, "pthread_create", "GLIBC_2.17");
    void *chosen = next ? next : versioned;
    Dl_info a, b;
    if (next && versioned && next != versioned && dladdr(next, &a) && dladdr(versioned, &b) &&
        a.dli_fbase == b.dli_fbase)
        chosen = versioned;
    fn = (create_fn)chosen;
    atomic_store_explicit(&real_create, fn, memory_order_release);
    return fn;
}

/* ---- start records ---------------------------------------------------- */

/* 1024 static records cover any ordinary program.  When more threads are
 * being started at once than that (a SCHED_FIFO parent whose children do
 * not get to run), more records are mapped with mmap - a system call, not
 * the heap, safe on this path - in chunks that are never unmapped.  Only if
 * even that fails is a thread started uncounted, and that is counted. */
#define TG_START_RECORDS 1024
#define TG_CHUNK_RECORDS 4096
#define TG_MAX_CHUNKS 15

struct start_record {
    _Atomic int busy;
    void *(*routine)(void *);
    void *arg;
    unsigned slot;
    unsigned generation;
};

static struct start_record records[TG_START_RECORDS];
static _Atomic unsigned record_hint;
static struct start_record *_Atomic chunks[TG_MAX_CHUNKS];
_Atomic long long tg_records_mapped;
_Atomic long long tg_started_uncounted;

static struct start_record *claim_in(struct start_record *pool, unsigned size) {
    for (unsigned tries = 0; tries < size; tries++) {
        unsigned i = atomic_fetch_add_explicit(&record_hint, 1, memory_order_relaxed) % size;
        int expected = 0;
        if (atomic_compare_exchange_strong_explicit(&pool[i].busy, &expected, 1,
                                                    memory_order_acquire, memory_order_relaxed))
            return &pool[i];
    }
    return NULL;
}

static struct start_record *claim_record(void) {
    struct start_record *r = claim_in(records, TG_START_RECORDS);
    for (int c = 0; r == NULL && c < TG_MAX_CHUNKS; c++) {
        struct start_record *chunk = atomic_load_explicit(&chunks[c], memory_order_acquire);
        if (chunk == NULL) {
            void *mem = mmap(NULL, TG_CHUNK_RECORDS * sizeof(struct start_record),
                             PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (mem == MAP_FAILED) return NULL;
            struct start_record *expected = NULL;
            if (atomic_compare_exchange_strong_explicit(&chunks[c], &expected, mem,
                                                        memory_order_acq_rel,
                                                        memory_order_acquire)) {
                chunk = mem;
                atomic_fetch_add_explicit(&tg_records_mapped, TG_CHUNK_RECORDS,
                                          memory_order_relaxed);
            } else {
                munmap(mem, TG_CHUNK_RECORDS * sizeof(struct start_record));
                chunk = expected; /* another thread mapped this chunk first */
            }
        }
        r = claim_in(chunk, TG_CHUNK_RECORDS);
    }
    return r;
}

static void release_record(struct start_record *r) {
    atomic_store_explicit(&r->busy, 0, memory_order_release);
}

static void release_all_records(void) {
    for (unsigned i = 0; i < TG_START_RECORDS; i++)
        atomic_store_explicit(&records[i].busy, 0, memory_order_relaxed);
    for (int c = 0; c < TG_MAX_CHUNKS; c++) {
        struct start_record *chunk = atomic_load_explicit(&chunks[c], memory_order_relaxed);
        for (unsigned i = 0; chunk != NULL && i < TG_CHUNK_RECORDS; i++)
            atomic_store_explicit(&chunk[i].busy, 0, memory_order_relaxed);
    }
}

/* ---- counting --------------------------------------------------------- */

_Atomic unsigned tg_fork_generation;
_Atomic long long tg_started_during_init;
static _Atomic int forked_child;

int tg_is_forked_child(void) { return atomic_load_explicit(&forked_child, memory_order_relaxed); }

static void count_start(unsigned slot, long long *live_after_total, long long *live_after_lib) {
    *live_after_lib =
        atomic_fetch_add_explicit(&tg_libs[slot].c.live, 1, memory_order_relaxed) + 1;
    *live_after_total = atomic_fetch_add_explicit(&tg_total.live, 1, memory_order_relaxed) + 1;
}

static void count_exit(unsigned slot) {
    atomic_fetch_sub_explicit(&tg_libs[slot].c.live, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&tg_total.live, 1, memory_order_relaxed);
}

struct exit_token {
    unsigned slot;
    unsigned generation;
};

/* Set once this thread's exit is counted: when the main thread has called
 * pthread_exit, the report runs in the last thread after its own exit was
 * counted, and must not take it for a thread it never saw created. */
static __thread int exit_counted __attribute__((tls_model("initial-exec")));

int tg_exit_counted_here(void) { return exit_counted; }

static void on_thread_exit(void *p) {
    const struct exit_token *token = p;
    exit_counted = 1;
    /* A thread that crossed a fork() into a child belongs to the parent's
     * count, which the child reset. */
    if (token->generation == atomic_load_explicit(&tg_fork_generation, memory_order_relaxed))
        count_exit(token->slot);
}

/* Not instrumented by ASan: a cancelled thread comes back here by
 * longjmp from glibc's unwinder (pthread_cleanup_push in C is setjmp), past
 * frames whose stack ASan still has poisoned, and ASan's no-return hook
 * then aborts in its own CHECK (asan_thread.cpp: "kCurrentStackFrameMagic")
 * instead of letting the thread end.  Uninstrumented, the thread ends as in
 * the plain build, and ASan clears the stack's shadow for the next thread. */
#if defined(__SANITIZE_ADDRESS__)
#define TG_NO_ASAN __attribute__((no_sanitize_address))
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TG_NO_ASAN __attribute__((no_sanitize_address))
#endif
#endif
#ifndef TG_NO_ASAN
#define TG_NO_ASAN
#endif

TG_NO_ASAN static void *trampoline(void *p) {
    struct start_record *record = p;
    void *(*routine)(void *) = record->routine;
    void *arg = record->arg;
    struct exit_token token = {record->slot, record->generation};
    release_record(record);

    void *result;
    pthread_cleanup_push(on_thread_exit, &token);
    result = routine(arg);
    pthread_cleanup_pop(1);
    return result;
}

/* ---- initialisation --------------------------------------------------- */

/* 0: not started, 1: running, 2: done.  Not pthread_once: a signal handler
 * that reads OMP_NUM_THREADS while this thread initialises would wait on
 * itself for ever. */
static _Atomic int init_state;
/* Set while this thread runs initialise(): a re-entry (a signal handler,
 * a getenv inside glibc) falls through to the real function. */
static __thread volatile int initialising __attribute__((tls_model("initial-exec")));
static long long tasks_at_start = -1;

long long tg_tasks_at_start(void) { return tasks_at_start; }

static void after_fork_in_child(void) {
    atomic_fetch_add_explicit(&tg_fork_generation, 1, memory_order_relaxed);
    atomic_store_explicit(&forked_child, 1, memory_order_relaxed);
    tg_registry_reset_counters();
    /* Creations in flight in other parent threads never finish here. */
    release_all_records();
    tasks_at_start = 0;
    tg_failures_reset();
    tg_got_after_fork_in_child();
    tg_ledger_after_fork_in_child();
}

static void initialise(void) {
    tg_stderr_remember();
    long long tasks = tg_count_tasks();
    tasks_at_start = tasks > 0 ? tasks - 1 : tasks;
    tg_glibc_init();
    tg_config_load();
    tg_registry_init();
    resolve_real_create();
    tg_shaping_init();
    pthread_atfork(NULL, NULL, after_fork_in_child);
}

static long long monotonic_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* A needed library's constructor can call pthread_create before ours runs,
 * so every entry point initialises lazily.  Returns 1 once initialised, 0
 * when the caller must fall through to the real function: on re-entry from
 * the initialising thread, and when another thread's initialisation has not
 * finished within a bounded wait (it may itself be waiting for a lock this
 * thread holds, such as the loader's). */
int tg_init(void) {
    int state = atomic_load_explicit(&init_state, memory_order_acquire);
    if (state == 2) return 1;
    if (initialising) return 0;
    int expected = 0;
    if (state == 0 && atomic_compare_exchange_strong_explicit(&init_state, &expected, 1,
                                                              memory_order_acq_rel,
                                                              memory_order_acquire)) {
        initialising = 1;
        initialise();
        initialising = 0;
        atomic_store_explicit(&init_state, 2, memory_order_release);
        return 1;
    }
    long long until = monotonic_us() + 20000;
    while (atomic_load_explicit(&init_state, memory_order_acquire) != 2) {
        if (monotonic_us() > until) return 0;
        sched_yield();
    }
    return 1;
}

__attribute__((constructor)) static void threadguard_constructor(void) { tg_init(); }

__attribute__((destructor)) static void threadguard_destructor(void) {
    tg_ledger_release();
    tg_report_at_exit();
}

/* ---- the wrapper ------------------------------------------------------ */

/* THREADGUARD_MAX_THREADS: live threads besides the main one, counting
 * those that existed before threadguard started.  Returns 1 when this
 * creation must be refused (deny mode); warns once per library either way.
 * Pools are sized to fit the budget, so this is the backstop for threads
 * nobody sized. */
static int over_budget(unsigned slot, long long live_total) {
    long long budget = tg_config.max_threads;
    if (budget <= 0) return 0;
    long long before = tasks_at_start > 0 ? tasks_at_start : 0;
    long long in_process = live_total + before;
    if (in_process <= budget) return 0;
    struct tg_lib *lib = &tg_libs[slot];
    int deny = tg_config.on_limit == TG_ON_LIMIT_DENY && !tg_config.observe;
    if (deny) {
        atomic_fetch_add_explicit(&lib->c.denied, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&tg_total.denied, 1, memory_order_relaxed);
    }
    if (atomic_exchange_explicit(&lib->warned, 1, memory_order_relaxed) == 0) {
        if (deny)
            tg_warn("denied thread %lld to %s: THREADGUARD_MAX_THREADS=%lld and %lld thread%s "
                    "live; pthread_create returns EAGAIN (THREADGUARD_ON_LIMIT=deny)",
                    in_process, lib->name, budget, in_process - 1,
                    in_process - 1 == 1 ? " is" : "s are");
        else
            tg_warn("%s started thread %lld, over THREADGUARD_MAX_THREADS=%lld; allowed "
                    "(THREADGUARD_ON_LIMIT=warn; set it to deny to refuse such threads)",
                    lib->name, in_process, budget);
    }
    return deny;
}

/* Whether attr leaves the stack to glibc: none, or a size equal to the
 * default (pthread_attr_init's), and no stack of the caller's own. */
static int default_stack_attr(const pthread_attr_t *attr) {
    if (attr == NULL) return 1;
    void *low = NULL;
    size_t size = 0;
    if (pthread_attr_getstack(attr, &low, &size) == 0 && (uintptr_t)low + size != 0) return 0;
    return pthread_attr_getstacksize(attr, &size) == 0 && (long long)size == tg_default_stack();
}

/* The real pthread_create, with the stack threadguard chose: the smaller
 * stack of a pool it sized under RLIMIT_AS (only for threads whose creator
 * left the stack to glibc), or, where glibc (< 2.18) cannot change the
 * default, THREADGUARD_STACK for threads created without attributes.
 * Nothing is allocated: attribute objects live on this stack, and a copy
 * of the caller's is never destroyed (it shares the caller's extension). */
static int call_real(create_fn real, unsigned slot, pthread_t *thread,
                     const pthread_attr_t *attr, void *(*routine)(void *), void *arg) {
    pthread_attr_t scratch;
    const pthread_attr_t *given = tg_glibc_attr_for(attr, &scratch);
    long long pool_stack = atomic_load_explicit(&tg_libs[slot].pool_stack, memory_order_relaxed);
    int destroy = given == &scratch;
    if (pool_stack > 0 && default_stack_attr(attr)) {
        if (attr == NULL && !destroy) destroy = pthread_attr_init(&scratch) == 0;
        else if (attr != NULL) memcpy(&scratch, attr, sizeof scratch);
        if (attr != NULL || destroy) {
            pthread_attr_setstacksize(&scratch, (size_t)pool_stack);
            given = &scratch;
        }
    }
    int rc = real(thread, given, routine, arg);
    if (destroy) pthread_attr_destroy(&scratch);
    return rc;
}

static int __attribute__((noinline))
create_counted(void *caller, pthread_t *thread, const pthread_attr_t *attr,
               void *(*routine)(void *), void *arg) {
    int ready = tg_init();
    create_fn real = resolve_real_create();
    if (real == NULL) return EAGAIN; /* no libc pthread_create: cannot happen with glibc */
    if (!ready) {
        /* Created while threadguard initialises (from a signal handler or
         * another thread): started as it would be without us, and counted
         * among the threads not seen created. */
        atomic_fetch_add_explicit(&tg_started_during_init, 1, memory_order_relaxed);
        return real(thread, attr, routine, arg);
    }

    unsigned slot = tg_creator_slot(caller);
    struct tg_counters *lib = &tg_libs[slot].c;
    struct start_record *record = claim_record();
    if (record == NULL) {
        /* No record and no memory to map more: start the thread uncounted
         * rather than fail it, and say so in the report. */
        atomic_fetch_add_explicit(&tg_started_uncounted, 1, memory_order_relaxed);
        return call_real(real, slot, thread, attr, routine, arg);
    }
    record->routine = routine;
    record->arg = arg;
    record->slot = slot;
    record->generation = atomic_load_explicit(&tg_fork_generation, memory_order_relaxed);

    long long live_total, live_lib;
    count_start(slot, &live_total, &live_lib);
    if (over_budget(slot, live_total)) {
        count_exit(slot);
        release_record(record);
        return EAGAIN;
    }
    int rc = call_real(real, slot, thread, attr, trampoline, record);
    if (rc != 0) {
        count_exit(slot);
        release_record(record);
        long long failed = atomic_fetch_add_explicit(&lib->failed, 1, memory_order_relaxed) + 1;
        atomic_fetch_add_explicit(&tg_total.failed, 1, memory_order_relaxed);
        atomic_store_explicit(&lib->last_errno, rc, memory_order_relaxed);
        atomic_store_explicit(&tg_total.last_errno, rc, memory_order_relaxed);
        tg_record_failure(slot, rc, attr,
                          atomic_load_explicit(&lib->created, memory_order_relaxed) + failed);
        return rc;
    }
    atomic_fetch_add_explicit(&lib->created, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&tg_total.created, 1, memory_order_relaxed);
    /* A promised pool worker started: it now counts as a task, not as a
     * promise in the per-user ledger. */
    if (atomic_load_explicit(&tg_libs[slot].promised, memory_order_relaxed) > 0)
        tg_ledger_update();
    tg_raise_peak(&lib->peak, live_lib);
    tg_raise_peak(&tg_total.peak, live_total);
    return 0;
}

THREADGUARD_API int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                                   void *(*routine)(void *), void *arg) {
    return create_counted(__builtin_return_address(0), thread, attr, routine, arg);
}

/* This copy's own pthread_create: taking the address of the exported name
 * would go through the GOT and give whichever definition the process uses. */
extern __typeof__(pthread_create) tg_own_pthread_create
    __attribute__((alias("pthread_create"), visibility("hidden"), nothrow));

void tg_use_process_create(void) {
    void *process_create = dlsym(RTLD_DEFAULT, "pthread_create");
    if (process_create != NULL && process_create != (void *)tg_own_pthread_create)
        atomic_store_explicit(&real_create, (create_fn)process_create, memory_order_release);
}

struct scope_order {
    uintptr_t self;
    int self_seen;
    int before_libc;
};

static int visit_object(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    struct scope_order *order = arg;
    if (info->dlpi_addr == order->self) {
        order->self_seen = 1;
        return 0;
    }
    const char *slash = strrchr(info->dlpi_name, '/');
    const char *name = slash ? slash + 1 : info->dlpi_name;
    if (strncmp(name, "libc.so", 7) == 0) {
        order->before_libc = order->self_seen;
        return 1;
    }
    return 0;
}

THREADGUARD_API int threadguard_interposing(void) {
    tg_init();
    void *process_create = dlsym(RTLD_DEFAULT, "pthread_create");
    if (process_create == (void *)tg_own_pthread_create) return 1;
    /* An interceptor (a sanitizer runtime) may come first and call ours
     * through RTLD_NEXT: what matters is that we come before libc. */
    Dl_info info;
    if (dladdr((void *)tg_own_pthread_create, &info) == 0) return 0;
    struct scope_order order = {(uintptr_t)0, 0, 0};
    struct link_map *map = NULL;
    if (dladdr1((void *)tg_own_pthread_create, &info, (void **)&map, RTLD_DL_LINKMAP) == 0 ||
        map == NULL)
        return 0;
    order.self = (uintptr_t)map->l_addr;
    dl_iterate_phdr(visit_object, &order);
    return order.before_libc;
}

THREADGUARD_API const char *threadguard_version(void) { return THREADGUARD_VERSION_STRING; }
