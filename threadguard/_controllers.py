"""threadpoolctl controllers for pools it does not know: torch's intra-op pool.

threadpoolctl reaches torch's bundled libgomp and OpenBLAS, but not torch's
own setting (at::set_num_threads also sizes torch's MKL and its pthreadpool)
nor its inter-op pool. Registering a controller makes `threadpool_info()`
list torch and `threadpool_limits()` size it, so threadguard and every other
threadpoolctl user see the same pools.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from threadpoolctl import LibController, register  # type: ignore[import-untyped]

__all__ = ["TorchController", "register_controllers"]

# at::get_num_threads(), at::set_num_threads(int), at::get_num_interop_threads()
_GET = "_ZN2at15get_num_threadsEv"
_SET = "_ZN2at15set_num_threadsEi"
_GET_INTEROP = "_ZN2at23get_num_interop_threadsEv"


def _torch() -> Optional[Any]:
    return sys.modules.get("torch")


class TorchController(LibController):  # type: ignore[misc]
    """torch's intra-op pool, found as libtorch_cpu.so among the loaded libraries."""

    user_api = "torch"
    internal_api = "torch"
    filename_prefixes = ("libtorch_cpu",)
    check_symbols = (_GET, _SET)

    def get_num_threads(self) -> Optional[int]:
        torch = _torch()
        if torch is not None:
            return int(torch.get_num_threads())
        get = getattr(self.dynlib, _GET, None)
        return int(get()) if get is not None else None

    def set_num_threads(self, num_threads: int) -> None:
        # threadpoolctl 3.8 restores every controller when a
        # threadpool_limits() block ends, whatever user_api it limited; torch
        # starts a thread on every set_num_threads, even to the size it has.
        # Setting a pool to its own size must change nothing.
        if self.get_num_threads() == int(num_threads):
            return
        # Through the torch module when it is imported: under a preload that
        # call reaches threadguard's clamped at::set_num_threads.
        torch = _torch()
        if torch is not None:
            torch.set_num_threads(int(num_threads))
            return
        setter = getattr(self.dynlib, _SET, None)
        if setter is not None:
            setter(int(num_threads))

    def get_version(self) -> Optional[str]:
        torch = _torch()
        version = getattr(torch, "__version__", None) if torch is not None else None
        return str(version) if version is not None else None

    def set_additional_attributes(self) -> None:
        get = getattr(self.dynlib, _GET_INTEROP, None)
        self.num_interop_threads = int(get()) if get is not None else None


_registered = False


def register_controllers() -> None:
    """Register threadguard's controllers with threadpoolctl (once)."""
    global _registered
    if not _registered:
        register(TorchController)
        _registered = True
