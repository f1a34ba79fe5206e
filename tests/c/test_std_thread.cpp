// std::thread callers are attributed to the library above libstdc++.
#include <cstdio>
#include <cstring>
#include <thread>

#include "threadguard.h"

extern "C" void cxxpool_run(int n);

static long long created_by(const char *name_prefix) {
    threadguard_stats *s = nullptr;
    if (threadguard_stats_take(&s) != 0) return -1;
    long long n = 0;
    for (int r = 0; r < threadguard_stats_rows(s); r++)
        if (std::strncmp(threadguard_stats_name(s, r), name_prefix, std::strlen(name_prefix)) == 0)
            n += threadguard_stats_get(s, r, THREADGUARD_CREATED);
    threadguard_stats_free(s);
    return n;
}

int main() {
    cxxpool_run(5);
    std::thread own([] {});
    own.join();
    int failures = 0;
    long long pool = created_by("libtg_cxxpool"), stdcxx = created_by("libstdc++");
    long long main_program = created_by("test_std_thread");
    if (pool != 5) std::fprintf(stderr, "libtg_cxxpool created %lld, want 5\n", pool), failures++;
    if (main_program != 1) std::fprintf(stderr, "main created %lld, want 1\n", main_program), failures++;
    if (stdcxx != 0) std::fprintf(stderr, "libstdc++ credited with %lld\n", stdcxx), failures++;
    if (!failures) std::printf("test_std_thread: std::thread attributed past libstdc++\n");
    return failures != 0;
}
