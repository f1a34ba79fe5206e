"""`threadguard bench`, from its options to its files: choose the
configurations, run them, recommend, and write the JSON, the PNG and the
node profile that limit("auto") reads."""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Dict, List, Optional

from .._policy import allocation
from .._profile import cpu_model, profile_path, write_profile
from .results import grid_choices, profile_doubts, profile_figures, recommend, summarize
from .runner import FULL, QUICK, gpu_absent, missing_package, plan, sweep
from .view import Progress, plot, table
from .workloads import WORKLOADS

__all__ = ["BenchOptions", "bench", "default_threads", "default_workers"]


@dataclass(frozen=True)
class BenchOptions:
    """What `threadguard bench` was asked: None means the default."""

    quick: bool = False
    workloads: Optional[List[str]] = None
    threads: Optional[List[int]] = None
    workers: Optional[List[int]] = None
    device: str = "all"  # "all", "cpu" or "cuda"
    out: Path = Path("threadguard-bench")
    profile: bool = True


def default_threads(cpus: int, quick: bool) -> List[int]:
    """Powers of two up to the allocation, and the allocation itself;
    quick: 1, 2 and the allocation."""
    if quick:
        return sorted({1, min(2, cpus), cpus})
    counts = {1 << i for i in range(cpus.bit_length()) if 1 << i <= cpus}
    return sorted(counts | {cpus})


def default_workers(quick: bool) -> List[int]:
    """Worker counts of the grid: one worker, and a pool of 4 (2 as well, unless quick)."""
    return [1, 4] if quick else [1, 2, 4]


def _select(options: BenchOptions) -> List[str]:
    names = options.workloads or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload {', '.join(unknown)}; choose from "
                         f"{', '.join(WORKLOADS)}")
    if options.device == "all":
        return names
    chosen = [n for n in names if WORKLOADS[n].device == options.device]
    if options.workloads and len(chosen) < len(names):
        other = [n for n in names if n not in chosen]
        raise ValueError(f"{', '.join(other)} do not run with --device {options.device}")
    return chosen


def _machine(cpus: int) -> Dict[str, Any]:
    versions = {}
    for package in ("numpy", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {"host": socket.gethostname(), "cpu_model": cpu_model(), "cpus": os.cpu_count(),
            "allocation": cpus, "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


def _check_writable(directory: Path, what: str, advice: str = "choose another",
                    make: bool = True) -> None:
    """Write a file in directory (made first when make), or raise ValueError
    naming it and why. Without make, a missing directory is judged by its
    nearest existing parent, and nothing is left behind."""
    try:
        if not make and not directory.exists():
            parent = next(p for p in directory.parents if p.exists())
            if not parent.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(parent))
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied", str(parent))
            return
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".threadguard-bench-check-"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write to {what} {directory}: {exc.strerror or exc}; {advice}. "
                         "Nothing was measured") from None


def bench(options: BenchOptions, stderr: IO[str] = sys.stderr) -> int:
    """Run the benchmark, print the table on stdout and progress on stderr,
    write the files. Exit status: 0, or 1 when a configuration failed.
    Raises ValueError for options that cannot be run."""
    cpus = allocation()
    names = _select(options)
    threads = options.threads or default_threads(cpus, options.quick)
    workers = options.workers or default_workers(options.quick)
    timing = QUICK if options.quick else FULL
    configs = plan(names, threads, workers)
    # Before any measuring: an output that cannot be written would lose the run.
    _check_writable(options.out, "--out")
    if options.profile:
        _check_writable(profile_path(cpus).parent, "the node profile directory",
                        "set THREADGUARD_PROFILE_DIR to one that is, or pass --no-profile",
                        make=False)  # made only when a profile is written
    skipped: Dict[str, str] = {}
    progress = Progress(len(configs), stderr)
    for name in names:
        reason = missing_package(name) or (gpu_absent() if WORKLOADS[name].device == "cuda"
                                           else None)
        if reason:
            skipped[name] = reason
            progress.skip(name, reason, sum(c.workload == name for c in configs))

    rows: List[Dict[str, Any]] = []

    def step(index: int, config: Any, row: Optional[Dict[str, Any]]) -> None:
        if row is not None:
            if "rates" in row:
                row["rate"] = summarize(row["rates"], timing.min_windows, timing.target)
            # Kept before it is reported done: an interrupt right after the
            # progress line (before sweep yields the row) must not lose it.
            rows.append(row)
        progress(index, config, row)

    started = datetime.datetime.now(datetime.timezone.utc)
    interrupted = False
    try:
        for _ in sweep(configs, timing, options.quick, skipped, step, progress.skip):
            pass  # rows are kept by step
    except KeyboardInterrupt:
        # Keep what was measured; an incomplete sweep makes no profile.
        interrupted = True
    progress.close()
    if interrupted:
        print(f"threadguard bench: interrupted after {len(rows)} of {progress.total} "
              "configurations; writing what was measured, and no node profile", file=stderr)

    gpus = sorted({row["device_name"] for row in rows if "device_name" in row})
    recommendations = recommend(rows)
    grid = grid_choices(rows)
    result: Dict[str, Any] = {
        "threadguard_bench": 1, "started": started.isoformat(timespec="seconds"),
        "quick": options.quick, "machine": _machine(cpus), "threads": threads,
        "workers": workers, "timing": asdict(timing), "rows": rows, "skipped": skipped,
        "recommendations": recommendations, "grid": grid, "profile": None,
        "interrupted": interrupted,
    }
    if gpus:
        result["machine"]["gpu"] = ", ".join(gpus)
    figures = profile_figures(recommendations, grid)
    # Noisy data makes no profile: limit("auto") would follow the noise.
    doubts = profile_doubts(rows) if figures else []
    result["profile_doubts"] = doubts
    if options.profile and figures and not interrupted and not doubts:
        path = write_profile(cpus, {**figures, "host": result["machine"]["host"],
                                    "cpu_model": result["machine"]["cpu_model"],
                                    "allocation": cpus, "measured": result["started"],
                                    "quick": options.quick, "workloads": recommendations})
        result["profile"] = {"path": str(path), **figures}

    stem = f"bench-{result['machine']['host']}-{cpus}cpu"
    options.out.mkdir(parents=True, exist_ok=True)
    json_path = options.out / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    png_path = options.out / f"{stem}.png"
    why_no_plot = plot(result, png_path)
    print(table(result))
    print(f"\nwrote {json_path}")
    print(f"wrote {png_path}" if why_no_plot is None else f"no plot: {why_no_plot}")
    if options.profile and not figures:
        print("no node profile: no CPU workload was measured")
    elif options.profile and doubts and not interrupted:
        print(f"no node profile: the measurements do not agree: {'; '.join(doubts)}. "
              f"Run the bench again when the node is quieter; meanwhile limit(\"auto\") uses "
              f"the CPU allocation (or an earlier profile, which it names)")
    if interrupted:
        return 130
    errors = [row for row in rows if "error" in row]
    if errors:
        print(f"threadguard bench: {len(errors)} configuration(s) failed; see the table",
              file=stderr)
    return 1 if errors else 0
