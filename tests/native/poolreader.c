/* Test-only stand-in for a threaded library: reads its pool size with
 * getenv and keeps a copy, as BLIS and MKL do when they initialise.  The
 * tests build it under a name that threadguard classifies (libblis...,
 * libmkl...).  The copy matters: a bare `return getenv(name)` compiles to a
 * tail call, and then the return address threadguard sees is the caller's. */
#include <stdlib.h>
#include <string.h>

const char *read_pool_variable(const char *name) {
    static char copy[32];
    const char *value = getenv(name);
    if (value == NULL) return NULL;
    strncpy(copy, value, sizeof copy - 1);
    return copy;
}
