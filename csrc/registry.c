/* The library registry: which shared object asked for each thread.
 *
 * Attribution happens in the parent, inside pthread_create, from the return
 * address.  Lookups use _dl_find_object (glibc >= 2.35, found at run time:
 * lock-free, no symbol search, no allocation) and fall back to
 * threadguard's own address-to-object table (objects.c), also lock-free.
 * When the caller is a system library (std::thread in libstdc++, libc
 * itself) the stack is unwound to the first frame outside them, so torch's
 * std::thread pools count as torch.
 * Slots are claimed with a compare-and-swap on their base address, so two
 * threads meeting a new library at once agree on one slot.
 *
 * The unwinder comes from the libgcc_s already in the process rather than
 * from a link-time dependency: loading libgcc_s into every guarded process
 * cost about 0.2 ms of start-up, and every caller that needs unwinding
 * (libstdc++, sanitizer runtimes) depends on libgcc_s itself.
 *
 * Layer: state.  Calls glibc.c, objects.c, procfs.c and policy.c (the leak
 * rule). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <string.h>
#include <time.h>
#include <unwind.h>

#include "registry.h"

#include "glibc.h"
#include "objects.h"
#include "policy.h"
#include "procfs.h"

struct tg_counter_block tg_private_block;
struct tg_counter_block *tg_block = &tg_private_block;

static char exe_path[512];
/* Load address of the object that defines the Python C API (libpython, or
 * the python executable when libpython is linked in statically). */
static uintptr_t python_base;

/* base: the object's load address; path: its file name ("" = the
 * executable).  Returns 0 when found.  may_lock: the caller is on the
 * creation path, never in a signal handler, and may ask the loader (under
 * its lock) to bring the table up to date; getenv passes 0 and is answered
 * lock-free or not at all (then it answers as glibc would). */
static int find_object(const void *pc, uintptr_t *base, const char **path, int may_lock) {
    tg_find_object_fn find = __atomic_load_n(&tg_glibc.find_object, __ATOMIC_ACQUIRE);
    if (find != NULL) {
        /* glibc >= 2.35: lock-free, and it knows an object from the moment
         * dlopen maps it. */
        struct tg_dl_find_object found;
        if (find((void *)pc, &found) != 0) return -1;
        *base = (uintptr_t)found.map_start;
        *path = found.link_map ? found.link_map->l_name : "";
        return 0;
    }
    /* Older glibc: threadguard's own table (objects.c). */
    if (may_lock && tg_objects_stale()) tg_objects_refresh();
    if (tg_objects_find(pc, base, path) == 0) return 0;
    /* Not in it: an object whose constructor runs inside dlopen, or a
     * table not built yet (before initialisation's second step). */
    return tg_objects_walk(pc, base, path);
}

/* The main program's link map has an empty name. */
static int is_main_program(const char *path) { return path[0] == '\0'; }

static int classify(uintptr_t base, const char *path) {
    if (python_base != 0 && base == python_base) return TG_KIND_PYTHON;
    const char *name = is_main_program(path) ? tg_base_name(exe_path) : tg_base_name(path);
    if (tg_starts_with(name, "libthreadguard")) return TG_KIND_SELF;
    if (strstr(name, "libpython")) return TG_KIND_PYTHON;
    if (strstr(name, "openblas")) return TG_KIND_OPENBLAS;
    if (tg_starts_with(name, "libgomp") || tg_starts_with(name, "libiomp") ||
        tg_starts_with(name, "libomp"))
        return TG_KIND_OPENMP;
    if (tg_starts_with(name, "libmkl")) return TG_KIND_MKL;
    if (tg_starts_with(name, "libblis")) return TG_KIND_BLIS;
    if (tg_starts_with(name, "libtorch") || tg_starts_with(name, "libc10")) return TG_KIND_TORCH;
    if (tg_starts_with(name, "libcuda") || tg_starts_with(name, "libnvidia") ||
        tg_starts_with(name, "libnccl") || tg_starts_with(name, "libcupti"))
        return TG_KIND_CUDA;
    if (tg_starts_with(name, "libc.so") || tg_starts_with(name, "libc-") ||
        tg_starts_with(name, "libpthread") || tg_starts_with(name, "libstdc++") ||
        tg_starts_with(name, "libc++") || tg_starts_with(name, "libgcc_s") ||
        tg_starts_with(name, "ld-linux") || tg_is_sanitizer_runtime(name))
        return TG_KIND_SYSTEM;
    if (is_main_program(path)) return TG_KIND_MAIN;
    return TG_KIND_OTHER;
}

