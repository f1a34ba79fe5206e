/* A test library for the table tests: built as a stand-in OpenMP runtime
 * (omp_set_num_threads records what it was given) and under names that make
 * it "other" or "openblas" (tables_ask reads OPENBLAS_NUM_THREADS as
 * OpenBLAS does at load). */
#include <pthread.h>
#include <stdlib.h>

static int omp_value;

void omp_set_num_threads(int n) { omp_value = n; }
int tables_omp_value(void) { return omp_value; }

/* Not a tail call: the return address must be in this library. */
static const char *volatile asked;
int tables_ask(void) {
    asked = getenv("OPENBLAS_NUM_THREADS");
    return asked != NULL;
}

static void *returns(void *arg) { return arg; }

int tables_spawn(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, returns, NULL) != 0) return -1;
    pthread_join(t, NULL);
    return 0;
}
