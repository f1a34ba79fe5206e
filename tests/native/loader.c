/* A test library built with RUNPATH=$ORIGIN/sub: loader_run(name, n) opens
 * the library `name` by bare name, as a plugin loader does (found only
 * through this library's RUNPATH), and runs its spawner_run(n). */
#include <dlfcn.h>
#include <stddef.h>

int loader_run(const char *name, int n) {
    void *handle = dlopen(name, RTLD_NOW);
    if (handle == NULL) return -1;
    int (*run)(int) = (int (*)(int))dlsym(handle, "spawner_run");
    return run ? run(n) : -2;
}
