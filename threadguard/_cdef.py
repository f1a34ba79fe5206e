"""The C declarations the package uses, as cffi reads them.

They mirror csrc/include/threadguard.h (tests/test_native_api.py keeps the
two in step).  tools/build-ffi compiles them into threadguard/_ffi.py when
the package is built (cffi's out-of-line ABI mode), so importing threadguard
parses no C: this module is read at build time and by the tests only.
"""

CDEF = """
typedef struct threadguard_stats threadguard_stats;
const char *threadguard_version(void);
const char *threadguard_last_error(void);
int threadguard_interposing(void);
int threadguard_stats_take(threadguard_stats **out);
void threadguard_stats_free(threadguard_stats *stats);
int threadguard_stats_rows(const threadguard_stats *stats);
const char *threadguard_stats_name(const threadguard_stats *stats, int row);
const char *threadguard_stats_path(const threadguard_stats *stats, int row);
const char *threadguard_stats_kind(const threadguard_stats *stats, int row);
long long threadguard_stats_get(const threadguard_stats *stats, int row, int field);
long long threadguard_stats_tasks(const threadguard_stats *stats);
long long threadguard_stats_untracked(const threadguard_stats *stats);
long long threadguard_stats_tasks_at_start(const threadguard_stats *stats);
long long threadguard_report_json(char *buffer, size_t size);
const char *threadguard_published_path(void);
long long threadguard_read_published(const char *path, char *buffer, size_t size);
int threadguard_check_setting(const char *name, const char *value);
int threadguard_import_mode(void);
int threadguard_mode(void);
long long threadguard_import_slots(void);
long long threadguard_set_pool_threads(long long threads);
long long threadguard_policy_json(char *buffer, size_t size);
int threadguard_note_unrestored(const void *address, const char *what, long long value, long long was);
long long threadguard_thread_cost(const char *kind, long long stack, int arenas_capped);
long long threadguard_address_space_usable(long long as_limit, long long vmsize, int arenas);
int threadguard_python_site(const char *where);
int threadguard_python_site_set(int site);
"""
