/* The address-to-object table: which loaded object holds an address,
 * answered without the loader's lock.
 *
 * Attribution needs it on every call: pthread_create's return address
 * names the creating library, getenv's names the library asking for a pool
 * size.  glibc 2.35's _dl_find_object answers lock-free; before it, dladdr1
 * takes the loader's recursive lock, and a signal handler's getenv that
 * interrupted its own thread's dl* call while that call released the lock
 * waited on itself (test_signals, reentry and reentry_tail, on a busy
 * machine).  Most clusters run a glibc below 2.35.
 *
 * The table holds each object's mapped range, load address and name,
 * sorted by address, in two copies: a refresh (dl_iterate_phdr, under the
 * loader's lock, never allocating) writes the copy readers are not
 * pointed at, then points them at it.  Each copy has a sequence number,
 * odd while written, so a reader that raced two refreshes sees the change
 * and gives up rather than waits.  Readers do a binary search and nothing
 * else.
 *
 * Refreshed outside signal context only: at initialisation's second step,
 * and on the creation path (pthread_create is not async-signal-safe, and
 * glibc's own takes locks) when the loader reports loads or unloads since
 * the table was built.  Every dlclose threadguard sees (the preload's
 * interposer) marks the table stale until then, so a stale row never names
 * an object that is gone.
 *
 * An object whose constructor runs inside dlopen (OpenBLAS asks for its
 * pool size there) is not in the table yet, and its getenv must not take
 * the loader's lock.  For that case the loader's own list (_r_debug) is
 * walked without the lock: the thread running a constructor holds the
 * loader's lock itself, so no other thread can change the list meanwhile,
 * and a signal handler runs while the code it interrupted stands still.  The
 * walk gives up while a dlclose threadguard sees is under way.
 *
 * Layer: helper.  Calls nothing of threadguard's. */
#define _GNU_SOURCE
#include <elf.h>
#include <link.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

#include "objects.h"

struct row {
    _Atomic(uintptr_t) start, end; /* [start, end): the object's PT_LOAD segments */
    const char *_Atomic path;      /* the link map's name, live as long as the object */
};

struct table {
    _Atomic unsigned seq; /* odd while a refresh writes this copy */
    _Atomic unsigned count;
    _Atomic unsigned unload_generation; /* of tg_objects_unload_*, when built */
    unsigned long long adds, subs;      /* the loader's counts, when built */
    struct row rows[TG_OBJECTS_MAX];
};

static struct table tables[2];
static _Atomic int current = -1; /* the copy readers use; -1 before the first refresh */
static atomic_flag refreshing = ATOMIC_FLAG_INIT;
static _Atomic long long overflow;
/* Odd while a dlclose runs; bumped before and after each. */
static _Atomic unsigned unload_generation;

void tg_objects_unload_begin(void) {
    atomic_fetch_add_explicit(&unload_generation, 1, memory_order_acq_rel);
}

void tg_objects_unload_end(void) {
    atomic_fetch_add_explicit(&unload_generation, 1, memory_order_acq_rel);
}

unsigned tg_objects_unload_generation(void) {
    return atomic_load_explicit(&unload_generation, memory_order_acquire);
}

long long tg_objects_overflow(void) {
    return atomic_load_explicit(&overflow, memory_order_relaxed);
}

/* ---- readers ---------------------------------------------------------- */

int tg_objects_find(const void *pc, uintptr_t *base, const char **path) {
    int c = atomic_load_explicit(&current, memory_order_acquire);
    if (c < 0) return -1;
    struct table *t = &tables[c];
    unsigned seq = atomic_load_explicit(&t->seq, memory_order_acquire);
    if (seq & 1) return -1;
    if (atomic_load_explicit(&t->unload_generation, memory_order_relaxed) !=
        atomic_load_explicit(&unload_generation, memory_order_acquire))
        return -1; /* an object may be gone: its row's name with it */
    uintptr_t at = (uintptr_t)pc;
    unsigned low = 0, high = atomic_load_explicit(&t->count, memory_order_relaxed);
    if (high > TG_OBJECTS_MAX) return -1;
    int found = -1;
    uintptr_t start = 0;
    const char *name = NULL;
    while (low < high) {
        unsigned mid = low + (high - low) / 2;
        uintptr_t s = atomic_load_explicit(&t->rows[mid].start, memory_order_relaxed);
        if (at < s) {
            high = mid;
        } else if (at >= atomic_load_explicit(&t->rows[mid].end, memory_order_relaxed)) {
            low = mid + 1;
        } else {
            start = s;
            name = atomic_load_explicit(&t->rows[mid].path, memory_order_relaxed);
            found = 0;
            break;
        }
    }
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&t->seq, memory_order_relaxed) != seq || name == NULL) return -1;
    if (found == 0) {
        *base = start;
        *path = name;
    }
    return found;
}

