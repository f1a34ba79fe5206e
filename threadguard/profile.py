"""Node profiles: a measured thread count per node, found by limit("auto").

A profile is a JSON file named after the host, the CPU model and the CPU
allocation it was measured with, in $THREADGUARD_PROFILE_DIR or else
$XDG_CACHE_HOME/threadguard/profiles (~/.cache/threadguard/profiles). The
directory can be shared between nodes: each node reads only its own file.
`threadguard bench` writes it; limit("auto") reads its "threads" field.
"""

from __future__ import annotations

import json
import os
import re
import socket
import warnings
from pathlib import Path
from typing import Optional

__all__ = ["cpu_model", "profile_dir", "profile_path", "profile_threads"]


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


def profile_threads(cpus: int) -> Optional[int]:
    """The thread count the node profile recommends for this allocation, or
    None when there is no profile. A file that cannot be read or parsed
    gets one warning naming it, and is ignored."""
    path = profile_path(cpus)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        warnings.warn(f"threadguard: ignoring the node profile {path}: {exc}", RuntimeWarning,
                      stacklevel=3)
        return None
    threads = data.get("threads") if isinstance(data, dict) else None
    if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        return threads
    warnings.warn(f"threadguard: ignoring the node profile {path}: it has no \"threads\" "
                  f"field of 1 or more", RuntimeWarning, stacklevel=3)
    return None
