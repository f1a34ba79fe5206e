/* The running glibc's optional facilities, found at run time.
 *
 * The wheels link against a glibc 2.17 baseline, so the library loads on
 * every glibc since (CentOS 7 on).  Anything newer is looked up here once,
 * at initialisation, with dlvsym, and each has a fallback:
 *
 *   _dl_find_object (2.35)        lock-free attribution; else threadguard's
 *                                 own table (objects.c), also lock-free
 *   strerrorname_np (2.32),       errno names and texts for the report; else
 *   strerrordesc_np (2.32)        a table of the errnos thread creation and
 *                                 file writes give
 *   pthread_getattr_default_np,   the default thread stack; else glibc's own
 *   pthread_setattr_default_np    rule (RLIMIT_STACK at start, a fixed
 *   (2.18)                        size if unlimited), and a stack chosen by
 *                                 threadguard reaches only threads created
 *                                 without attributes: a limitation the
 *                                 report and the doctor state in one line
 *
 * Before 2.34 libpthread and libdl are separate libraries: the build links
 * them (CMake's Threads and CMAKE_DL_LIBS), and pthread_create is looked up
 * in whichever object defines it.
 *
 * THREADGUARD_TEST_GLIBC=2.N (tests only) treats facilities newer than 2.N
 * as absent, so the fallbacks run, and are tested, on a new glibc too.
 *
 * Layer: state.  Calls config.c, error.c and objects.c. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <gnu/libc-version.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "glibc.h"

#include "config.h"
#include "error.h"
#include "objects.h"

struct tg_glibc tg_glibc;

/* "2.31" -> 31; -1 when not of that form. */
static int minor_of(const char *version) {
    if (version == NULL || version[0] != '2' || version[1] != '.') return -1;
    int minor = 0, digits = 0;
    for (const char *p = version + 2; *p >= '0' && *p <= '9' && digits < 4; p++, digits++)
        minor = minor * 10 + (*p - '0');
    return digits ? minor : -1;
}

/* The symbol at the glibc version that introduced it, or NULL when the
 * running glibc (or the one the tests pretend to run) is older. */
static void *facility(const char *name, const char *version) {
    if (tg_glibc.pretend_minor >= 0 && minor_of(version + 6) > tg_glibc.pretend_minor) return NULL;
    return dlvsym(RTLD_DEFAULT, name, version);
}

/* glibc's default thread stack when it cannot be asked: nptl takes
 * RLIMIT_STACK at start, a fixed size when that is unlimited or unusable,
 * rounded up to whole pages.  Measured with RLIMIT_STACK unlimited in the
 * Debian 11 roots (glibc 2.31): 2 MiB on x86-64, 8 MiB on aarch64. */
#if defined(__aarch64__)
#define ARCH_STACK_DEFAULT (8 * TG_MIB)
#else
#define ARCH_STACK_DEFAULT (2 * TG_MIB)
#endif

static long long stack_from_rlimit(void) {
    struct rlimit r;
    long long size;
    if (getrlimit(RLIMIT_STACK, &r) != 0 || r.rlim_cur == RLIM_INFINITY)
        size = ARCH_STACK_DEFAULT;
    else
        size = (long long)r.rlim_cur;
    if (size < 16 * TG_KIB) size = 16 * TG_KIB;
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0) size = (size + page - 1) / page * page;
    return size;
}

void tg_glibc_init(void) {
    const char *running = gnu_get_libc_version();
    snprintf(tg_glibc.version, sizeof tg_glibc.version, "%s", running ? running : "unknown");
    tg_glibc.pretend_minor = -1;
    const char *pretend = tg_environ_get("THREADGUARD_TEST_GLIBC");
    if (pretend != NULL) {
        tg_glibc.pretend_minor = minor_of(pretend);
        if (tg_glibc.pretend_minor < 0)
            tg_warn("THREADGUARD_TEST_GLIBC='%.20s' is not a version like 2.17; ignored", pretend);
        else
            snprintf(tg_glibc.version, sizeof tg_glibc.version, "2.%d (test)",
                     tg_glibc.pretend_minor);
    }
    tg_glibc.stack_at_start = stack_from_rlimit();
}

