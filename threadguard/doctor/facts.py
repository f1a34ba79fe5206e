"""What limits threads on this node, for this user: read, never changed.

Every figure is None where it is unknown, unlimited or unreadable; nothing
here needs root or raises on a missing file. The cgroup figures come from
the native library (one cgroup reader, in C); the rest from /proc, the
resource module and psutil.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import psutil

from .. import _native
from .._policy import native_report, rules

__all__ = [
    "THREAD_VARIABLES",
    "AddressSpaceFacts",
    "CpuFacts",
    "Facts",
    "MemoryFacts",
    "TaskFacts",
    "User",
    "default_thread_stack",
    "gather",
    "installed",
    "pool_sizes",
    "read_int",
    "thread_cost",
]

MIB = 1024 * 1024
# The most threads numpy's and SciPy's OpenBLAS builds start (NUM_THREADS=64).
OPENBLAS_MAX = 64


def read_text(path: str) -> Optional[str]:
    """A file's text, or None when it is missing or unreadable."""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def read_int(path: str) -> Optional[int]:
    """The number a file starts with; None when unreadable, "max" or huge."""
    text = read_text(path)
    try:
        value = int(text.split()[0]) if text else None
    except (ValueError, IndexError):
        return None
    return value if value is not None and 0 <= value < 1 << 62 else None


def _limit(which: int) -> Dict[str, Optional[int]]:
    try:
        soft, hard = resource.getrlimit(which)
    except (ValueError, OSError):
        return {"soft": None, "hard": None}
    return {"soft": None if soft == resource.RLIM_INFINITY else soft,
            "hard": None if hard == resource.RLIM_INFINITY else hard}


