"""The text of `threadguard top`: the same lines for the full-screen view and
for `--once`."""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Tuple

from .._stats import Growth
from .snapshot import Process, Snapshot

__all__ = ["SORTS", "lines", "select"]

# Sort keys: name -> (key, largest first).
SORTS: Dict[str, Tuple[Callable[[Process], object], bool]] = {
    "threads": (lambda p: (p.stats.total.live, p.tasks), True),
    "peak": (lambda p: p.stats.total.peak, True),
    "tasks": (lambda p: p.tasks, True),
    "failures": (lambda p: (p.stats.total.failed + p.stats.total.denied), True),
    "pid": (lambda p: p.pid, False),
    "command": (lambda p: p.command, False),
}


def select(snapshot: Snapshot, sort: str = "threads", pattern: str = "") -> List[Process]:
    """The processes to show: those whose pid, user or command contains
    pattern, in the order sort names."""
    key, largest_first = SORTS[sort]
    chosen = [p for p in snapshot.processes
              if not pattern or pattern in str(p.pid) or pattern in p.command
              or pattern == p.user]
    return sorted(chosen, key=key, reverse=largest_first)  # type: ignore[arg-type]


def _limit(value: Optional[int]) -> str:
    return "unlimited" if value is None else str(value)


def _pools(process: Process) -> str:
    parts = []
    for pool in process.stats.pools:
        text = f"{pool.library} {pool.variable}={pool.value} ({pool.source}"
        if pool.lowered and pool.requested is not None:
            text += f", lowered from {pool.requested}"
        if (pool.source == "threadguard" and pool.value == pool.cpus
                and pool.cpus_from not in ("", "affinity")):
            text += f", {pool.cpus} CPUs: {pool.cpus_from}"  # whose share it is
        if pool.free is not None:
            at_least = "at least " if pool.free_at_least else ""
            text += f", {at_least}{pool.free} free under {pool.limit}"
        parts.append(text + ")")
    return "; ".join(parts)


def _growth(growth: Growth) -> str:
    """The leak mark: shown only while the library's leak rule holds."""
    return f" LEAKING (from {growth.settled} in {growth.steps} steps)" if growth.leaking else ""


def _libraries(process: Process) -> str:
    rows = sorted(process.stats.libraries, key=lambda lib: (-lib.live, lib.name))
    return "  ".join(f"{lib.name} {lib.live}/{lib.peak}{_growth(lib.growth)}" for lib in rows
                     if lib.created or lib.live or lib.failed or lib.denied)


# Python start sites shown per process: those with the most live threads.
_SITES_SHOWN = 3


def _sites(process: Process) -> List[str]:
    rows = sorted((site for site in process.stats.python_sites if site.live),
                  key=lambda site: (not site.growth.leaking, -site.live, site.where))
    return [f"{site.where} {site.live}/{site.peak}{_growth(site.growth)}"
            for site in rows[:_SITES_SHOWN]]


def lines(snapshot: Snapshot, sort: str = "threads", pattern: str = "",
          interval: Optional[float] = None) -> List[str]:
    """The view as lines (no terminal codes)."""
    shown = select(snapshot, sort, pattern)
    clock = time.strftime("%H:%M:%S", time.localtime(snapshot.time))
    head = (f"threadguard top - {snapshot.host} {clock} - {len(snapshot.processes)} guarded "
            f"process{'es' if len(snapshot.processes) != 1 else ''}")
    if interval is not None:
        head += f", every {interval:g}s"
    head += f" - sort: {sort}"
    if pattern:
        head += f" - filter: {pattern!r} ({len(shown)} shown)"
    out = [head]
    for user in snapshot.users:
        out.append(f"user {user.name} (uid {user.uid}): {user.tasks} tasks = "
                   f"{user.guarded_tasks} in {user.processes} guarded process"
                   f"{'es' if user.processes != 1 else ''} + {user.unguarded_tasks} unguarded; "
                   f"RLIMIT_NPROC {_limit(user.rlimit_nproc)}")
    for group in snapshot.cgroups:
        current = "?" if group.pids_current is None else str(group.pids_current)
        out.append(f"cgroup {group.path}: pids.current {current} of pids.max {group.pids_max} "
                   f"({group.guarded_tasks} in guarded processes)")
    for line in snapshot.rejected:
        out.append(f"rejected: {line}")
    out.append("")
    out.append(f"{'PID':>8} {'USER':<10} {'TASKS':>5} {'LIVE':>5} {'PEAK':>5} {'FAIL':>4} "
               f"{'DENY':>4} {'MODE':<7} COMMAND")
    for p in shown:
        total = p.stats.total
        out.append(f"{p.pid:>8} {p.user[:10]:<10} {p.tasks:>5} {total.live:>5} {total.peak:>5} "
                   f"{total.failed:>4} {total.denied:>4} {p.stats.mode:<7} "
                   f"{' '.join(p.command.split())}")
        libraries = _libraries(p)
        if libraries:
            out.append(f"{'':>9}threads (live/peak): {libraries}")
        for site in _sites(p):
            out.append(f"{'':>9}python threads started at {site}")
        pools = _pools(p)
        if pools:
            out.append(f"{'':>9}pools: {pools}")
        if p.stats.failures_total:
            last = p.stats.failures[-1] if p.stats.failures else None
            detail = f" (last: {last.library} {last.error}, {last.cause})" if last else ""
            out.append(f"{'':>9}failed creations: {p.stats.failures_total}{detail}")
    if not shown:
        out.append("(no guarded process" + (" matches the filter)" if pattern else
                   " of this user is running: start one with `threadguard run -- CMD` or "
                   "`import threadguard`)"))
    return out
