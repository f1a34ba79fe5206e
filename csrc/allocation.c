/* The CPU allocation: how many CPUs this process may keep busy, read the way
 * each system that hands out CPUs defines it, every figure kept with its
 * source so the report can show them all.  The smallest figure wins.
 *
 *   affinity, cgroup quota   measured by limits.c (Kubernetes' cpu.max, a
 *                            Slurm step's cpuset, Flux's cpu-affinity)
 *   Slurm    SLURM_CPUS_PER_TASK; SLURM_CPUS_ON_NODE is the job's CPUs on
 *            the node: the task's share only in a one-node job outside a
 *            step, otherwise divided among the tasks on the node
 *            (SLURM_STEP_TASKS_PER_NODE in a step, SLURM_TASKS_PER_NODE in
 *            a multi-node job's batch script)
 *   PBS      PBS_NUM_PPN (Torque), NCPUS (PBS Pro), inside a job (PBS_JOBID)
 *   SGE      NSLOTS in a one-host job, this host's PE_HOSTFILE line otherwise
 *   LSF      this host's count in LSB_MCPU_HOSTS, LSB_DJOB_NUMPROC on one host
 *   Kubernetes  CPU_LIMIT, the downward-API variable (resourceFieldRef
 *            limits.cpu) set in the pod spec: "2", or millicores "1500m"
 *   Python   PYTHON_CPU_COUNT (3.13's override of os.cpu_count)
 *   OpenMP   OMP_THREAD_LIMIT
 *   launchers  ranks started side by side on one node share it: Open MPI
 *            (OMPI_COMM_WORLD_LOCAL_SIZE), MPICH and Intel MPI
 *            (MPI_LOCALNRANKS), MVAPICH2 (MV2_COMM_WORLD_LOCAL_SIZE), Cray
 *            PALS (PALS_LOCAL_SIZE), torchrun, DeepSpeed and Accelerate
 *            (LOCAL_WORLD_SIZE): the job's CPUs divided by the local ranks.
 *            Ranks the launcher bound to CPU sets of their own (an affinity
 *            narrower than the job's CPUs) keep their set when it is no
 *            larger than that share: it is not divided again.
 *   workers  the guarded parent's CPUs divided among its live guarded
 *            children (share.c): a Pool's workers, DataLoader workers, a
 *            fan-out of scripts
 *
 * Nothing here allocates.  A malformed figure is named once on stderr and
 * skipped.
 *
 * Layer: state.  Calls share.c, config.c and error.c. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "allocation.h"

#include "config.h"
#include "error.h"

#define NO_FIGURE (-1)
#define MAX_CPUS 1000000LL

static const char AFFINITY[] = "affinity", QUOTA[] = "cgroup CPU quota";

static void add(struct tg_allocation *a, const char *name, long long cpus) {
    if (cpus <= 0 || a->count >= TG_MAX_CPU_SOURCES) return;
    a->seen[a->count].name = name;
    a->seen[a->count].cpus = cpus;
    a->count++;
    /* On a tie the scheduler's own figure names the source: affinity and
     * the cgroup are how it enforces what it decided. */
    int generic = a->from == AFFINITY || a->from == QUOTA;
    if (a->cpus <= 0 || cpus < a->cpus || (cpus == a->cpus && generic)) {
        a->cpus = cpus;
        a->from = name;
    }
}

/* A whole number from the start of s; *end past its digits.  -1: none. */
static long long number_at(const char *s, const char **end) {
    long long n = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++)
        if ((n = n * 10 + (*p - '0')) > MAX_CPUS) n = MAX_CPUS + 1;
    if (end) *end = p;
    return p == s ? -1 : n;
}

/* Each malformed variable is named once per process, not at every sizing. */
static _Atomic unsigned warned;

static void malformed(unsigned bit, const char *name, const char *value, const char *expected) {
    if (atomic_fetch_or_explicit(&warned, 1u << bit, memory_order_relaxed) & (1u << bit)) return;
    tg_warn("%s='%.40s' is not %s; ignored for the CPU allocation", name, value, expected);
}

