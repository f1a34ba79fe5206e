/* Test-only program linked against libthreadguard (not preloaded: the loader
 * ignores LD_PRELOAD paths in setuid programs).  Made setuid-root by the
 * test and run by another uid, it runs under secure execution (AT_SECURE). */
#include <pthread.h>
#include <stdio.h>

static void *run(void *arg) { return arg; }

int main(void) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, run, NULL) != 0) return 1;
    pthread_join(thread, NULL);
    puts("ran");
    return 0;
}
