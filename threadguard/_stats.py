"""Thread counters by creating library: from the live process or a report file.

The JSON form is the one libthreadguard writes at exit with
THREADGUARD_REPORT=PATH.json; Stats.from_json reads it and Stats.to_json
writes it back unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from . import _native
from ._errors import ReportError

__all__ = [
    "Counters",
    "Failure",
    "Growth",
    "Leak",
    "LibraryStats",
    "PoolSize",
    "PythonSite",
    "Setting",
    "Stats",
    "load_report",
    "stats",
]

# A headroom snapshot: the native figures by name (None = unknown or
# unlimited), e.g. "free", "limit", "cpus", "rlimit_nproc_soft", "pids_free".
Headroom = Mapping[str, Union[int, str, None]]


# Counters' fields are the C library's counter fields (_native.FIELDS), in order.
@dataclass(frozen=True)
class Counters:
    """Thread counters: successful creations, live now, highest live, failed
    creations, creations refused by threadguard, and the last failure's errno."""

    created: int = 0
    live: int = 0
    peak: int = 0
    failed: int = 0
    denied: int = 0
    last_errno: int = 0


@dataclass(frozen=True)
class Growth:
    """How live threads grew: the rises of their high, told apart by a quiet
    gap (steps), the size the first one reached (settled), and whether the
    library's leak rule holds now (leaking).  The rule and its figures are
    the library's: docs/leaks.md."""

    steps: int = 0
    settled: int = 0
    leaking: bool = False

    @classmethod
    def from_json(cls, row: Optional[Mapping[str, Any]]) -> "Growth":
        """A report's "growth" object (absent in reports before leaks: no growth)."""
        if not row:
            return cls()
        return cls(steps=int(row["steps"]), settled=int(row["settled"]),
                   leaking=bool(row["leaking"]))


@dataclass(frozen=True)
class LibraryStats(Counters):
    """Counters for the threads one shared object asked for.

    kind is one of "python", "openblas", "openmp", "mkl", "torch", "blis", "cuda", "main",
    "system", "other", "unknown"."""

    name: str = ""
    path: str = ""
    kind: str = "unknown"
    growth: Growth = field(default_factory=Growth)


@dataclass(frozen=True)
class PythonSite:
    """Python threads by the code that started them: where is "path:line in
    function (via)", via being the standard library's entry point
    (ThreadPoolExecutor.submit, Thread.start)."""

    where: str
    created: int
    live: int
    peak: int
    failed: int
    growth: Growth = field(default_factory=Growth)

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> "PythonSite":
        """One entry of a report's "python_sites" list."""
        return cls(where=str(row["where"]), created=int(row["created"]), live=int(row["live"]),
                   peak=int(row["peak"]), failed=int(row["failed"]),
                   growth=Growth.from_json(row.get("growth")))


@dataclass(frozen=True)
class Leak:
    """The leak under way when a creation failed: the leaking library (or,
    for Python threads, the start site) with the most live threads, with
    its figures then."""

    library: str
    path: str
    kind: str
    site: Optional[str]
    live: int
    created: int
    settled: int
    steps: int

    @classmethod
    def from_json(cls, row: Optional[Mapping[str, Any]]) -> Optional["Leak"]:
        """A failure's "leak" object, None for null or absent."""
        if not row:
            return None
        return cls(library=str(row["library"]), path=str(row["path"]), kind=str(row["kind"]),
                   site=_optional_str(row.get("site")), live=int(row["live"]),
                   created=int(row["created"]), settled=int(row["settled"]),
                   steps=int(row["steps"]))


@dataclass(frozen=True)
class Setting:
    """A THREADGUARD_* variable: the value given (None if unset), whether it
    came from the user or is the default, and whether it was rejected."""

    name: str
    value: Optional[str]
    source: str
    rejected: bool


