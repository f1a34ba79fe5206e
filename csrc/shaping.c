/* Pool shaping: every pool is sized before it starts.
 *
 * The entry points that ask are in setters.c (getenv, answered "just in
 * time" when each library reads its *_NUM_THREADS, and the pool-size
 * setters); this file decides: the program's value when it fits, else
 * THREADGUARD_POOL_THREADS or the CPU allocation, lowered to what the
 * headroom leaves (less a reserve and the workers promised to other
 * pools), under the per-user ledger's lock where a task limit is shared.
 * Each decision is recorded for the report.  At start it also applies
 * THREADGUARD_STACK, THREADGUARD_ARENAS and THREADGUARD_NPROC, and sizes
 * numexpr through the environment.
 *
 * Layer: policy.  Calls allocation.c, limits.c, ledger.c, publish.c, registry.c, glibc.c,
 * config.c and error.c. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "shaping.h"

#include "config.h"
#include "error.h"
#include "glibc.h"
#include "ledger.h"
#include "policy.h"
#include "publish.h"
#include "registry.h"

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
    for (unsigned i = 0; i < TG_MAX_LIBS && !tg_lib_past_end(i); i++) {
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

/* The fit for a pool that wants `want` (workers + caller).  The headroom
 * bounds the uid's tasks from above (limits.c): the bound is tightened, to
 * a count at last, only while it is what keeps the pool from fitting - a
 * decision that fits under the bound is the one the count would give. */
static long long settled_fit(unsigned slot, int kind, struct tg_headroom *h, long long want) {
    long long fit = pool_fit(slot, kind, h);
    while (fit >= 0 && fit < want && tg_headroom_refine(h)) fit = pool_fit(slot, kind, h);
    return fit;
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

/* One pool-size decision before it is recorded. */
struct sizing {
    long long value;        /* what the library gets */
    long long requested;    /* what was asked (the program's value, a setter's n); -1 none */
    int source;             /* enum tg_source */
    const char *lowered_by; /* NULL when value is what was asked */
    unsigned caller;        /* the slot of the library that made the call */
};

/* The operator's ceiling, THREADGUARD_POOL_THREADS (or limit()), then the
 * headroom: *s is lowered to the first that is below it. */
static const char CEILING[] = "THREADGUARD_POOL_THREADS";

/* What a pool of `value` asks of the headroom: the ceiling comes first. */
static long long wanted(long long value, long long ceiling) {
    return ceiling > 0 && value > ceiling ? ceiling : value;
}

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
           strncmp(d->lowered_by, s->lowered_by ? s->lowered_by : "", sizeof d->lowered_by - 1) ==
               0 &&
           strncmp(d->caller, library_name(s->caller), sizeof d->caller - 1) == 0 &&
           strncmp(d->variable, variable, sizeof d->variable - 1) == 0;
}

/* One row per distinct decision, with a count: a program that calls
 * omp_set_num_threads(2) in a loop fills nothing.  Returns the row, or -1
 * when the table is full (counted in tg_decisions_dropped). */
