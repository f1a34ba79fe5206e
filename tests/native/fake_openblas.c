/* Test-only stand-in for OpenBLAS's thread-count variables (its file name
 * says "openblas", so threadguard takes it for one): a pool of 8 configured
 * at load, its server down (as after fork).  Built twice: with the
 * variables exported, and with them hidden (TG_HIDE_INTERNALS), where only
 * the file's symbol table names them (numpy 2.5's wheel).  Never shipped. */
#include <stdlib.h>

#ifdef TG_HIDE_INTERNALS
#define INTERNAL __attribute__((visibility("hidden")))
#else
#define INTERNAL __attribute__((visibility("default")))
#endif

INTERNAL int blas_num_threads = 8;
INTERNAL int blas_cpu_number = 8;
INTERNAL int blas_server_avail = 0;

/* OpenBLAS reads its pool size at load: threadguard learns the library here. */
__attribute__((constructor)) static void load(void) {
    const char *volatile value = getenv("OPENBLAS_NUM_THREADS");
    (void)value;
}

/* What a forked child's next parallel call would start and use. */
__attribute__((visibility("default"))) int fake_openblas_threads(void) {
    return blas_num_threads * 1000 + blas_cpu_number;
}

/* Reads the variable again, as a library sizing a pool does: each call is a
 * pool decision threadguard makes for this library (test_node_count). */
__attribute__((visibility("default"))) int fake_openblas_ask(void) {
    /* Not a tail call: threadguard names the asking library by the return
     * address, which must be in this file. */
    const char *volatile value = getenv("OPENBLAS_NUM_THREADS");
    return value != NULL;
}