def default_thread_stack(rlimit_stack: Optional[int]) -> int:
    """The stack glibc gives a new thread by default: RLIMIT_STACK taken at
    start, or 2 MiB when it is unlimited (measured on glibc 2.36)."""
    if rlimit_stack is None:
        return 2 * MIB
    page = os.sysconf("SC_PAGE_SIZE")
    return max(16 * 1024, -(-rlimit_stack // page) * page)


def thread_cost(kind: str, stack: int, arenas_capped: bool) -> int:
    """Address space one new worker of this kind costs, as the library
    counts it when it sizes pools: its stack and guard page, a malloc arena
    while arenas are not capped, and OpenBLAS's buffer."""
    return _native.thread_cost(kind, stack, arenas_capped)


def _cost_is(kind: str, arenas_capped: bool) -> str:
    """What thread_cost() adds up, in words."""
    parts = ["stack", "guard page"]
    if not arenas_capped:
        parts.append(f"{rules().arena_bytes // MIB} MiB malloc arena")
    if kind == "openblas":
        parts.append(f"{rules().openblas_buffer_bytes // MIB} MiB buffer")
    return " + ".join(parts)


def _uid_tasks(uid: int) -> Optional[int]:
    """Tasks (threads) of the real uid, which RLIMIT_NPROC counts."""
    total = 0
    try:
        for proc in psutil.process_iter(["uids", "num_threads"]):
            uids = proc.info.get("uids")
            if uids is not None and uids.real == uid:
                total += proc.info.get("num_threads") or 0
    except (psutil.Error, OSError):
        return None
    return total


def _meminfo() -> Dict[str, Optional[int]]:
    fields: Dict[str, Optional[int]] = {"MemTotal": None, "MemAvailable": None,
                                        "CommitLimit": None, "Committed_AS": None}
    for line in (read_text("/proc/meminfo") or "").splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            try:
                fields[name] = int(rest.split()[0]) * 1024
            except (ValueError, IndexError):
                pass
    return fields


def _cgroup_memory_limit() -> Optional[int]:
    """The tightest memory limit of this process's cgroups (v1 or v2)."""
    best: Optional[int] = None
    for line in (read_text("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            files = [f"/sys/fs/cgroup{path}/memory.max", f"/sys/fs/cgroup/unified{path}/memory.max"]
        elif "memory" in controllers.split(","):
            files = [f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"]
        else:
            continue
        for name in files:
            value = read_int(name)
            if value is not None and (best is None or value < best):
                best = value
    return best


def _physical_cores() -> Optional[int]:
    try:
        cores = psutil.cpu_count(logical=False)
    except (psutil.Error, OSError):
        return None
    return cores if isinstance(cores, int) else None


def _positive(text: Optional[str]) -> Optional[int]:
    """A pool size the way the libraries read one: the leading number, if
    positive ("4" and "4,2" give 4)."""
    head = (text or "").split(",")[0].strip()
    return int(head) if head.isdigit() and int(head) > 0 else None


def pool_sizes(env: Dict[str, str], affinity: int, physical: Optional[int]) -> Dict[str, int]:
    """The pool each library starts here by itself (threads, the calling one
    included), from the environment and the CPUs it sees:

    - OpenBLAS: OPENBLAS_NUM_THREADS, GOTO_NUM_THREADS, OMP_NUM_THREADS or
      the CPUs in the affinity mask, never more than those CPUs nor 64; it
      starts all its workers at import;
    - torch: OMP_NUM_THREADS (capped at the physical cores unless
      MKL_DYNAMIC=FALSE) or the physical cores; its OpenMP workers start at
      the first parallel operation;
    - MKL: MKL_NUM_THREADS, OMP_NUM_THREADS or the physical cores.
    """
    cores = min(physical or affinity, affinity)
    asked = next((n for n in (_positive(env.get(v)) for v in
                              ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"))
                  if n), None)
    openblas = min(asked or affinity, affinity, OPENBLAS_MAX)
    omp = _positive(env.get("OMP_NUM_THREADS"))
    dynamic = env.get("MKL_DYNAMIC", "").strip().lower() not in ("false", "0", "no")
    torch = cores if omp is None else (min(omp, cores) if dynamic else omp)
    mkl = _positive(env.get("MKL_NUM_THREADS")) or omp or cores
    return {"openblas": max(1, openblas), "torch": max(1, torch), "mkl": max(1, mkl)}


# What each variable does, as the libraries read it.
THREAD_VARIABLES: Dict[str, str] = {
    "OMP_NUM_THREADS": "OpenMP teams (torch's libgomp); OpenBLAS and MKL too unless their own "
                       "variable is set; torch caps it at the physical cores unless "
                       "MKL_DYNAMIC=FALSE; read once, at load: setting it after import does "
                       "nothing",
    "OPENBLAS_NUM_THREADS": "OpenBLAS (numpy, SciPy): its pool, never more than the CPUs it "
                            "sees; all workers start at import",
    "GOTO_NUM_THREADS": "OpenBLAS, when OPENBLAS_NUM_THREADS is not set",
    "MKL_NUM_THREADS": "MKL (torch's static MKL, mkl-service)",
    "MKL_DYNAMIC": "FALSE lets MKL and torch use more threads than physical cores",
    "BLIS_NUM_THREADS": "BLIS",
    "NUMEXPR_NUM_THREADS": "numexpr's pool", "NUMEXPR_MAX_THREADS": "numexpr's pool cap",
    "NUMBA_NUM_THREADS": "numba's parallel pool",
    "OMP_THREAD_LIMIT": "every thread one OpenMP runtime may start",
    "OMP_STACKSIZE": "the stack of each OpenMP worker (address space per thread)",
    "OMP_DYNAMIC": "lets OpenMP start fewer threads than asked",
    "MALLOC_ARENA_MAX": "glibc malloc arenas (64 MiB of address space each)",
    "GLIBC_TUNABLES": "glibc settings (glibc.malloc.arena_max, glibc.pthread.stack_cache_size)",
    "SLURM_CPUS_PER_TASK": "CPUs Slurm gave each task (the libraries do not read it; "
                           "threadguard does)",
    "SLURM_CPUS_ON_NODE": "CPUs Slurm gave this job on the node (read by threadguard)",
    "LD_PRELOAD": "libraries loaded first (threadguard's, a shim)",
}


def _environment(env: Dict[str, str]) -> List[Dict[str, Any]]:
    rows = []
    for name in [*THREAD_VARIABLES, *sorted(k for k in env if k.startswith("THREADGUARD_"))]:
        if name not in env:
            continue
        value = env[name]
        effect = THREAD_VARIABLES.get(name, "a threadguard setting (see threadguard run --help)")
        if name.endswith(("_THREADS", "_LIMIT")) and _positive(value) is None:
            effect = ("not a positive number: the libraries ignore it and use their default "
                      f"({effect})")
        rows.append({"name": name, "value": value, "effect": effect})
    return rows


def installed(package: str) -> bool:
    """Whether this interpreter can import package (without importing it)."""
    return _site_dirs(package) is not None


def _site_dirs(package: str) -> Optional[Path]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _libraries(sizes: Dict[str, int], stack: int, arenas_capped: bool) -> List[Dict[str, Any]]:
    """Threaded libraries installed for this interpreter, found without
    importing them (an import would start their threads)."""
    found = []
    for package in ("numpy", "scipy"):
        root = _site_dirs(package)
        if root is None:
            continue
        for path in sorted(glob.glob(str(root.parent / f"{package}.libs" / "*openblas*.so*"))):
            found.append({"package": package, "library": "OpenBLAS", "path": path,
                          "pool": sizes["openblas"], "starts": "at import",
                          "thread_cost": thread_cost("openblas", stack, arenas_capped),
                          "cost_is": _cost_is("openblas", arenas_capped)})
    torch = _site_dirs("torch")
    if torch is not None:
        for path in sorted(glob.glob(str(torch / "lib" / "libgomp*.so*"))):
            found.append({"package": "torch", "library": "OpenMP (libgomp)", "path": path,
                          "pool": sizes["torch"], "starts": "at the first parallel operation",
                          "thread_cost": thread_cost("torch", stack, arenas_capped),
                          "cost_is": _cost_is("torch", arenas_capped)})
    for path in sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*"))):
        found.append({"package": "mkl", "library": "MKL", "path": path, "pool": sizes["mkl"],
                      "starts": "at the first parallel call",
                      "thread_cost": thread_cost("mkl", stack, arenas_capped),
                      "cost_is": _cost_is("mkl", arenas_capped)})
    return found


@dataclass(frozen=True)
class User:
    """Whose limits these are."""

    uid: int
    name: str


@dataclass(frozen=True)
class TaskFacts:
    """The task limits and what counts against them (None: unknown or
    unlimited).  nproc_applies: RLIMIT_NPROC binds this user (not root)."""

    rlimit_nproc_soft: Optional[int]
    rlimit_nproc_hard: Optional[int]
    nproc_applies: bool
    uid_tasks: Optional[int]
    pids_max: Optional[int]
    pids_current: Optional[int]
    threads_max: Optional[int]
    threads_total: Optional[int]
    pid_max: Optional[int]


@dataclass(frozen=True)
class AddressSpaceFacts:
    """The address-space limit, the thread stack it is spent on, and
    whether malloc arenas are capped (MALLOC_ARENA_MAX, GLIBC_TUNABLES)."""

    rlimit_as: Optional[int]
    rlimit_as_hard: Optional[int]
    rlimit_stack: Optional[int]
    default_thread_stack: int
    rlimit_nofile: Optional[int]
    arenas_capped: bool


@dataclass(frozen=True)
class MemoryFacts:
    """Memory: the cgroup's limit and /proc/meminfo's figures, in bytes."""

    cgroup_limit: Optional[int]
    mem_total: Optional[int]
    mem_available: Optional[int]
    overcommit_memory: Optional[int]
    commit_limit: Optional[int]
    committed_as: Optional[int]


@dataclass(frozen=True)
class CpuFacts:
    """The CPUs: the node's, the allocation the library computed and every
    figure it read (sources), and the guarded parent's CPUs this process
    shares (sharing, as the report gives it)."""

    online: Optional[int]
    physical: Optional[int]
    affinity: int
    cgroup_quota: Optional[int]
    slurm_cpus_per_task: Optional[int]
    slurm_cpus_on_node: Optional[int]
    omp_thread_limit: Optional[int]
    allocation: int
    allocation_from: str
    sources: Tuple[Dict[str, Any], ...]
    sharing: Optional[Dict[str, Any]]
    local_ranks: int


@dataclass(frozen=True)
class Facts:
    """Every figure the doctor reports.  platform: the library's report of
    the glibc; environment: the thread variables set, with their effect;
    pools: the pool each library would start; libraries: the threaded
    libraries installed, with the cost of one of their threads."""

    user: User
    platform: Dict[str, Any]
    tasks: TaskFacts
    address_space: AddressSpaceFacts
    memory: MemoryFacts
    cpus: CpuFacts
    environment: Tuple[Dict[str, Any], ...]
    pools: Dict[str, int]
    libraries: Tuple[Dict[str, Any], ...]

    def to_json(self) -> Dict[str, Any]:
        """The facts as the JSON the doctor prints."""
        return asdict(self)


def gather(env: Optional[Dict[str, str]] = None) -> Facts:
    """Every figure the doctor reports, read now."""
    env = dict(os.environ if env is None else env)
    # One native report: the headroom now (cgroup pids and CPU quota, kernel
    # threads, read in C) and the platform (glibc, fallbacks, limitations).
    report = native_report()
    native = report.get("headroom", {}).get("now", {})
    uid = os.getuid()
    try:
        import pwd
        user = pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        user = str(uid)
    nproc = _limit(resource.RLIMIT_NPROC)
    stack_limit = _limit(resource.RLIMIT_STACK)
    stack = default_thread_stack(stack_limit["soft"])
    try:
        affinity = len(os.sched_getaffinity(0))
    except OSError:
        affinity = os.cpu_count() or 1
    physical = _physical_cores()
    memory = _meminfo()
    arenas_capped = "MALLOC_ARENA_MAX" in env or "arena_max" in env.get("GLIBC_TUNABLES", "")
    sizes = pool_sizes(env, affinity, physical)
    address_space = _limit(resource.RLIMIT_AS)
    sharing = native.get("sharing")
    return Facts(
        user=User(uid, user),
        platform=report.get("platform", {}),
        tasks=TaskFacts(
            rlimit_nproc_soft=nproc["soft"], rlimit_nproc_hard=nproc["hard"],
            nproc_applies=uid != 0 and nproc["soft"] is not None,
            uid_tasks=_uid_tasks(uid),
            pids_max=native.get("pids_max"), pids_current=native.get("pids_current"),
            threads_max=native.get("threads_max"), threads_total=native.get("threads_total"),
            pid_max=read_int("/proc/sys/kernel/pid_max")),
        address_space=AddressSpaceFacts(
            rlimit_as=address_space["soft"], rlimit_as_hard=address_space["hard"],
            rlimit_stack=stack_limit["soft"], default_thread_stack=stack,
            rlimit_nofile=_limit(resource.RLIMIT_NOFILE)["soft"],
            arenas_capped=arenas_capped),
        memory=MemoryFacts(
            cgroup_limit=_cgroup_memory_limit(), mem_total=memory["MemTotal"],
            mem_available=memory["MemAvailable"],
            overcommit_memory=read_int("/proc/sys/vm/overcommit_memory"),
            commit_limit=memory["CommitLimit"], committed_as=memory["Committed_AS"]),
        cpus=CpuFacts(
            online=os.cpu_count(), physical=physical, affinity=affinity,
            cgroup_quota=native.get("cpus_quota"),
            slurm_cpus_per_task=native.get("slurm_cpus_per_task"),
            slurm_cpus_on_node=native.get("slurm_cpus_on_node"),
            omp_thread_limit=native.get("omp_thread_limit"),
            allocation=native.get("cpus") or affinity,
            allocation_from=native.get("cpus_from") or "affinity",
            # Every figure the native side read, in its order: which
            # scheduler or launcher spoke, and what each one said.
            sources=tuple({"source": x.get("source"), "cpus": x.get("cpus")}
                          for x in native.get("cpu_sources") or [] if isinstance(x, dict)),
            # The processes this one divides its guarded parent's CPUs with.
            sharing=sharing if isinstance(sharing, dict) else None,
            local_ranks=native.get("local_ranks") or 0),
        environment=tuple(_environment(env)),
        pools=sizes,
        libraries=tuple(_libraries(sizes, stack, arenas_capped)),
    )
