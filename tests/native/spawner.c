/* A test library that starts threads through its own pthread_create
 * reference: spawner_run(n) starts and joins n threads.  Built with
 * -DSPAWNER_CONSTRUCTOR_THREADS=N, its constructor also starts N threads
 * that wait until spawner_stop(), as OpenBLAS's does at load. */
#include <pthread.h>
#include <unistd.h>

static void *returns(void *arg) { return arg; }

int spawner_run(int n) {
    int started = 0;
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, returns, NULL) == 0) {
            pthread_join(t, NULL);
            started++;
        }
    }
    return started;
}

#ifdef SPAWNER_CONSTRUCTOR_THREADS
static pthread_t parked_threads[SPAWNER_CONSTRUCTOR_THREADS];
static int parked_count;
static volatile int stop;

static void *parked(void *arg) {
    while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) usleep(1000);
    return arg;
}

__attribute__((constructor)) static void start_parked(void) {
    for (int i = 0; i < SPAWNER_CONSTRUCTOR_THREADS; i++)
        if (pthread_create(&parked_threads[parked_count], NULL, parked, NULL) == 0) parked_count++;
}

int spawner_stop(void) {
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < parked_count; i++) pthread_join(parked_threads[i], NULL);
    return parked_count;
}
#endif