static int record(unsigned slot, const char *variable, const struct sizing *s,
                  const struct tg_headroom *h) {
    /* The leak rule's bound for this library's pool. */
    long long size = s->value > s->requested ? s->value : s->requested;
    if (size > 0) tg_raise_peak(&tg_libs[slot].pool_size, size);
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
    snprintf(d->lowered_by, sizeof d->lowered_by, "%s", s->lowered_by ? s->lowered_by : "");
    d->free = h->free;
    d->free_at_least = tg_headroom_free_at_least(h);
    snprintf(d->limit, sizeof d->limit, "%s", h->limit);
    d->cpus = h->cpus;
    snprintf(d->cpus_from, sizeof d->cpus_from, "%s", h->cpus_from);
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
        tg_warn("debug: %s=%lld for %s (%lld CPU%s from %s; %lld thread%s free under %s)", variable,
                s->value, library_name(slot), h->cpus, tg_s(h->cpus), h->cpus_from, h->free,
                tg_s(h->free), h->limit);
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
    long long small_fit = settled_fit(slot, kind, &small, want);
    if (small_fit <= *fit) return;
    long long before = *fit;
    *h = small;
    *fit = small_fit;
    atomic_store_explicit(&tg_libs[slot].pool_stack, POOL_STACK, memory_order_relaxed);
    atomic_store_explicit(&tg_applied.pool_stack, POOL_STACK, memory_order_relaxed);
    tg_publish_changed(); /* the published settings show it */
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

static char *size_pool_locked(unsigned slot, int kind, const char *variable, const char *user_text,
                              const char *fallback);

char *tg_size_pool(unsigned slot, int kind, const char *variable, const char *user_text,
                   const char *fallback) {
    int locked = sizing_begins();
    char *result = size_pool_locked(slot, kind, variable, user_text, fallback);
    sizing_ends(locked);
    return result;
}

static char *size_pool_locked(unsigned slot, int kind, const char *variable, const char *user_text,
                              const char *fallback) {
    struct tg_headroom h;
    tg_headroom_measure(&h, kind);
    /* The program's own value, then THREADGUARD_POOL_THREADS (the size of
     * every pool the program leaves unsized, and the ceiling of those it
     * sizes), then the CPU allocation; lowered to fit the headroom. */
    long long ceiling = tg_pool_threads();
    const char *given = user_text;
    /* torchrun's forced OMP_NUM_THREADS=1 is not the user's: sized as unset. */
    int forced = tg_launcher_forced(variable, user_text);
    struct sizing s = {forced ? -1 : user_pool_size(user_text), -1, TG_SOURCE_USER, NULL, slot};
    if (s.value < 0 && fallback) {
        const char *other = tg_environ_get(fallback);
        if (tg_launcher_forced(fallback, other))
            forced = 1;
        else
            s.value = user_pool_size(given = other);
    }
    if (s.value < 0) {
        s.source = TG_SOURCE_THREADGUARD;
        s.value = ceiling > 0 ? ceiling : h.cpus;
    } else {
        s.requested = s.value;
    }
    long long fit = settled_fit(slot, kind, &h, wanted(s.value, ceiling));
    if (!tg_config.observe) shrink_pool_stack(slot, kind, s.value, &h, &fit);
    lower_to_fit(&s, fit, &h);
    char *result;
    if (s.source == TG_SOURCE_THREADGUARD && ceiling < 0 && s.value >= h.cpus_affinity &&
        h.cpus_affinity > 0) {
        /* The library's own default (at most the CPUs it sees) fits. */
        s.source = TG_SOURCE_DEFAULT;
        s.value = h.cpus_affinity;
        s.lowered_by = NULL;
        result = forced ? answer(s.value) : (char *)user_text;
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

/* A pool a forked child inherited, configured for `current` threads in the
 * parent: what it gets in the child, sized as a pool the program leaves
 * unsized would be now (the program's own variable stands where it fits),
 * never more than it had.  Recorded when it changes. */
long long tg_size_inherited(unsigned slot, int kind, const char *variable, const char *label,
                            const char *fallback, long long current) {
    int locked = sizing_begins();
    struct tg_headroom h;
    tg_headroom_measure(&h, kind);
    long long ceiling = tg_pool_threads();
    struct sizing s = {user_pool_size(tg_environ_get(variable)), -1, TG_SOURCE_USER, NULL, slot};
    if (s.value < 0 && fallback) s.value = user_pool_size(tg_environ_get(fallback));
    if (s.value < 0) {
        s.source = TG_SOURCE_THREADGUARD;
        s.value = ceiling > 0 ? ceiling : h.cpus;
    } else {
        s.requested = s.value;
    }
    long long want = wanted(s.value, ceiling);
    long long fit = settled_fit(slot, kind, &h, want < current ? want : current);
    lower_to_fit(&s, fit, &h);
    if (s.source != TG_SOURCE_USER) s.lowered_by = NULL;
    if (s.value > current) s.value = current;
    if (s.value < current && creates_threads(kind))
        atomic_store_explicit(&tg_libs[slot].promised, s.value - 1, memory_order_relaxed);
    sizing_ends(locked);
    if (s.value < current) {
        record(slot, label, &s, &h);
        describe(slot, label, &s, &h);
    }
    return s.value;
}

/* OMP_THREAD_LIMIT caps every thread an OpenMP runtime starts, num_threads
 * clauses included: under a finite headroom it is a safety net beneath the
 * pool size. */
char *tg_limit_openmp(unsigned slot, const char *user_text) {
    struct tg_headroom h;
    tg_headroom_measure(&h, TG_KIND_OPENMP);
    long long user = user_pool_size(user_text);
    /* The cap never cuts the pool the runtime gets (the program's value or
     * the CPUs): the uid's tasks are counted only where the bound on them
     * would; above that, a cap from the bound is a net a few tasks lower. */
    long long pool = user > h.cpus ? user : h.cpus;
    long long fit = settled_fit(slot, TG_KIND_OPENMP, &h,
                                pool > TG_MAX_POOL_THREADS ? TG_MAX_POOL_THREADS + 1 : pool);
    /* Only a limit within reach is worth a cap (threads-max alone is not). */
    if (fit < 0 || fit > TG_MAX_POOL_THREADS || (user > 0 && user <= fit)) return (char *)user_text;
    struct sizing s = {fit, user, user > 0 ? TG_SOURCE_USER : TG_SOURCE_THREADGUARD,
                       user > 0 ? h.limit : NULL, slot};
    record(slot, "OMP_THREAD_LIMIT", &s, &h);
    describe(slot, "OMP_THREAD_LIMIT", &s, &h);
    return answer(fit);
}

/* ---- pool-size setters -------------------------------------------------- */

/* A setter call a threaded runtime made on its own (libtorch_cpu calling
 * omp_set_num_threads inside at::set_num_threads or at its first parallel
 * region; libtorch_python calling it at import), as opposed to the
 * program's.  The one exception is torch's Python binding, libtorch_python,
 * calling a torch setter: that is the program's torch.set_num_threads. */
static int made_by_library(unsigned caller, int setter_kind) {
    int kind = tg_libs[caller].kind;
    if (caller == TG_UNKNOWN_SLOT || !(creates_threads(kind) || kind == TG_KIND_TORCH)) return 0;
    return !(setter_kind == TG_KIND_TORCH &&
             tg_starts_with(tg_libs[caller].name, "libtorch_python"));
}

static struct sizing setter_sizing(int n, unsigned caller, int kind) {
    struct sizing s = {n, n, made_by_library(caller, kind) ? TG_SOURCE_LIBRARY : TG_SOURCE_USER,
                       NULL, caller};
    return s;
}

/* A pool size the Python package set that it cannot put back (torch's
 * inter-op pool: torch allows one call), recorded so the report says so. */
void tg_note_unrestored(unsigned slot, const char *what, long long value, long long previous) {
    static const char BY[] = "threadguard.limit() (not restorable)";
    struct sizing s = {value, previous, TG_SOURCE_THREADGUARD, value < previous ? BY : NULL, slot};
    struct tg_headroom h;
    tg_headroom_measure(&h, TG_KIND_TORCH);
    record(slot, what, &s, &h);
}

/* Changed nothing, but recorded: `threadguard doctor -- CMD` must know
 * that the program sizes a pool itself, which no variable overrides. */
void tg_observe_setter(unsigned slot, unsigned caller, const char *function, int kind, int n) {
    struct sizing s = setter_sizing(n, caller, kind);
    record(slot, function, &s, &tg_headroom_at_start);
}

int tg_size_setter(unsigned slot, unsigned caller, const char *function, int kind, int cost, int n,
                   int *decision) {
    struct sizing s = setter_sizing(n, caller, kind);
    struct tg_headroom h;
    int locked = sizing_begins();
    tg_headroom_measure(&h, kind);
    /* n threads of `cost` tasks each (fit counts the caller once). */
    long long fit = settled_fit(slot, kind, &h, 1 + ((long long)n - 1) * cost);
    if (fit > 0) fit = 1 + (fit - 1) / cost;
    lower_to_fit(&s, fit, &h);
    int granted = (int)s.value;
    if (creates_threads(tg_libs[slot].kind))
        atomic_store_explicit(&tg_libs[slot].promised, granted - 1, memory_order_relaxed);
    sizing_ends(locked);
    *decision = record(slot, function, &s, &h);
    describe(slot, function, &s, &h);
    return granted;
}

/* ---- applied at start ---------------------------------------------------- */

/* Defined in limits.c, whose headroom they change; written here, once. */

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
        tg_warn("could not set the default thread stack to %lld bytes; threads keep %lld", bytes,
                tg_default_stack());
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
    if (arenas > 0 && mallopt(M_ARENA_MAX, (int)arenas) == 1)
        tg_applied.arenas = arenas;
    else
        tg_applied.arenas_source = TG_SOURCE_DEFAULT;
}

/* numexpr reads NUMEXPR_MAX_THREADS through Python's os.environ, which is
 * copied from the environment at start: it has to be set there. */
static void size_numexpr(void) {
    if (tg_config.observe) return;
    const char *user = tg_environ_get("NUMEXPR_MAX_THREADS");
    /* Tightened in place: the headroom at start shows the figures this
     * first decision needed. */
    struct tg_headroom *h = &tg_headroom_at_start;
    long long ceiling = tg_pool_threads();
    struct sizing s = {user_pool_size(user), -1, TG_SOURCE_USER, NULL, TG_UNKNOWN_SLOT};
    if (s.value < 0) {
        s.value = ceiling > 0 ? ceiling : h->cpus;
        s.source = TG_SOURCE_THREADGUARD;
    } else {
        s.requested = s.value;
    }
    long long fit = settled_fit(TG_UNKNOWN_SLOT, TG_KIND_OTHER, h, wanted(s.value, ceiling));
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
    /* The stack threads get now; apply_stack may change it in the second
     * step. */
    tg_applied.stack = tg_default_stack();
    tg_headroom_measure(&tg_headroom_at_start, TG_KIND_UNKNOWN);
    /* The leak rule's bound for pool libraries, from the figures just read
     * (not sysconf: _SC_NPROCESSORS_CONF opens a directory, which
     * allocates, and initialisation may run in a signal handler). */
    const struct tg_headroom *h = &tg_headroom_at_start;
    tg_block->cpus_possible =
        h->cpus_affinity > h->allocation.node_cpus ? h->cpus_affinity : h->allocation.node_cpus;
}

void tg_shaping_complete(void) {
    /* glibc's default-attribute lock, malloc's lock, the environment's
     * lock: not in a signal handler, so not in the first step. */
    apply_stack();
    apply_arenas();
    /* Measured again: the arenas capped and the stack set change what a
     * thread costs under RLIMIT_AS. */
    tg_headroom_measure(&tg_headroom_at_start, TG_KIND_UNKNOWN);
    /* Both write the environment, which every program may print: only
     * Python reads them (torchrun, numexpr), and only Python's environment
     * is changed, so that a shell, env or make under the preload shows
     * what it would bare. */
    tg_allocation_note_start(tg_interposing() && tg_runs_python());
    if (tg_runs_python()) size_numexpr();
}
