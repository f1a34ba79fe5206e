"""What a worker's thread pools are, read from inside the worker.

Used by the scheduler and engine tests (Slurm, Ray, Dask, torchrun, joblib):
each worker calls probe() (or runs this file, which prints it as one JSON
line) after its BLAS and torch have done some work, so every pool has
started.  A guarded worker also reports the live threads by library from
threadguard's native counters and its CPU allocation with the source; a
bare one (the default, no threadguard) is read with threadpoolctl alone,
without importing threadguard, which would guard it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict

MARK = "ENGINE-PROBE "


def _work() -> None:
    import numpy
    import torch
    a = numpy.ones((300, 300))
    (a @ a).sum()
    t = torch.ones((300, 300))
    (t @ t).sum()


def probe(guarded: bool = True) -> Dict[str, Any]:
    """The worker's pool sizes ("openblas", "openmp", "torch"); when guarded
    also "live" (threads alive now, by the kind of library that created
    them), "allocation" and "source"."""
    _work()
    import torch
    result: Dict[str, Any] = {"pid": os.getpid(), "torch_threads": torch.get_num_threads(),
                              "affinity": len(os.sched_getaffinity(0))}
    if guarded:
        import threadguard
        info = threadguard.info()
        pools = {p.library: p.size for p in info.pools}
        live: Dict[str, int] = {}
        for lib in (info.threads.libraries if info.threads else []):
            live[lib.kind] = live.get(lib.kind, 0) + lib.live
        allocation = threadguard.allocation()
        result.update(mode=info.mode, live=live, allocation=int(allocation),
                      source=allocation.source)
    else:
        import threadpoolctl
        pools = {i["internal_api"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
    pools["torch"] = torch.get_num_threads()
    result["pools"] = {k: pools.get(k) for k in ("openblas", "openmp", "torch")}
    return result


def sizes(result: Dict[str, Any]) -> Dict[str, Any]:
    """The pool sizes of one probe, for a test's output."""
    return dict(result["pools"])


if __name__ == "__main__":
    print(MARK + json.dumps(probe(guarded="--bare" not in sys.argv)), flush=True)