void tg_glibc_complete(void) {
    /* dlvsym takes the loader's lock and may allocate: initialisation's
     * second step, never in a signal handler.  Until then each facility is
     * absent and its fallback answers. */
    tg_glibc.errno_name = (tg_errno_text_fn)facility("strerrorname_np", "GLIBC_2.32");
    tg_glibc.errno_desc = (tg_errno_text_fn)facility("strerrordesc_np", "GLIBC_2.32");
    tg_getattr_fn getattr = (tg_getattr_fn)facility("pthread_getattr_default_np", "GLIBC_2.18");
    tg_setattr_fn setattr = (tg_setattr_fn)facility("pthread_setattr_default_np", "GLIBC_2.18");
    if (getattr != NULL && setattr != NULL) {
        tg_glibc.getattr_default = getattr;
        tg_glibc.setattr_default = setattr;
    }
    __atomic_store_n(&tg_glibc.find_object,
                     (tg_find_object_fn)facility("_dl_find_object", "GLIBC_2.35"),
                     __ATOMIC_RELEASE);
}

int tg_glibc_set_default_stack(long long bytes) {
    if (tg_glibc.setattr_default != NULL) {
        pthread_attr_t attr;
        if (tg_glibc.getattr_default(&attr) != 0) return -1;
        int rc = pthread_attr_setstacksize(&attr, (size_t)bytes);
        if (rc == 0) rc = tg_glibc.setattr_default(&attr);
        pthread_attr_destroy(&attr);
        return rc == 0 ? 0 : -1;
    }
    /* glibc < 2.18: the wrapper gives this stack to threads created
     * without attributes (tg_glibc_attr_for); others keep glibc's. */
    __atomic_store_n(&tg_glibc.stack_override, bytes, __ATOMIC_RELEASE);
    return 0;
}

long long tg_default_stack(void) {
    if (tg_glibc.getattr_default != NULL) {
        pthread_attr_t attr;
        size_t size = 0;
        if (tg_glibc.getattr_default(&attr) != 0) return 8 * TG_MIB;
        pthread_attr_getstacksize(&attr, &size);
        pthread_attr_destroy(&attr);
        return size ? (long long)size : 8 * TG_MIB;
    }
    long long override = __atomic_load_n(&tg_glibc.stack_override, __ATOMIC_ACQUIRE);
    return override > 0 ? override : tg_glibc.stack_at_start;
}

const pthread_attr_t *tg_glibc_attr_for(const pthread_attr_t *attr, pthread_attr_t *scratch) {
    if (attr != NULL) return attr;
    long long override = __atomic_load_n(&tg_glibc.stack_override, __ATOMIC_ACQUIRE);
    if (override <= 0) return NULL;
    /* pthread_attr_init and setstacksize only fill the caller's struct:
     * nothing is allocated on the create path. */
    if (pthread_attr_init(scratch) != 0) return NULL;
    if (pthread_attr_setstacksize(scratch, (size_t) override) != 0) {
        pthread_attr_destroy(scratch);
        return NULL;
    }
    return scratch;
}

/* ---- errno names and texts ------------------------------------------- */

/* The errnos thread creation, rlimits and report writing give, untranslated
 * (glibc's strerror goes through gettext, which may allocate). */
static const struct {
    int code;
    const char *name;
    const char *text;
} errno_table[] = {
    {EPERM, "EPERM", "Operation not permitted"},
    {ENOENT, "ENOENT", "No such file or directory"},
    {ESRCH, "ESRCH", "No such process"},
    {EINTR, "EINTR", "Interrupted system call"},
    {EIO, "EIO", "Input/output error"},
    {ENXIO, "ENXIO", "No such device or address"},
    {EBADF, "EBADF", "Bad file descriptor"},
    {EAGAIN, "EAGAIN", "Resource temporarily unavailable"},
    {ENOMEM, "ENOMEM", "Cannot allocate memory"},
    {EACCES, "EACCES", "Permission denied"},
    {EFAULT, "EFAULT", "Bad address"},
    {EBUSY, "EBUSY", "Device or resource busy"},
    {EEXIST, "EEXIST", "File exists"},
    {ENODEV, "ENODEV", "No such device"},
    {ENOTDIR, "ENOTDIR", "Not a directory"},
    {EISDIR, "EISDIR", "Is a directory"},
    {EINVAL, "EINVAL", "Invalid argument"},
    {ENFILE, "ENFILE", "Too many open files in system"},
    {EMFILE, "EMFILE", "Too many open files"},
    {ETXTBSY, "ETXTBSY", "Text file busy"},
    {EFBIG, "EFBIG", "File too large"},
    {ENOSPC, "ENOSPC", "No space left on device"},
    {EROFS, "EROFS", "Read-only file system"},
    {EPIPE, "EPIPE", "Broken pipe"},
    {ERANGE, "ERANGE", "Numerical result out of range"},
    {EDEADLK, "EDEADLK", "Resource deadlock avoided"},
    {ENAMETOOLONG, "ENAMETOOLONG", "File name too long"},
    {ENOSYS, "ENOSYS", "Function not implemented"},
    {ELOOP, "ELOOP", "Too many levels of symbolic links"},
    {EOVERFLOW, "EOVERFLOW", "Value too large for defined data type"},
    {ENOTSUP, "ENOTSUP", "Operation not supported"},
    {EDQUOT, "EDQUOT", "Disk quota exceeded"},
};

