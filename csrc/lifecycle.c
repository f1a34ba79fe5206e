/* The library's lifecycle: lazy initialisation, the constructor, the
 * handler for a forked child and the destructor.  One place, so that
 * dependencies run one way: every entry point (pthread_create, getenv and
 * the setters, import mode, the public functions) calls tg_init here, and
 * this file calls down into the state, policy and output modules, never up.
 *
 * A process that runs Python, or is given a THREADGUARD_* setting,
 * initialises in the constructor.  Any other (loaded into everything: a
 * shell, coreutils, a compiler) starts lazily: the constructor only checks
 * whether to stay out, remembers stderr and registers the fork handlers, and
 * initialisation waits for the first thread, the first pool asking for its
 * size, a fork or a posix_spawn.  Most such programs never initialise.
 *
 * It also defines the exec family: the process's published file goes before
 * its image does (the next program may be static, setuid or skipped, and
 * would leave the file in /dev/shm), and comes back if the exec fails.
 *
 * It also defines _exit and _Exit: a worker that multiprocessing forked ends
 * through os._exit(), which runs no atexit handler and no destructor, yet
 * its report is due and its published file and its place among its
 * parent's children must go, as for a process that returns from main.
 *
 * Layer: lifecycle.  Calls threads.c, registry.c, glibc.c, config.c,
 * shaping.c, forked.c, share.c, failures.c, ledger.c, publish.c, report.c
 * and error.c. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <errno.h>
#include <sched.h>
#include <spawn.h>
#include <stdarg.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "lifecycle.h"

#include "config.h"
#include "error.h"
#include "failures.h"
#include "forked.h"
#include "glibc.h"
#include "ledger.h"
#include "publish.h"
#include "registry.h"
#include "report.h"
#include "shaping.h"
#include "share.h"
#include "threads.h"

/* 0: not started, 1: running, 2: done, STAYED_OUT: threadguard leaves this
 * process alone (tg_config_stays_out), and every entry point falls through
 * to the real function.  Not pthread_once: a signal handler
 * that reads OMP_NUM_THREADS while this thread initialises would wait on
 * itself for ever. */
static _Atomic int init_state;
#define STAYED_OUT 3
/* The second step's state: 0: not started, 1: running, 2: done. */
static _Atomic int complete_state;
/* Set while this thread runs initialise(): a re-entry (a signal handler,
 * a getenv inside glibc) falls through to the real function. */
static __thread volatile int initialising __attribute__((tls_model("initial-exec")));

/* The process whose state this is: a vfork child shares its parent's
 * memory, runs no fork handler, and must not end the parent's state. */
static _Atomic int owner_pid;
static _Atomic int ended;

typedef void (*exit_fn)(int);
static exit_fn real_exit, real_Exit;
typedef int (*execve_fn)(const char *, char *const[], char *const[]);
static _Atomic(execve_fn) real_execve;

static int stderr_known; /* the constructor remembered stderr already */

static void after_fork_in_child(void) {
    atomic_store_explicit(&owner_pid, (int)getpid(), memory_order_relaxed);
    atomic_store_explicit(&ended, 0, memory_order_relaxed);
    /* First: the counters reset below must be the child's own. */
    tg_publish_after_fork_in_child();
    tg_threads_after_fork_in_child();
    tg_registry_reset_counters();
    tg_failures_reset();
    tg_ledger_after_fork_in_child();
    tg_share_register(0, 0);
    tg_forked_child(); /* the pools it inherited, resized to its share */
}

/* Initialisation's first step: all that getenv needs to size a pool.  It
 * may run in a signal handler (a handler's getenv can be the process's first
 * call into threadguard, before any constructor), so it is
 * async-signal-safe: system calls, reads of /proc and the environment, and
 * the published file, with no lock, no dl* call and no malloc.  Objects are
 * found by reading the loader's list (objects.c). */
static void initialise(void) {
    if (!stderr_known) tg_stderr_remember();
    tg_threads_init();
    tg_glibc_init();
    tg_config_load();
    tg_publish_init();                      /* before any thread is counted: the block moves */
    tg_share_register(1, tg_interposing()); /* before the first measurement: it counts siblings */
    tg_registry_init();
    atomic_store_explicit(&owner_pid, (int)getpid(), memory_order_relaxed);
    tg_shaping_init();
}

