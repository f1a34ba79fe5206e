"""One configuration of `threadguard bench`, run as
`python -m threadguard.bench.child SPEC_JSON` in a fresh process under the
guard: pool sizes are fixed when the libraries load, so every thread count
needs its own process.

The step is timed in windows of fixed length. Each step's work is shared
among the windows it overlaps in proportion to the overlap, so a window's
rate is exact even when steps are long. Alone, the child stops once the last
few windows agree within the target spread or the time budget is spent.
With "sync", it first prints a ready line and waits for a start time on
stdin: workers of one grid configuration then time the same windows of
CLOCK_MONOTONIC (shared by every process), and the parent adds their rates
window by window.

The result is one line on stdout, after RESULT_MARK, as JSON.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from .workloads import WORKLOADS, Skip, Step

__all__ = ["READY_MARK", "RESULT_MARK", "main", "measure_windows", "relative_spread"]

RESULT_MARK = "threadguard-bench-result "
READY_MARK = "threadguard-bench-ready"


def relative_spread(values: Sequence[float]) -> float:
    """(max - min) / median of values; 0 for fewer than two, inf if the median is 0."""
    if len(values) < 2:
        return 0.0
    median = statistics.median(values)
    return (max(values) - min(values)) / median if median > 0 else float("inf")


def measure_windows(step: Step, work: float, window: float, start: float,
                    min_windows: int, max_seconds: float, target: float,
                    fixed: Optional[int] = None) -> List[float]:
    """Rates (work per second) of consecutive windows of `window` seconds from
    `start` (time.monotonic). With fixed, exactly that many windows; else
    stop when the last min_windows agree within target, or after
    max_seconds (at least one window)."""
    wanted = fixed if fixed is not None else max(min_windows, int(max_seconds / window))
    done = [0.0] * wanted
    now = time.monotonic()
    if now < start:
        time.sleep(start - now)
    t0 = start
    while True:
        step()
        t1 = time.monotonic()
        # Share this step's work among the windows [t0, t1] overlaps.
        span = max(t1 - t0, 1e-9)
        first = max(0, int((t0 - start) / window))
        last = min(wanted - 1, int((t1 - start) / window))
        for i in range(first, last + 1):
            lo, hi = start + i * window, start + (i + 1) * window
            overlap = min(hi, t1) - max(lo, t0)
            if overlap > 0:
                done[i] += work * overlap / span
        t0 = t1
        complete = min(wanted, int((t1 - start) / window))
        if complete >= wanted:
            break
        if fixed is None and complete >= min_windows and \
                relative_spread(done[complete - min_windows:complete]) <= target:
            break
    return [w / window for w in done[:complete]]


def _memory() -> Dict[str, Optional[int]]:
    """Peak RSS and VmSize now, in bytes."""
    vmsize = None
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    vmsize = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "vmsize": vmsize}


def _threads_by_library() -> List[Dict[str, Any]]:
    """Live threads by creating library, from the native counters."""
    from .. import stats
    snapshot = stats()
    return [{"library": lib.name, "kind": lib.kind, "live": lib.live, "peak": lib.peak}
            for lib in snapshot.libraries if lib.live or lib.peak]


def run(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Set up the workload, warm it up, time it, and describe the process."""
    workload = WORKLOADS[spec["workload"]]
    threads = int(spec["threads"])
    try:
        step, work = workload.setup(threads, bool(spec["quick"]),
                                    int(spec.get("loader_workers", 0)))
    except Skip as exc:
        return {"skipped": str(exc)}
    # Warm-up: pools started, caches and allocator settled.
    warm_until = time.monotonic() + float(spec["warmup"])
    for count in range(1 << 30):
        step()
        if count >= 1 and time.monotonic() >= warm_until:
            break
    if spec.get("sync"):
        print(READY_MARK, flush=True)
        start = float(sys.stdin.readline())
    else:
        start = time.monotonic()
    rates = measure_windows(step, work, float(spec["window"]), start, int(spec["min_windows"]),
                            float(spec["max_seconds"]), float(spec["target"]),
                            spec.get("windows"))
    result: Dict[str, Any] = {"rates": rates, **_memory(),
                              "threads_by_library": _threads_by_library()}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        result["torch_threads"] = torch.get_num_threads()
        if workload.device == "cuda":
            result["device_name"] = torch.cuda.get_device_name()
    return result


def main(argv: Sequence[str]) -> int:
    """Entry point: argv[1] is the configuration as JSON."""
    spec = json.loads(argv[1])
    result = run(spec)
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
