/* Publishing: each guarded process's counters, readable live from outside.
 *
 * `threadguard top` and `threadguard stats --pid` need every guarded
 * process's threads by library while it runs, without root and without
 * stopping it.  So the counter block itself (registry.h) lives in a shared
 * file: /dev/shm/threadguard-UID/PID.START.live, mode 0600, in a directory
 * of mode 0700 owned by the user, the one that holds the headroom ledger
 * (ledger.c).  Counting a thread is the same store into the process's own
 * memory as before; readers copy the file with pread.
 *
 * What changes only at events (settings, the headroom at start, failures)
 * is a document the process rewrites then, under a sequence number readers
 * check; pool decisions live in the block, since a setter called in a loop
 * changes their counts.
 *
 * The file is created under a temporary name and renamed once mapped and
 * filled, so a reader never meets a file its process does not map.  It is
 * removed at exit.  A process killed (SIGKILL), or that exec'ed into an
 * unguarded program, leaves it: readers recognise it (no process with that
 * pid and start time maps it) and remove it, and each new process removes a
 * few such files left by dead processes.  Nothing is published under secure
 * execution or with THREADGUARD_PUBLISH=0.  Readers never write the file
 * and take no lock the process takes, so they can neither crash nor block
 * it.
 *
 * Layer: state.  Calls registry.c (the block), config.c, procfs.c and
 * error.c. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h> /* renameat */
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "publish.h"

#include "config.h"
#include "error.h"
#include "procfs.h"

/* Files of dead processes removed by each process at its start, at most,
 * and the entries it looks at (a /proc read each): enough to keep up with
 * the processes a node starts, bounded so that a directory of hundreds of
 * live processes never slows a start down (readers clean the rest). */
#define SWEEP_MAX 8
#define SWEEP_LOOKS 32

static struct tg_published *published;
static char file_path[96];
static _Atomic unsigned long long generation = 1;
static _Atomic int doc_writing, doc_dirty;

