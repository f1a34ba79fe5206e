"""Apply a pool size to everything in a running process, and undo it.

What is reached, and how:
- pools already loaded: BLAS and OpenMP through threadpoolctl, torch's
  intra-op pool through threadguard's TorchController (controllers.py);
- torch's inter-op pool (`set_num_interop_threads`, allowed once, before
  inter-op work starts: a warning says when it is too late);
- numexpr and numba, when imported;
- libraries loaded later and child processes: the *_NUM_THREADS variables
  (and THREADGUARD_POOL_THREADS for children run under the guard);
- the native library's own pool size, when it is loaded.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from . import _native
from ._controllers import _GET_INTEROP, register_controllers
from ._policy import rules

__all__ = ["Applied", "apply_threads", "env_variables", "restore"]

# Read at start-up by libraries the native library does not size
# (Accelerate, numexpr, numba) and by guarded children.
_OTHER_VARIABLES = (
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "THREADGUARD_POOL_THREADS",
)


def env_variables() -> Tuple[str, ...]:
    """The variables limit() sets, so that libraries loaded later and child
    processes (subprocess, multiprocessing spawn/forkserver, loky,
    DataLoader workers) start with the budget: those the native library
    reads pool sizes from (OpenBLAS, OpenMP, MKL, BLIS), then the others."""
    return rules().pool_variables + _OTHER_VARIABLES


@dataclass
class Applied:
    """What apply_threads changed, so restore() can put it back."""

    threads: int
    environment: Dict[str, Optional[str]] = field(default_factory=dict)
    limiter: Any = None
    numexpr: Optional[int] = None
    numba: Optional[int] = None
    native: Optional[int] = None
    # torch's inter-op pool (before, after) when lowered: never restored.
    interop: Optional[Tuple[int, int]] = None
    warnings: List[str] = field(default_factory=list)


def _set_environment(threads: int, applied: Applied) -> None:
    for name in env_variables():
        applied.environment[name] = os.environ.get(name)
        os.environ[name] = str(threads)


_interop_warned = False


def _set_interop(threads: int, applied: Applied) -> None:
    global _interop_warned
    torch = sys.modules.get("torch")
    if torch is None:
        return
    current = int(torch.get_num_interop_threads())
    if current <= threads:
        return
    try:
        torch.set_num_interop_threads(threads)
        applied.interop = (current, threads)
        address = _libtorch_address(torch)
        if address is not None:  # the report says it stays
            _native.note_unrestored(address, "set_num_interop_threads()", threads, current)
    except RuntimeError:
        if _interop_warned:  # once per process: the pool cannot change anyway
            return
        _interop_warned = True
        message = (f"threadguard: torch's inter-op pool stays at {current} threads: torch "
                   f"allows set_num_interop_threads once, before inter-op work starts. Call "
                   f"threadguard.limit() before the first torch operation (or run the program "
                   f"under 'threadguard run --pool-threads {threads}') to size it too.")
        applied.warnings.append(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _libtorch_address(torch: Any) -> Optional[int]:
    """An address inside the libtorch_cpu.so torch loaded (its
    at::get_num_interop_threads), or None."""
    import ctypes

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        address: Optional[int] = ctypes.cast(getattr(lib, _GET_INTEROP), ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    return address


def _set_numexpr(threads: int, applied: Applied) -> None:
    numexpr = sys.modules.get("numexpr")
    if numexpr is not None and hasattr(numexpr, "set_num_threads"):
        applied.numexpr = int(numexpr.set_num_threads(threads))


def _set_numba(threads: int, applied: Applied) -> None:
    numba = sys.modules.get("numba")
    if numba is None or not hasattr(numba, "set_num_threads"):
        return
    applied.numba = int(numba.get_num_threads())
    # numba cannot go above the NUMBA_NUM_THREADS it started with.
    numba.set_num_threads(min(threads, int(numba.config.NUMBA_NUM_THREADS)))


def _set_native(threads: int, applied: Applied) -> None:
    lib = _native.load_if_available()
    if lib is not None:
        previous = int(lib.threadguard_set_pool_threads(threads))
        applied.native = previous if previous >= -1 else None


def apply_threads(threads: int) -> Applied:
    """Size every pool in this process, and those of later libraries and
    child processes, to threads. Returns what to hand to restore()."""
    register_controllers()
    applied = Applied(threads=threads)
    _set_environment(threads, applied)
    _set_native(threads, applied)
    applied.limiter = threadpool_limits(limits=threads)
    _set_interop(threads, applied)
    _set_numexpr(threads, applied)
    _set_numba(threads, applied)
    return applied


def restore(applied: Applied) -> None:
    """Put back the sizes and variables apply_threads found (torch's inter-op
    pool excepted: it cannot be changed twice)."""
    numba = sys.modules.get("numba")
    if applied.numba is not None and numba is not None:
        numba.set_num_threads(applied.numba)
    numexpr = sys.modules.get("numexpr")
    if applied.numexpr is not None and numexpr is not None:
        numexpr.set_num_threads(applied.numexpr)
    if applied.limiter is not None:
        applied.limiter.restore_original_limits()
    lib = _native.load_if_available()
    if applied.native is not None and lib is not None:
        lib.threadguard_set_pool_threads(applied.native)
    for name, value in applied.environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
