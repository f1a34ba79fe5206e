"""One look at the node: every guarded process's threads by library, and the
totals they count against (each user's RLIMIT_NPROC, each cgroup's
pids.max), with the tasks of unguarded processes beside them."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import psutil

from .. import _published
from .._errors import ReportError
from .._stats import Stats

__all__ = ["Cgroup", "Process", "Snapshot", "User", "take"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Process:
    """One guarded process as seen now."""

    pid: int
    uid: int
    user: str
    command: str
    stats: Stats
    cgroup: Optional[str]  # the cgroup whose pids.max bounds it, None if none

    @property
    def tasks(self) -> int:
        return self.stats.tasks or 0

    def to_json(self) -> Dict[str, Any]:
        s = self.stats
        return {
            "pid": self.pid, "uid": self.uid, "user": self.user, "command": self.command,
            "program": s.program, "mode": s.mode, "tasks": s.tasks, "untracked": s.untracked,
            "cgroup": self.cgroup,
            "total": {"created": s.total.created, "live": s.total.live, "peak": s.total.peak,
                      "failed": s.total.failed, "denied": s.total.denied},
            "libraries": [{"name": lib.name, "kind": lib.kind, "path": lib.path,
                           "created": lib.created, "live": lib.live, "peak": lib.peak,
                           "failed": lib.failed, "denied": lib.denied,
                           "growth": asdict(lib.growth)}
                          for lib in s.libraries],
            "python_sites": [asdict(site) for site in s.python_sites],
            "pools": [{"library": p.library, "variable": p.variable, "value": p.value,
                       "source": p.source, "requested": p.requested,
                       "lowered_by": p.lowered_by, "limit": p.limit, "free": p.free,
                       "free_at_least": p.free_at_least,
                       "cpus": p.cpus, "cpus_from": p.cpus_from,
                       "count": p.count} for p in s.pools],
            "failures_total": s.failures_total,
            "failures": [{"library": f.library, "thread": f.thread, "error": f.error,
                          "cause": f.cause} for f in s.failures],
        }


@dataclass(frozen=True)
class User:
    """A user's tasks (what RLIMIT_NPROC counts) against its limit."""

    uid: int
    name: str
    tasks: int           # every task of the uid on the node
    guarded_tasks: int   # those in guarded processes
    processes: int       # guarded processes
    rlimit_nproc: Optional[int]  # soft limit of its guarded processes (the lowest), None: unlimited

    @property
    def unguarded_tasks(self) -> int:
        return max(self.tasks - self.guarded_tasks, 0)

    def to_json(self) -> Dict[str, Any]:
        return {"uid": self.uid, "user": self.name, "tasks": self.tasks,
                "guarded_tasks": self.guarded_tasks, "unguarded_tasks": self.unguarded_tasks,
                "processes": self.processes, "rlimit_nproc": self.rlimit_nproc}


@dataclass(frozen=True)
class Cgroup:
    """A cgroup with a pids.max that bounds guarded processes."""

    path: str
    pids_current: Optional[int]
    pids_max: int
    guarded_tasks: int

    def to_json(self) -> Dict[str, Any]:
        return {"path": self.path, "pids_current": self.pids_current,
                "pids_max": self.pids_max, "guarded_tasks": self.guarded_tasks}


@dataclass(frozen=True)
class Snapshot:
    """Everything `threadguard top` shows at one moment."""

    time: float
    host: str
    processes: List[Process]
    users: List[User]
    cgroups: List[Cgroup]
    rejected: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        from .. import __version__
        return {"threadguard": __version__, "time": self.time, "host": self.host,
                "processes": [p.to_json() for p in self.processes],
                "users": [u.to_json() for u in self.users],
                "cgroups": [c.to_json() for c in self.cgroups],
                "rejected": list(self.rejected)}


def _user_name(uid: int) -> str:
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)  # a uid without a passwd entry (containers, test uids)