static void register_fork_handlers(void);

/* The second step: what takes the loader's lock or may allocate (dlsym,
 * dlvsym, dl_iterate_phdr, pthread_atfork, mallopt, setenv).  Run by the
 * constructor and by every entry point but getenv, none of which a signal
 * handler may call: the constructor, pthread_create, the setters, dlclose,
 * import mode and the public functions. */
static void complete(void) {
    tg_glibc_complete();
    tg_registry_complete();
    tg_real_create(); /* resolved now, before any thread needs it */
    real_exit = (exit_fn)dlsym(RTLD_NEXT, "_exit");
    real_Exit = (exit_fn)dlsym(RTLD_NEXT, "_Exit");
    /* execve is async-signal-safe: a handler may call it, so it is never
     * looked up there (until now, the system call stands in). */
    atomic_store_explicit(&real_execve, (execve_fn)dlsym(RTLD_NEXT, "execve"),
                          memory_order_release);
    tg_shaping_complete();
    register_fork_handlers();
    tg_report_publish();
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
int tg_init_answer(void) {
    int state = atomic_load_explicit(&init_state, memory_order_acquire);
    if (state == 2) return 1;
    if (state == STAYED_OUT || initialising) return 0;
    if (state == 0) {
        /* The flag is up before the state says "running" and comes down only
         * after it says "done": a signal handler that reads a variable in
         * between would otherwise wait for an initialisation its own thread
         * cannot finish, and a timer firing faster than that wait (20 ms)
         * livelocked the process (test_signals, reentry). */
        initialising = 1;
        atomic_signal_fence(memory_order_seq_cst);
        int expected = 0;
        if (atomic_compare_exchange_strong_explicit(&init_state, &expected, 1, memory_order_acq_rel,
                                                    memory_order_acquire)) {
            int out = tg_config_stays_out();
            if (!out) initialise();
            atomic_store_explicit(&init_state, out ? STAYED_OUT : 2, memory_order_release);
            atomic_signal_fence(memory_order_seq_cst);
            initialising = 0;
            return !out;
        }
        atomic_signal_fence(memory_order_seq_cst);
        initialising = 0;
    }
    long long until = monotonic_us() + 20000;
    while ((state = atomic_load_explicit(&init_state, memory_order_acquire)) != 2) {
        if (state == STAYED_OUT || monotonic_us() > until) return 0;
        sched_yield();
    }
    return 1;
}

/* Before a fork: the parent initialises (the first step, async-signal-safe:
 * fork may be called from a handler) so that the child finds its published
 * file and shares its CPUs, then notes its inherited pools. */
static void fork_prepare(void) {
    if (!tg_init_answer()) return;
    if (atomic_load_explicit(&complete_state, memory_order_acquire) == 2) tg_forked_prepare();
}

static void fork_child(void) {
    if (atomic_load_explicit(&init_state, memory_order_acquire) == 2) after_fork_in_child();
}

static void register_fork_handlers(void) {
    static _Atomic int registered;
    if (atomic_exchange_explicit(&registered, 1, memory_order_acq_rel) == 0)
        pthread_atfork(fork_prepare, NULL, fork_child);
}

/* Whether the process initialises at start: it runs Python (it may start
 * workers with vfork, which runs no fork handler, and they must find its
 * file), or a setting asks for something from the start (a report, a
 * limit, debug lines).  Loaded into everything, the rest (shells, coreutils,
 * compilers) start lazily, and most never initialise. */
static int starts_eagerly(void) {
    extern char **environ;
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        if (strncmp(*e, "THREADGUARD_", 12) != 0) continue;
        const char *name = *e + 12;
        if (strncmp(name, "OUTPUT=", 7) != 0 && strncmp(name, "SKIP=", 5) != 0 &&
            strncmp(name, "DISABLE=", 8) != 0 && strncmp(name, "TEST_", 5) != 0)
            return 1;
    }
    return dlsym(RTLD_DEFAULT, "Py_Initialize") != NULL;
}

