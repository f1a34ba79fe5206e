"""Shared by the benchmarks: alternate configurations within one run, summarise.

Timings on shared machines drift by tens of percent between runs, so every
benchmark measures its configurations in the same run, alternating which
goes first each round, and reports medians, spreads and ratios."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence


def summary(values: List[float]) -> Dict[str, float]:
    """Median, quartiles, range and count."""
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2],
            "min": min(values), "max": max(values), "n": len(values)}


def alternate(rounds: int, names: Sequence[str], measure: Callable[[str], float],
              label: str) -> Dict[str, List[float]]:
    """measure(name) for every configuration each round, rotating the order;
    progress on stderr: one line rewritten on a terminal, a line per round
    otherwise (a log file or a pipe would get the rounds run together)."""
    results: Dict[str, List[float]] = {name: [] for name in names}
    terminal = sys.stderr.isatty()
    for i in range(rounds):
        order = list(names[i % len(names):]) + list(names[:i % len(names)])
        for name in order:
            results[name].append(measure(name))
        if terminal:
            print(f"\r{label}: round {i + 1}/{rounds}", end="", file=sys.stderr, flush=True)
        else:
            print(f"{label}: round {i + 1}/{rounds}", file=sys.stderr, flush=True)
    if terminal:
        print(file=sys.stderr)
    return results


def compare(results: Dict[str, List[float]], numerator: str, denominator: str,
            unit: str) -> Dict[str, object]:
    """Both summaries, the ratio of medians and the per-round paired ratios."""
    paired = [a / b for a, b in zip(results[numerator], results[denominator])]
    return {"unit": unit, denominator: summary(results[denominator]),
            numerator: summary(results[numerator]),
            "ratio_of_medians": statistics.median(results[numerator]) /
            statistics.median(results[denominator]),
            "paired_ratio": summary(paired)}


def machine() -> Dict[str, object]:
    """What the figures were measured on."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def write_json(path: Path, figures: Mapping[str, object]) -> None:
    """Write the figures beside the printed table, and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {path}")