/* The range of PT_LOAD segments given an object's program headers. */
static void load_range(uintptr_t bias, const ElfW(Phdr) * phdr, unsigned phnum, uintptr_t *start,
                       uintptr_t *end) {
    uintptr_t low = UINTPTR_MAX, high = 0;
    for (unsigned i = 0; i < phnum; i++) {
        if (phdr[i].p_type != PT_LOAD) continue;
        uintptr_t s = bias + phdr[i].p_vaddr, e = s + phdr[i].p_memsz;
        if (s < low) low = s;
        if (e > high) high = e;
    }
    *start = low;
    *end = low < high ? high : low;
}

/* Whether the page holding addr is mapped: msync is a system call with no
 * lock in userspace, and fails with ENOMEM on an unmapped page. */
static int mapped(uintptr_t addr) {
    long page = (long)getauxval(AT_PAGESZ);
    if (page <= 0) page = 4096;
    return msync((void *)(addr & ~((uintptr_t)page - 1)), 1, MS_ASYNC) == 0;
}

/* An entry of the loader's list, read without its lock.  The main program
 * (the list's head) has its program headers in the auxiliary vector; a
 * shared object's ELF header sits at its load address. */
static int map_range(const struct link_map *m, int is_head, uintptr_t *start, uintptr_t *end) {
    if (is_head) {
        const ElfW(Phdr) *phdr = (const ElfW(Phdr) *)getauxval(AT_PHDR);
        unsigned long phnum = getauxval(AT_PHNUM);
        if (phdr == NULL || phnum == 0) return -1;
        load_range(m->l_addr, phdr, (unsigned)phnum, start, end);
        return 0;
    }
    uintptr_t at = (uintptr_t)m->l_addr;
    if (at == 0 || !mapped(at)) return -1;
    const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)at;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_phentsize != sizeof(ElfW(Phdr)) ||
        eh->e_phnum == 0 || eh->e_phnum > 64)
        return -1;
    load_range(at, (const ElfW(Phdr) *)(at + eh->e_phoff), eh->e_phnum, start, end);
    return 0;
}

/* Calls visit on each entry of the loader's list (at most 4096) until it
 * returns nonzero; returns that, or 0.  -1 while a dlclose is under way,
 * or when one ran meanwhile. */
typedef int (*visit_fn)(const struct link_map *m, uintptr_t start, uintptr_t end, void *arg);

static int walk(visit_fn visit, void *arg) {
    unsigned before = atomic_load_explicit(&unload_generation, memory_order_acquire);
    if (before & 1) return -1;
    const struct link_map *m = *(const struct link_map *const volatile *)&_r_debug.r_map;
    int result = 0;
    for (int n = 0; m != NULL && n < 4096 && result == 0; n++) {
        uintptr_t start, end;
        if (map_range(m, n == 0, &start, &end) == 0) result = visit(m, start, end, arg);
        m = *(const struct link_map *const volatile *)&m->l_next;
    }
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&unload_generation, memory_order_relaxed) != before) return -1;
    return result;
}

struct lookup {
    uintptr_t pc, base;
    const char *path;
};

static int holds(const struct link_map *m, uintptr_t start, uintptr_t end, void *arg) {
    struct lookup *l = arg;
    if (l->pc < start || l->pc >= end) return 0;
    l->base = start;
    l->path = m->l_name ? m->l_name : "";
    return 1;
}

int tg_objects_walk(const void *pc, uintptr_t *base, const char **path) {
    struct lookup l = {(uintptr_t)pc, 0, NULL};
    if (walk(holds, &l) != 1) return -1;
    *base = l.base;
    *path = l.path;
    return 0;
}

struct order {
    uintptr_t self;
    int index, self_at, libc_at;
};