/* Digits of v into buf (no printf: this runs in a forked child). */
static size_t put_number(char *buf, size_t size, long long v) {
    char digits[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0 : (unsigned long long)v;
    do digits[n++] = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    size_t used = 0;
    while (n > 0 && used + 1 < size) buf[used++] = digits[--n];
    buf[used] = '\0';
    return used;
}

static size_t put_text(char *buf, size_t size, const char *text) {
    size_t used = 0;
    for (; *text && used + 1 < size; text++) buf[used++] = *text;
    buf[used] = '\0';
    return used;
}

/* "PREFIX" "PID" "." "START" "SUFFIX" */
static void file_name(char *buf, size_t size, const char *prefix, int pid, long long start,
                      const char *suffix) {
    size_t used = put_text(buf, size, prefix);
    used += put_number(buf + used, size - used, pid);
    used += put_text(buf + used, size - used, ".");
    used += put_number(buf + used, size - used, start);
    put_text(buf + used, size - used, suffix);
}

static void dir_path(char *buf, size_t size) {
    size_t used = put_text(buf, size, "/dev/shm/threadguard-");
    put_number(buf + used, size - used, (long long)getuid());
}

int tg_shared_dir(int create) {
    char path[64];
    dir_path(path, sizeof path);
    /* Made once per user and boot: opened first, made only when missing. */
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && create && errno == ENOENT && (mkdir(path, 0700) == 0 || errno == EEXIST))
        fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    /* Another user's directory (made first, to read ours) is never used. */
    if (fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid() ||
        (st.st_mode & 077) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* "PID.START.live" -> pid and start; 0 when the name is one. */
static int parse_name(const char *name, int *pid, long long *start, const char *suffix) {
    long long p = 0, s = 0;
    const char *c = name;
    if (*c < '0' || *c > '9') return -1;
    for (; *c >= '0' && *c <= '9'; c++) p = p * 10 + (*c - '0');
    if (*c++ != '.' || *c < '0' || *c > '9') return -1;
    for (; *c >= '0' && *c <= '9'; c++) s = s * 10 + (*c - '0');
    if (strcmp(c, suffix) != 0 || p <= 0 || p > 0x7fffffff) return -1;
    *pid = (int)p;
    *start = s;
    return 0;
}

/* Whether the last listing of the directory showed a file of the parent
 * (1), showed every file and none of it (0), or cannot say (-1): share.c
 * reads the parent's start time and opens its file only where there may be
 * one.  Written at initialisation and in a forked child, single-threaded. */
static int parent_listed = -1, listed_parent_pid;

/* Remove a few files of processes that are gone (SIGKILL, _exit in a forked
 * child): the same test readers make, without reading maps (a process that
 * exec'ed into an unguarded program is left to the readers). */
static void sweep(int dir) {
    char buf[4096] __attribute__((aligned(8)));
    int removed = 0, looks = 0, parent = (int)getppid(), seen = 0;
    long n = syscall(SYS_getdents64, dir, buf, sizeof buf);
    for (long off = 0; off < n;) {
        struct dirent64 *d = (struct dirent64 *)(void *)(buf + off);
        off += d->d_reclen;
        int pid;
        long long start;
        const char *name = d->d_name;
        int temporary = name[0] == '.';
        if (parse_name(name + temporary, &pid, &start, temporary ? ".new" : ".live") != 0) continue;
        if (pid == parent) seen = 1;
        if (removed >= SWEEP_MAX || looks >= SWEEP_LOOKS) continue;
        looks++;
        if (tg_start_time_of(pid) == start) continue;
        if (unlinkat(dir, name, 0) == 0) removed++;
    }
    /* A listing is whole when the buffer had room for one more entry (a
     * 255-byte name takes 280). */
    listed_parent_pid = parent;
    parent_listed = seen ? 1 : n >= 0 && n + 280 <= (long)sizeof buf ? 0 : -1;
}

int tg_publish_listed_parent(int pid) { return pid == listed_parent_pid ? parent_listed : -1; }

/* Copy the parts of a counter block that hold something: a file's pages in
 * /dev/shm take memory only once written, so a fresh process (or a forked
 * worker, many of which a pool starts) pays for the rows it uses, not for
 * the whole table. */
static void copy_used(struct tg_counter_block *to, const struct tg_counter_block *from) {
    memcpy(to, from, offsetof(struct tg_counter_block, libs));
    for (unsigned i = 0; i < TG_MAX_LIBS && !tg_block_past_end(from, i); i++)
        memcpy(&to->libs[i], &from->libs[i], sizeof to->libs[i]);
    int decisions = atomic_load_explicit(&from->decision_count, memory_order_relaxed);
    if (decisions > TG_MAX_DECISIONS) decisions = TG_MAX_DECISIONS;
    for (int i = 0; i < decisions; i++)
        memcpy(&to->decisions[i], &from->decisions[i], sizeof to->decisions[i]);
}

/* Create, fill and name the file of this process, copying *from into it.
 * Returns the mapping, or NULL. */
static struct tg_published *create_file(const struct tg_counter_block *from) {
    if (tg_config.publish_off || getauxval(AT_SECURE)) return NULL;
    int pid = (int)getpid();
    long long start = tg_own_stat(NULL);
    if (start < 0) return NULL;
    int dir = tg_shared_dir(1);
    if (dir < 0) return NULL;
    sweep(dir);
    char temp[64], name[64];
    file_name(temp, sizeof temp, ".", pid, start, ".new");
    file_name(name, sizeof name, "", pid, start, ".live");
    int fd = openat(dir, temp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno == ENOENT) {
        /* The directory was removed since it was opened: its last process
         * ended (tg_shared_dir_remove_if_empty).  Made again. */
        close(dir);
        if ((dir = tg_shared_dir(1)) < 0) return NULL;
        fd = openat(dir, temp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    }
    if (fd < 0 && errno == EEXIST) {
        /* Left by this pid's earlier image, killed while creating. */
        unlinkat(dir, temp, 0);
        fd = openat(dir, temp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    }
    struct tg_published *p = NULL;
    if (fd >= 0) {
        if (ftruncate(fd, sizeof *p) == 0) {
            void *mem = mmap(NULL, sizeof *p, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (mem != MAP_FAILED) p = mem;
        }
        close(fd);
    }
    if (p != NULL) {
        struct tg_published_header *h = &p->header;
        h->layout = TG_PUBLISH_LAYOUT;
        h->size = (unsigned)sizeof *p;
        h->pid = pid;
        h->uid = (unsigned)getuid();
        h->start_time = start;
        put_text(h->version, sizeof h->version, THREADGUARD_VERSION_STRING);
        copy_used(&p->block, from);
        atomic_store_explicit(&h->tasks_at_start, -1, memory_order_relaxed);
        atomic_store_explicit(&h->cpus_now, -1, memory_order_relaxed);
        /* The magic last: a reader checks it first. */
        __atomic_store_n(&h->magic, TG_PUBLISH_MAGIC, __ATOMIC_RELEASE);
        /* Named only now: a reader never sees a file its process does not map. */
        if (renameat(dir, temp, dir, name) != 0) {
            munmap(p, sizeof *p);
            p = NULL;
        }
    }
    if (p == NULL) {
        unlinkat(dir, temp, 0);
    } else {
        dir_path(file_path, sizeof file_path);
        size_t used = strlen(file_path);
        used += put_text(file_path + used, sizeof file_path - used, "/");
        put_text(file_path + used, sizeof file_path - used, name);
    }
    close(dir);
    return p;
}

void tg_publish_init(void) {
    struct tg_counter_block *before = tg_block;
    long long early = atomic_load_explicit(&before->started_during_init, memory_order_relaxed);
    struct tg_published *p = create_file(before);
    if (p == NULL) return;
    published = p;
    tg_block = &p->block;
    /* Threads that another thread started while this one copied. */
    long long late =
        atomic_load_explicit(&before->started_during_init, memory_order_relaxed) - early;
    if (late > 0) atomic_fetch_add_explicit(&tg_started_during_init, late, memory_order_relaxed);
}

/* The document and what the header says of the process, from another
 * file's: until the first rewrite, the new file shows what the old one did. */
static void copy_document(struct tg_published *to, const struct tg_published *from_file) {
    struct tg_published_header *h = &to->header;
    const struct tg_published_header *from = &from_file->header;
    unsigned length = atomic_load(&from->doc_length);
    memcpy(to->doc, from_file->doc, length < TG_DOC_SIZE ? length : TG_DOC_SIZE);
    atomic_store_explicit(&h->doc_at_start, atomic_load(&from->doc_at_start), memory_order_relaxed);
    atomic_store_explicit(&h->doc_budget, atomic_load(&from->doc_budget), memory_order_relaxed);
    atomic_store_explicit(&h->doc_length, atomic_load(&from->doc_length), memory_order_relaxed);
    atomic_store_explicit(&h->mode, atomic_load(&from->mode), memory_order_relaxed);
    atomic_store_explicit(&h->acted, atomic_load(&from->acted), memory_order_relaxed);
    memcpy(h->program, from->program, sizeof h->program);
}

void tg_publish_before_exec(void) {
    if (file_path[0]) unlink(file_path);
    file_path[0] = '\0';
    tg_shared_dir_remove_if_empty();
}

void tg_publish_after_failed_exec(void) {
    struct tg_published *old = published;
    if (old == NULL || file_path[0]) return;
    struct tg_published *p = create_file(&old->block);
    if (p == NULL) return;
    copy_document(p, old);
    atomic_store_explicit(&p->header.tasks_at_start,
                          atomic_load_explicit(&old->header.tasks_at_start, memory_order_relaxed),
                          memory_order_relaxed);
    published = p;
    tg_block = &p->block;
    /* The old mapping stays: another thread may be counting into it now.
     * An exec that fails is rare; its 360 KiB of address space is the
     * price. */
    tg_publish_changed();
}

void tg_publish_after_fork_in_child(void) {
    struct tg_published *parent = published;
    if (parent == NULL) return;
    file_path[0] = '\0';
    published = create_file(&parent->block);
    if (published != NULL) {
        tg_block = &published->block;
        copy_document(published, parent);
        atomic_store_explicit(&published->header.tasks_at_start, 0, memory_order_relaxed);
    } else {
        copy_used(&tg_private_block, &parent->block);
        tg_block = &tg_private_block;
    }
    /* The parent's file is the parent's: never written from here on. */
    munmap(parent, sizeof *parent);
    atomic_store_explicit(&doc_writing, 0, memory_order_relaxed);
    tg_publish_changed();
}

void tg_publish_remove(void) {
    if (file_path[0]) unlink(file_path);
    file_path[0] = '\0';
    tg_shared_dir_remove_if_empty();
}

/* The last of the user's processes leaves nothing in /dev/shm: the
 * directory goes when it is empty (rmdir refuses otherwise).  A process
 * that opened it just before makes it again (create_file, ledger.c). */
void tg_shared_dir_remove_if_empty(void) {
    char path[64];
    dir_path(path, sizeof path);
    rmdir(path);
}

const char *tg_publish_path(void) { return file_path; }

struct tg_published *tg_published_self(void) {
    return published;
}

void tg_publish_file_path(char *buf, size_t size, int pid, long long start) {
    dir_path(buf, size);
    size_t used = strlen(buf);
    used += put_text(buf + used, size - used, "/");
    file_name(buf + used, size - used, "", pid, start, ".live");
}

void tg_publish_changed(void) { atomic_fetch_add_explicit(&generation, 1, memory_order_acq_rel); }

unsigned long long tg_publish_generation(void) {
    return atomic_load_explicit(&generation, memory_order_acquire);
}

char *tg_publish_doc_begin(size_t *size) {
    struct tg_published *p = published;
    if (p == NULL) return NULL;
    atomic_store_explicit(&doc_dirty, 1, memory_order_release);
    if (atomic_exchange_explicit(&doc_writing, 1, memory_order_acquire)) return NULL;
    atomic_store_explicit(&doc_dirty, 0, memory_order_release);
    atomic_fetch_add_explicit(&p->header.doc_seq, 1, memory_order_acq_rel); /* odd */
    *size = sizeof p->doc;
    if (p->header.program[0] == '\0')
        put_text(p->header.program, sizeof p->header.program, tg_program_path());
    return p->doc;
}

int tg_publish_doc_end(unsigned at_start, unsigned budget, unsigned length, int acted, int mode,
                       long long tasks_at_start) {
    struct tg_published_header *h = &published->header;
    atomic_store_explicit(&h->doc_at_start, at_start, memory_order_relaxed);
    atomic_store_explicit(&h->doc_budget, budget, memory_order_relaxed);
    atomic_store_explicit(&h->doc_length, length, memory_order_relaxed);
    atomic_store_explicit(&h->acted, acted, memory_order_relaxed);
    atomic_store_explicit(&h->mode, mode, memory_order_relaxed);
    atomic_store_explicit(&h->tasks_at_start, tasks_at_start, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->doc_seq, 1, memory_order_acq_rel); /* even: complete */
    for (;;) {
        /* Changed while we wrote (another thread found us writing): again. */
        if (atomic_exchange_explicit(&doc_dirty, 0, memory_order_acq_rel)) {
            atomic_fetch_add_explicit(&h->doc_seq, 1, memory_order_acq_rel); /* odd */
            return 1;
        }
        atomic_store_explicit(&doc_writing, 0, memory_order_release);
        /* A change between the check and the release: take it back if no
         * other thread has. */
        if (!atomic_load_explicit(&doc_dirty, memory_order_acquire) ||
            atomic_exchange_explicit(&doc_writing, 1, memory_order_acquire))
            return 0;
    }
}

/* ---- reading --------------------------------------------------------- */

static int read_all(int fd, void *buf, size_t size, off_t at) {
    char *p = buf;
    while (size > 0) {
        ssize_t n = pread(fd, p, size, at);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        at += n;
        size -= (size_t)n;
    }
    return 0;
}

static void terminate(char *s, size_t size) { s[size - 1] = '\0'; }

/* The checks a copy must pass; NULL, or why it is rejected. */
static const char *check(struct tg_published *c, int pid_in_name) {
    struct tg_published_header *h = &c->header;
    if (h->magic != TG_PUBLISH_MAGIC) return "not a threadguard process file (bad magic)";
    if (h->layout != TG_PUBLISH_LAYOUT || h->size != sizeof *c)
        return "written by another threadguard version (another layout); read it with that "
               "version's threadguard";
    if (h->pid <= 0 || (pid_in_name > 0 && h->pid != pid_in_name))
        return "its pid does not match its name";
    unsigned length = atomic_load(&h->doc_length), at_start = atomic_load(&h->doc_at_start),
             budget = atomic_load(&h->doc_budget);
    if (length > TG_DOC_SIZE ||
        (length > 0 && (at_start == 0 || at_start > budget || budget >= length ||
                        c->doc[at_start - 1] || c->doc[budget - 1] || c->doc[length - 1])))
        return "its document is malformed";
    int decisions = atomic_load(&c->block.decision_count);
    if (decisions < 0) return "its decision count is negative";
    for (int i = 0; i < TG_MAX_DECISIONS; i++) {
        struct tg_decision *d = &c->block.decisions[i];
        if (d->slot >= TG_MAX_LIBS) return "a pool decision names no library row";
        terminate(d->library, sizeof d->library);
        terminate(d->variable, sizeof d->variable);
        terminate(d->lowered_by, sizeof d->lowered_by);
        terminate(d->caller, sizeof d->caller);
        terminate(d->limit, sizeof d->limit);
        terminate(d->cpus_from, sizeof d->cpus_from);
    }
    for (int i = 0; i < TG_MAX_LIBS; i++) {
        struct tg_lib *lib = &c->block.libs[i];
        terminate(lib->name, sizeof lib->name);
        terminate(lib->path, sizeof lib->path);
        if (lib->kind < TG_KIND_UNKNOWN || lib->kind > TG_KIND_OTHER) lib->kind = TG_KIND_UNKNOWN;
    }
    terminate(h->version, sizeof h->version);
    terminate(h->program, sizeof h->program);
    return NULL;
}

static int pid_of_path(const char *path) {
    const char *base = strrchr(path, '/');
    int pid;
    long long start;
    return parse_name(base ? base + 1 : path, &pid, &start, ".live") == 0 ? pid : 0;
}

int tg_publish_read(const char *path, struct tg_published *copy) {
    if (path == NULL || copy == NULL)
        return tg_set_error(THREADGUARD_EINVAL, "threadguard_read_published: NULL argument");
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return tg_set_error(THREADGUARD_EINVAL, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    const char *why = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        why = "not a regular file";
    } else if (st.st_size != (off_t)sizeof *copy) {
        why = st.st_size < (off_t)sizeof *copy ? "truncated" : "longer than the layout";
    } else {
        why = "changed while read, again and again";
        size_t head = offsetof(struct tg_published, doc);
        /* A rewrite takes tens of microseconds, more on a busy node: wait
         * for it (about a second at most) rather than refuse the file. */
        for (int attempt = 0; attempt < 1000; attempt++) {
            unsigned long long seq;
            if (read_all(fd, copy, head, 0) != 0) {
                why = "truncated while read";
                break;
            }
            seq = atomic_load(&copy->header.doc_seq);
            unsigned length = atomic_load(&copy->header.doc_length);
            if (length > TG_DOC_SIZE) length = TG_DOC_SIZE;
            memset(copy->doc, 0, sizeof copy->doc);
            if (read_all(fd, copy->doc, length, (off_t)head) != 0) {
                why = "truncated while read";
                break;
            }
            unsigned long long after;
            if (read_all(fd, &after, sizeof after,
                         (off_t)offsetof(struct tg_published, header.doc_seq)) != 0) {
                why = "truncated while read";
                break;
            }
            if (seq % 2 == 0 && seq == after) {
                why = check(copy, pid_of_path(path));
                break;
            }
            if (attempt < 16) {
                sched_yield();
            } else {
                struct timespec pause = {0, 1000000}; /* 1 ms */
                nanosleep(&pause, NULL);
            }
        }
    }
    close(fd);
    if (why != NULL) {
        if (strcmp(why, "truncated") == 0)
            return tg_set_error(THREADGUARD_EINVAL,
                                "%s: rejected: truncated (%lld bytes, a process file has %zu)",
                                path, (long long)st.st_size, sizeof *copy);
        return tg_set_error(THREADGUARD_EINVAL, "%s: rejected: %s", path, why);
    }
    tg_clear_error();
    return THREADGUARD_OK;
}

void tg_publish_doc_view(const struct tg_published *c, struct tg_doc_view *view) {
    unsigned length = c->header.doc_length;
    if (length == 0) {
        view->json = view->at_start = view->budget = "";
    } else {
        view->json = c->doc;
        view->at_start = c->doc + c->header.doc_at_start;
        view->budget = c->doc + c->header.doc_budget;
    }
    view->acted = c->header.acted;
}
