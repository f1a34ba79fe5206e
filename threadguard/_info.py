"""threadguard.info(): every pool in the process and the live threads per creator."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional, Tuple

from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

from . import _native
from ._controllers import register_controllers
from ._policy import Decision, decide_threads
from ._stats import Stats, stats
from ._wording import count

__all__ = ["Info", "PoolInfo", "info", "mode"]

_MODES = {0: "off", 1: "preload", 2: "import"}


def mode() -> str:
    """How threads are counted in this process: "preload" (the library was
    preloaded, by `threadguard run` or LD_PRELOAD), "import" (loaded by
    `import threadguard`, GOT slots patched) or "off" (not counting)."""
    lib = _native.load_if_available()
    return _MODES.get(int(lib.threadguard_mode()), "off") if lib is not None else "off"


@dataclass(frozen=True)
class PoolInfo:
    """One thread pool: which library, which API, its version and size."""

    library: str  # internal API: openblas, openmp, mkl, blis, torch, numexpr, numba
    api: str  # user API: blas, openmp, torch, ...
    version: Optional[str]
    size: Optional[int]
    path: str


@dataclass(frozen=True)
class Info:
    """What info() found."""

    mode: str
    pools: Tuple[PoolInfo, ...]
    threads: Optional[Stats]  # None when the native library is missing
    auto: Optional[Decision] = None  # what limit("auto") would give now, and why

    def __str__(self) -> str:
        lines = [f"threadguard: mode {self.mode}"]
        if self.auto is not None:
            lines.append(f"  limit(\"auto\"): {count(self.auto.threads, 'thread')}, from "
                         f"{self.auto.why}")
        lines.append("  pools:")
        for pool in self.pools:
            lines.append(f"    {pool.library:9} {pool.api:8} size {pool.size!s:>4}  "
                         f"version {pool.version or '?':12} {pool.path}")
        if not self.pools:
            lines.append("    none loaded")
        if self.threads is not None:
            lines.append(self.threads.format_table())
        return "\n".join(lines)


def _python_pools() -> Tuple[PoolInfo, ...]:
    found = []
    numexpr = sys.modules.get("numexpr")
    if numexpr is not None and hasattr(numexpr, "get_num_threads"):
        found.append(PoolInfo("numexpr", "numexpr", getattr(numexpr, "__version__", None),
                              int(numexpr.get_num_threads()), str(numexpr.__file__)))
    numba = sys.modules.get("numba")
    if numba is not None and hasattr(numba, "get_num_threads"):
        found.append(PoolInfo("numba", "numba", getattr(numba, "__version__", None),
                              int(numba.get_num_threads()), str(numba.__file__)))
    return tuple(found)


def info() -> Info:
    """Every pool loaded (library, version, size), the live threads per
    creating library from the native counters, and what limit("auto")
    would give now and what decided it (a node profile names its file)."""
    register_controllers()
    pools = tuple(
        PoolInfo(library=str(entry.get("internal_api")), api=str(entry.get("user_api")),
                 version=entry.get("version"), size=entry.get("num_threads"),
                 path=str(entry.get("filepath")))
        for entry in threadpool_info())
    threads = stats() if _native.load_if_available() is not None else None
    return Info(mode=mode(), pools=pools + _python_pools(), threads=threads,
                auto=decide_threads("auto"))
