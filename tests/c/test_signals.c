/* Signals and pipes (issue: never harm the host).
 *
 *  reentry:      a timer armed before any library's constructor (from the
 *                program's .preinit_array) fires every 50 us; its SIGALRM
 *                handler reads OMP_NUM_THREADS while threadguard initialises
 *                in the same thread.  With pthread_once the handler waited
 *                on its own thread for ever.
 *  reentry_tail: the same with a handler that tail-calls getenv, so the
 *                return address is libc's signal trampoline; each call used
 *                to dlopen libgcc_s to unwind, and the process livelocked.
 *  first_caller: the same timer, and before any constructor the program
 *                churns malloc, free and dlsym: the handler's getenv is the
 *                process's first call into threadguard and interrupts code
 *                that holds malloc's or the loader's lock.  Initialisation
 *                used to run whole inside the handler (dlvsym, mallopt,
 *                pthread_atfork) and could wait on those locks for ever;
 *                only its async-signal-safe first step runs there now.
 *  sigpipe:      stderr is a pipe whose reader has gone; a bad setting's
 *                warning at start and the stderr report must not kill the
 *                program with SIGPIPE (exit 0, as bare).
 *  own_sigpipe:  the program's own write to that pipe still raises SIGPIPE,
 *                as it would bare: threadguard swallows only its own.
 *  stderr_swap:  the program closes fd 2 and opens a data file, which gets
 *                fd 2; the report at exit must not be appended to it.
 *  async_cancel: a thread in asynchronous cancellation is cancelled while it
 *                spins; under ASan (program and library instrumented) this
 *                failed 5 of 5 with "CHECK failed: asan_thread.cpp" from the
 *                trampoline.  Its exit is counted like any other.
 * The three signal cases run TG_SIGNAL_RUNS times each (30 by default)
 * while TG_SIGNAL_LOAD processes (by default one per CPU online, at most
 * 16) spin, so that the handler lands in the windows a busy machine opens:
 * on a quiet machine reentry_tail passed 900 runs in a row, with three busy
 * loops on two cores it hung 2 times in 1,500.  The soak
 * (tools/soak-signals) runs 10,000 of each, on both glibc paths.  sigpipe
 * and own_sigpipe run 30 and 5 times. */
#define _GNU_SOURCE /* RTLD_DEFAULT, on glibc before 2.34 */
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/time.h>

#include "check.h"
#include "host.h"

/* Any thread may take the signal. */
static _Atomic long handled;

static void reading_handler(int sig) {
    (void)sig;
    const char *value = getenv("OMP_NUM_THREADS");
    atomic_fetch_add_explicit(&handled, value != NULL ? 1 : 1, memory_order_relaxed);
}

/* A handler whose call to getenv is a tail call: it returns straight into
 * libc's signal trampoline. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("O2", "omit-frame-pointer")))
#endif
__attribute__((noinline)) char *
tail_handler(void) {
    return getenv("OMP_NUM_THREADS");
}

static void arm_timer(int tail) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = tail ? (void (*)(int))(void (*)(void))tail_handler : reading_handler;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval every = {{0, 50}, {0, 50}};
    setitimer(ITIMER_REAL, &every, NULL);
}

static void disarm_timer(void) {
    struct itimerval off;
    memset(&off, 0, sizeof off);
    setitimer(ITIMER_REAL, &off, NULL);
}

/* Code that holds malloc's lock and the loader's, again and again, with
 * the timer firing: not through getenv, so that the handler's is first. */
static void churn_locks(void) {
    static const char *const names[] = {"printf", "no_such_symbol_here", "malloc", "strlen"};
    for (int i = 0; i < 3000; i++) {
        void *p = malloc((size_t)(16 + (i * 37) % 4000));
        (void)dlsym(RTLD_DEFAULT, names[i % 4]); /* a miss sets dlerror: malloc again */
        free(p);
    }
}

/* Runs before every shared library's constructor, threadguard's included.
 * getenv() is not called here: it would initialise threadguard first. */
