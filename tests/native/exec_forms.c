/* Test-only program: starts a thread (so that threadguard publishes its
 * counters), then replaces itself with `sh -c SCRIPT` through the exec form
 * named by argv[1] (l, lp, le, v, vp, vpe, ve), or, for "fail", execs a
 * path that does not exist and lists its own published file afterwards.
 * The script prints how many published files this pid has. */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

static void *returns(void *arg) { return arg; }

static int own_files(void) {
    char dir[64], prefix[32];
    snprintf(dir, sizeof dir, "/dev/shm/threadguard-%d", (int)getuid());
    snprintf(prefix, sizeof prefix, "%d.", (int)getpid());
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    if (d != NULL) closedir(d);
    return n;
}

int main(int argc, char **argv) {
    pthread_t t;
    if (pthread_create(&t, NULL, returns, NULL) != 0) return 10;
    pthread_join(t, NULL);
    if (argc < 3) return 11;
    const char *form = argv[1], *script = argv[2];
    char *args[] = {"sh", "-c", (char *)script, NULL};
    printf("before: %d\n", own_files());
    fflush(stdout);
    if (strcmp(form, "l") == 0) execl("/bin/sh", "sh", "-c", script, (char *)NULL);
    if (strcmp(form, "lp") == 0) execlp("sh", "sh", "-c", script, (char *)NULL);
    if (strcmp(form, "le") == 0) execle("/bin/sh", "sh", "-c", script, (char *)NULL, environ);
    if (strcmp(form, "v") == 0) execv("/bin/sh", args);
    if (strcmp(form, "vp") == 0) execvp("sh", args);
    if (strcmp(form, "vpe") == 0) execvpe("sh", args, environ);
    if (strcmp(form, "ve") == 0) execve("/bin/sh", args, environ);
    if (strcmp(form, "fail") == 0) {
        execl("/nonexistent/program", "program", (char *)NULL);
        printf("after a failed exec: %d\n", own_files());
        return 0;
    }
    return 12;
}