const char *tg_kind_name(int kind) {
    switch (kind) {
    case TG_KIND_PYTHON: return "python";
    case TG_KIND_OPENBLAS: return "openblas";
    case TG_KIND_OPENMP: return "openmp";
    case TG_KIND_MKL: return "mkl";
    case TG_KIND_TORCH: return "torch";
    case TG_KIND_BLIS: return "blis";
    case TG_KIND_CUDA: return "cuda";
    case TG_KIND_MAIN: return "main";
    case TG_KIND_SYSTEM: return "system";
    case TG_KIND_SELF: return "threadguard";
    case TG_KIND_OTHER: return "other";
    default: return "unknown";
    }
}

static void copy_string(char *dst, size_t size, const char *src) {
    size_t n = strlen(src);
    if (n >= size) n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void fill_slot(struct tg_lib *lib, uintptr_t base, const char *path) {
    const char *full = is_main_program(path) ? exe_path : path;
    copy_string(lib->path, sizeof lib->path, full);
    copy_string(lib->name, sizeof lib->name, tg_base_name(full));
    lib->kind = classify(base, path);
    atomic_store_explicit(&lib->ready, 1, memory_order_release);
}

/* A slot's object is known by its load address and its path: after
 * dlclose another object may be loaded at the same address, and it gets a
 * row of its own (its own name, kind and pool decision), not the old one's.
 * A slot being filled by another thread is taken as a match. */
static int same_object(const struct tg_lib *lib, const char *path) {
    if (!atomic_load_explicit(&lib->ready, memory_order_acquire)) return 1;
    const char *full = is_main_program(path) ? exe_path : path;
    return strncmp(lib->path, full, sizeof lib->path - 1) == 0;
}

static unsigned slot_for(uintptr_t base, const char *path) {
    for (unsigned i = 1; i < TG_MAX_LIBS; i++) {
        uintptr_t current = atomic_load_explicit(&tg_libs[i].base, memory_order_acquire);
        if (current == base && same_object(&tg_libs[i], path)) return i;
        if (current != 0) continue;
        uintptr_t expected = 0;
        if (atomic_compare_exchange_strong_explicit(&tg_libs[i].base, &expected, base,
                                                    memory_order_acq_rel, memory_order_acquire)) {
            fill_slot(&tg_libs[i], base, path);
            return i;
        }
        /* another thread claimed it for us */
        if (expected == base && same_object(&tg_libs[i], path)) return i;
    }
    /* Full: counted under (unknown), and the report says how many. */
    atomic_fetch_add_explicit(&tg_registry_overflow, 1, memory_order_relaxed);
    return TG_UNKNOWN_SLOT;
}

static int kind_of(unsigned slot, uintptr_t base, const char *path) {
    if (slot != TG_UNKNOWN_SLOT && atomic_load_explicit(&tg_libs[slot].ready, memory_order_acquire))
        return tg_libs[slot].kind;
    return classify(base, path);
}

typedef _Unwind_Reason_Code (*backtrace_fn)(_Unwind_Trace_Fn, void *);
typedef _Unwind_Ptr (*get_ip_fn)(struct _Unwind_Context *);

static _Atomic(backtrace_fn) unwind_backtrace;
static _Atomic(get_ip_fn) unwind_get_ip;

/* Take the unwinder from the libgcc_s already loaded.  RTLD_NOLOAD finds it
 * by soname even when it came in RTLD_LOCAL (ctypes, torch), where
 * dlsym(RTLD_DEFAULT) would not; a caller in libstdc++ means it is there.
 * This runs once per process; the reference it takes is never dropped, so
 * the pointers stay valid. */
static int find_libgcc_s(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    const char *name = info->dlpi_name, *slash = name ? strrchr(name, '/') : NULL;
    if (name == NULL || !tg_starts_with(slash ? slash + 1 : name, "libgcc_s.so")) return 0;
    *(const char **)arg = name;
    return 1;
}

static int resolve_unwinder(void) {
    if (atomic_load_explicit(&unwind_backtrace, memory_order_acquire) != NULL) return 1;
    /* Only thread creation unwinds (getenv never does: a signal handler's
     * tail call into getenv would otherwise dlopen here each time), and
     * libgcc_s may arrive later (with libstdc++), so look again each time.
     * Looked for in the loaded objects first, by file name: dlopen of a
     * soname that is not loaded searches the disk (ld.so.cache, the file)
     * and starts malloc for dlerror, in every process that has none. */
    const char *loaded = NULL;
    dl_iterate_phdr(find_libgcc_s, &loaded);
    if (loaded == NULL) return 0;
    void *gcc_s = dlopen(loaded, RTLD_LAZY | RTLD_NOLOAD);
    if (gcc_s == NULL) return 0;
    get_ip_fn ip = (get_ip_fn)dlsym(gcc_s, "_Unwind_GetIP");
    backtrace_fn bt = (backtrace_fn)dlsym(gcc_s, "_Unwind_Backtrace");
    if (ip == NULL || bt == NULL) return 0;
    atomic_store_explicit(&unwind_get_ip, ip, memory_order_relaxed);
    atomic_store_explicit(&unwind_backtrace, bt, memory_order_release);
    return 1;
}

struct walk {
    int depth;
    int found;
    uintptr_t base;
    const char *path;
};

static _Unwind_Reason_Code walk_frame(struct _Unwind_Context *context, void *arg) {
    struct walk *w = arg;
    if (++w->depth > 64) return _URC_END_OF_STACK;
    uintptr_t ip = atomic_load_explicit(&unwind_get_ip, memory_order_relaxed)(context);
    if (ip == 0) return _URC_NO_REASON;
    uintptr_t base;
    const char *path;
    /* ip - 1: the return address may be one past the end of the call's object. */
    if (find_object((void *)(ip - 1), &base, &path, 1) != 0) return _URC_NO_REASON;
    int kind = classify(base, path);
    if (kind == TG_KIND_SYSTEM || kind == TG_KIND_SELF) return _URC_NO_REASON;
    w->found = 1;
    w->base = base;
    w->path = path;
    return _URC_END_OF_STACK;
}

unsigned tg_creator_slot(void *return_address) {
    uintptr_t base;
    const char *path;
    if (return_address == NULL || find_object((char *)return_address - 1, &base, &path, 1) != 0)
        return TG_UNKNOWN_SLOT;
    unsigned slot = slot_for(base, path);
    int kind = kind_of(slot, base, path);
    if (kind != TG_KIND_SYSTEM && kind != TG_KIND_SELF) return slot;
    struct walk w = {0, 0, 0, NULL};
    if (!resolve_unwinder()) return slot;
    atomic_load_explicit(&unwind_backtrace, memory_order_acquire)(walk_frame, &w);
    return w.found ? slot_for(w.base, w.path) : slot;
}

unsigned tg_caller_slot(void *return_address) {
    uintptr_t base;
    const char *path;
    /* - 1: a return address may be one past the end of the caller's object. */
    if (return_address == NULL || find_object((char *)return_address - 1, &base, &path, 0) != 0)
        return TG_UNKNOWN_SLOT;
    return slot_for(base, path);
}

int tg_caller_kind(void *return_address) {
    uintptr_t base;
    const char *path;
    if (return_address == NULL || find_object((char *)return_address - 1, &base, &path, 0) != 0)
        return TG_KIND_UNKNOWN;
    return classify(base, path);
}

const char *tg_program_path(void) { return exe_path; }

int tg_runs_python(void) { return python_base != 0; }

unsigned tg_slot_for_address(const void *addr) {
    uintptr_t base;
    const char *path;
    if (addr == NULL || find_object(addr, &base, &path, 1) != 0) return TG_UNKNOWN_SLOT;
    return slot_for(base, path);
}

void tg_registry_init(void) {
    tg_exe_path(exe_path, sizeof exe_path);
    copy_string(tg_sites[TG_OTHER_SITES].where, sizeof tg_sites[0].where, "(other sites)");
    atomic_store_explicit(&tg_sites[TG_OTHER_SITES].ready, 1, memory_order_release);
    copy_string(tg_libs[TG_UNKNOWN_SLOT].name, sizeof tg_libs[0].name, "(unknown)");
    tg_libs[TG_UNKNOWN_SLOT].kind = TG_KIND_UNKNOWN;
    atomic_store_explicit(&tg_libs[TG_UNKNOWN_SLOT].ready, 1, memory_order_release);
}

void tg_registry_complete(void) {
    tg_objects_refresh();
    /* dlsym may allocate for dlerror(): here, outside any signal handler,
     * never on the create path. */
    void *py = dlsym(RTLD_DEFAULT, "Py_Initialize");
    const char *path;
    uintptr_t base;
    if (py != NULL && find_object(py, &base, &path, 1) == 0) {
        python_base = base;
        /* A row the program's own getenv made before this knew Python. */
        for (unsigned i = 1; i < TG_MAX_LIBS; i++)
            if (atomic_load_explicit(&tg_libs[i].base, memory_order_acquire) == base &&
                atomic_load_explicit(&tg_libs[i].ready, memory_order_acquire))
                tg_libs[i].kind = TG_KIND_PYTHON;
    }
    /* Where libgcc_s is already loaded (C++ programs) the create path then
     * never has to look it up. */
    resolve_unwinder();
}

/* ---- Python start sites ---------------------------------------------- */

/* FNV-1a; never 0, which marks a free row. */
static unsigned long long site_key(const char *where) {
    unsigned long long h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)where; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h ? h : 1;
}