@dataclass(frozen=True)
class PoolSize:
    """One pool-size decision: the variable a library read (or the setter
    called, like "omp_set_num_threads()"), the value it got, where that came
    from ("user": the program's variable or call; "library": a setter call a
    threaded library made on its own, named in caller; "threadguard": sized
    by threadguard; "default": the library's own), the value asked for if
    any, whether it was lowered and by what (lowered_by:
    "THREADGUARD_POOL_THREADS", the operator's ceiling, or the limit that left
    too few threads), and the headroom used (free threads and the limit that
    set them, None/"none" when nothing limits; free_at_least: free is a lower
    bound, RLIMIT_NPROC's from a bound on the user's tasks, which left room
    enough that they were not counted). caller: the library that made the
    call (a setter's call site; the library itself for a variable)."""

    library: str
    kind: str
    variable: str
    value: int
    requested: Optional[int]
    source: str
    lowered: bool
    free: Optional[int]
    limit: str
    cpus: int
    count: int = 1  # how many times the same decision was made (a setter in a loop)
    lowered_by: Optional[str] = None
    caller: str = ""
    cpus_from: str = ""  # the CPU figure's source: "affinity", "4 workers of pid 1234", ...
    free_at_least: bool = False


@dataclass(frozen=True)
class Failure:
    """One failed pthread_create: the library that asked, its nth thread,
    the error ("EAGAIN"), the limit that explains it ("RLIMIT_NPROC",
    "cgroup pids.max", "RLIMIT_AS", "kernel threads-max", "unknown") and
    the stack the thread needed, with the limits measured right after."""

    library: str
    path: str
    kind: str
    thread: int
    errno: int
    error: str
    message: str
    cause: str
    stack: int
    limits: Headroom = field(default_factory=dict)
    site: Optional[str] = None  # the Python start site of the thread that failed
    leak: Optional[Leak] = None  # the leak under way then

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> "Failure":
        """One entry of a report's "failures" list."""
        return cls(library=str(row["library"]), path=str(row["path"]), kind=str(row["kind"]),
                   thread=int(row["thread"]), errno=int(row["errno"]), error=str(row["error"]),
                   message=str(row["message"]), cause=str(row["cause"]),
                   stack=int(row["stack"]), limits=dict(row.get("limits", {})),
                   site=_optional_str(row.get("site")), leak=Leak.from_json(row.get("leak")))


