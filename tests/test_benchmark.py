"""The overhead benchmark runs and measures a really guarded process.

It checks that the benchmark works, not the speed target: timings belong to
the benchmark's own output (benchmarks/results/), not to a unit test."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_overhead_benchmark_produces_ratios(tmp_path):
    out = tmp_path / "overhead.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_overhead.py"),
                           "--rounds", "2", "--threads", "200", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    for measure in ("create_join", "python_startup"):
        row = figures[measure]
        assert row["bare"]["n"] == row["guarded"]["n"] == 2
        assert row["ratio_of_medians"] > 0
    assert "create+join ratio" in proc.stdout


def test_oversubscription_benchmark_compares_default_and_limited_pools(tmp_path):
    out = tmp_path / "oversubscription.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_oversubscription.py"),
                           "--rounds", "2", "--workers", "2", "--tasks", "4", "--repeat", "2",
                           "--size", "64", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    row = figures["throughput"]
    assert row["default"]["n"] == row["limited"]["n"] == 2
    assert row["ratio_of_medians"] > 0
    # The limited pool really ran with each worker's share of the allocation.
    share = max(1, figures["allocation"] // 2)
    assert figures["blas_threads_per_worker"]["limited"] == [share]
    assert "throughput ratio limited/default" in proc.stdout
