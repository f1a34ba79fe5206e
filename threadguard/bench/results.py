"""What a `threadguard bench` sweep says: summaries, a recommendation per
workload, the best threads per worker of the grid, and the node profile.

A recommendation is the fewest threads whose median throughput is within
TOLERANCE of the workload's best; its cost figures are how much slower 1
and 2 threads ran than the best, in percent.
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .._wording import count
from .child import relative_spread
from .workloads import GRID_WORKLOAD, WORKLOADS

__all__ = [
    "TOLERANCE",
    "curves",
    "grid_choices",
    "grid_curves",
    "profile_doubts",
    "profile_figures",
    "recommend",
    "summarize",
]

TOLERANCE = 0.05


def summarize(rates: Sequence[float], min_windows: int, target: float) -> Dict[str, Any]:
    """Median, quartiles, range, relative range of the windows, and whether
    the last min_windows agreed within target."""
    values = list(rates)
    quartiles = statistics.quantiles(values, n=4) if len(values) >= 2 else values * 3
    tail = values[-min_windows:]
    return {"median": statistics.median(values), "q1": quartiles[0], "q3": quartiles[2],
            "min": min(values), "max": max(values), "n": len(values),
            "spread": relative_spread(values),
            "converged": len(tail) >= min_windows and relative_spread(tail) <= target}


def _fewest_within(by_threads: Dict[int, float]) -> Dict[str, Any]:
    best_threads = max(by_threads, key=lambda t: by_threads[t])
    best = by_threads[best_threads]
    chosen = min(t for t, rate in by_threads.items() if rate >= (1 - TOLERANCE) * best)

    def cost(threads: int) -> Optional[float]:
        rate = by_threads.get(threads)
        return None if rate is None or best <= 0 else round(100 * (1 - rate / best), 1)
    return {"threads": chosen, "best_threads": best_threads, "best": best,
            "at_recommended": by_threads[chosen], "cost_1": cost(1), "cost_2": cost(2)}


def curves(rows: List[Dict[str, Any]]) -> Dict[str, Dict[int, Tuple[float, int]]]:
    """Per workload, its one-process medians by thread count, with the worker
    count they came from: for a CUDA workload, each thread count's best over
    its DataLoader worker counts."""
    out: Dict[str, Dict[int, Tuple[float, int]]] = {}
    for row in rows:
        name = row["workload"]
        if "rate" not in row or row["processes"] != 1:
            continue
        if WORKLOADS[name].device != "cuda" and row["workers"] != 1:
            continue
        by_threads = out.setdefault(name, {})
        median = row["rate"]["median"]
        if median > by_threads.get(row["threads"], (-1.0, 0))[0]:
            by_threads[row["threads"]] = (median, row["workers"])
    return out


def loader_curves(rows: List[Dict[str, Any]]) -> Dict[str, Dict[int, List[Tuple[int, float]]]]:
    """Per CUDA workload, per DataLoader worker count, its (threads, median)
    points: what the loader's workers change, which curves() folds away."""
    out: Dict[str, Dict[int, List[Tuple[int, float]]]] = {}
    for row in rows:
        name = row["workload"]
        if "rate" not in row or WORKLOADS[name].device != "cuda":
            continue
        points = out.setdefault(name, {}).setdefault(int(row["workers"]), [])
        points.append((int(row["threads"]), float(row["rate"]["median"])))
    return {name: {k: sorted(p) for k, p in sorted(by_workers.items())}
            for name, by_workers in out.items()}


def recommend(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per workload, from its one-process rows (see curves)."""
    out: Dict[str, Dict[str, Any]] = {}
    for name, by_threads in curves(rows).items():
        choice = _fewest_within({t: median for t, (median, _) in by_threads.items()})
        choice["unit"] = WORKLOADS[name].unit
        if WORKLOADS[name].device == "cuda":
            choice["loader_workers"] = by_threads[choice["threads"]][1]
        out[name] = choice
    return out


def grid_curves(rows: List[Dict[str, Any]]) -> Dict[str, List[Tuple[int, float]]]:
    """For each worker count of the grid workload (as a string, the JSON
    key): (threads per worker, total median) in order of threads."""
    by_workers: Dict[int, List[Tuple[int, float]]] = {}
    for row in rows:
        if row["workload"] == GRID_WORKLOAD and "rate" in row:
            by_workers.setdefault(row["workers"], []).append(
                (row["threads"], row["rate"]["median"]))
    return {str(k): sorted(v) for k, v in sorted(by_workers.items())}


def grid_choices(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """For each worker count of the grid workload: the fewest threads per
    worker within TOLERANCE of that count's best total throughput."""
    return {k: _fewest_within(dict(points)) for k, points in grid_curves(rows).items()}


def profile_figures(recommendations: Dict[str, Dict[str, Any]],
                    grid: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The fields limit("auto") reads: "threads", the most any CPU workload
    was recommended (so none runs more than TOLERANCE below its best), and
    "per_worker", the grid's threads per worker by worker count. None when
    no CPU workload was measured."""
    cpu = [r["threads"] for name, r in recommendations.items()
           if WORKLOADS[name].device == "cpu"]
    if not cpu:
        return None
    return {"threads": max(cpu),
            "per_worker": {k: g["threads"] for k, g in grid.items() if int(k) > 1}}


def _at(rows: List[Dict[str, Any]], statistic: str) -> List[Dict[str, Any]]:
    """The rows with each median replaced by another statistic of its windows."""
    return [{**r, "rate": {**r["rate"], "median": r["rate"].get(statistic, r["rate"]["median"])}}
            for r in rows]


def profile_doubts(rows: List[Dict[str, Any]]) -> List[str]:
    """Why these measurements cannot make a node profile (empty when they
    can): the CPU measurements it rests on must each have settled (their
    last windows agreed within the target before the time budget was spent),
    and the profile's figures must come out the same from every
    configuration's lower quartile, median and upper quartile: when noise
    can move the recommendation, the recommendation is noise."""
    used = [r for r in rows if "rate" in r and WORKLOADS[r["workload"]].device == "cpu"]
    doubts = []
    unsettled = [r for r in used if r["rate"].get("converged") is False]
    if unsettled:
        worst = max(r["rate"].get("spread", 0.0) for r in unsettled)
        doubts.append(f"{count(len(unsettled), 'measurement')} of {len(used)} never settled "
                      f"(the time budget was spent before the windows agreed; spread up to "
                      f"{worst:.0%})")
    figures = {q: profile_figures(recommend(_at(used, q)), grid_choices(_at(used, q)))
               for q in ("q1", "median", "q3")}
    if figures["q1"] != figures["median"] or figures["q3"] != figures["median"]:
        def threads(q: str) -> str:
            f = figures[q]
            return "none" if f is None else str(f["threads"])
        doubts.append(f"the recommendation moves within the measurements' quartiles "
                      f"(threads {threads('q1')} from the lower, {threads('median')} from "
                      f"the medians, {threads('q3')} from the upper)")
    return doubts