static int errno_index(int error) {
    for (unsigned i = 0; i < sizeof errno_table / sizeof errno_table[0]; i++)
        if (errno_table[i].code == error) return (int)i;
    return -1;
}

const char *tg_errno_name(int error) {
    const char *name = tg_glibc.errno_name ? tg_glibc.errno_name(error) : NULL;
    if (name != NULL) return name;
    int i = errno_index(error);
    return i >= 0 ? errno_table[i].name : NULL;
}

const char *tg_errno_text(int error) {
    const char *text = tg_glibc.errno_desc ? tg_glibc.errno_desc(error) : NULL;
    if (text != NULL) return text;
    int i = errno_index(error);
    return i >= 0 ? errno_table[i].text : NULL;
}

/* ---- what this glibc lacks, and what does not work here ------------------ */

int tg_glibc_fallbacks(const char **lines, int max) {
    int n = 0;
    if (__atomic_load_n(&tg_glibc.find_object, __ATOMIC_ACQUIRE) == NULL && n < max)
        lines[n++] = "_dl_find_object (2.35): threadguard's object table";
    if ((tg_glibc.errno_name == NULL || tg_glibc.errno_desc == NULL) && n < max)
        lines[n++] = "strerrorname_np (2.32): threadguard's errno table";
    if (tg_glibc.setattr_default == NULL && n < max)
        lines[n++] = "pthread_setattr_default_np (2.18): stack given at pthread_create";
    return n;
}

int tg_glibc_limitations(const char **lines, int max) {
    int n = 0;
    if (tg_glibc.setattr_default == NULL && n < max)
        lines[n++] = "glibc before 2.18 has no pthread_setattr_default_np: a thread stack set "
                     "by threadguard (THREADGUARD_STACK, or 1M under RLIMIT_AS) reaches only "
                     "threads created without attributes (OpenBLAS, std::thread); libgomp and "
                     "Python threads keep glibc's default";
    return n;
}

/* ---- the loader: which pthread_create is whose ------------------------ */

static _Atomic(tg_create_fn) real_create;

/* Resolve the next pthread_create in the chain.  dlsym(RTLD_NEXT) keeps an
 * interposer after us (a sanitizer runtime, another preload) in the chain;
 * dlvsym with a version skips unversioned interposers and would jump
 * straight to libc.  Where both land in the same object (libc or
 * libpthread), take the newest versioned symbol.  Racing threads resolve the
 * same pointer, so a plain atomic store is enough. */
tg_create_fn tg_real_create(void) {
    tg_create_fn fn = atomic_load_explicit(&real_create, memory_order_acquire);
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
    fn = (tg_create_fn)chosen;
    atomic_store_explicit(&real_create, fn, memory_order_release);
    return fn;
}

/* Compared by object, not by symbol: this file cannot name the wrapper
 * (interpose.c sits above it), and no other pthread_create lives here. */
int tg_in_this_library(const void *addr) {
    Dl_info a, b;
    return addr != NULL && dladdr(addr, &a) != 0 &&
           dladdr((const void *)tg_in_this_library, &b) != 0 && a.dli_fbase == b.dli_fbase;
}

void tg_use_process_create(void) {
    void *process_create = dlsym(RTLD_DEFAULT, "pthread_create");
    if (process_create != NULL && !tg_in_this_library(process_create))
        atomic_store_explicit(&real_create, (tg_create_fn)process_create, memory_order_release);
}

int tg_interposing(void) {
    /* Read once: the order of the global scope's first objects never
     * changes.  An interceptor (a sanitizer runtime) may come first and call
     * ours through RTLD_NEXT: what matters is that we come before libc. */
    static _Atomic int answer = -1;
    int known = atomic_load_explicit(&answer, memory_order_relaxed);
    if (known >= 0) return known;
    known = tg_objects_before_libc();
    atomic_store_explicit(&answer, known, memory_order_relaxed);
    return known;
}