enum {
    W_SLURM_PER_TASK,
    W_SLURM_ON_NODE,
    W_PBS_PPN,
    W_PBS_NCPUS,
    W_SGE_NSLOTS,
    W_LSF_NUMPROC,
    W_K8S_CPU_LIMIT,
    W_PYTHON,
    W_OMP_LIMIT,
    W_LOCAL_WORLD,
    W_OMPI,
    W_MPICH,
    W_MV2,
    W_PALS
};

/* Names that carry a figure ("4 workers of pid 1234") live in a ring: a
 * report prints a source's name long after the measurement. */
#define LABELS 32
static char labels[LABELS][80];
static _Atomic unsigned next_label;

/* A variable holding a count of CPUs ("4", trailing blanks allowed):
 * -1 when unset or malformed (named once). */
static long long count_env(const char *name, unsigned bit) {
    const char *v = tg_environ_get(name);
    if (v == NULL) return NO_FIGURE;
    const char *end;
    long long n = number_at(v, &end);
    while (*end == ' ' || *end == '\t' || *end == '\n') end++;
    if (n < 1 || n > MAX_CPUS || *end != '\0') {
        malformed(bit, name, v, "a whole number of CPUs (1 or more)");
        return NO_FIGURE;
    }
    return n;
}

/* The number a variable starts with; -1 when unset or not a number. */
static long long env_number(const char *name) {
    const char *v = tg_environ_get(name);
    return v ? number_at(v, NULL) : NO_FIGURE;
}

static int is_set(const char *name) {
    const char *v = tg_environ_get(name);
    return v != NULL && v[0] != '\0';
}

/* ---- Slurm ------------------------------------------------------------- */

/* Entry `index` of a Slurm per-node list like "4(x2),2": 4, 4, 2. */
static long long slurm_list_at(const char *list, long long index) {
    if (list == NULL || index < 0) return NO_FIGURE;
    const char *p = list;
    while (*p) {
        const char *end;
        long long value = number_at(p, &end);
        if (value < 0) return NO_FIGURE;
        long long repeat = 1;
        if (strncmp(end, "(x", 2) == 0) {
            repeat = number_at(end + 2, &end);
            if (repeat < 1 || *end != ')') return NO_FIGURE;
            end++;
        }
        if (index < repeat) return value;
        index -= repeat;
        if (*end != ',') return NO_FIGURE;
        p = end + 1;
    }
    return NO_FIGURE;
}

static void slurm(struct tg_allocation *a) {
    a->slurm_cpus_per_task = count_env("SLURM_CPUS_PER_TASK", W_SLURM_PER_TASK);
    add(a, "SLURM_CPUS_PER_TASK", a->slurm_cpus_per_task);
    a->slurm_cpus_on_node = count_env("SLURM_CPUS_ON_NODE", W_SLURM_ON_NODE);
    if (a->slurm_cpus_on_node < 0) return;
    long long node = env_number("SLURM_NODEID");
    if (node < 0) node = 0;
    long long nodes = env_number("SLURM_JOB_NUM_NODES");
    if (nodes < 0) nodes = env_number("SLURM_NNODES");
    /* In a step (srun) the step's tasks on this node share its CPUs; in a
     * batch script the script is the one process, unless the job spans
     * nodes, where its tasks per node say what one task gets. */
    const char *tasks_list = NULL;
    if (is_set("SLURM_STEP_ID") && is_set("SLURM_STEP_TASKS_PER_NODE"))
        tasks_list = tg_environ_get("SLURM_STEP_TASKS_PER_NODE");
    else if (nodes > 1)
        tasks_list = tg_environ_get("SLURM_TASKS_PER_NODE");
    if (tasks_list == NULL) {
        if (nodes <= 1) add(a, "SLURM_CPUS_ON_NODE", a->slurm_cpus_on_node);
        return;
    }
    long long tasks = slurm_list_at(tasks_list, node);
    long long here = slurm_list_at(tg_environ_get("SLURM_JOB_CPUS_PER_NODE"), node);
    if (here < 0 || nodes <= 1) here = a->slurm_cpus_on_node;
    if (tasks < 1) return; /* no share known: affinity and the cgroup decide */
    add(a, "SLURM_CPUS_ON_NODE / tasks on the node", here / tasks > 0 ? here / tasks : 1);
}