@dataclass(frozen=True)
class Stats:
    """One snapshot of a process's threads."""

    libraries: Tuple[LibraryStats, ...]
    total: Counters
    tasks: Optional[int]  # threads in /proc/self/task, None if unreadable
    untracked: Optional[int]  # alive but not seen created (started before or around threadguard)
    tasks_at_start: Optional[int]  # threads besides the main one when threadguard started
    interposing: bool  # False: neither preloaded nor in import mode, so nothing was counted
    pid: int
    program: str
    version: str
    settings: Tuple[Setting, ...] = ()
    pools: Tuple[PoolSize, ...] = ()
    # stack, arenas, rlimit_nproc: {"value": ..., "source": ...} as applied at start
    applied: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    headroom_at_start: Headroom = field(default_factory=dict)
    headroom_now: Headroom = field(default_factory=dict)
    mode: str = ""  # "preload", "import" or "off" ("" in reports older than import mode)
    python_sites: Tuple[PythonSite, ...] = ()
    failures: Tuple[Failure, ...] = ()  # the first 64 failed creations
    failures_total: int = 0
    # arch, glibc, fallbacks (newer glibc facilities replaced) and limitations
    # (features that cannot work on this glibc, one sentence each)
    platform: Mapping[str, Any] = field(default_factory=dict)
    # the batch job the process ran in, from the scheduler's variables
    # ({"scheduler": "slurm", "job_id", "step_id", "task"}), or None
    job: Optional[Mapping[str, Any]] = None
    # what did not fit in the native tables, or started uncounted (all 0 normally)
    overflow: Mapping[str, int] = field(default_factory=dict)
    # the human table, as the library formats it ("" in older reports)
    table: str = ""

    def of_kind(self, kind: str) -> Counters:
        """The counters of every library of one kind, summed (peaks too)."""
        rows = [lib for lib in self.libraries if lib.kind == kind]
        sums = {name: sum(getattr(r, name) for r in rows) for name in _native.FIELDS}
        sums["last_errno"] = next((r.last_errno for r in rows if r.last_errno), 0)
        return Counters(**sums)

    def to_json(self) -> Dict[str, Any]:
        """The report's JSON object."""
        return {
            "threadguard": self.version,
            "pid": self.pid,
            "program": self.program,
            "interposing": self.interposing,
            "mode": self.mode,
            "platform": dict(self.platform),
            "job": None if self.job is None else dict(self.job),
            "overflow": dict(self.overflow),
            "tasks": -1 if self.tasks is None else self.tasks,
            "tasks_at_start": -1 if self.tasks_at_start is None else self.tasks_at_start,
            "untracked": -1 if self.untracked is None else self.untracked,
            "libraries": [
                {"name": lib.name, "path": lib.path, "kind": lib.kind,
                 **{n: getattr(lib, n) for n in _native.FIELDS}, "growth": asdict(lib.growth)}
                for lib in self.libraries
            ],
            "total": asdict(self.total),
            "python_sites": [asdict(site) for site in self.python_sites],
            "settings": [asdict(setting) for setting in self.settings],
            "applied": {k: dict(v) for k, v in self.applied.items()},
            "pools": [asdict(pool) for pool in self.pools],
            "failures_total": self.failures_total,
            "failures_recorded": len(self.failures),  # listed; the native table keeps 64
            "failures": [_failure_json(f) for f in self.failures],
            "headroom": {"at_start": dict(self.headroom_at_start),
                         "now": dict(self.headroom_now)},
            "table": self.table,
        }

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Stats":
        """Read the JSON object of a report; ReportError if it is not one."""
        _check_shape(data)
        try:
            libraries = tuple(
                LibraryStats(name=str(row["name"]), path=str(row["path"]), kind=str(row["kind"]),
                             growth=Growth.from_json(row.get("growth")),
                             **{n: int(row[n]) for n in _native.FIELDS})
                for row in data["libraries"]
            )
            sites = tuple(PythonSite.from_json(r) for r in data.get("python_sites", ()))
            total = Counters(**{n: int(data["total"][n]) for n in _native.FIELDS})
            settings = tuple(Setting(name=str(r["name"]), value=_optional_str(r["value"]),
                                     source=str(r["source"]), rejected=bool(r["rejected"]))
                             for r in data.get("settings", ()))
            pools = tuple(PoolSize(library=str(r["library"]), kind=str(r["kind"]),
                                   variable=str(r["variable"]), value=int(r["value"]),
                                   requested=_optional(r["requested"]), source=str(r["source"]),
                                   lowered=bool(r["lowered"]), free=_optional(r["free"]),
                                   limit=str(r["limit"]), cpus=int(r["cpus"]),
                                   count=int(r.get("count", 1)),
                                   lowered_by=_optional_str(r.get("lowered_by")),
                                   caller=str(r.get("caller") or ""),
                                   cpus_from=str(r.get("cpus_from") or ""),
                                   free_at_least=bool(r.get("free_at_least", False)))
                          for r in data.get("pools", ()))
            headroom = data.get("headroom", {})
            failures = tuple(Failure.from_json(r) for r in data.get("failures", ()))
            return cls(
                failures=failures, failures_total=int(data.get("failures_total", len(failures))),
                platform=dict(data.get("platform", {})),
                job=None if data.get("job") is None else dict(data["job"]),
                overflow={str(k): int(v) for k, v in data.get("overflow", {}).items()},
                settings=settings, pools=pools, applied=dict(data.get("applied", {})),
                headroom_at_start=dict(headroom.get("at_start", {})),
                headroom_now=dict(headroom.get("now", {})),
                libraries=libraries, total=total, python_sites=sites,
                tasks=_optional(data["tasks"]), untracked=_optional(data["untracked"]),
                tasks_at_start=_optional(data["tasks_at_start"]),
                interposing=bool(data["interposing"]), mode=str(data.get("mode", "")),
                pid=int(data["pid"]),
                program=str(data["program"]), version=str(data["threadguard"]),
                table=str(data.get("table", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"not a threadguard report: missing or bad field {exc}") from exc

    def _repr_html_(self) -> str:
        """The table as HTML, for Jupyter's rich display."""
        from ._html import stats_html
        return stats_html(self)

    def format_table(self) -> str:
        """A human-readable table, one row per library: the one the library
        prints at exit (csrc/report.c writes it into every report, so the
        exit table, `threadguard stats` and this are the same text)."""
        if not self.table:
            raise ReportError("this report has no table: it was written by a threadguard "
                              "older than its reader; `threadguard stats --json` shows its "
                              "figures")
        return self.table.rstrip("\n")


def _failure_json(f: Failure) -> Dict[str, Any]:
    """A failure as the library writes it (limits a plain dict, leak null or an object)."""
    return {**asdict(f), "limits": dict(f.limits)}


def _optional(value: Any) -> Optional[int]:
    if value is None:
        return None
    number = int(value)
    return None if number < 0 else number


def _optional_str(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def stats(pid: Optional[int] = None) -> Stats:
    """Counters of this process's threads, by the library that created them,
    with the settings, the pool sizes decided so far and the headroom now.

    With pid: the same for another running guarded process of this user
    (root: of any user), read from the counters it publishes
    (`threadguard stats --pid PID`); its ``headroom_now`` is empty, and
    PublishedFileError says why when it publishes none.

    Threads are counted in both modes: preloaded ('threadguard run -- CMD'),
    every thread from the start; in import mode (``import threadguard``
    without a preload), those created after the import, and those a library
    started while it was loaded. Threads already running at the import show
    as "not seen created" (``untracked``). Only with import mode turned off
    (THREADGUARD_IMPORT=off) and no preload are the rows empty and
    ``interposing`` False; ``mode`` says which is active."""
    if pid is not None:
        from ._published import read_pid
        return Stats.from_json(read_pid(pid))
    return Stats.from_json(_native.report_json())


def load_report(path: Union[str, Path]) -> Stats:
    """Read a report written with THREADGUARD_REPORT=PATH.json."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"no report at {path}: run the program with "
                          f"THREADGUARD_REPORT={path} (or 'threadguard run --report "
                          f"{path} -- CMD')") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"cannot read the report {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path} is not a threadguard report (expected a JSON object)")
    return Stats.from_json(data)


# The containers a report holds, checked before any field is read, so that a
# file of the wrong shape gets a message naming the field, not a TypeError's.
_SHAPE = {"libraries": (list, dict), "total": (dict, None), "settings": (list, dict),
          "pools": (list, dict), "failures": (list, dict), "python_sites": (list, dict),
          "headroom": (dict, None), "platform": (dict, None), "overflow": (dict, None),
          "job": (dict, None),
          "applied": (dict, None)}
_REQUIRED = ("libraries", "total")
_NULLABLE = ("job",)


def _check_shape(data: Any) -> None:
    """ReportError naming the first field whose type is wrong."""
    if not isinstance(data, dict):
        raise ReportError(f"not a threadguard report: the file holds a JSON "
                          f"{type(data).__name__}, expected an object")
    for key, (kind, item) in _SHAPE.items():
        if key not in data:
            if key in _REQUIRED:
                raise ReportError(f"not a threadguard report: no {key!r} field")
            continue
        value = data[key]
        if value is None and key in _NULLABLE:
            continue
        if not isinstance(value, kind):
            raise ReportError(f"not a threadguard report: {key!r} is a JSON "
                              f"{_json_type(value)}, expected an {_json_type(kind())}")
        if item is not None and any(not isinstance(row, item) for row in value):
            raise ReportError(f"not a threadguard report: {key!r} holds something other than "
                              f"objects")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
