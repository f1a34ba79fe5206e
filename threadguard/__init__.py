"""threadguard: count, size and budget the threads of numpy, SciPy and PyTorch.

Run a program with libthreadguard.so preloaded (``threadguard run -- CMD``)
and every thread is counted by the library that created it::

    import threadguard
    threadguard.preloaded()        # True under threadguard run
    threadguard.stats().of_kind("openblas").created
"""

from __future__ import annotations

from typing import Optional

from . import _native
from .errors import LibraryNotFoundError, ReportError, ThreadguardError
from .stats import Counters, LibraryStats, Stats, load_report, stats

__all__ = [
    "__version__",
    "Counters",
    "LibraryNotFoundError",
    "LibraryStats",
    "ReportError",
    "Stats",
    "ThreadguardError",
    "libpath",
    "load_report",
    "preloaded",
    "stats",
]

__version__ = "0.1.0"


def libpath() -> str:
    """Path of the libthreadguard.so this process uses: the preloaded copy if
    there is one, else the one installed with the package (for LD_PRELOAD)."""
    _native.load()
    loaded: Optional[str] = _native.loaded_path()
    return loaded if loaded else str(_native.packaged_path())


def preloaded() -> bool:
    """True when libthreadguard.so was preloaded, so its pthread_create wraps
    the process's and threads are being counted."""
    return bool(_native.load().threadguard_interposing())
