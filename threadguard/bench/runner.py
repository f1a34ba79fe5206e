"""Run `threadguard bench` configurations (workload x threads x workers)
in fresh processes under the guard and collect what they measured.

Pool sizes are fixed when a library loads, so a thread count can only be
changed by starting a new process: each configuration gets its own, with
THREADGUARD_POOL_THREADS and the *_NUM_THREADS variables set to the thread
count and every other threadguard or thread setting of the caller removed.
A grid configuration of k workers starts k such processes that time the
same windows of the shared monotonic clock (child.py explains).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, Iterator, List, Optional

from .. import _native
from .._policy import rules
from .._preload import preload_environment
from ..doctor.facts import installed
from .child import READY_MARK, RESULT_MARK
from .workloads import GRID_WORKLOAD, WORKLOADS

__all__ = [
    "FULL",
    "QUICK",
    "Config",
    "Timing",
    "gpu_absent",
    "missing_package",
    "plan",
    "run_config",
    "sweep",
]

# Variables of the caller that would change what a configuration measures,
# besides those the library sizes pools from or caps them with.
_OTHER_THREAD_VARIABLES = ("GOTO_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class Timing:
    """How long each configuration is warmed up and timed: windows of
    `window` seconds until the last min_windows agree within `target`
    (relative range) or max_seconds have been timed; grid configurations
    time a fixed max_seconds."""

    warmup: float
    window: float
    min_windows: int
    max_seconds: float
    target: float
    timeout: float  # per configuration, process start and imports included


QUICK = Timing(warmup=0.3, window=0.25, min_windows=3, max_seconds=2.0, target=0.05, timeout=120)
FULL = Timing(warmup=1.0, window=0.5, min_windows=5, max_seconds=8.0, target=0.03, timeout=300)


@dataclass(frozen=True)
class Config:
    """One measurement: a workload at threads per process, with `workers`
    processes at once (the grid) or, for a CUDA workload, that many
    DataLoader workers in one process."""

    workload: str
    threads: int
    workers: int = 1

    @property
    def processes(self) -> int:
        return 1 if WORKLOADS[self.workload].device == "cuda" else self.workers

    @property
    def label(self) -> str:
        if WORKLOADS[self.workload].device == "cuda":
            return f"{self.workload} threads={self.threads} loader-workers={self.workers}"
        return f"{self.workload} threads={self.threads} workers={self.workers}"


def plan(workloads: List[str], threads: List[int], workers: List[int]) -> List[Config]:
    """Every CPU workload at every thread count with one process; the grid
    workload also with each worker count; a CUDA workload at every thread
    count with 0 (loading in the training process) and each worker count
    as DataLoader workers."""
    configs: List[Config] = []
    for name in workloads:
        device = WORKLOADS[name].device
        if device == "cuda":
            counts = sorted({0, *workers})
        elif name == GRID_WORKLOAD:
            counts = sorted({1, *workers})
        else:
            counts = [1]
        configs += [Config(name, t, k) for k in counts for t in threads]
    return configs


def gpu_absent() -> Optional[str]:
    """Why no CUDA workload can run here, or None when a GPU device exists
    (torch then decides, inside the configuration's process). Whether
    torch is installed is missing_package's question."""
    if not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/kfd")):
        return "no CUDA device on this node (/dev/nvidiactl is missing)"
    return None


def missing_package(workload: str) -> Optional[str]:
    """Why workload cannot run here for lack of a package, or None."""
    for package in WORKLOADS[workload].needs:
        if not installed(package):
            return f"{package} is not installed (pip install {package})"
    return None


def _environment(threads: int) -> Dict[str, str]:
    policy = rules()
    unwanted = {*policy.pool_variables, *policy.cap_variables, *_OTHER_THREAD_VARIABLES}
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("THREADGUARD_") and k not in unwanted}
    for name in policy.pool_variables:
        base[name] = str(threads)
    library = str(_native.packaged_path())
    return preload_environment(library, base, settings={"THREADGUARD_POOL_THREADS": str(threads)})


