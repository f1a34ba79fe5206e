"""threadguard.limit(): a call, a context manager and a decorator; helpers for pools."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, TypeVar, cast

from ._policy import Decision, Threads, decide_threads, per_process_threads
from ._pools import Applied, apply_threads, restore
from ._wording import count

__all__ = ["Limit", "dataloader_worker_init", "limit", "pool_initializer"]

F = TypeVar("F", bound=Callable[..., Any])


class Limit:
    """A pool size applied to the running process (see limit()).

    Applied when created. As a context manager, the previous sizes come
    back on exit; as a decorator, the size is applied around each call
    instead (the application made when the object was created is undone).
    `decision` says what decided the size (a node profile names its file).
    """

    def __init__(self, threads: Threads = "auto", *, workers: Optional[int] = None):
        self.requested = threads
        self.workers = workers
        self.decision: Decision = decide_threads(threads, workers)  # validates both
        self.threads = self.decision.threads
        self._applied: Optional[Applied] = apply_threads(self.threads)

    def restore(self) -> None:
        """Put back the pool sizes and variables found when this was applied."""
        if self._applied is not None:
            restore(self._applied)
            self._applied = None

    def __enter__(self) -> "Limit":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def __call__(self, func: F) -> F:
        self.restore()
        requested, workers = self.requested, self.workers

        @functools.wraps(func)
        def limited(*args: Any, **kwargs: Any) -> Any:
            with Limit(requested, workers=workers):
                return func(*args, **kwargs)

        return cast(F, limited)

    def __repr__(self) -> str:
        workers = f", workers={self.workers}" if self.workers else ""
        return (f"threadguard.limit({self.requested!r}{workers}) -> "
                f"{count(self.threads, 'thread')}, from {self.decision.why}")


def limit(threads: Threads = "auto", *, workers: Optional[int] = None) -> Limit:
    """Size the thread pools of this process, now, to `threads`.

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

    Raises ValueError for a threads or workers value it cannot use.
    """
    return Limit(threads, workers=workers)


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