__attribute__((constructor)) static void threadguard_constructor(void) {
    if (atomic_load_explicit(&init_state, memory_order_acquire) != 0 || starts_eagerly()) {
        tg_init(); /* (begun already by an earlier entry point: finished here) */
        return;
    }
    if (tg_config_stays_out()) {
        int expected = 0;
        atomic_compare_exchange_strong_explicit(&init_state, &expected, STAYED_OUT,
                                                memory_order_acq_rel, memory_order_acquire);
        return;
    }
    /* What must be known from the start: which file stderr is (a program
     * may point fd 2 at a data file later), and the fork handlers. */
    tg_stderr_remember();
    stderr_known = 1;
    register_fork_handlers();
}

int tg_init(void) {
    if (!tg_init_answer()) return 0;
    int state = atomic_load_explicit(&complete_state, memory_order_acquire);
    if (state == 2) return 1;
    /* Re-entered from the step itself (dlsym calling back in), or another
     * thread runs it: answer with the first step's state meanwhile. */
    if (initialising) return 1;
    int expected = 0;
    if (atomic_compare_exchange_strong_explicit(&complete_state, &expected, 1, memory_order_acq_rel,
                                                memory_order_acquire)) {
        initialising = 1;
        atomic_signal_fence(memory_order_seq_cst);
        complete();
        atomic_store_explicit(&complete_state, 2, memory_order_release);
        atomic_signal_fence(memory_order_seq_cst);
        initialising = 0;
    }
    return 1;
}

/* What ending the process owes: once, and only in the process that owns
 * this state. */
static void end_process(void) {
    if (atomic_load_explicit(&init_state, memory_order_acquire) != 2 ||
        atomic_load_explicit(&owner_pid, memory_order_relaxed) != (int)getpid() ||
        atomic_exchange_explicit(&ended, 1, memory_order_acq_rel))
        return;
    tg_share_release();
    tg_ledger_release();
    tg_report_at_exit();
    tg_publish_remove();
}

__attribute__((destructor)) static void threadguard_destructor(void) { end_process(); }

__attribute__((noreturn)) static void leave(exit_fn fn, int status) {
    end_process();
    if (fn != NULL) fn(status);
    syscall(SYS_exit_group, status);
    for (;;) pause();
}

THREADGUARD_API void _exit(int status) { leave(real_exit, status); }
THREADGUARD_API void _Exit(int status) { leave(real_Exit ? real_Exit : real_exit, status); }

/* ---- exec ---------------------------------------------------------------- */

/* Take this process's published file away before an exec; 1 when it did.
 * Only in the process that owns the state: a vfork child shares its
 * parent's memory and must leave the parent's file alone. */
static int before_exec(void) {
    if (atomic_load_explicit(&init_state, memory_order_acquire) != 2 ||
        atomic_load_explicit(&owner_pid, memory_order_relaxed) != (int)getpid())
        return 0;
    int saved = errno;
    tg_publish_before_exec();
    errno = saved;
    return 1;
}

/* The exec returned: it failed, and the program goes on. */
static int after_failed_exec(int removed, int rc) {
    if (removed) {
        int saved = errno;
        tg_publish_after_failed_exec();
        errno = saved;
    }
    return rc;
}

/* The next definition of name, looked up on first use (these are not
 * async-signal-safe in glibc either). */
static void *next(void *_Atomic *cache, const char *name) {
    void *fn = atomic_load_explicit(cache, memory_order_acquire);
    if (fn == NULL) {
        fn = dlsym(RTLD_NEXT, name);
        atomic_store_explicit(cache, fn, memory_order_release);
    }
    return fn;
}

THREADGUARD_API int execve(const char *path, char *const argv[], char *const envp[]) {
    execve_fn fn = atomic_load_explicit(&real_execve, memory_order_acquire);
    int removed = before_exec();
    int rc = fn ? fn(path, argv, envp) : (int)syscall(SYS_execve, path, argv, envp);
    return after_failed_exec(removed, rc);
}

typedef int (*execv_fn)(const char *, char *const[]);

