"""threadguard.limit(): a call, a context manager and a decorator; helpers for pools."""

from __future__ import annotations

import functools
import linecache
import sys
from types import FrameType
from typing import Any, Callable, Optional, Tuple, TypeVar, cast

from ._policy import Decision, Threads, decide_threads, per_process_threads
from ._pools import Applied, apply_threads, restore
from ._wording import count

__all__ = ["Limit", "dataloader_worker_init", "limit", "pool_initializer"]

F = TypeVar("F", bound=Callable[..., Any])


class Limit:
    """A pool size for the running process (see limit()).

    Applied when created, unless created by a decorator expression
    (`@threadguard.limit(1)`) or with apply=False: then nothing changes
    until a decorated call (applied around each call) or `with` (applied on
    entry).  As a context manager, the previous sizes come back on exit.
    `decision` says what decided the size (a node profile names its file).

    What cannot be restored: torch's inter-op pool.  torch allows
    set_num_interop_threads once, so a Limit that lowered it leaves it
    lowered after exit or restore(); `not_restored` names it, and the
    report lists it (a pool row "set_num_interop_threads()", lowered by
    "threadguard.limit() (not restorable)").
    """

    def __init__(self, threads: Threads = "auto", *, workers: Optional[int] = None,
                 apply: bool = True):
        self.requested = threads
        self.workers = workers
        self.decision: Decision = decide_threads(threads, workers)  # validates both
        self.threads = self.decision.threads
        self.not_restored: Tuple[str, ...] = ()
        self._applied: Optional[Applied] = None
        if apply:
            self._apply()

    def _apply(self) -> None:
        self._applied = apply_threads(self.threads)
        if self._applied.interop is not None:
            before, after = self._applied.interop
            self.not_restored = (f"torch's inter-op pool ({before} -> {after} threads)",)

    def restore(self) -> None:
        """Put back the pool sizes and variables found when this was applied
        (all but those in `not_restored`)."""
        if self._applied is not None:
            restore(self._applied)
            self._applied = None

    def __enter__(self) -> "Limit":
        if self._applied is None:
            self._apply()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def __call__(self, func: F) -> F:
        self.restore()  # (applied only when made by a call that was not a decorator's)
        requested, workers = self.requested, self.workers

        @functools.wraps(func)
        def limited(*args: Any, **kwargs: Any) -> Any:
            with Limit(requested, workers=workers):
                return func(*args, **kwargs)

        return cast(F, limited)

    def __repr__(self) -> str:
        workers = f", workers={self.workers}" if self.workers else ""
        kept = f"; not restored: {', '.join(self.not_restored)}" if self.not_restored else ""
        return (f"threadguard.limit({self.requested!r}{workers}) -> "
                f"{count(self.threads, 'thread')}, from {self.decision.why}{kept}")


def _is_decorator_expression(frame: Optional[FrameType]) -> bool:
    """Whether the call running in frame is a decorator's (`@limit(1)` above
    a def or class): its source line starts with "@", or, where there is no
    source (`python -c`), the next instruction loads the code of the
    function or class being defined.  Anything else is a plain call."""
    if frame is None:
        return False
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    if line:
        return line.startswith("@")
    import dis
    import inspect

    # f_lasti is the call's offset, or its last inline cache's (3.11+): the
    # next instruction is the first one after it.
    for instruction in dis.get_instructions(frame.f_code):
        if instruction.offset <= frame.f_lasti or instruction.opname in (
                "PRECALL", "EXTENDED_ARG", "NOP", "CACHE", "PUSH_NULL"):
            continue
        return instruction.opname == "LOAD_BUILD_CLASS" or (
            instruction.opname == "LOAD_CONST" and inspect.iscode(instruction.argval))
    return False


def limit(threads: Threads = "auto", *, workers: Optional[int] = None) -> Limit:
    """Size the thread pools of this process to `threads`: now, or, as a
    decorator, around each call of the function (nothing changes until then).

    threads: a whole number (1 or more), or "auto": the CPU allocation
    (affinity, cgroup CPU quota, SLURM variables, OMP_THREAD_LIMIT; the node
    profile's recommendation when `threadguard bench` wrote one), kept
    within the task headroom. workers=k splits that among k worker
    processes, at least 1 thread each: the per-worker share is what this
    process and its children get.

    Reaches BLAS and OpenMP pools already loaded (threadpoolctl), torch
    (set_num_threads; set_num_interop_threads while torch still allows it,
    with a warning when it does not), numexpr and numba, libraries loaded
    later and child processes (the *_NUM_THREADS variables), and the native
    library's pool size.

        threadguard.limit(2)                      # from now on
        with threadguard.limit(1): ...            # restored on exit
        @threadguard.limit("auto", workers=4)     # around each call
        def work(): ...

    Restored on exit or after each call: everything but torch's inter-op
    pool, which torch lets a process set once (the Limit's not_restored and
    the report say when it was lowered).  Raises ValueError for a threads
    or workers value it cannot use.
    """
    return Limit(threads, workers=workers,
                 apply=not _is_decorator_expression(sys._getframe(1)))


def _apply_in_worker(threads: int, *_ignored: Any) -> None:
    # Stays applied for the worker's life: there is nothing to restore to.
    apply_threads(threads)


def pool_initializer(workers: int, threads: Threads = "auto") -> Callable[[], None]:
    """An initializer for multiprocessing.Pool / concurrent.futures pools
    that sizes each worker's pools to its share::

        Pool(4, initializer=threadguard.pool_initializer(4))
        ProcessPoolExecutor(4, initializer=threadguard.pool_initializer(4))

    workers: the number of worker processes the pool runs (the same number
    given to Pool or ProcessPoolExecutor); threads: the threads all of them
    share, or "auto": this process's CPU allocation, or the node profile's
    figure for that many workers, kept within the task headroom. Each worker
    gets threads // workers, at least 1. The share is computed here, in the
    parent, from its allocation."""
    return functools.partial(_apply_in_worker, per_process_threads(threads, workers))


def dataloader_worker_init(workers: int, threads: Threads = "auto") -> Callable[[int], None]:
    """A worker_init_fn for torch.utils.data.DataLoader that sizes each
    worker's pools to its share (DataLoader itself sets 1 intra-op thread)::

        DataLoader(data, num_workers=4,
                   worker_init_fn=threadguard.dataloader_worker_init(4))

    workers: the DataLoader's num_workers; threads: as for pool_initializer."""
    return functools.partial(_apply_in_worker, per_process_threads(threads, workers))
