"""The counters guarded processes publish while they run, found and read.

Each guarded process keeps its counter block in
/dev/shm/threadguard-UID/PID.START.live (csrc/publish.c).  This module lists
those files, tells a live process's file from one left by a process that
died (SIGKILL) or exec'ed into an unguarded program, removes the latter,
and reads the former through the native library, which checks every file
before it is trusted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import _native
from ._errors import PublishedFileError

__all__ = ["Published", "Scan", "read_pid", "scan", "shared_dir"]

SHM = Path("/dev/shm")
_DIR = re.compile(r"threadguard-(\d+)")
_FILE = re.compile(r"(\d+)\.(\d+)\.live")
_TEMPORARY = re.compile(r"\.(\d+)\.(\d+)\.new")


@dataclass(frozen=True)
class Published:
    """One live guarded process: its uid and its report (the JSON object
    Stats.from_json reads), read now."""

    pid: int
    uid: int
    path: Path
    report: Dict[str, Any]


@dataclass
class Scan:
    """What one look at the shared directories found."""

    processes: List[Published] = field(default_factory=list)
    rejected: List[str] = field(default_factory=list)  # one line per file refused
    removed: List[Path] = field(default_factory=list)  # files of processes that are gone


def shared_dir(uid: Optional[int] = None) -> Path:
    """The directory where the processes of uid (default: this user) publish."""
    return SHM / f"threadguard-{os.getuid() if uid is None else uid}"


def _dirs(all_users: bool) -> List[Tuple[int, Path]]:
    if not all_users:
        return [(os.getuid(), shared_dir())]
    found = []
    try:
        names = os.listdir(SHM)
    except OSError:
        return []
    for name in names:
        match = _DIR.fullmatch(name)
        path = SHM / name
        # Only a real directory owned by the uid it names: another user may
        # have made one under someone else's name.
        if match and path.is_dir() and not path.is_symlink():
            uid = int(match.group(1))
            try:
                if path.stat().st_uid == uid:
                    found.append((uid, path))
            except OSError:
                continue
    return sorted(found)


def _start_time(pid: int) -> Optional[int]:
    """Field 22 of /proc/PID/stat (clock ticks since boot), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return int(fields[19])  # fields from the third on: field 22 is the 20th
    except (IndexError, ValueError):
        return None


def _maps(pid: int, path: Path) -> Optional[bool]:
    """Whether process pid maps path; None when its maps cannot be read."""
    needle = os.fsencode(path)
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            for line in f:
                if line.rstrip(b"\n").endswith(needle):
                    return True
    except OSError:
        return None
    return False


def _alive(pid: int, start: int, path: Path, temporary: bool) -> bool:
    """Whether the file's process still runs and (for a named file) maps it.
    A pid is reused, the pair (pid, start time) is not; a process that
    exec'ed keeps both but no longer maps the file."""
    if _start_time(pid) != start:
        return False
    return temporary or _maps(pid, path) is not False


def _remove(path: Path, scan_result: Scan) -> None:
    try:
        path.unlink()
        scan_result.removed.append(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass  # another user's, seen by root: removed by its owner's next look


@dataclass(frozen=True)
class _Entry:
    """A file in a shared directory named like a process's."""

    uid: int
    path: Path
    pid: int
    start: int
    temporary: bool  # still being created (".PID.START.new")


def _entries(all_users: bool) -> Iterator[_Entry]:
    for uid, directory in _dirs(all_users):
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue  # none yet, or not ours to read
        for name in names:
            temporary = _TEMPORARY.fullmatch(name)
            match = temporary or _FILE.fullmatch(name)
            if match is not None:
                yield _Entry(uid=uid, path=directory / name, pid=int(match.group(1)),
                             start=int(match.group(2)), temporary=bool(temporary))


def scan(all_users: Optional[bool] = None) -> Scan:
    """Every live guarded process that publishes: this user's, or every
    user's for root (all_users defaults to whether this is root).  Files of
    processes that are gone are removed; files that fail the native checks
    are listed in rejected, one line each, and skipped."""
    if all_users is None:
        all_users = os.geteuid() == 0
    result = Scan()
    for entry in _entries(all_users):
        if not _alive(entry.pid, entry.start, entry.path, entry.temporary):
            _remove(entry.path, result)
            continue
        if entry.temporary:
            continue  # being created
        try:
            report = _native.read_published(str(entry.path))
        except PublishedFileError as exc:
            if entry.path.exists() and _start_time(entry.pid) == entry.start:
                result.rejected.append(str(exc))
            continue  # else: it exited while read
        result.processes.append(Published(pid=entry.pid, uid=entry.uid, path=entry.path,
                                          report=report))
    return result


def read_pid(pid: int) -> Dict[str, Any]:
    """The report of running process pid, read from the file it publishes.
    PublishedFileError when it publishes none this user can read."""
    if _start_time(pid) is None:
        raise PublishedFileError(f"no process {pid} is running")
    for entry in _entries(os.geteuid() == 0):
        if entry.pid == pid and not entry.temporary and \
                _alive(pid, entry.start, entry.path, False):
            return _native.read_published(str(entry.path))
    raise PublishedFileError(
        f"process {pid} publishes no threadguard counters this user can read: it is not "
        f"guarded (start it with `threadguard run -- CMD` or `import threadguard`), it runs "
        f"as another user (root sees every user's), or it was started with "
        f"THREADGUARD_PUBLISH=0")
