/* Import mode: counting without a preload.
 *
 * When the library is opened late (import threadguard in a running
 * interpreter), its pthread_create comes after libc's in symbol lookup and
 * nobody calls it.  threadguard_import_mode() then rewrites the GOT slots
 * (JUMP_SLOT for PLT calls, GLOB_DAT for -fno-plt calls and address-taken
 * uses) that name pthread_create and dlopen in every loaded object, so:
 *
 *  - calls to pthread_create reach the counting wrapper, with the caller's
 *    return address, exactly as under a preload;
 *  - calls to dlopen reach a hook that opens the library the way the caller
 *    would have (its RUNPATH/RPATH and $ORIGIN; see open_like_caller), then
 *    patches every object the load brought in, RTLD_DEEPBIND ones included,
 *    and adopts the threads their constructors started before any patch
 *    could see them (a diff of /proc/self/task around the load).
 *
 * Pitfalls (DESIGN.md): protections come from /proc/self/maps, not from
 * PT_GNU_RELRO (glibc leaves the partial last page of RELRO writable); the
 * function called on is the resolved address from symbol lookup, never a
 * slot's old value (a lazy slot points back into the PLT); dlsym is not
 * hooked, so a pointer taken with dlsym(RTLD_DEFAULT, "pthread_create")
 * bypasses counting, which the /proc/self/task comparison shows as
 * untracked.  Nothing here runs on the create path.
 *
 * Layer: entry point.  Calls lifecycle.c (tg_init), interpose.c (the
 * wrapper's address), threads.c (adoption, the mode), glibc.c, registry.c,
 * procfs.c, config.c and error.c. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lifecycle.h"

#include "config.h"
#include "error.h"
#include "glibc.h"
#include "interpose.h"
#include "procfs.h"
#include "registry.h"
#include "report.h"
#include "threads.h"

#if defined(__x86_64__)
#define TG_R_JUMP_SLOT R_X86_64_JUMP_SLOT
#define TG_R_GLOB_DAT R_X86_64_GLOB_DAT
#define TG_GOT_SUPPORTED 1
#elif defined(__aarch64__)
#define TG_R_JUMP_SLOT R_AARCH64_JUMP_SLOT
#define TG_R_GLOB_DAT R_AARCH64_GLOB_DAT
#define TG_GOT_SUPPORTED 1
#else
#define TG_GOT_SUPPORTED 0
#endif

/* The patch tables' lock: a spin lock that records its holder's pid, so a
 * forked child, where the holding thread does not exist, takes it over
 * (a pthread mutex held by a parent thread at fork would stay locked in the
 * child forever).  The child then has no fork handler to run here. */
static _Atomic int patch_lock;

static void lock(void) {
    int self = (int)getpid(), held = 0;
    while (!atomic_compare_exchange_weak_explicit(&patch_lock, &held, self, memory_order_acquire,
                                                  memory_order_relaxed)) {
        if (held != 0 && held != self) continue; /* a parent's: retry with held as expected */
        held = 0;
        sched_yield();
    }
}

static void unlock(void) { atomic_store_explicit(&patch_lock, 0, memory_order_release); }

/* ---- page protections from /proc/self/maps -------------------------- */

/* The protection of the mapping holding addr, or -1 when unknown.  Read
 * once per patch sweep into a fixed table (torch brings ~1500 mappings). */
#define TG_MAX_MAPPINGS 8192

struct mapping {
    uintptr_t start, end;
    int prot;
};

static struct mapping mappings[TG_MAX_MAPPINGS];
static int mapping_count = -1; /* -1: not read in this sweep */

static uintptr_t parse_hex(const char **p) {
    uintptr_t v = 0;
    for (;; (*p)++) {
        char c = **p;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return v;
        v = v * 16 + (uintptr_t)d;
    }
}

static void read_mappings(void) {
    mapping_count = 0;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    static char buf[65536];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof buf - have - 1);
        if (n <= 0) break;
        have += (size_t)n;
        buf[have] = '\0';
        char *line = buf;
        char *nl;
        while ((nl = memchr(line, '\n', have - (size_t)(line - buf))) != NULL) {
            const char *p = line;
            uintptr_t start = parse_hex(&p);
            if (*p == '-' && mapping_count < TG_MAX_MAPPINGS) {
                p++;
                uintptr_t end = parse_hex(&p);
                if (*p == ' ') p++;
                int prot = 0;
                if (p[0] == 'r') prot |= PROT_READ;
                if (p[1] == 'w') prot |= PROT_WRITE;
                if (p[2] == 'x') prot |= PROT_EXEC;
                mappings[mapping_count++] = (struct mapping){start, end, prot};
            }
            line = nl + 1;
        }
        size_t rest = have - (size_t)(line - buf);
        memmove(buf, line, rest);
        have = rest;
    }
    close(fd);
}

