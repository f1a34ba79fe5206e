"""How `threadguard bench` shows its results: the progress bar while it
runs, the table at the end, and the PNG plot (with matplotlib, when it is
installed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any, Dict, List, Optional

from .results import curves, grid_curves, loader_curves
from .runner import Config
from .workloads import GRID_WORKLOAD, WORKLOADS

__all__ = ["Progress", "plot", "table"]

MiB = 1024 * 1024


class Progress:
    """A bar redrawn in place on a terminal; one line per configuration
    otherwise, so logs stay readable."""

    def __init__(self, total: int, stream: IO[str]) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.finished = 0

    def __call__(self, index: int, config: Config, row: Optional[Dict[str, Any]]) -> None:
        if row is None:
            if self.tty:
                self._draw(config.label)
            return
        self.finished += 1
        if self.tty:
            self._draw(config.label)
        else:
            what = f"error: {row['error']}" if "error" in row else \
                f"{row['rate']['median']:.3g} {WORKLOADS[config.workload].unit}"
            print(f"[{self.finished}/{self.total}] {config.label}: {what}", file=self.stream,
                  flush=True)

    def skip(self, workload: str, reason: str, count: int) -> None:
        """Say once why a workload's count configurations are not run."""
        self.total -= count
        if self.tty:
            self.stream.write("\r\033[K")
        print(f"{workload}: skipped: {reason}", file=self.stream, flush=True)

    def _draw(self, label: str) -> None:
        width = 30
        done = int(width * self.finished / max(1, self.total))
        elapsed = time.monotonic() - self.started
        eta = ""
        if self.finished:
            eta = f" ~{elapsed / self.finished * (self.total - self.finished):.0f}s left"
        self.stream.write(f"\r\033[K[{'#' * done}{'.' * (width - done)}] "
                          f"{self.finished}/{self.total}{eta}  {label}")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _threads_text(row: Dict[str, Any]) -> str:
    live: Dict[str, int] = {}
    for lib in row.get("threads_by_library", []):
        if lib["live"]:
            live[lib["kind"]] = live.get(lib["kind"], 0) + lib["live"]
    return ", ".join(f"{kind} {n}" for kind, n in sorted(live.items())) or "none"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _cost(value: Optional[float]) -> str:
    return "not run" if value is None else f"{value:.0f}% slower"


def table(result: Dict[str, Any]) -> str:
    """The results, recommendations, grid and profile as text."""
    lines = [f"{'workload':14} {'threads':>7} {'workers':>7} {'median':>10} {'unit':9} "
             f"{'spread':>7} {'RSS MiB':>8} {'VmSize MiB':>10}  live threads by library "
             "(per process)"]
    for row in result["rows"]:
        rate = row.get("rate")
        if rate is None:
            lines.append(f"{row['workload']:14} {row['threads']:7} {row['workers']:7} "
                         f"error: {row['error']}")
            continue
        note = "" if rate["converged"] else " (budget spent)"
        vmsize = f"{row['vmsize'] / MiB:.0f}" if row.get("vmsize") else "?"
        lines.append(f"{row['workload']:14} {row['threads']:7} {row['workers']:7} "
                     f"{rate['median']:10.3g} {WORKLOADS[row['workload']].unit:9} "
                     f"{100 * rate['spread']:6.1f}% {row['peak_rss'] / MiB:8.0f} {vmsize:>10}  "
                     f"{_threads_text(row)}{note}")
    for name, reason in result["skipped"].items():
        lines.append(f"{name:14} skipped: {reason}")
    recommendations = result["recommendations"]
    if recommendations:
        lines += ["", "recommended: the fewest threads within 5% of the best throughput"]
    for name, rec in recommendations.items():
        loader = f" with {rec['loader_workers']} DataLoader workers" \
            if "loader_workers" in rec else ""
        lines.append(f"  {name:14} {_plural(rec['threads'], 'thread')}{loader} "
                     f"(best: {rec['best']:.3g} {rec['unit']} at {rec['best_threads']}); "
                     f"1 thread: {_cost(rec['cost_1'])}, 2 threads: {_cost(rec['cost_2'])}")
    grid = result["grid"]
    if len(grid) > 1:
        lines += ["", f"oversubscription grid ({GRID_WORKLOAD} in k worker processes, total "
                      f"{WORKLOADS[GRID_WORKLOAD].unit}):"]
        points = grid_curves(result["rows"])
        for k, choice in grid.items():
            rates = "  ".join(f"{t}/worker {median:.3g}" for t, median in points[k])
            lines.append(f"  {_plural(int(k), 'worker'):>11}: {rates}  -> {choice['threads']} "
                         "per worker")
    profile = result.get("profile")
    if profile:
        per_worker = ", ".join(f"{k} workers: {v}" for k, v in profile["per_worker"].items())
        lines += ["", f"node profile: {profile['path']} (threads {profile['threads']}"
                      f"{'; per worker with ' + per_worker if per_worker else ''})"]
    return "\n".join(lines)


