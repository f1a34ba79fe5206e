/* stats.c: snapshots of the counters (output; calls threads.c, registry.c,
 * procfs.c, error.c). */
#ifndef THREADGUARD_STATS_H
#define THREADGUARD_STATS_H

#include "registry.h"

/* A row's growth as the reports show it. */
struct tg_growth_view {
    long long steps, settled;
    int leaking;
};
TG_HIDDEN void tg_growth_view_of(struct tg_growth_view *v, const struct tg_growth *g,
                                 const struct tg_counters *c, long long bound);
/* A snapshot row's growth (NULL past the rows). */
TG_HIDDEN const struct tg_growth_view *tg_stats_growth(const threadguard_stats *s, int row);

/* A snapshot into *out (free with threadguard_stats_free); the library
 * must be initialised. */
TG_HIDDEN int tg_stats_take(threadguard_stats **out);
/* A snapshot of another process's counter block (read from the file it
 * publishes), with its task counts. */
TG_HIDDEN int tg_stats_of_block(threadguard_stats **out, const struct tg_counter_block *block,
                                long long tasks, long long tasks_at_start);
/* A snapshot in static storage, for the exit report (no heap needed). */
TG_HIDDEN const threadguard_stats *tg_stats_at_exit(void);

#endif