static int protection_of(uintptr_t addr) {
    if (mapping_count < 0) read_mappings();
    for (int i = 0; i < mapping_count; i++)
        if (addr >= mappings[i].start && addr < mappings[i].end) return mappings[i].prot;
    return -1;
}

/* ---- rewriting one slot ------------------------------------------- */

static _Atomic long long slots_patched;

static void write_slot(void **slot, void *value) {
    if (__atomic_load_n(slot, __ATOMIC_RELAXED) == value) return; /* done already */
    uintptr_t addr = (uintptr_t)slot;
    int prot = protection_of(addr);
    if (prot < 0) return; /* not mapped as we know it: leave it alone */
    if (prot & PROT_WRITE) {
        __atomic_store_n(slot, value, __ATOMIC_RELEASE);
    } else {
        long page = sysconf(_SC_PAGESIZE);
        uintptr_t base = addr & ~(uintptr_t)(page - 1);
        if (mprotect((void *)base, (size_t)page, prot | PROT_WRITE) != 0) return;
        __atomic_store_n(slot, value, __ATOMIC_RELEASE);
        mprotect((void *)base, (size_t)page, prot);
    }
    atomic_fetch_add_explicit(&slots_patched, 1, memory_order_relaxed);
}

/* ---- walking an object's relocations --------------------------------- */

/* Objects never patched: libc and the loader (they define these
 * functions), threadguard itself, sanitizer runtimes (their interceptors
 * call on through dlsym), the vDSO. */
static int skipped(const char *path) {
    const char *name = tg_base_name(path);
    return tg_starts_with(name, "libc.so") || tg_starts_with(name, "ld-linux") ||
           tg_starts_with(name, "ld64.so") || tg_starts_with(name, "libthreadguard") ||
           tg_starts_with(name, "linux-vdso") || tg_starts_with(name, "linux-gate") ||
           tg_is_sanitizer_runtime(name);
}

struct dynamic_info {
    const ElfW(Sym) * symtab;
    const char *strtab;
    const ElfW(Rela) * jmprel;
    size_t jmprel_size;
    const ElfW(Rela) * rela;
    size_t rela_size;
};

/* glibc relocates the d_ptr entries of a loaded object's dynamic section in
 * place on most architectures; where it has not, they are offsets. */
static uintptr_t dyn_address(uintptr_t base, ElfW(Addr) value) {
    return value < base ? base + value : value;
}

static int read_dynamic(const struct dl_phdr_info *info, struct dynamic_info *d) {
    memset(d, 0, sizeof *d);
    const ElfW(Dyn) *dyn = NULL;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
    if (dyn == NULL) return -1;
    uintptr_t base = info->dlpi_addr;
    int pltrel_is_rela = 1;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        switch (dyn->d_tag) {
        case DT_SYMTAB: d->symtab = (const ElfW(Sym) *)dyn_address(base, dyn->d_un.d_ptr); break;
        case DT_STRTAB: d->strtab = (const char *)dyn_address(base, dyn->d_un.d_ptr); break;
        case DT_JMPREL: d->jmprel = (const ElfW(Rela) *)dyn_address(base, dyn->d_un.d_ptr); break;
        case DT_PLTRELSZ: d->jmprel_size = dyn->d_un.d_val; break;
        case DT_PLTREL: pltrel_is_rela = dyn->d_un.d_val == DT_RELA; break;
        case DT_RELA: d->rela = (const ElfW(Rela) *)dyn_address(base, dyn->d_un.d_ptr); break;
        case DT_RELASZ: d->rela_size = dyn->d_un.d_val; break;
        default: break;
        }
    }
    if (!pltrel_is_rela) d->jmprel = NULL; /* REL-style PLTs do not occur on these targets */
    return d->symtab && d->strtab ? 0 : -1;
}

/* What each patched name is routed to. */
struct target {
    const char *name;
    void *replacement;
};

static struct target targets[2];

/* Rewrites the slots of one relocation table; returns how many name
 * pthread_create (whether rewritten now or before). */
static int patch_table(uintptr_t base, const struct dynamic_info *d, const ElfW(Rela) * table,
                       size_t size) {
    int creates = 0;
    if (table == NULL) return 0;
    for (size_t i = 0; i < size / sizeof *table; i++) {
#if TG_GOT_SUPPORTED
        unsigned long type = ELF64_R_TYPE(table[i].r_info);
        if (type != TG_R_JUMP_SLOT && type != TG_R_GLOB_DAT) continue;
        const char *name = d->strtab + d->symtab[ELF64_R_SYM(table[i].r_info)].st_name;
        for (unsigned t = 0; t < sizeof targets / sizeof targets[0]; t++) {
            if (strcmp(name, targets[t].name) != 0) continue;
            write_slot((void **)(base + table[i].r_offset), targets[t].replacement);
            if (t == 0) creates++;
        }
#else
        (void)base;
        (void)d;
#endif
    }
    return creates;
}