/* ---- PBS, SGE, LSF ------------------------------------------------------- */

static void pbs(struct tg_allocation *a) {
    if (!is_set("PBS_JOBID")) return;
    add(a, "PBS_NUM_PPN (Torque)", count_env("PBS_NUM_PPN", W_PBS_PPN));
    add(a, "NCPUS (PBS Pro)", count_env("NCPUS", W_PBS_NCPUS));
}

/* Host names match in full or up to the first dot of either. */
static int same_host(const char *name, size_t len, const char *host) {
    size_t hlen = strlen(host);
    if (len == hlen && strncmp(name, host, len) == 0) return 1;
    size_t nshort = len, hshort = hlen;
    const char *dot = memchr(name, '.', len);
    if (dot) nshort = (size_t)(dot - name);
    dot = strchr(host, '.');
    if (dot) hshort = (size_t)(dot - host);
    return nshort == hshort && strncmp(name, host, nshort) == 0;
}

/* SGE's PE_HOSTFILE: "host slots queue processors" per line. */
static long long sge_host_slots(const char *path, const char *host) {
    char buf[8192];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NO_FIGURE;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return NO_FIGURE;
    buf[n] = '\0';
    for (char *line = buf; *line;) {
        char *next = strchr(line, '\n');
        char *space = strchr(line, ' ');
        if (space && (!next || space < next) && same_host(line, (size_t)(space - line), host)) {
            long long slots = number_at(space + 1, NULL);
            if (slots > 0) return slots;
        }
        if (!next) break;
        line = next + 1;
    }
    return NO_FIGURE;
}

/* This machine's name into host ("" when unknown): only SGE and LSF jobs
 * over several hosts need it, so it is not asked at every measurement. */
static void this_host(char *host, size_t size) {
    if (gethostname(host, size - 1) != 0) host[0] = '\0';
    host[size - 1] = '\0';
}

static void sge(struct tg_allocation *a) {
    if (!is_set("JOB_ID") || !is_set("NSLOTS")) return;
    long long hosts = env_number("NHOSTS");
    if (hosts <= 1) {
        add(a, "NSLOTS (SGE)", count_env("NSLOTS", W_SGE_NSLOTS));
        return;
    }
    const char *hostfile = tg_environ_get("PE_HOSTFILE");
    if (hostfile == NULL) return;
    char host[256];
    this_host(host, sizeof host);
    if (host[0]) add(a, "PE_HOSTFILE (SGE)", sge_host_slots(hostfile, host));
}

/* LSB_MCPU_HOSTS: "hostA 4 hostB 2".  Returns this host's count and sets
 * *hosts to how many hosts the list names. */
static long long lsf_host_slots(const char *list, const char *host, int *hosts) {
    long long found = NO_FIGURE;
    *hosts = 0;
    const char *p = list;
    for (;;) {
        while (*p == ' ') p++;
        if (!*p) break;
        const char *name = p;
        while (*p && *p != ' ') p++;
        size_t len = (size_t)(p - name);
        while (*p == ' ') p++;
        const char *end;
        long long slots = number_at(p, &end);
        if (slots < 0) break;
        p = end;
        (*hosts)++;
        if (found < 0 && host[0] && same_host(name, len, host)) found = slots;
    }
    return found;
}

static void lsf(struct tg_allocation *a) {
    if (!is_set("LSB_JOBID")) return;
    int hosts = 0;
    const char *list = tg_environ_get("LSB_MCPU_HOSTS");
    if (list) {
        char host[256];
        this_host(host, sizeof host);
        add(a, "LSB_MCPU_HOSTS (LSF)", lsf_host_slots(list, host, &hosts));
    }
    /* LSB_DJOB_NUMPROC counts the job's slots on every host. */
    if (hosts <= 1) add(a, "LSB_DJOB_NUMPROC (LSF)", count_env("LSB_DJOB_NUMPROC", W_LSF_NUMPROC));
}

