"""Budgets: how many threads a pool gets, from a number or "auto", split among workers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from . import _native
from ._errors import LibraryNotFoundError
from ._profile import read_profile
from ._wording import count

__all__ = ["Allocation", "Decision", "Rules", "Sharing", "Threads", "allocation",
           "decide_threads", "headroom", "native_report", "per_process_threads", "rules"]

Threads = Union[int, str]


@dataclass(frozen=True)
class Rules:
    """The sizing policy, as the native library owns it (policy.h, read
    through threadguard_policy_json): nothing here restates a figure.

    reserve: threads kept free for the program's own when a limit is near;
    max_pool_threads: the largest pool threadguard sizes; arena_bytes,
    capped_arenas, openblas_buffer_bytes: address-space figures; data_share:
    1/data_share of the address space left stays for data; nproc, pids,
    kernel, address_space, budget: the names of the limits, as reports and
    failures give them; pool_variables: the variables each pool reads its
    size from; cap_variables: those that cap every thread of a runtime."""

    reserve: int
    max_pool_threads: int
    arena_bytes: int
    capped_arenas: int
    openblas_buffer_bytes: int
    data_share: int
    nproc: str
    pids: str
    kernel: str
    address_space: str
    budget: str
    pool_variables: Tuple[str, ...]
    cap_variables: Tuple[str, ...]


_rules: Optional[Rules] = None


def rules() -> Rules:
    """The native library's sizing policy (read once).  Raises
    LibraryNotFoundError when the library cannot be loaded."""
    global _rules
    if _rules is None:
        p = _native.policy_json()
        limits = p["limits"]
        _rules = Rules(int(p["reserve"]), int(p["max_pool_threads"]), int(p["arena_bytes"]),
                       int(p["capped_arenas"]), int(p["openblas_buffer_bytes"]),
                       int(p["data_share"]), str(limits["nproc"]), str(limits["pids"]),
                       str(limits["kernel"]), str(limits["address_space"]),
                       str(limits["budget"]), tuple(p["pool_variables"]),
                       tuple(p["cap_variables"]))
    return _rules


def native_report() -> Dict[str, Any]:
    """The native report measured now (its headroom, its platform, ...);
    empty when the library cannot be loaded."""
    try:
        return _native.report_json()
    except (LibraryNotFoundError, OSError, ValueError, MemoryError):
        return {}


def headroom() -> Dict[str, Any]:
    """The native headroom figures measured now (CPUs, task limits, cgroup,
    address space); empty when the library cannot be loaded."""
    now: Dict[str, Any] = native_report().get("headroom", {}).get("now", {})
    return now


@dataclass(frozen=True)
class Sharing:
    """The processes this one shares its guarded parent's CPUs with: the
    parent's pid, the CPUs they divide, how many live guarded children the
    parent has (this process among them) and the first few of their pids."""

    parent: int
    parent_cpus: int
    processes: int
    pids: Tuple[int, ...]

    def __str__(self) -> str:
        more = ", ..." if len(self.pids) < self.processes else ""
        return (f"{count(self.processes, 'process', 'processes')} share pid {self.parent}'s "
                f"{count(self.parent_cpus, 'CPU')} (pids {', '.join(map(str, self.pids))}{more})")


def _sharing(figures: Dict[str, Any]) -> Optional[Sharing]:
    s = figures.get("sharing")
    if not isinstance(s, dict):
        return None
    try:
        return Sharing(int(s["parent"]), int(s["parent_cpus"]), int(s["processes"]),
                       tuple(int(p) for p in s.get("pids") or ()))
    except (KeyError, TypeError, ValueError):
        return None


class Allocation(int):
    """A CPU count that says where it came from: an int, so it is used as
    one, with `source` (the figure that decided: "affinity", "cgroup CPU
    quota", "SLURM_CPUS_PER_TASK", "NCPUS (PBS Pro)", "Open MPI: 4 local
    ranks", "4 workers of pid 1234", ...), `sources` (every figure seen, as
    (source, cpus) pairs, in the order read) and `sharing` (the guarded
    parent whose CPUs this process divides with its siblings, or None)."""

    source: str
    sources: Tuple[Tuple[str, int], ...]
    sharing: Optional[Sharing]

    def __new__(cls, cpus: int, source: str, sources: Tuple[Tuple[str, int], ...] = (),
                sharing: Optional[Sharing] = None) -> "Allocation":
        self = super().__new__(cls, cpus)
        self.source = source
        self.sources = sources
        self.sharing = sharing
        return self

    def __repr__(self) -> str:
        return f"Allocation({int(self)}, source={self.source!r})"

    def __str__(self) -> str:  # a number wherever it is printed or formatted
        return str(int(self))

    __format__ = int.__format__  # (int's, not object's: "{:>4}" works)

    def _repr_html_(self) -> str:
        """The CPUs and every figure seen, as HTML, for Jupyter's rich display."""
        from ._html import allocation_html
        return allocation_html(self)

    def __reduce__(self) -> Any:  # pickles as itself (to a worker and back)
        return (Allocation, (int(self), self.source, self.sources, self.sharing))