/* Objects examined already, by load address and program headers (an
 * object unloaded and replaced at the same address has new headers). */
#define TG_MAX_OBJECTS 2048

struct known_object {
    uintptr_t base;
    const void *phdr;
    int seen; /* present in the current sweep */
};

static struct known_object objects[TG_MAX_OBJECTS];
static int object_count;
static unsigned long long last_adds = ~0ULL, last_subs = ~0ULL;

/* Objects the current sweep patched for the first time (for adoption). */
#define TG_MAX_NEW 256
static uintptr_t new_objects[TG_MAX_NEW];
static int new_creates[TG_MAX_NEW];
static int new_count;

static int known(const struct dl_phdr_info *info) {
    for (int i = 0; i < object_count; i++)
        if (objects[i].base == info->dlpi_addr && objects[i].phdr == info->dlpi_phdr) {
            objects[i].seen = 1;
            return 1;
        }
    return 0;
}

/* The address of the object's first loaded byte: an address that
 * _dl_find_object and dladdr map back to it. */
static uintptr_t first_byte(const struct dl_phdr_info *info) {
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_LOAD)
            return info->dlpi_addr + info->dlpi_phdr[i].p_vaddr;
    return info->dlpi_addr;
}

static int visit(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    (void)arg;
    if (known(info)) return 0;
    int creates = 0;
    struct dynamic_info d;
    if (!skipped(info->dlpi_name) && read_dynamic(info, &d) == 0) {
        creates += patch_table(info->dlpi_addr, &d, d.jmprel, d.jmprel_size);
        creates += patch_table(info->dlpi_addr, &d, d.rela, d.rela_size);
    }
    if (object_count < TG_MAX_OBJECTS)
        objects[object_count++] = (struct known_object){info->dlpi_addr, info->dlpi_phdr, 1};
    if (new_count < TG_MAX_NEW) {
        new_objects[new_count] = first_byte(info);
        new_creates[new_count++] = creates;
    }
    return 0;
}

static int count_changes(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    unsigned long long *adds_subs = arg;
    adds_subs[0] = info->dlpi_adds;
    adds_subs[1] = info->dlpi_subs;
    return 1;
}

/* Patch every object not patched yet.  Caller holds the lock. */
static void sweep(void) {
    unsigned long long changes[2] = {0, 0};
    dl_iterate_phdr(count_changes, changes);
    new_count = 0;
    if (changes[0] == last_adds && changes[1] == last_subs) return;
    if (changes[1] != last_subs) {
        /* Something was unloaded: forget objects that are gone. */
        for (int i = 0; i < object_count; i++) objects[i].seen = 0;
    }
    mapping_count = -1;
    dl_iterate_phdr(visit, NULL);
    if (changes[1] != last_subs) {
        int kept = 0;
        for (int i = 0; i < object_count; i++)
            if (objects[i].seen) objects[kept++] = objects[i];
        object_count = kept;
    }
    last_adds = changes[0];
    last_subs = changes[1];
}

/* The library that most likely started threads during a load: of the
 * objects the load brought in, the one that calls pthread_create itself
 * (preferring a known thread-pool library), else the library opened. */
static unsigned creator_of_load(void *opened) {
    uintptr_t best = 0;
    int best_score = 0;
    for (int i = 0; i < new_count; i++) {
        if (!new_creates[i]) continue;
        unsigned slot = tg_slot_for_address((void *)new_objects[i]);
        int kind = tg_libs[slot].kind;
        int score = kind == TG_KIND_OPENBLAS || kind == TG_KIND_OPENMP || kind == TG_KIND_MKL ||
                            kind == TG_KIND_BLIS
                        ? 3
                    : kind == TG_KIND_SYSTEM ? 1
                                             : 2;
        if (score > best_score) {
            best_score = score;
            best = new_objects[i];
        }
    }
    if (best == 0 && opened != NULL) {
        struct link_map *map = opened; /* glibc's handles are link maps */
        return tg_slot_for_address((void *)map->l_ld);
    }
    return best ? tg_slot_for_address((void *)best) : TG_UNKNOWN_SLOT;
}

#define TG_MAX_TIDS 2048

/* ---- the dlopen hook -------------------------------------------------- */

/* dlopen decides $ORIGIN and RUNPATH from its caller, which is now this
 * library.  So a bare name is looked up first along the caller's own search
 * path (dlinfo RTLD_DI_SERINFO on the caller's link map: its RPATH chain,
 * LD_LIBRARY_PATH, its RUNPATH, with $ORIGIN expanded), and only then with
 * a plain dlopen (ld.so.cache and the system directories), which is the
 * order ld.so itself uses. */