def _command(pid: int, fallback: str) -> str:
    try:
        words = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        words = []
    return " ".join(words) if words else os.path.basename(fallback) or "?"


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _pids_hierarchies(pid: int) -> List[Tuple[Path, str]]:
    """(mount point, pid's path in it) of each hierarchy that can hold a
    pids.max: cgroup v2 (at CGROUP_ROOT, or CGROUP_ROOT/unified on a hybrid
    host) and v1's pids controller (CGROUP_ROOT/pids: RHEL 8, CentOS 7)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        number, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if number == "0" and controllers == "":
            unified = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() \
                else CGROUP_ROOT / "unified"
            found.append((unified, relative))
        elif "pids" in controllers.split(","):
            found.append((CGROUP_ROOT / "pids", relative))
    return found


def _limiting_cgroup(pid: int) -> Optional[Tuple[str, Path]]:
    """The cgroup on pid's paths whose pids.max is the smallest (its path
    in its hierarchy, and its directory), or None where no pids.max bounds
    it (or it cannot be read)."""
    best: Optional[Tuple[str, Path]] = None
    best_max: Optional[int] = None
    for mount, relative in _pids_hierarchies(pid):
        path = "/" + relative.strip("/")
        while True:
            directory = mount / path.lstrip("/")
            limit = _read_int(directory / "pids.max")
            if limit is not None and (best_max is None or limit < best_max):
                best, best_max = (path, directory), limit
            if path == "/":
                break
            path = os.path.dirname(path)
    return best


def _rlimit_nproc(pid: int) -> Optional[int]:
    """pid's soft RLIMIT_NPROC, None when unlimited or unreadable.  prlimit()
    on another user's process needs CAP_SYS_RESOURCE, which root in a
    container may lack: /proc/PID/limits, readable by all, is the fallback."""
    try:
        soft, _hard = psutil.Process(pid).rlimit(psutil.RLIMIT_NPROC)
    except (psutil.Error, OSError, AttributeError):
        return _limits_file_nproc(pid)
    return None if soft < 0 or soft == psutil.RLIM_INFINITY else int(soft)


def _limits_file_nproc(pid: int) -> Optional[int]:
    try:
        lines = Path(f"/proc/{pid}/limits").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        if line.startswith("Max processes"):
            soft = line[len("Max processes"):].split()[0]
            return int(soft) if soft.isdigit() else None  # "unlimited"
    return None


def _tasks_by_uid() -> Dict[int, int]:
    """Tasks (threads) per real uid: what RLIMIT_NPROC counts."""
    tasks: Dict[int, int] = {}
    for proc in psutil.process_iter(["uids", "num_threads"]):
        uids, threads = proc.info["uids"], proc.info["num_threads"]
        if uids is not None and threads is not None:
            tasks[uids.real] = tasks.get(uids.real, 0) + threads
    return tasks


def take(all_users: Optional[bool] = None) -> Snapshot:
    """Read every guarded process that publishes, and the totals around
    them.  Files of processes that are gone are removed on the way."""
    found = _published.scan(all_users)
    processes = []
    directories: Dict[str, Path] = {}  # cgroup path -> its directory
    rejected = list(found.rejected)
    for p in found.processes:
        try:
            stats = Stats.from_json(p.report)
        except ReportError as exc:
            rejected.append(f"{p.path}: rejected: {exc}")
            continue
        if stats.mode == "off" or p.pid == os.getpid():
            # off: the library is loaded but counts nothing (THREADGUARD_IMPORT=off);
            # this process: guarded only because it imports threadguard to read the others
            continue
        cgroup = _limiting_cgroup(p.pid)
        if cgroup is not None:
            directories[cgroup[0]] = cgroup[1]
        processes.append(Process(pid=p.pid, uid=p.uid, user=_user_name(p.uid),
                                 command=_command(p.pid, stats.program), stats=stats,
                                 cgroup=None if cgroup is None else cgroup[0]))
    tasks = _tasks_by_uid()
    uids = sorted({p.uid for p in processes} | {os.getuid()})
    users = []
    for uid in uids:
        mine = [p for p in processes if p.uid == uid]
        limits = [limit for limit in (_rlimit_nproc(p.pid) for p in mine) if limit is not None]
        if not mine and uid == os.getuid():
            limits = [limit for limit in [_rlimit_nproc(os.getpid())] if limit is not None]
        users.append(User(uid=uid, name=_user_name(uid), tasks=tasks.get(uid, 0),
                          guarded_tasks=sum(p.tasks for p in mine), processes=len(mine),
                          rlimit_nproc=min(limits) if limits else None))
    cgroups = []
    for path, directory in sorted(directories.items()):
        limit = _read_int(directory / "pids.max")
        if limit is None:
            continue
        cgroups.append(Cgroup(path=path, pids_current=_read_int(directory / "pids.current"),
                              pids_max=limit,
                              guarded_tasks=sum(p.tasks for p in processes if p.cgroup == path)))
    return Snapshot(time=time.time(), host=socket.gethostname(), processes=processes,
                    users=users, cgroups=cgroups, rejected=rejected)