static int same_site(const struct tg_site *site, const char *where) {
    if (!atomic_load_explicit(&site->ready, memory_order_acquire)) return 1; /* being filled */
    return strncmp(site->where, where, sizeof site->where - 1) == 0;
}

unsigned tg_site_for(const char *where) {
    unsigned long long key = site_key(where);
    for (unsigned i = 1; i < TG_MAX_SITES; i++) {
        struct tg_site *site = &tg_sites[i];
        unsigned long long current = atomic_load_explicit(&site->key, memory_order_acquire);
        if (current == key && same_site(site, where)) return i;
        if (current != 0) continue;
        unsigned long long expected = 0;
        if (atomic_compare_exchange_strong_explicit(&site->key, &expected, key,
                                                    memory_order_acq_rel, memory_order_acquire)) {
            copy_string(site->where, sizeof site->where, where);
            atomic_store_explicit(&site->ready, 1, memory_order_release);
            return i;
        }
        if (expected == key && same_site(site, where)) return i;
    }
    return TG_OTHER_SITES;
}

/* ---- growth ------------------------------------------------------------ */

static long long monotonic_ms(void) {
    struct timespec ts;
    /* The coarse clock: read from the vDSO, a few nanoseconds, and its
     * resolution (a few ms) is finer than the quiet gap. */
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + 1; /* never 0 */
}