static void *open_like_caller(const char *file, int mode, const void *caller) {
    if (file == NULL || strchr(file, '/') != NULL) return dlopen(file, mode);
    void *loaded = dlopen(file, mode | RTLD_NOLOAD);
    if (loaded != NULL) return loaded;
    Dl_info info;
    struct link_map *map = NULL;
    if (dladdr1(caller, &info, (void **)&map, RTLD_DL_LINKMAP) != 0 && map != NULL) {
        Dl_serinfo size;
        if (dlinfo(map, RTLD_DI_SERINFOSIZE, &size) == 0 && size.dls_size > 0) {
            Dl_serinfo *paths = malloc(size.dls_size);
            if (paths != NULL) {
                memcpy(paths, &size, sizeof size);
                if (dlinfo(map, RTLD_DI_SERINFO, paths) == 0) {
                    for (unsigned i = 0; i < paths->dls_cnt; i++) {
                        const Dl_serpath *p = &paths->dls_serpath[i];
                        if (p->dls_flags == LA_SER_DEFAULT) break; /* after the cache */
                        char candidate[4096];
                        int n = snprintf(candidate, sizeof candidate, "%s/%s", p->dls_name, file);
                        if (n <= 0 || (size_t)n >= sizeof candidate) continue;
                        if (access(candidate, F_OK) != 0) continue;
                        void *handle = dlopen(candidate, mode);
                        if (handle != NULL) {
                            free(paths);
                            return handle;
                        }
                    }
                }
                free(paths);
            }
        }
    }
    return dlopen(file, mode);
}

static _Thread_local int hook_depth;

static void *hooked_dlopen(const char *file, int mode) {
    const void *caller = __builtin_return_address(0);
    if (hook_depth++ > 0) {
        /* A dlopen inside a constructor: the outermost call patches. */
        void *handle = open_like_caller(file, mode, caller);
        hook_depth--;
        return handle;
    }
    int before[TG_MAX_TIDS];
    int n_before = tg_list_tasks(before, TG_MAX_TIDS);
    long long created_before = atomic_load_explicit(&tg_total.created, memory_order_relaxed);

    void *handle = open_like_caller(file, mode, caller);

    if (handle != NULL) {
        int saved_errno = errno;
        lock();
        sweep();
        static int after[TG_MAX_TIDS]; /* under the lock */
        int n_after = n_before >= 0 ? tg_list_tasks(after, TG_MAX_TIDS) : -1;
        if (n_after > 0) {
            /* New tasks, less those the wrapper counted during the load
             * (threads started by objects patched earlier). */
            long long counted =
                atomic_load_explicit(&tg_total.created, memory_order_relaxed) - created_before;
            unsigned slot = TG_UNKNOWN_SLOT;
            int resolved = 0;
            for (int i = 0, j = 0; i < n_after; i++) {
                while (j < n_before && before[j] < after[i]) j++;
                if (j < n_before && before[j] == after[i]) continue;
                if (counted > 0) {
                    counted--;
                    continue;
                }
                if (!resolved) {
                    slot = creator_of_load(handle);
                    resolved = 1;
                }
                tg_adopt(after[i], slot);
            }
        }
        unlock();
        errno = saved_errno;
    }
    hook_depth--;
    return handle;
}

/* ---- public entry points ---------------------------------------------- */

THREADGUARD_API int threadguard_import_mode(void) {
    tg_init();
    if (tg_interposing()) {
        tg_set_mode(THREADGUARD_MODE_PRELOAD);
        return THREADGUARD_OK;
    }
    if (tg_config.import_off) { /* THREADGUARD_IMPORT=off: the user's choice */
        tg_clear_error();
        return THREADGUARD_OK;
    }
#if !TG_GOT_SUPPORTED
    return tg_set_error(THREADGUARD_EUNSUPPORTED,
                        "import mode patches GOT slots on x86-64 and aarch64 only; preload "
                        "the library instead (threadguard run -- CMD)");
#else
    lock();
    if (tg_recorded_mode() != THREADGUARD_MODE_IMPORT) {
        /* Call on to what symbol lookup gives the process (libc's, or a
         * sanitizer's interceptor in front of it). */
        tg_use_process_create();
        targets[0] = (struct target){"pthread_create", (void *)tg_own_pthread_create};
        targets[1] = (struct target){"dlopen", (void *)hooked_dlopen};
        sweep();
        tg_set_mode(THREADGUARD_MODE_IMPORT);
    }
    unlock();
    tg_report_publish_if_stale(); /* readers see the mode */
    tg_clear_error();
    return THREADGUARD_OK;
#endif
}

THREADGUARD_API long long threadguard_import_slots(void) {
    return atomic_load_explicit(&slots_patched, memory_order_relaxed);
}