static int place(const struct link_map *m, uintptr_t start, uintptr_t end, void *arg) {
    struct order *o = arg;
    int at = o->index++;
    if (o->self >= start && o->self < end) o->self_at = at;
    const char *name = tg_base_name(m->l_name ? m->l_name : "");
    if (o->libc_at < 0 && (tg_starts_with(name, "libc.so") || tg_starts_with(name, "libc-")))
        o->libc_at = at;
    return 0;
}

int tg_objects_before_libc(void) {
    struct order o = {(uintptr_t)tg_objects_before_libc, 0, -1, -1};
    if (walk(place, &o) < 0) return 0;
    return o.self_at >= 0 && o.libc_at >= 0 && o.self_at < o.libc_at;
}

/* ---- the writer ------------------------------------------------------- */

struct counts {
    unsigned long long adds, subs;
};

static int read_counts(struct dl_phdr_info *info, size_t size, void *arg) {
    struct counts *c = arg;
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs) {
        c->adds = info->dlpi_adds;
        c->subs = info->dlpi_subs;
    }
    return 1; /* the counts are the same in every entry: one is enough */
}

int tg_objects_stale(void) {
    int c = atomic_load_explicit(&current, memory_order_acquire);
    if (c < 0) return 1;
    struct table *t = &tables[c];
    if (atomic_load_explicit(&t->unload_generation, memory_order_relaxed) !=
        atomic_load_explicit(&unload_generation, memory_order_acquire))
        return 1;
    struct counts now = {0, 0};
    dl_iterate_phdr(read_counts, &now);
    return now.adds != t->adds || now.subs != t->subs;
}

static int add_row(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    struct table *t = arg;
    uintptr_t start, end;
    load_range(info->dlpi_addr, info->dlpi_phdr, info->dlpi_phnum, &start, &end);
    if (start >= end) return 0;
    unsigned n = atomic_load_explicit(&t->count, memory_order_relaxed);
    if (n == 0 && size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs) {
        t->adds = info->dlpi_adds;
        t->subs = info->dlpi_subs;
    }
    if (n >= TG_OBJECTS_MAX) {
        atomic_fetch_add_explicit(&overflow, 1, memory_order_relaxed);
        return 0;
    }
    /* Insertion in address order: a refresh is rare, the table small. */
    unsigned i = n;
    while (i > 0 && atomic_load_explicit(&t->rows[i - 1].start, memory_order_relaxed) > start) {
        struct row *to = &t->rows[i], *from = &t->rows[i - 1];
        atomic_store_explicit(&to->start, atomic_load_explicit(&from->start, memory_order_relaxed),
                              memory_order_relaxed);
        atomic_store_explicit(&to->end, atomic_load_explicit(&from->end, memory_order_relaxed),
                              memory_order_relaxed);
        atomic_store_explicit(&to->path, atomic_load_explicit(&from->path, memory_order_relaxed),
                              memory_order_relaxed);
        i--;
    }
    atomic_store_explicit(&t->rows[i].start, start, memory_order_relaxed);
    atomic_store_explicit(&t->rows[i].end, end, memory_order_relaxed);
    atomic_store_explicit(&t->rows[i].path, info->dlpi_name ? info->dlpi_name : "",
                          memory_order_relaxed);
    atomic_store_explicit(&t->count, n + 1, memory_order_relaxed);
    return 0;
}

int tg_objects_refresh(void) {
    /* One writer; another thread's refresh in progress does the work. */
    if (atomic_flag_test_and_set_explicit(&refreshing, memory_order_acquire)) return -1;
    int c = atomic_load_explicit(&current, memory_order_relaxed);
    struct table *t = &tables[c == 0 ? 1 : 0];
    unsigned seq = atomic_load_explicit(&t->seq, memory_order_relaxed);
    atomic_store_explicit(&t->seq, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    unsigned generation = atomic_load_explicit(&unload_generation, memory_order_acquire);
    atomic_store_explicit(&t->count, 0, memory_order_relaxed);
    atomic_store_explicit(&overflow, 0, memory_order_relaxed);
    t->adds = t->subs = 0;
    dl_iterate_phdr(add_row, t);
    /* Built during a dlclose: stale from the start, refreshed next time. */
    atomic_store_explicit(&t->unload_generation, (generation & 1) ? generation - 1 : generation,
                          memory_order_relaxed);
    atomic_store_explicit(&t->seq, seq + 2, memory_order_release);
    atomic_store_explicit(&current, c == 0 ? 1 : 0, memory_order_release);
    atomic_flag_clear_explicit(&refreshing, memory_order_release);
    return 0;
}