/* ---- Kubernetes, Python, OpenMP, torchrun ---------------------------------- */

/* CPU_LIMIT from resourceFieldRef limits.cpu: whole CPUs (rounded up by
 * Kubernetes with the default divisor) or millicores with an "m". */
static void kubernetes(struct tg_allocation *a) {
    if (!is_set("KUBERNETES_SERVICE_HOST")) return;
    const char *v = tg_environ_get("CPU_LIMIT");
    if (v == NULL) return;
    const char *end;
    long long n = number_at(v, &end);
    if (n > 0 && *end == 'm' && end[1] == '\0')
        n = (n + 999) / 1000;
    else if (*end != '\0')
        n = NO_FIGURE;
    if (n < 1 || n > MAX_CPUS) {
        malformed(W_K8S_CPU_LIMIT, "CPU_LIMIT", v, "a number of CPUs like 2 or 1500m");
        return;
    }
    add(a, "CPU_LIMIT (Kubernetes)", n);
}

/* The smallest figure seen that is not the affinity: what the job has on
 * this node by its scheduler's and cgroup's account (the node's CPUs when
 * none says). */
static long long job_cpus(const struct tg_allocation *a) {
    long long least = a->node_cpus;
    for (int i = 0; i < a->count; i++)
        if (a->seen[i].name != AFFINITY && (least <= 0 || a->seen[i].cpus < least))
            least = a->seen[i].cpus;
    return least;
}

/* Ranks on this node divide the job's CPUs.  Unbound ranks each see every
 * CPU of the job: their share is the allocation / ranks.  Ranks a launcher
 * bound (affinity narrower than the job's CPUs: a core, a socket, a set of
 * their own) divide only what is shared: the share is the job's CPUs /
 * ranks, and an affinity already within it stands as it is (the name
 * says so). */
static void local_ranks(struct tg_allocation *a, long long affinity, const char *variable,
                        unsigned warn_bit, const char *launcher) {
    long long ranks = count_env(variable, warn_bit);
    if (ranks <= 1) return;
    if (a->local_ranks == 0) a->local_ranks = (int)ranks;
    int bound = affinity > 0 && a->node_cpus > 0 && affinity < a->node_cpus;
    long long base = bound ? job_cpus(a) : a->cpus;
    if (base <= 0) return;
    long long share = base / ranks > 0 ? base / ranks : 1;
    const char *name;
    if (strcmp(variable, "LOCAL_WORLD_SIZE") == 0 && is_set("TORCHELASTIC_RUN_ID")) {
        name = "torchrun: the allocation / LOCAL_WORLD_SIZE";
    } else {
        unsigned i = atomic_fetch_add_explicit(&next_label, 1, memory_order_relaxed) % LABELS;
        /* Fits: a launcher's name, a count of at most 7 digits, the note. */
        if (snprintf(labels[i], sizeof labels[i], "%s: %lld local ranks%s", launcher, ranks,
                     bound && affinity <= share ? " (bound: the affinity stands)" : "") < 0)
            labels[i][0] = '\0';
        name = labels[i];
    }
    add(a, name, share);
}

/* Each launcher's count of this job's ranks on this node. */
static const struct {
    const char *variable;
    unsigned warn_bit;
    const char *launcher;
} LAUNCHERS[] = {
    {"OMPI_COMM_WORLD_LOCAL_SIZE", W_OMPI, "Open MPI"},
    {"MPI_LOCALNRANKS", W_MPICH, "MPICH/Intel MPI"},
    {"MV2_COMM_WORLD_LOCAL_SIZE", W_MV2, "MVAPICH2"},
    {"PALS_LOCAL_SIZE", W_PALS, "Cray PALS"},
    {"LOCAL_WORLD_SIZE", W_LOCAL_WORLD, "LOCAL_WORLD_SIZE"}, /* torchrun, DeepSpeed, Accelerate */
};
#define LAUNCHER_COUNT (sizeof LAUNCHERS / sizeof LAUNCHERS[0])