@dataclass
class _Child:
    proc: "subprocess.Popen[str]"
    stderr: IO[str]
    lines: "queue.Queue[Optional[str]]" = field(default_factory=queue.Queue)
    closed: threading.Event = field(default_factory=threading.Event)  # its stdout ended

    def start_reader(self) -> None:
        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.put(line)
            self.closed.set()
            self.lines.put(None)
        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, mark: str, deadline: float) -> Optional[str]:
        """The first stdout line starting with mark, or None at EOF or the deadline."""
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if line is None:
                return None
            if line.startswith(mark):
                return line[len(mark):].strip()

    def why_failed(self) -> str:
        status = self.proc.poll()
        if status is None and self.closed.is_set():
            # Its output ended: it is exiting, but on a busy node its exit
            # status can come a moment after the end of its output.
            try:
                status = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass  # closed its output and lives on: "did not finish in time"
        self.stderr.seek(0)
        tail = [line.rstrip() for line in self.stderr.read().splitlines() if line.strip()][-3:]
        if status is None:
            what = "did not finish in time"
        elif status < 0:
            what = f"was killed by signal {-status}"
        else:
            what = f"exited with status {status}"
        return f"the benchmark process {what}" + (": " + " | ".join(tail) if tail else "")


def run_config(config: Config, timing: Timing, quick: bool) -> Dict[str, Any]:
    """Measure one configuration. The result has "rates" (per window; for
    a grid, the workers' rates added window by window) and what each
    process saw, or "skipped" or "error" with the reason."""
    spec: Dict[str, Any] = {
        "workload": config.workload, "threads": config.threads, "quick": quick,
        "warmup": timing.warmup, "window": timing.window, "min_windows": timing.min_windows,
        "max_seconds": timing.max_seconds, "target": timing.target,
        "loader_workers": config.workers if WORKLOADS[config.workload].device == "cuda" else 0,
    }
    grid = config.processes > 1
    if grid:
        spec["sync"] = True
        spec["windows"] = max(1, round(timing.max_seconds / timing.window))
    env = _environment(config.threads)
    command = [sys.executable, "-m", "threadguard.bench.child", json.dumps(spec)]
    children: List[_Child] = []
    deadline = time.monotonic() + timing.timeout
    try:
        for _ in range(config.processes):
            # closed by _Child when the child is reaped
            stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
            proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=stderr, text=True)
            children.append(_Child(proc, stderr))
            children[-1].start_reader()
        if grid:
            for child in children:
                if child.wait_for(READY_MARK, deadline) is None:
                    return {"error": child.why_failed()}
            start = time.monotonic() + 0.05
            for child in children:
                assert child.proc.stdin is not None
                child.proc.stdin.write(f"{start}\n")
                child.proc.stdin.flush()
        results = []
        for child in children:
            line = child.wait_for(RESULT_MARK, deadline)
            if line is None:
                return {"error": child.why_failed()}
            results.append(json.loads(line))
        return _combine(results)
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
            child.proc.wait()
            child.stderr.close()
            if child.proc.stdin:
                child.proc.stdin.close()


def _combine(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One process's result as it is; a grid's rates added window by window,
    with the largest memory figures and each worker's threads."""
    if len(results) == 1 or "skipped" in results[0]:
        return results[0]
    windows = min(len(r["rates"]) for r in results)
    return {
        "rates": [sum(r["rates"][i] for r in results) for i in range(windows)],
        "worker_rates": [r["rates"][:windows] for r in results],
        "peak_rss": max(r["peak_rss"] for r in results),
        "vmsize": max((r["vmsize"] or 0) for r in results) or None,
        "threads_by_library": results[0]["threads_by_library"],
    }


def sweep(configs: List[Config], timing: Timing, quick: bool, skipped: Dict[str, str],
          progress: Callable[[int, Config, Optional[Dict[str, Any]]], None],
          skip: Callable[[str, str, int], None]) -> Iterator[Dict[str, Any]]:
    """Run configs in order, yielding each one's row, and calling
    progress(i, config, None) before each and progress(i, config, row)
    after. skipped (workload -> reason) holds the workloads known not to run
    here; when a configuration finds that its workload cannot run (torch
    sees no CUDA device), the workload is added, skip(workload, reason,
    configurations not run) is called, and its other configurations are not
    run."""
    for i, config in enumerate(configs):
        if config.workload in skipped:
            continue
        progress(i, config, None)
        result = run_config(config, timing, quick)
        if "skipped" in result:
            skipped[config.workload] = result["skipped"]
            skip(config.workload, result["skipped"],
                 sum(c.workload == config.workload for c in configs[i:]))
            continue
        row = {"workload": config.workload, "threads": config.threads,
               "workers": config.workers, "processes": config.processes, **result}
        progress(i, config, row)
        yield row
