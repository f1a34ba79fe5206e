"""Dask distributed: each worker sized to its share of the node.

A Nanny starts its worker with OMP_NUM_THREADS, MKL_NUM_THREADS and
OPENBLAS_NUM_THREADS forced to 1 (distributed's nanny.pre-spawn-environ),
whatever the node has to spare.  The share here is the node's CPU
allocation over the threads of every worker on the node: a worker with
nthreads=T, one of W on its host, gets allocation // (W * T), at least 1.
"""

from __future__ import annotations

from typing import Any, Optional

from distributed.diagnostics.plugin import WorkerPlugin

from .._limiting import Limit, limit
from .._policy import Threads, per_process_threads

__all__ = ["ThreadguardPlugin"]


async def _workers_on_host(worker: Any) -> int:
    """Workers the scheduler knows on this worker's host (itself at least)."""
    identity = await worker.scheduler.identity()
    hosts = [w.get("host") for w in identity.get("workers", {}).values()]
    return max(1, hosts.count(worker.ip))


class ThreadguardPlugin(WorkerPlugin):
    """Size every worker's pools when it starts::

        client.register_plugin(threadguard.integrations.dask.ThreadguardPlugin())

    threads: what the node's workers share ("auto": the CPU allocation);
    workers_per_node: how many workers share it (default: the workers the
    scheduler has on the host when the plugin is set up: register it once
    the cluster's workers are up).  Each worker's share is recorded in
    `worker.threadguard_share`."""

    name = "threadguard"

    def __init__(self, threads: Threads = "auto", workers_per_node: Optional[int] = None):
        per_process_threads(threads)  # a bad value fails here, in the client
        if workers_per_node is not None and (isinstance(workers_per_node, bool) or
                                             not isinstance(workers_per_node, int) or
                                             workers_per_node < 1):
            raise ValueError(f"workers_per_node must be a whole number of workers (1 or more) "
                             f"or None; got {workers_per_node!r}")
        self.threads = threads
        self.workers_per_node = workers_per_node
        self.applied: Optional[Limit] = None

    async def setup(self, worker: Any) -> None:
        workers = self.workers_per_node or await _workers_on_host(worker)
        nthreads = int(getattr(getattr(worker, "state", worker), "nthreads", 1) or 1)
        self.applied = limit(per_process_threads(self.threads, workers=workers * nthreads))
        worker.threadguard_share = self.applied.threads
