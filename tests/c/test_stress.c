/* Many threads creating and joining thousands of threads at once: the
 * totals must come out exact. */
#include <pthread.h>
#include <stdlib.h>

#include "check.h"

#define SPAWNERS 8

static int per_spawner = 2000;

static void *leaf(void *arg) { return arg; }

static void *spawner(void *arg) {
    (void)arg;
    for (int i = 0; i < per_spawner; i++) {
        pthread_t t[4];
        int n = 0;
        /* Up to four in flight per spawner, so creations and exits overlap. */
        for (; n < 4 && i + n < per_spawner; n++) pthread_create(&t[n], NULL, leaf, NULL);
        for (int k = 0; k < n; k++) pthread_join(t[k], NULL);
        i += n - 1;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) per_spawner = atoi(argv[1]);
    pthread_t s[SPAWNERS];
    for (int i = 0; i < SPAWNERS; i++) pthread_create(&s[i], NULL, spawner, NULL);
    for (int i = 0; i < SPAWNERS; i++) pthread_join(s[i], NULL);

    long long want = SPAWNERS + (long long)SPAWNERS * per_spawner;
    CHECK(total(THREADGUARD_CREATED) == want, "created %lld, want %lld", total(THREADGUARD_CREATED),
          want);
    CHECK(total(THREADGUARD_LIVE) == 0, "live %lld", total(THREADGUARD_LIVE));
    CHECK(total(THREADGUARD_FAILED) == 0, "failed %lld", total(THREADGUARD_FAILED));
    long long peak = total(THREADGUARD_PEAK);
    CHECK(peak >= 2 && peak <= SPAWNERS * 5, "peak %lld outside [2, %d]", peak, SPAWNERS * 5);
    CHECK(counter_of_kind("main", THREADGUARD_CREATED) == want, "main row %lld",
          counter_of_kind("main", THREADGUARD_CREATED));
    if (check_failures == 0) printf("test_stress: %lld threads counted exactly\n", want);
    return check_failures != 0;
}