int tg_local_ranks_set(void) {
    for (size_t i = 0; i < LAUNCHER_COUNT; i++)
        if (is_set(LAUNCHERS[i].variable)) return 1;
    return 0;
}

static void launchers(struct tg_allocation *a, long long affinity) {
    for (size_t i = 0; i < LAUNCHER_COUNT; i++)
        local_ranks(a, affinity, LAUNCHERS[i].variable, LAUNCHERS[i].warn_bit,
                    LAUNCHERS[i].launcher);
}

/* The guarded parent's CPUs divided among its live guarded children. */
static void workers(struct tg_allocation *a) {
    long long share = tg_share_workers(&a->sharing);
    if (share <= 0) return;
    unsigned i = atomic_fetch_add_explicit(&next_label, 1, memory_order_relaxed) % LABELS;
    if (snprintf(labels[i], sizeof labels[i], "%d worker%s of pid %d", a->sharing.processes,
                 a->sharing.processes == 1 ? "" : "s", a->sharing.parent) < 0)
        labels[i][0] = '\0';
    add(a, labels[i], share);
}

void tg_allocation_measure(struct tg_allocation *a, long long affinity, long long quota,
                           long long node) {
    memset(a, 0, sizeof *a);
    a->cpus = NO_FIGURE;
    a->from = "unknown";
    a->node_cpus = node;

    add(a, is_set("FLUX_JOB_ID") ? "affinity (Flux cpu-affinity)" : AFFINITY, affinity);
    add(a, QUOTA, quota);
    slurm(a);
    pbs(a);
    sge(a);
    lsf(a);
    kubernetes(a);
    const char *python = tg_environ_get("PYTHON_CPU_COUNT");
    if (python == NULL || strcmp(python, "default") != 0) /* "default": no override */
        add(a, "PYTHON_CPU_COUNT", count_env("PYTHON_CPU_COUNT", W_PYTHON));
    a->omp_thread_limit = count_env("OMP_THREAD_LIMIT", W_OMP_LIMIT);
    add(a, "OMP_THREAD_LIMIT", a->omp_thread_limit);
    launchers(a, affinity);
    workers(a);
    if (a->cpus <= 0) {
        a->cpus = 1;
        a->from = "unknown (1 assumed)";
    }
    tg_share_note_cpus(a->cpus); /* what this process's own children divide */
}

/* ---- a launcher's forced pool size ------------------------------------------ */

/* torchrun sets OMP_NUM_THREADS=1 for its workers when its own environment
 * has none; a guarded process can tell that 1 from the user's only by
 * knowing the variable was unset above it.  Each guarded process started by
 * the loader (LD_PRELOAD) marks that in the environment its children
 * inherit, and clears the mark when it was set. */
#define OMP_UNSET_MARK "THREADGUARD_LAUNCH_OMP_UNSET"

static int omp_unset_above;
static int omp_one_at_start;

void tg_allocation_note_start(int may_setenv) {
    omp_unset_above = is_set(OMP_UNSET_MARK);
    const char *omp = tg_environ_get("OMP_NUM_THREADS");
    omp_one_at_start = omp != NULL && strcmp(omp, "1") == 0;
    /* Only at the process's start: setenv races getenv in other threads. */
    if (!may_setenv) return;
    if (omp == NULL && !omp_unset_above)
        setenv(OMP_UNSET_MARK, "1", 1);
    else if (omp != NULL && omp_unset_above)
        unsetenv(OMP_UNSET_MARK);
}

int tg_launcher_forced(const char *variable, const char *value) {
    return omp_unset_above && omp_one_at_start && value != NULL && strcmp(value, "1") == 0 &&
           strcmp(variable, "OMP_NUM_THREADS") == 0 && is_set("TORCHELASTIC_RUN_ID") &&
           env_number("LOCAL_WORLD_SIZE") > 1;
}