void tg_growth_rise(struct tg_growth *g, long long previous_high, long long created) {
    long long now = monotonic_ms();
    long long last = atomic_exchange_explicit(&g->last_rise_ms, now, memory_order_relaxed);
    if (last != 0 && now - last < TG_GROWTH_QUIET_MS) return; /* the same step goes on */
    long long steps = atomic_fetch_add_explicit(&g->steps, 1, memory_order_relaxed) + 1;
    if (steps == 2) {
        /* The first step ended at the high this rise starts from. */
        atomic_store_explicit(&g->settled, previous_high, memory_order_relaxed);
        atomic_store_explicit(&g->created_settled, created - 1, memory_order_relaxed);
    }
}

int tg_growth_is_leak(const struct tg_growth *g, const struct tg_counters *c, long long bound) {
    return tg_growth_leaking(atomic_load_explicit(&g->steps, memory_order_relaxed),
                             atomic_load_explicit(&g->settled, memory_order_relaxed),
                             atomic_load_explicit(&c->live, memory_order_relaxed),
                             atomic_load_explicit(&c->created, memory_order_relaxed),
                             atomic_load_explicit(&g->created_settled, memory_order_relaxed),
                             bound);
}

long long tg_lib_pool_bound(const struct tg_counter_block *b, const struct tg_lib *lib) {
    switch (lib->kind) {
    case TG_KIND_OPENBLAS:
    case TG_KIND_OPENMP:
    case TG_KIND_MKL:
    case TG_KIND_BLIS:
    case TG_KIND_TORCH: break;
    default: return 0;
    }
    long long recorded = atomic_load_explicit(&lib->pool_size, memory_order_relaxed);
    return recorded > b->cpus_possible ? recorded : b->cpus_possible;
}

