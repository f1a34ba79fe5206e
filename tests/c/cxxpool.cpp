// A shared library that starts threads with std::thread, as torch's
// inter-op pool does: threadguard must count them under this library, not
// under libstdc++ (whose _M_start_thread calls pthread_create).
#include <thread>
#include <vector>

extern "C" __attribute__((visibility("default"))) void cxxpool_run(int n) {
    std::vector<std::thread> pool;
    for (int i = 0; i < n; i++) pool.emplace_back([] {});
    for (auto &t : pool) t.join();
}
