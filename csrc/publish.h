/* publish.c: the per-user shared directory, and each process's counters
 * published in it for readers outside the process (state; calls
 * registry.c, config.c, procfs.c, error.c). */
#ifndef THREADGUARD_PUBLISH_H
#define THREADGUARD_PUBLISH_H

#include "registry.h"

/* ---- the per-user directory (shared with ledger.c) ------------------- */

/* /dev/shm/threadguard-UID, mode 0700 and the user's own: a descriptor
 * (the caller closes it), or -1 where there is none or it is not safe.
 * create: make it when missing. */
TG_HIDDEN int tg_shared_dir(int create);
/* Remove the user's directory when nothing is left in it. */
TG_HIDDEN void tg_shared_dir_remove_if_empty(void);

/* ---- the published file of this process ----------------------------- */

#define TG_PUBLISH_MAGIC 0x3162757067746774ULL /* "tgtgpub1" */
/* Raised whenever the layout below changes: a reader rejects another. */
#define TG_PUBLISH_LAYOUT 3
#define TG_DOC_SIZE (128 * 1024)

/* Written once, before the file gets its name, except the atomics. */
struct tg_published_header {
    unsigned long long magic;
    unsigned layout;
    unsigned size; /* sizeof (struct tg_published) */
    int pid;
    unsigned uid;
    long long start_time; /* /proc/PID/stat field 22, as in the file name */
    _Atomic int mode;     /* enum threadguard_mode */
    _Atomic int acted;    /* settings or start-up changes made (besides pool sizes) */
    _Atomic long long tasks_at_start;
    /* The document: three NUL-terminated texts the process rewrites when
     * what they describe changes (never on the create path unless a
     * creation failed).  Odd while being rewritten. */
    _Atomic unsigned long long doc_seq;
    _Atomic unsigned doc_at_start; /* offset of the second text */
    _Atomic unsigned doc_budget;   /* offset of the third */
    _Atomic unsigned doc_length;   /* bytes used, the last NUL included */
    unsigned pad;
    char version[16];
    char program[512];
    /* Sharing the CPU allocation (share.c).  The CPUs this process's pools
     * are sized for as last measured, which its children divide among
     * themselves (-1: not measured yet). */
    _Atomic long long cpus_now;
    /* The guarded process this one registered with as a child (0: none). */
    _Atomic int parent_pid;
    int pad2;
    _Atomic long long parent_start;
};

/* One guarded child of the process that publishes the file: claimed by the
 * child itself (pid 0 -> its pid), released at its exit; a child killed by
 * a signal leaves its entry, which a reader recognises by the start time. */
struct tg_child {
    _Atomic int pid;
    int pad;
    _Atomic long long start_time;
};

#define TG_MAX_CHILDREN 1024

/* The children's table, after the header: a child maps only the header and
 * this table of its parent's file, and only the pages children have
 * touched take memory. */
struct tg_children {
    _Atomic unsigned generation; /* bumped at every claim and release */
    _Atomic unsigned overflow;   /* children that found the table full */
    _Atomic int used;            /* entries ever claimed: the rest were never touched */
    int pad;
    struct tg_child entry[TG_MAX_CHILDREN];
};

/* The file: header, the live counter block, the document.  The document's
 * texts: the report's JSON members that only change at events (platform,
 * settings, applied, failures), the headroom at start as a JSON object, and
 * the exit table's lines about settings and start-up. */
struct tg_published {
    struct tg_published_header header;
    struct tg_children children;
    struct tg_counter_block block;
    char doc[TG_DOC_SIZE];
};

/* This process's published file (NULL when nothing is published). */
TG_HIDDEN struct tg_published *tg_published_self(void);
/* The directory's path and a process's file name in it, without printf. */
TG_HIDDEN void tg_publish_file_path(char *buf, size_t size, int pid, long long start);

/* Create this process's file and move the counter block into it (at
 * initialisation, before any thread is counted).  Nothing under secure
 * execution, with THREADGUARD_PUBLISH=0, or where the directory is not
 * safe; the block then stays private. */
TG_HIDDEN void tg_publish_init(void);
/* In a forked child: a file of its own (or private storage), never the
 * parent's.  Runs before the child's counters are reset. */
TG_HIDDEN void tg_publish_after_fork_in_child(void);
/* Around an exec: the file goes first (the new program may be one
 * threadguard leaves alone, or static, and would leave it behind), and is
 * made again, with the counters so far, when the exec fails. */
TG_HIDDEN void tg_publish_before_exec(void);
TG_HIDDEN void tg_publish_after_failed_exec(void);
/* At exit: the file goes (the mapping stays until the process ends). */
TG_HIDDEN void tg_publish_remove(void);
/* The file's path ("" when nothing is published). */
TG_HIDDEN const char *tg_publish_path(void);

/* Something the document describes changed (a failure, a pool's stack). */
TG_HIDDEN void tg_publish_changed(void);
/* The generation of what changed; the document writer compares it. */
TG_HIDDEN unsigned long long tg_publish_generation(void);
/* Begin rewriting the document: its storage and size, or NULL when nothing
 * is published or another thread is rewriting it (that thread goes round
 * again for this change). */
TG_HIDDEN char *tg_publish_doc_begin(size_t *size);
/* Finish: where the texts start and end, and the header's figures.
 * Returns 1 when the caller must write it again, still holding it
 * (something changed while it wrote). */
TG_HIDDEN int tg_publish_doc_end(unsigned at_start, unsigned budget, unsigned length, int acted,
                                 int mode, long long tasks_at_start);

/* ---- reading another process's file ---------------------------------- */

/* Copy the file at path into *copy and check it: 0, or THREADGUARD_EINVAL
 * with threadguard_last_error() saying in one line why it was rejected.
 * Never maps the file (a truncated mapping would raise SIGBUS), never
 * writes to it.  The copy's strings are all terminated. */
TG_HIDDEN int tg_publish_read(const char *path, struct tg_published *copy);
/* The copy's three document texts. */
struct tg_doc_view {
    const char *json;
    const char *at_start;
    const char *budget;
    int acted;
};
TG_HIDDEN void tg_publish_doc_view(const struct tg_published *copy, struct tg_doc_view *view);

/* Whether this process's last listing of the shared directory (at start,
 * and in a forked child) showed a file of its parent `pid`: 1, 0 (every
 * file was listed, none is the parent's), -1 (cannot say). */
TG_HIDDEN int tg_publish_listed_parent(int pid);

#endif
