/* registry.c: which shared object asked for each thread, and the counters per
 * library (state; calls glibc.c, procfs.c). */
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

struct tg_lib {
    _Atomic uintptr_t base; /* load address (map start); 0 = free slot */
    _Atomic int ready;      /* 1 once path/name/kind are written */
    int kind;
    char path[512];
    char name[128];
    struct tg_counters c;
    /* Pool workers threadguard sized this library for and that it has not
     * started yet are promised: later pools must leave room for them. */
    _Atomic long long promised;
    _Atomic int warned; /* over budget, warned once */
    /* The stack threadguard gives this pool's workers (0: glibc's): set only
     * when RLIMIT_AS leaves no room for the pool at the default stack. */
    _Atomic long long pool_stack;
};

TG_HIDDEN extern struct tg_lib tg_libs[TG_MAX_LIBS];
TG_HIDDEN extern struct tg_counters tg_total;
/* Lookups that found the table full and fell back to (unknown). */
TG_HIDDEN extern _Atomic long long tg_registry_overflow;

TG_HIDDEN void tg_registry_init(void);
/* The slot of the library that asked for a thread, given the return address
 * of the pthread_create call.  Walks past system libraries (std::thread). */
TG_HIDDEN unsigned tg_creator_slot(void *return_address);
TG_HIDDEN const char *tg_kind_name(int kind);
/* The slot of the object holding the return address itself, without
 * unwinding past system libraries (never loads anything). */
TG_HIDDEN unsigned tg_caller_slot(void *return_address);
/* The slot of the library holding addr (claimed if new). */
TG_HIDDEN unsigned tg_slot_for_address(const void *addr);
/* Zero every counter (after fork); library identities are kept. */
TG_HIDDEN void tg_registry_reset_counters(void);
/* The program's path, read at initialisation (after the main thread calls
 * pthread_exit, /proc/self/exe can no longer be read). */
TG_HIDDEN const char *tg_program_path(void);

#endif
