/* A library that leaks a thread on each call: leaky_start() starts a thread
 * that waits until leaky_release() and is never joined (the tests' native
 * leak, named by this library's file). */
#include <pthread.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t released = PTHREAD_COND_INITIALIZER;
static int done;

static void *wait_for_release(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    while (!done) pthread_cond_wait(&released, &lock);
    pthread_mutex_unlock(&lock);
    return NULL;
}

int leaky_start(void) {
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, wait_for_release, NULL);
    pthread_attr_destroy(&attr);
    return rc;
}

void leaky_release(void) {
    pthread_mutex_lock(&lock);
    done = 1;
    pthread_cond_broadcast(&released);
    pthread_mutex_unlock(&lock);
}
