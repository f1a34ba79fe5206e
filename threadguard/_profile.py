"""Node profiles: a measured thread count per node, found by limit("auto").

A profile is a JSON file named after the host, the CPU model and the CPU
allocation it was measured with, in $THREADGUARD_PROFILE_DIR or else
$XDG_CACHE_HOME/threadguard/profiles (~/.cache/threadguard/profiles). The
directory can be shared between nodes: each node reads only its own file.
`threadguard bench` writes it; limit("auto") reads its "threads" field
and, for limit("auto", workers=k), its "per_worker" field when that has k.
"""

from __future__ import annotations

import json
import os
import re
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

__all__ = ["NodeProfile", "cpu_model", "profile_dir", "profile_path", "read_profile",
           "write_profile"]


def profile_dir() -> Path:
    """Where profiles are kept ($THREADGUARD_PROFILE_DIR overrides)."""
    explicit = os.environ.get("THREADGUARD_PROFILE_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "threadguard" / "profiles"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" if unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:80] or "unknown"


def profile_path(cpus: int) -> Path:
    """The profile file for this host, CPU model and an allocation of cpus."""
    name = f"{_slug(socket.gethostname())}_{_slug(cpu_model())}_{cpus}cpu.json"
    return profile_dir() / name


@dataclass(frozen=True)
class NodeProfile:
    """What limit("auto") uses from a profile: the threads for one process,
    and the threads per worker measured for some worker counts."""

    path: Path
    threads: int
    per_worker: Dict[int, int]


def read_profile(cpus: int) -> Optional[NodeProfile]:
    """The node profile for this allocation, or None when there is none. A
    file that cannot be read or parsed, or has no "threads" field of 1 or
    more, gets one warning naming it, and is ignored; "per_worker" entries
    that are not counts are left out."""
    path = profile_path(cpus)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        warnings.warn(f"threadguard: ignoring the node profile {path}: {exc}", RuntimeWarning,
                      stacklevel=4)
        return None
    if not (isinstance(data, dict) and _count(data.get("threads"))):
        warnings.warn(f"threadguard: ignoring the node profile {path}: it has no \"threads\" "
                      f"field of 1 or more", RuntimeWarning, stacklevel=4)
        return None
    given = data.get("per_worker")
    per_worker = {int(k): v for k, v in given.items()
                  if k.isdigit() and int(k) >= 1 and _count(v)} if isinstance(given, dict) else {}
    return NodeProfile(path, data["threads"], per_worker)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def write_profile(cpus: int, figures: Mapping[str, Any]) -> Path:
    """Write the profile for this allocation: figures must hold "threads"
    and may hold "per_worker" ({"4": 1}: threads per worker for 4 workers)
    and anything else worth keeping. Written to a temporary file and
    renamed, so that nodes sharing the directory never read half a file."""
    if not _count(figures.get("threads")):
        raise ValueError(f"a node profile needs \"threads\" of 1 or more; got "
                         f"{figures.get('threads')!r}")
    path = profile_path(cpus)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(dict(figures), indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path