THREADGUARD_API int execv(const char *path, char *const argv[]) {
    static void *_Atomic real;
    execv_fn fn = (execv_fn)next(&real, "execv");
    if (fn == NULL) return errno = ENOSYS, -1;
    int removed = before_exec();
    return after_failed_exec(removed, fn(path, argv));
}

THREADGUARD_API int execvp(const char *file, char *const argv[]) {
    static void *_Atomic real;
    execv_fn fn = (execv_fn)next(&real, "execvp");
    if (fn == NULL) return errno = ENOSYS, -1;
    int removed = before_exec();
    return after_failed_exec(removed, fn(file, argv));
}

THREADGUARD_API int execvpe(const char *file, char *const argv[], char *const envp[]) {
    static void *_Atomic real;
    execve_fn fn = (execve_fn)next(&real, "execvpe");
    if (fn == NULL) return errno = ENOSYS, -1;
    int removed = before_exec();
    return after_failed_exec(removed, fn(file, argv, envp));
}

typedef int (*fexecve_fn)(int, char *const[], char *const[]);

THREADGUARD_API int fexecve(int fd, char *const argv[], char *const envp[]) {
    static void *_Atomic real;
    fexecve_fn fn = (fexecve_fn)next(&real, "fexecve");
    if (fn == NULL) return errno = ENOSYS, -1;
    int removed = before_exec();
    return after_failed_exec(removed, fn(fd, argv, envp));
}

/* The execl family, as glibc builds it: the arguments into an array on the
 * stack, then the array form (which the wrappers above handle).  The macro
 * declares argv (with its NULL) in the caller and leaves ap open after it,
 * where execle's environment follows. */
#define ARGV_FROM_LIST(first, argv, ap)                                                            \
    size_t count_ = 1;                                                                             \
    va_start(ap, first);                                                                           \
    while (va_arg(ap, const char *) != NULL) count_++;                                             \
    va_end(ap);                                                                                    \
    char *argv[count_ + 1];                                                                        \
    argv[0] = (char *)(first);                                                                     \
    va_start(ap, first);                                                                           \
    for (size_t i_ = 1; i_ <= count_; i_++) argv[i_] = va_arg(ap, char *)

THREADGUARD_API int execl(const char *path, const char *arg, ...) {
    va_list ap;
    ARGV_FROM_LIST(arg, argv, ap);
    va_end(ap);
    return execv(path, argv);
}

THREADGUARD_API int execlp(const char *file, const char *arg, ...) {
    va_list ap;
    ARGV_FROM_LIST(arg, argv, ap);
    va_end(ap);
    return execvp(file, argv);
}

THREADGUARD_API int execle(const char *path, const char *arg, ...) {
    va_list ap;
    ARGV_FROM_LIST(arg, argv, ap);
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    return execve(path, argv, envp);
}

/* ---- posix_spawn ------------------------------------------------------------ */

/* A lazily started launcher (make, a C program) runs no fork handler when it
 * spawns: it initialises first, so that its children find its file. */
typedef int (*spawn_fn)(pid_t *, const char *, const posix_spawn_file_actions_t *,
                        const posix_spawnattr_t *, char *const[], char *const[]);

THREADGUARD_API int posix_spawn(pid_t *pid, const char *path,
                                const posix_spawn_file_actions_t *actions,
                                const posix_spawnattr_t *attr, char *const argv[],
                                char *const envp[]) {
    static void *_Atomic real;
    spawn_fn fn = (spawn_fn)next(&real, "posix_spawn");
    if (fn == NULL) return ENOSYS;
    tg_init_answer();
    return fn(pid, path, actions, attr, argv, envp);
}

THREADGUARD_API int posix_spawnp(pid_t *pid, const char *file,
                                 const posix_spawn_file_actions_t *actions,
                                 const posix_spawnattr_t *attr, char *const argv[],
                                 char *const envp[]) {
    static void *_Atomic real;
    spawn_fn fn = (spawn_fn)next(&real, "posix_spawnp");
    if (fn == NULL) return ENOSYS;
    tg_init_answer();
    return fn(pid, file, actions, attr, argv, envp);
}