def _sources(figures: Dict[str, Any]) -> Tuple[Tuple[str, int], ...]:
    seen = figures.get("cpu_sources")
    if not isinstance(seen, list):
        return ()
    return tuple((str(s["source"]), int(s["cpus"])) for s in seen
                 if isinstance(s, dict) and isinstance(s.get("cpus"), int))


def allocation(figures: Optional[Dict[str, Any]] = None) -> Allocation:
    """CPUs this process may use: the smallest figure among its affinity
    mask, the cgroup CPU quota, the scheduler's (Slurm, PBS, SGE, LSF,
    Kubernetes' CPU_LIMIT), PYTHON_CPU_COUNT and OMP_THREAD_LIMIT, the job's
    CPUs divided among a launcher's local ranks (Open MPI, MPICH, MVAPICH2,
    Cray PALS, torchrun), and the guarded parent's CPUs divided among its
    live guarded children.  An int; .source names the figure that decided,
    .sources lists every one seen, .sharing says who shares the parent's."""
    figures = headroom() if figures is None else figures
    cpus = figures.get("cpus")
    if isinstance(cpus, int) and cpus > 0:
        return Allocation(cpus, str(figures.get("cpus_from") or "unknown"), _sources(figures),
                          _sharing(figures))
    affinity = max(1, len(os.sched_getaffinity(0)))
    return Allocation(affinity, "affinity (threadguard's library is not loaded)",
                      (("affinity", affinity),))


def _check_threads(threads: object) -> None:
    if isinstance(threads, bool) or not (isinstance(threads, int) or threads == "auto"):
        raise ValueError(
            f"threads must be a whole number of threads (1 or more) or \"auto\"; got "
            f"{threads!r}")
    if isinstance(threads, int) and threads < 1:
        raise ValueError(
            f"threads must be 1 or more (or \"auto\" for the CPU allocation); got {threads}")
    largest = rules().max_pool_threads
    if isinstance(threads, int) and threads > largest:
        raise ValueError(
            f"threads must be at most {largest} (the largest pool threadguard sizes, "
            f"as THREADGUARD_POOL_THREADS); got {threads}. Use \"auto\" for the CPU "
            f"allocation")


def _check_workers(workers: object) -> None:
    if workers is None:
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(
            f"workers must be a whole number of worker processes (1 or more) or None; got "
            f"{workers!r}")


@dataclass(frozen=True)
class Decision:
    """A pool size for one process and what decided it.

    threads: the size; source: "requested" (a number was given), "cpus"
    (the CPU allocation), "profile" (a node profile written by `threadguard
    bench`), "headroom" (lowered to the task headroom); why: the same in
    words, with the figures; profile: the profile file that was used, if
    any (whatever decided in the end)."""

    threads: int
    source: str
    why: str
    profile: Optional[Path] = None


def decide_threads(threads: Threads = "auto", workers: Optional[int] = None) -> Decision:
    """per_process_threads(), with what decided it."""
    _check_threads(threads)
    _check_workers(workers)
    share_of = workers or 1
    split = f" split among {workers} workers" if workers else ""
    if threads != "auto":
        assert isinstance(threads, int)
        return Decision(max(1, threads // share_of), "requested", f"{threads} requested{split}")
    figures = headroom()
    cpus = allocation(figures)
    cpus_from = figures.get("cpus_from") or "affinity"
    profile = read_profile(cpus)
    decision = Decision(max(1, cpus // share_of), "cpus",
                        f"the CPU allocation, {count(cpus, 'CPU')} ({cpus_from}){split}")
    if profile is not None:
        if workers is not None and workers in profile.per_worker:
            share = min(cpus, profile.per_worker[workers])
            why = f"the node profile {profile.path}, measured with {workers} workers"
        else:
            share = max(1, min(cpus, profile.threads) // share_of)
            why = f"the node profile {profile.path} ({count(profile.threads, 'thread')}){split}"
        decision = Decision(share, "profile", why, profile.path)
    free = figures.get("free")
    if isinstance(free, int) and free >= 0:
        # Every worker starts its own pools: they share the task headroom.
        reserve = rules().reserve
        fit = max(1, (free - reserve) // share_of)
        if fit < decision.threads:
            decision = Decision(fit, "headroom",
                                f"the task headroom, {count(free, 'thread')} free under "
                                f"{figures.get('limit')} (keeping {reserve}){split}",
                                decision.profile)
    return decision


def per_process_threads(threads: Threads = "auto", workers: Optional[int] = None) -> int:
    """The pool size for one process.

    threads: a number of threads, or "auto" for the CPU allocation (or the
    node profile's recommendation from `threadguard bench`, when one exists),
    kept within the task headroom. workers: split that among this many
    worker processes, at least 1 thread each; with "auto", a profile that
    measured this many workers gives its threads per worker instead. Raises
    ValueError for anything else. decide_threads() says what decided.
    """
    return decide_threads(threads, workers).threads
