/* The sizing policy's figures (policy.h): the cost of a thread in address
 * space, the share kept for data, and the policy as JSON for the Python
 * package.  Pure functions of their arguments.
 *
 * Layer: helper.  Calls nothing of threadguard's. */
#include <stdio.h>
#include <unistd.h>

#include "policy.h"

long long tg_thread_cost(int openblas, long long stack, int arenas_capped) {
    long long cost = stack + sysconf(_SC_PAGESIZE);
    if (!arenas_capped) cost += TG_ARENA_COST;
    if (openblas) cost += TG_OPENBLAS_BUFFER_COST;
    return cost;
}

long long tg_address_space_usable(long long as_limit, long long vmsize, int arenas) {
    long long left = as_limit - vmsize - (long long)arenas * TG_ARENA_COST;
    return left > 0 ? left - left / TG_DATA_SHARE : 0;
}

int tg_growth_leaking(long long steps, long long settled, long long live, long long created,
                      long long created_settled, long long bound) {
    long long grown = live - settled;
    if (steps < TG_LEAK_STEPS || grown < TG_LEAK_GROWTH || live < 2 * settled) return 0;
    if (live <= bound) return 0;
    return 2 * grown >= created - created_settled;
}

/* The variables the library answers (getenv) as pool sizes, and as caps
 * on every thread of a runtime; limit() in Python sets the first ones. */
static const char *const pool_variables[] = {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                             "MKL_NUM_THREADS", "BLIS_NUM_THREADS", NULL};
static const char *const cap_variables[] = {"OMP_THREAD_LIMIT", "NUMEXPR_MAX_THREADS", NULL};

/* names as the items of a JSON list into out. */
static void json_names(const char *const *names, char *out, size_t size) {
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; names[i] != NULL; i++) {
        int n = snprintf(out + used, size - used, "%s\"%s\"", i ? ", " : "", names[i]);
        if (n < 0 || (size_t)n >= size - used) break;
        used += (size_t)n;
    }
}

long long tg_policy_json(char *buffer, size_t size) {
    char pools[256], caps[128];
    json_names(pool_variables, pools, sizeof pools);
    json_names(cap_variables, caps, sizeof caps);
    int n = snprintf(buffer, size,
                     "{\"reserve\": %d, \"max_pool_threads\": %d, \"arena_bytes\": %lld, "
                     "\"capped_arenas\": %d, \"openblas_buffer_bytes\": %lld, "
                     "\"data_share\": %d, \"limits\": {\"nproc\": \"%s\", \"pids\": \"%s\", "
                     "\"kernel\": \"%s\", \"address_space\": \"%s\", \"budget\": \"%s\"}, "
                     "\"pool_variables\": [%s], \"cap_variables\": [%s], "
                     "\"leak\": {\"quiet_ms\": %d, \"steps\": %d, \"growth\": %d}}",
                     TG_RESERVE, TG_MAX_POOL_THREADS, (long long)TG_ARENA_COST, TG_CAPPED_ARENAS,
                     (long long)TG_OPENBLAS_BUFFER_COST, TG_DATA_SHARE, TG_LIMIT_NPROC,
                     TG_LIMIT_PIDS, TG_LIMIT_KERNEL, TG_LIMIT_AS, TG_LIMIT_BUDGET, pools, caps,
                     TG_GROWTH_QUIET_MS, TG_LEAK_STEPS, TG_LEAK_GROWTH);
    return n < 0 ? -1 : n;
}
