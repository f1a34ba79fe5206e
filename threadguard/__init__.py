"""threadguard: count, size and budget the threads of numpy, SciPy and PyTorch.

Importing threadguard makes its native library count every thread by the
library that created it, in this process, from now on (import mode; a
program run under ``threadguard run -- CMD`` is counted from its start)::

    import threadguard
    threadguard.limit(2)                   # size every pool, now and in children
    with threadguard.limit(1): ...         # restored on exit
    threadguard.info()                     # pools and live threads per library
    threadguard.stats().of_kind("openblas").created
"""

from __future__ import annotations

import warnings
from typing import Optional

from . import _native
from ._errors import LibraryNotFoundError, ReportError, ThreadguardError
from ._controllers import register_controllers
from ._info import Info, PoolInfo, info, mode
from ._limiting import Limit, dataloader_worker_init, limit, pool_initializer
from ._policy import allocation
from ._profile import profile_path
from ._stats import Counters, LibraryStats, Stats, load_report, stats

__all__ = [
    "__version__",
    "Counters",
    "Info",
    "LibraryNotFoundError",
    "LibraryStats",
    "Limit",
    "PoolInfo",
    "ReportError",
    "Stats",
    "ThreadguardError",
    "allocation",
    "dataloader_worker_init",
    "info",
    "libpath",
    "limit",
    "load_report",
    "mode",
    "pool_initializer",
    "preloaded",
    "profile_path",
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
    the process's and threads are counted from the start."""
    return bool(_native.load().threadguard_interposing())


def _start_counting() -> None:
    why = _native.enable_import_mode()
    if why is not None:
        warnings.warn(f"threadguard: threads in this process are not counted: {why}",
                      RuntimeWarning, stacklevel=3)


register_controllers()
_start_counting()