static void consider(struct tg_leak *out, int is_site, unsigned row, const struct tg_growth *g,
                     const struct tg_counters *c, long long bound) {
    if (!tg_growth_is_leak(g, c, bound)) return;
    long long live = atomic_load_explicit(&c->live, memory_order_relaxed);
    if (out->found && live <= out->live) return;
    *out = (struct tg_leak){1,
                            is_site,
                            row,
                            live,
                            atomic_load_explicit(&c->created, memory_order_relaxed),
                            atomic_load_explicit(&g->settled, memory_order_relaxed),
                            atomic_load_explicit(&g->steps, memory_order_relaxed)};
}

void tg_find_leak(struct tg_leak *out) {
    *out = (struct tg_leak){0, 0, 0, 0, 0, 0, 0};
    for (unsigned i = 0; i < TG_MAX_LIBS && !tg_lib_past_end(i); i++)
        if (tg_libs[i].kind != TG_KIND_PYTHON)
            consider(out, 0, i, &tg_libs[i].growth, &tg_libs[i].c,
                     tg_lib_pool_bound(tg_block, &tg_libs[i]));
    /* Python's threads are named by their start site rather than by
     * libpython, when a site leaks; libpython otherwise. */
    struct tg_leak site = {0, 0, 0, 0, 0, 0, 0};
    for (unsigned i = 0; i < TG_MAX_SITES; i++) {
        if (i != TG_OTHER_SITES &&
            atomic_load_explicit(&tg_sites[i].key, memory_order_acquire) == 0)
            break;
        consider(&site, 1, i, &tg_sites[i].growth, &tg_sites[i].c, 0);
    }
    if (!site.found)
        for (unsigned i = 0; i < TG_MAX_LIBS && !tg_lib_past_end(i); i++)
            if (tg_libs[i].kind == TG_KIND_PYTHON)
                consider(&site, 0, i, &tg_libs[i].growth, &tg_libs[i].c, 0);
    if (site.found && (!out->found || site.live > out->live)) *out = site;
}

static void reset_growth(struct tg_growth *g) {
    atomic_store_explicit(&g->steps, 0, memory_order_relaxed);
    atomic_store_explicit(&g->last_rise_ms, 0, memory_order_relaxed);
    atomic_store_explicit(&g->settled, 0, memory_order_relaxed);
    atomic_store_explicit(&g->created_settled, 0, memory_order_relaxed);
}

static void reset(struct tg_counters *c) {
    atomic_store_explicit(&c->created, 0, memory_order_relaxed);
    atomic_store_explicit(&c->live, 0, memory_order_relaxed);
    atomic_store_explicit(&c->peak, 0, memory_order_relaxed);
    atomic_store_explicit(&c->failed, 0, memory_order_relaxed);
    atomic_store_explicit(&c->denied, 0, memory_order_relaxed);
    atomic_store_explicit(&c->last_errno, 0, memory_order_relaxed);
}

void tg_registry_reset_counters(void) {
    /* Only rows in use: a row written is a page of the published file. */
    for (unsigned i = 0; i < TG_MAX_LIBS && !tg_lib_past_end(i); i++) {
        reset(&tg_libs[i].c);
        reset_growth(&tg_libs[i].growth);
    }
    for (unsigned i = 0; i < TG_MAX_SITES; i++) {
        if (i != TG_OTHER_SITES &&
            atomic_load_explicit(&tg_sites[i].key, memory_order_relaxed) == 0)
            break; /* rows fill in order */
        reset(&tg_sites[i].c);
        reset_growth(&tg_sites[i].growth);
    }
    reset(&tg_total);
}