static void arm_before_constructors(int argc, char **argv, char **envp) {
    (void)argc, (void)argv;
    for (char **e = envp; *e; e++) {
        if (strcmp(*e, "TG_HOST_CASE=reentry") == 0) arm_timer(0);
        if (strcmp(*e, "TG_HOST_CASE=reentry_tail") == 0) arm_timer(1);
        if (strcmp(*e, "TG_HOST_CASE=first_caller") == 0) {
            arm_timer(0);
            churn_locks();
        }
    }
}
__attribute__((section(".preinit_array"),
               used)) static void (*preinit)(int, char **, char **) = arm_before_constructors;

static void *returns(void *arg) { return arg; }

static int child_reentry(void) {
    /* Work while the timer keeps firing: reads and thread creations. */
    for (int i = 0; i < 2000; i++) (void)getenv("OPENBLAS_NUM_THREADS");
    for (int i = 0; i < 50; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, returns, NULL) == 0) pthread_join(t, NULL);
    }
    disarm_timer();
    return 0;
}

static int child_sigpipe(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, returns, NULL) == 0) pthread_join(t, NULL);
    return 0;
}

static int child_own_sigpipe(void) {
    (void)!write(STDERR_FILENO, "x\n", 2); /* SIGPIPE: default action, as bare */
    return 3;
}

static int child_stderr_swap(void) {
    const char *data = getenv("TG_HOST_DATA");
    close(STDERR_FILENO);
    int fd = open(data, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd != STDERR_FILENO) return 4;
    (void)!write(fd, "data\n", 5);
    pthread_t t;
    if (pthread_create(&t, NULL, returns, NULL) == 0) pthread_join(t, NULL);
    return 0; /* the report is written at exit, after this */
}

/* Frames with arrays: ASan puts redzones around them, which the
 * cancellation's longjmp skips. */
static __attribute__((noinline)) int spin_once(_Atomic unsigned long *spins) {
    char buf[128];
    memset(buf, (int)atomic_load_explicit(spins, memory_order_relaxed), sizeof buf);
    atomic_fetch_add_explicit(spins, 1, memory_order_relaxed);
    return buf[5];
}

static void *spins_async(void *arg) {
    pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, NULL);
    char local[64];
    memset(local, 0, sizeof local);
    for (;;)
        local[atomic_load_explicit((_Atomic unsigned long *)arg, memory_order_relaxed) % 64] +=
            (char)spin_once(arg);
    return NULL;
}

static int child_async_cancel(void) {
    for (int i = 0; i < 5; i++) {
        static _Atomic unsigned long spins;
        atomic_store(&spins, 0);
        pthread_t t;
        if (pthread_create(&t, NULL, spins_async, (void *)&spins) != 0) return 5;
        while (atomic_load(&spins) < 1000) sched_yield();
        pthread_cancel(t);
        void *result = NULL;
        pthread_join(t, &result);
        if (result != PTHREAD_CANCELED) return 6;
    }
    threadguard_stats *s = NULL;
    if (threadguard_stats_take(&s) != 0) return 7;
    long long live = threadguard_stats_get(s, THREADGUARD_TOTAL_ROW, THREADGUARD_LIVE);
    long long created = threadguard_stats_get(s, THREADGUARD_TOTAL_ROW, THREADGUARD_CREATED);
    threadguard_stats_free(s);
    return live == 0 && created == 5 ? 0 : 8;
}

/* stderr: a pipe whose reading end is already closed. */
static int broken_pipe(void) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    close(fds[0]);
    return fds[1];
}

static void repeat(const char *name, const char *const *env, int times, int want_signal) {
    char why[64];
    int bad = 0, first = 0;
    for (int i = 0; i < times; i++) {
        struct host_run run = {name, {NULL}, -1, 60};
        for (int e = 0; env[e]; e++) run.env[e] = env[e];
        int pipe_fd = -1;
        if (want_signal >= 0) run.stderr_fd = pipe_fd = broken_pipe();
        int status = host_run_case(&run);
        if (pipe_fd >= 0) close(pipe_fd);
        int ok =
            want_signal > 0
                ? status != HOST_TIMED_OUT && WIFSIGNALED(status) && WTERMSIG(status) == want_signal
                : status != HOST_TIMED_OUT && WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && bad++ == 0) first = status;
        if (bad == 2) break; /* a hang costs the timeout: two are proof enough */
    }
    CHECK(bad == 0, "%s: %d runs failed (stopped at 2) of %d; the first %s", name, bad, times,
          host_describe(first, why, sizeof why));
}

