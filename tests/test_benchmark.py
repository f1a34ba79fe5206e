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
