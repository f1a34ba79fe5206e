/* registry.c: which shared object asked for each thread, the counters per
 * library and per Python start site, and how they grew (state; calls
 * glibc.c, procfs.c, policy.c). */
#ifndef THREADGUARD_REGISTRY_H
#define THREADGUARD_REGISTRY_H

#include "common.h"

/* Fixed capacity: the create path never allocates.  Slot 0 collects
 * creators that cannot be resolved and every library past the capacity. */
#define TG_MAX_LIBS 128
#define TG_UNKNOWN_SLOT 0

enum tg_kind {
    TG_KIND_UNKNOWN = 0,
    TG_KIND_PYTHON,
    TG_KIND_OPENBLAS,
    TG_KIND_OPENMP,
    TG_KIND_MKL,
    TG_KIND_TORCH,
    TG_KIND_BLIS,
    TG_KIND_CUDA, /* the CUDA driver and runtime, NCCL, CUPTI */
    TG_KIND_MAIN,
    TG_KIND_SYSTEM, /* libc, libstdc++, libgcc_s: attributed to the caller above them */
    TG_KIND_SELF,   /* threadguard itself */
    TG_KIND_OTHER
};

struct tg_counters {
    _Atomic long long created;
    _Atomic long long live;
    _Atomic long long peak;
    _Atomic long long failed;
    _Atomic long long denied;
    _Atomic int last_errno;
};

/* How a row's live threads grew (the leak rule in policy.h reads it). */
struct tg_growth {
    _Atomic long long steps;           /* rises to a new high, told apart by a quiet gap */
    _Atomic long long last_rise_ms;    /* when the high last rose (monotonic, 0: never) */
    _Atomic long long settled;         /* the high its first step reached */
    _Atomic long long created_settled; /* threads created by then */
};

struct tg_lib {
    _Atomic uintptr_t base; /* load address (map start); 0 = free slot */
    _Atomic int ready;      /* 1 once path/name/kind are written */
    int kind;
    char path[512];
    char name[128];
    struct tg_counters c;
    struct tg_growth growth;
    /* The largest pool size recorded for it (a variable read, a setter
     * call; 0: none): the leak rule's bound for a pool library. */
    _Atomic long long pool_size;
    /* Pool workers threadguard sized this library for and that it has not
     * started yet are promised: later pools must leave room for them. */
    _Atomic long long promised;
    _Atomic int warned; /* over budget, warned once */
    /* The stack threadguard gives this pool's workers (0: glibc's): set only
     * when RLIMIT_AS leaves no room for the pool at the default stack. */
    _Atomic long long pool_stack;
};

/* Python threads by the Python code that started them (a Thread.start or
 * executor submit site), which the Python package names through
 * threadguard_python_site().  Row 0 collects the sites past the capacity. */
#define TG_MAX_SITES 64
#define TG_OTHER_SITES 0

struct tg_site {
    _Atomic unsigned long long key; /* hash of where; 0 = free (row 0: always in use) */
    _Atomic int ready;              /* 1 once where is written */
    char where[256];                /* "path:line in function (via)" */
    struct tg_counters c;
    struct tg_growth growth;
};

#define TG_MAX_DECISIONS 256

/* One pool-size decision (shaping.c records it).  No pointers: the record
 * lives in the counter block, which readers in other processes copy. */
struct tg_decision {
    _Atomic int ready;
    unsigned slot;       /* the library that asked */
    char library[64];    /* its name */
    char variable[40];   /* OPENBLAS_NUM_THREADS, omp_set_num_threads(), ... */
    long long value;     /* what it got; -1 = passed through unchanged */
    long long requested; /* the user's value, -1 = none */
    int source;          /* enum tg_source */
    int lowered;         /* the value asked for was lowered */
    char lowered_by[40]; /* THREADGUARD_POOL_THREADS or the headroom's limit; "" */
    char caller[64];     /* the library that made the call (a setter's call site) */
    long long free;      /* headroom used */
    int free_at_least;   /* free is a lower bound (the uid's tasks were not counted) */
    char limit[40];      /* the limit that gave it ("none") */
    long long cpus;
    char cpus_from[64];      /* the CPU figure's source ("4 workers of pid 1234") */
    _Atomic long long count; /* how many times this same decision was made */
};

/* Everything the create path and pool sizing count, in one block without
 * pointers.  It starts in private storage; publish.c moves it into the
 * process's shared file at initialisation, so that `threadguard top` reads
 * it live while counting costs nothing more than a counter in the process's
 * own memory. */
