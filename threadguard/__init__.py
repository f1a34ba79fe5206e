"""threadguard: count, size and budget the threads of numpy, SciPy and PyTorch.

Importing threadguard makes its native library count every thread by the
library that created it, in this process, from now on (import mode; a
program run under ``threadguard run -- CMD`` is counted from its start)::

    import threadguard
    threadguard.limit(2)                   # size every pool, now and in children
    with threadguard.limit(1): ...         # restored on exit
    threadguard.info()                     # pools and live threads per library
    threadguard.stats().of_kind("openblas").created

Everything public is listed in ``__all__``; modules whose names start with
an underscore, and the ``bench`` and ``doctor`` packages (the commands),
are internal.  The names below are imported when first used, so that
``import threadguard`` costs little more than loading the native library:
every spawn worker and every ``threadguard run`` pays for it.
"""

from __future__ import annotations

from . import _native
from ._errors import LibraryNotFoundError, PublishedFileError, ReportError, ThreadguardError
from ._on_import import after

TYPE_CHECKING = False  # not typing's, which costs more than the rest (see _native.py)
if TYPE_CHECKING:
    from typing import Any, List, Optional

    from ._info import Info, PoolInfo, info, mode
    from ._limiting import Limit, dataloader_worker_init, limit, pool_initializer
    from ._policy import Allocation, Sharing, allocation
    from ._profile import profile_path
    from ._stats import Counters, Growth, LibraryStats, PythonSite, Stats, load_report, stats
del TYPE_CHECKING

__all__ = [
    "Allocation",
    "Counters",
    "Growth",
    "Info",
    "LibraryNotFoundError",
    "LibraryStats",
    "Limit",
    "PoolInfo",
    "PublishedFileError",
    "PythonSite",
    "ReportError",
    "Sharing",
    "Stats",
    "ThreadguardError",
    "__version__",
    "allocation",
    "dataloader_worker_init",
    "info",
    "libpath",
    "limit",
    "load_ipython_extension",
    "load_report",
    "mode",
    "pool_initializer",
    "preloaded",
    "profile_path",
    "stats",
    "unload_ipython_extension",
]

__version__ = "0.1.0"

# Public name -> the internal module that defines it, imported on first use.
_LAZY = {
    "Allocation": "._policy", "Sharing": "._policy",
    "Counters": "._stats", "LibraryStats": "._stats", "Stats": "._stats",
    "Growth": "._stats", "PythonSite": "._stats",
    "load_report": "._stats", "stats": "._stats",
    "Info": "._info", "PoolInfo": "._info", "info": "._info", "mode": "._info",
    "Limit": "._limiting", "dataloader_worker_init": "._limiting", "limit": "._limiting",
    "pool_initializer": "._limiting",
    "allocation": "._policy",
    "profile_path": "._profile",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'threadguard' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # next time, a plain attribute
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))


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


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext threadguard`` in IPython or Jupyter: the ``%threadguard``
    line magic (this kernel's threads by library, pools and limits), the
    ``%%threadguard`` cell magic (what one cell started) and a short warning
    after a cell whose pools oversubscribe the CPUs or leave few threads
    under a task limit."""
    from ._notebook import load
    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext threadguard``: no more warnings after cells."""
    from ._notebook import unload
    unload(ipython)


def _register_controllers() -> None:
    from ._controllers import register_controllers
    register_controllers()


def _start_counting() -> None:
    why = _native.enable_import_mode()
    if why is not None:
        import warnings
        warnings.warn(f"threadguard: threads in this process are not counted: {why}",
                      RuntimeWarning, stacklevel=3)


def _count_start_sites() -> None:
    from ._sites import install
    install()


after("threadpoolctl", _register_controllers)
_start_counting()
# Python threads by the code that started them, from the first Thread.start.
after("threading", _count_start_sites)