def plot(result: Dict[str, Any], path: Path) -> Optional[str]:
    """Write the PNG: speed-up over 1 thread and parallel efficiency against
    threads per workload, the grid's total throughput, and a CUDA workload's
    throughput per DataLoader worker count. Returns why it was not written
    (matplotlib missing, nothing measured), else None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib, or 'threadguard[bench]')"
    medians = {name: {t: median for t, (median, _) in by_threads.items()}
               for name, by_threads in curves(result["rows"]).items()}
    if not medians:
        return "nothing was measured"
    grid = grid_curves(result["rows"])
    loaders = loader_curves(result["rows"])
    panels = 2 + (len(grid) > 1) + len(loaders)
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), constrained_layout=True)
    speedup, efficiency = axes[0], axes[1]
    all_threads: List[int] = sorted({t for c in medians.values() for t in c})
    for name, by_threads in medians.items():
        threads = sorted(by_threads)
        base = by_threads.get(1) or by_threads[threads[0]] * threads[0]
        ratios = [by_threads[t] / base for t in threads]
        speedup.plot(threads, ratios, marker="o", label=name)
        efficiency.plot(threads, [r / t for r, t in zip(ratios, threads)], marker="o", label=name)
    speedup.plot(all_threads, all_threads, color="grey", linestyle=":", label="ideal")
    speedup.set(xlabel="threads", ylabel="throughput / throughput at 1 thread",
                title="throughput")
    efficiency.set(xlabel="threads", ylabel="speed-up / threads", title="parallel efficiency")
    efficiency.set_ylim(bottom=0)
    for axis in (speedup, efficiency):
        axis.set_xscale("log", base=2)
        axis.set_xticks(all_threads, [str(t) for t in all_threads])
        axis.grid(True, alpha=0.3)
    speedup.legend(fontsize="small")
    if len(grid) > 1:
        total = axes[2]
        for k, points in grid.items():
            total.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                       label=_plural(int(k), "worker"))
        total.set(xlabel="threads per worker", ylabel=f"total {WORKLOADS[GRID_WORKLOAD].unit}",
                  title=f"{GRID_WORKLOAD} in k worker processes")
        total.set_xscale("log", base=2)
        total.set_xticks(all_threads, [str(t) for t in all_threads])
        total.grid(True, alpha=0.3)
        total.legend(fontsize="small")
    for axis, (name, by_workers) in zip(axes[2 + (len(grid) > 1):], loaders.items()):
        for loader_workers, points in by_workers.items():
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                      label=f"{loader_workers} DataLoader worker"
                            f"{'s' if loader_workers != 1 else ''}")
        axis.set(xlabel="intra-op threads", ylabel=WORKLOADS[name].unit,
                 title=f"{name} by DataLoader workers")
        axis.set_xscale("log", base=2)
        axis.set_xticks(all_threads, [str(t) for t in all_threads])
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    machine = result["machine"]
    gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
    figure.suptitle(f"{machine['host']}: {machine['cpu_model']}, {machine['allocation']} CPUs "
                    f"allocated{gpu}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None
