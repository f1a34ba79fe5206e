/* crowd UID N: N sleeping processes of another user, for as long as the
 * caller keeps this one's standard input open.
 *
 * bench_node_scale.py (and its test) fill the node with them: counting a
 * user's tasks by walking /proc costs one stat per process on the node,
 * whoever owns it.  Run as root: it raises its soft RLIMIT_NPROC to the
 * hard one, takes UID, forks N children that pause, prints N on stdout and
 * waits.  When stdin closes (the caller is done, or died) it ends the
 * children; each child also ends if this process dies first
 * (PR_SET_PDEATHSIG). */
#define _GNU_SOURCE
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char *end1 = NULL, *end2 = NULL;
    if (argc != 3) {
        fprintf(stderr, "usage: crowd UID N (as root)\n");
        return 2;
    }
    unsigned long uid = strtoul(argv[1], &end1, 10);
    long n = strtol(argv[2], &end2, 10);
    if (*end1 != '\0' || *end2 != '\0' || uid == 0 || n < 0) {
        fprintf(stderr, "crowd: UID must be a uid other than 0 and N a count, not '%s' '%s'\n",
                argv[1], argv[2]);
        return 2;
    }
    /* The uid's own task limit: as high as this process may set it. */
    struct rlimit nproc;
    if (getrlimit(RLIMIT_NPROC, &nproc) == 0 && nproc.rlim_cur != nproc.rlim_max) {
        nproc.rlim_cur = nproc.rlim_max;
        setrlimit(RLIMIT_NPROC, &nproc);
    }
    setpgid(0, 0); /* the children are killed as one group */
    if (setgroups(0, NULL) != 0 || setgid((gid_t)uid) != 0 || setuid((uid_t)uid) != 0) {
        perror("crowd: cannot become the uid (run as root)");
        return 1;
    }
    pid_t self = getpid();
    long made = 0;
    for (; made < n; made++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("crowd: fork");
            break;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != self) _exit(0);
            for (;;) pause();
        }
    }
    printf("%ld\n", made);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    signal(SIGTERM, SIG_IGN);
    kill(0, SIGTERM);
    while (wait(NULL) > 0) {}
    return made == n ? 0 : 1;
}