struct tg_counter_block {
    struct tg_counters total;
    /* What did not fit in a fixed table, or was started uncounted. */
    _Atomic long long registry_overflow; /* lookups that found the library table full */
    _Atomic long long started_during_init;
    _Atomic long long records_mapped;    /* start records mapped beyond the static ones */
    _Atomic long long started_uncounted; /* no memory for a start record */
    _Atomic long long decisions_dropped; /* distinct decisions that found the table full */
    _Atomic int decision_count;
    int pad;
    /* The CPUs of the affinity or the node's online ones, whichever is
     * more, read at initialisation: the size a pool library starts by
     * default (the leak rule's bound for it). */
    long long cpus_possible;
    struct tg_lib libs[TG_MAX_LIBS];
    struct tg_decision decisions[TG_MAX_DECISIONS];
    struct tg_site sites[TG_MAX_SITES];
};

/* The block in use: private storage until publish.c switches it (at
 * initialisation, before any thread is counted, and in a forked child). */
TG_HIDDEN extern struct tg_counter_block *tg_block;
TG_HIDDEN extern struct tg_counter_block tg_private_block;
/* The block's members under the names every counting site uses. */
#define tg_libs (tg_block->libs)
#define tg_total (tg_block->total)
#define tg_registry_overflow (tg_block->registry_overflow)
#define tg_started_during_init (tg_block->started_during_init)
#define tg_records_mapped (tg_block->records_mapped)
#define tg_started_uncounted (tg_block->started_uncounted)
#define tg_decisions_dropped (tg_block->decisions_dropped)
#define tg_decision_count (tg_block->decision_count)
#define tg_decisions (tg_block->decisions)
#define tg_sites (tg_block->sites)

/* Slots fill in order: the first free one past slot 0 ends the rows in
 * use.  Loops over the table stop there: a page of the published file
 * takes memory once read or written, and most of the table is never used. */
static inline int tg_block_past_end(const struct tg_counter_block *b, unsigned i) {
    return i != TG_UNKNOWN_SLOT &&
           atomic_load_explicit(&b->libs[i].base, memory_order_acquire) == 0;
}
#define tg_lib_past_end(i) tg_block_past_end(tg_block, (i))

/* Initialisation's first step (async-signal-safe: the program's path and
 * the fixed rows) and its second (the object table, where Python is, the
 * unwinder: the loader's lock, and dlsym, which may allocate). */
TG_HIDDEN void tg_registry_init(void);
TG_HIDDEN void tg_registry_complete(void);
/* The slot of the library that asked for a thread, given the return address
 * of the pthread_create call.  Walks past system libraries (std::thread). */
TG_HIDDEN unsigned tg_creator_slot(void *return_address);
TG_HIDDEN const char *tg_kind_name(int kind);
/* The slot of the object holding the return address itself, without
 * unwinding past system libraries (never loads anything). */
TG_HIDDEN unsigned tg_caller_slot(void *return_address);
/* The slot of the library holding addr (claimed if new). */
TG_HIDDEN unsigned tg_slot_for_address(const void *addr);
/* The row of a Python start site by its text (claimed if new; TG_OTHER_SITES
 * when the table is full). */
TG_HIDDEN unsigned tg_site_for(const char *where);
/* A row's high rose from previous_high, with `created` threads created so
 * far: a new growth step when the last rise was more than the quiet gap
 * ago. */
TG_HIDDEN void tg_growth_rise(struct tg_growth *g, long long previous_high, long long created);
/* Whether a row's growth is a leak now (policy.h's rule); bound: the
 * size its threads may reach without one (tg_lib_pool_bound; 0 for a
 * Python start site). */
TG_HIDDEN int tg_growth_is_leak(const struct tg_growth *g, const struct tg_counters *c,
                                long long bound);
/* A pool library's bound (OpenBLAS, OpenMP, MKL, BLIS, torch): the larger
 * of the CPUs it may see and the largest size recorded for it; 0 for any
 * other library. */
TG_HIDDEN long long tg_lib_pool_bound(const struct tg_counter_block *b, const struct tg_lib *lib);
/* A leak seen at one moment: the leaking row (a library or a Python start
 * site) with the most live threads. */
struct tg_leak {
    int found;
    int is_site;
    unsigned row; /* its library slot or site row */
    long long live, created, settled, steps;
};
/* The leak under way now, if any (found 0: none).  Never allocates. */
TG_HIDDEN void tg_find_leak(struct tg_leak *out);
/* Zero every counter (after fork); library identities are kept. */
TG_HIDDEN void tg_registry_reset_counters(void);
/* The program's path, read at initialisation (after the main thread calls
 * pthread_exit, /proc/self/exe can no longer be read). */
TG_HIDDEN const char *tg_program_path(void);
/* The kind of the object that holds return_address, without a row for it
 * and without initialisation (lock-free): getenv asks it first, so that a
 * program reading OMP_NUM_THREADS itself (GNU sort) starts nothing. */
TG_HIDDEN int tg_caller_kind(void *return_address);
/* Whether the process runs Python (known from initialisation's second
 * step on). */
TG_HIDDEN int tg_runs_python(void);

#endif