#if !defined(__SANITIZE_THREAD__)
/* A whole number from the environment, or fallback. */
static int number_from(const char *name, int fallback) {
    const char *text = getenv(name);
    if (text == NULL || *text == '\0') return fallback;
    char *end = NULL;
    long n = strtol(text, &end, 10);
    if (*end != '\0' || n < 0 || n > 10000000) {
        fprintf(stderr, "%s='%s' is not a whole number; using %d\n", name, text, fallback);
        return fallback;
    }
    return (int)n;
}

/* The load generator: processes that spin until killed, at the cases'
 * priority, so that the cases' processes are preempted at arbitrary
 * points. */
static int start_load(pid_t *pids, int n) {
    int started = 0;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0)
            for (volatile unsigned long x = 0;; x++) {}
        if (pid > 0) pids[started++] = pid;
    }
    return started;
}

static void stop_load(const pid_t *pids, int n) {
    for (int i = 0; i < n; i++) kill(pids[i], SIGKILL);
    for (int i = 0; i < n; i++) waitpid(pids[i], NULL, 0);
}
#endif

static void check_stderr_swap(void) {
    char data[] = "/tmp/threadguard-swap-XXXXXX";
    int fd = mkstemp(data);
    if (fd >= 0) close(fd);
    char env_data[128];
    snprintf(env_data, sizeof env_data, "TG_HOST_DATA=%s", data);
    struct host_run run = {"stderr_swap", {"THREADGUARD_REPORT=stderr", env_data, NULL}, -1, 60};
    int status = host_run_case(&run);
    char why[64], text[4096] = "";
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "stderr_swap: %s",
          host_describe(status, why, sizeof why));
    fd = open(data, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, text, sizeof text - 1) : -1;
    text[n > 0 ? n : 0] = '\0';
    if (fd >= 0) close(fd);
    unlink(data);
    CHECK(strcmp(text, "data\n") == 0, "the program's data file got threadguard's output: [%s]",
          text);
}

int main(void) {
    const char *which = getenv("TG_HOST_CASE");
    if (which != NULL) {
        if (strcmp(which, "reentry") == 0 || strcmp(which, "reentry_tail") == 0 ||
            strcmp(which, "first_caller") == 0)
            return child_reentry();
        if (strcmp(which, "sigpipe") == 0) return child_sigpipe();
        if (strcmp(which, "own_sigpipe") == 0) return child_own_sigpipe();
        if (strcmp(which, "stderr_swap") == 0) return child_stderr_swap();
        if (strcmp(which, "async_cancel") == 0) return child_async_cancel();
        return 99;
    }
    static const char *const none[] = {NULL};
    static const char *const noisy[] = {"THREADGUARD_STACK=abc", "THREADGUARD_REPORT=stderr",
                                        "THREADGUARD_DEBUG=1", NULL};
#if defined(__SANITIZE_THREAD__)
    /* ThreadSanitizer defers asynchronous signals to its own interception
     * points, so the handler runs where TSan chooses, not during our
     * initialisation as natively (and it then initialises threadguard inside
     * the handler, which TSan reports as signal-unsafe).  The plain and
     * ASan builds run these. */
    fprintf(stderr, "reentry, reentry_tail: skipped under ThreadSanitizer (it defers "
                    "signals)\n");
#else
    int runs = number_from("TG_SIGNAL_RUNS", 30);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    int spinners = number_from("TG_SIGNAL_LOAD", online > 16 ? 16 : online > 0 ? (int)online : 1);
    pid_t load[16];
    int started = start_load(load, spinners > 16 ? 16 : spinners);
    repeat("reentry", none, runs, -1);
    repeat("reentry_tail", none, runs, -1);
    repeat("first_caller", none, runs, -1);
    stop_load(load, started);
    if (getenv("TG_SIGNAL_ONLY") != NULL) { /* the soak: tools/soak-signals counts this line */
        printf("signal cases: %d runs of each, %d failed checks\n", runs, check_failures);
        return check_failures;
    }
#endif
    repeat("sigpipe", noisy, 30, 0);
    repeat("own_sigpipe", noisy, 5, SIGPIPE);
    check_stderr_swap();
    repeat("async_cancel", none, 5, -1);
    return check_failures;
}
