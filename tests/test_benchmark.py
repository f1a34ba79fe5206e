"""The overhead benchmark runs and measures a really guarded process.

It checks that the benchmark works, not the speed target: timings belong to
the benchmark's own output (benchmarks/results/), not to a unit test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO


def test_overhead_benchmark_produces_ratios(tmp_path):
    out = tmp_path / "overhead.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_overhead.py"),
                           "--rounds", "2", "--threads", "200", "--calls", "200",
                           "--out", str(out)],
                          capture_output=True, timeout=900, cwd=tmp_path)
    # Bytes, decoded here: text mode would turn the carriage returns checked below into \n.
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    for measure in ("create_join", "python_startup", "omp_set_num_threads_loop",
                    "omp_set_num_threads_call", "python_thread_start_join"):
        row = figures[measure]
        assert row["bare"]["n"] == row["guarded"]["n"] == 2
        assert row["ratio_of_medians"] > 0
    assert "create+join ratio" in proc.stdout
    assert "omp_set_num_threads loop ratio" in proc.stdout
    # Not a terminal: a line per round, not rounds run together with carriage returns.
    assert "create+join: round 1/2\ncreate+join: round 2/2\n" in proc.stderr, proc.stderr
    assert "\r" not in proc.stderr


def test_oversubscription_benchmark_compares_auto_with_default_ones_and_sweep_best(tmp_path):
    out = tmp_path / "oversubscription.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_oversubscription.py"),
                           "--rounds", "2", "--sweep-rounds", "1", "--workers", "2",
                           "--tasks", "4", "--repeat", "2", "--size", "64", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    for other in ("default", "ones", "best"):
        row = figures["auto_vs"][other]
        assert row["auto"]["n"] == row[other]["n"] == 2
        assert row["ratio_of_medians"] > 0
        assert f"throughput ratio auto/{other}" in proc.stdout
    # The sweep tried every thread count per worker up to the allocation, and
    # "best" ran with the fastest of them.
    cpus = figures["allocation"]
    sweep = figures["sweep"]["tasks_per_second"]
    assert sorted(map(int, sweep)) == list(range(1, cpus + 1))
    best = figures["sweep"]["best_threads_per_worker"]
    assert sweep[str(best)]["median"] == max(s["median"] for s in sweep.values())
    threads = figures["blas_threads_per_worker"]
    assert threads["best"] == [best] and threads["ones"] == [1]
    # Each pool really ran with its share: "auto" splits the allocation among the
    # workers (no node profile: the benchmark points the profile directory at an
    # empty one); the default pool is the library's own, one thread per CPU.
    assert threads["auto"] == [max(1, cpus // 2)]
    assert threads["default"] == [cpus]


def test_engine_benchmark_compares_dask_default_with_the_plugin(tmp_path):
    pytest.importorskip("distributed", reason="dask distributed is not installed")
    out = tmp_path / "engines.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_engines.py"),
                           "--rounds", "2", "--tasks", "2", "--size", "128", "--repeat", "1",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    row = figures["threadguard_vs_default"]
    assert row["default"]["n"] == row["threadguard"]["n"] == 2
    assert row["ratio_of_medians"] > 0
    assert "throughput ratio threadguard/default" in proc.stdout
    # Each worker really ran with its pool: the nanny's 1 by default, the
    # node's allocation (one worker) with the plugin.
    assert figures["blas_threads_per_worker"] == {"default": [1],
                                                  "threadguard": [figures["allocation"]]}


def test_worker_pool_benchmark_compares_plain_threadguard_run_with_bare_and_tuned(tmp_path):
    out = tmp_path / "workers.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_workers.py"),
                           "--rounds", "2", "--tasks", "4", "--repeat", "2", "--size", "64",
                           "--target-bare", "0", "--target-tuned", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    for other in ("bare", "tuned"):
        row = figures["guarded_vs"][other]
        assert row["guarded"]["n"] == row[other]["n"] == 2
        assert row["ratio_of_medians"] > 0
        assert f"throughput ratio guarded/{other}" in proc.stdout
    # Each way really ran as described: the default team per worker bare, a
    # share under plain `threadguard run`, one thread by hand.
    cpus, workers = figures["cpus"], figures["workers"]
    assert figures["blas_threads_per_worker"] == {
        "bare": [cpus], "guarded": [max(1, cpus // workers)], "tuned": [1]}


def test_node_scale_benchmark_times_both_ways_beside_crowds(tmp_path):
    """A crowd of another user, then the three workloads guarded and bare as an
    unprivileged user; each figure has both ways' rounds, and the one guarded
    import's report says how the user's tasks were found."""
    import os
    import shutil
    if os.geteuid() != 0 or not (shutil.which("setpriv") and shutil.which("prlimit")):
        pytest.skip("the node-scale benchmark needs root, setpriv and prlimit")
    out = tmp_path / "node_scale.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_node_scale.py"),
                           "--rounds", "2", "--burst-rounds", "2", "--burst", "3",
                           "--crowds", "0,1000", "--nproc", "800", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    # Exit 1 is a missed target: timings are the benchmark's, not this test's.
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert sorted(figures["crowds"]) == ["0", "1000"]
    for crowd in figures["crowds"].values():
        for measure in ("python -c pass", "import numpy", "burst"):
            assert crowd[measure]["guarded"]["n"] == crowd[measure]["bare"]["n"] == 2
            assert crowd[measure]["ratio_of_medians"] > 0
        assert set(crowd["first import, outside the rounds"]) == {"guarded", "bare"}
        one = crowd["one guarded import"]
        assert one["uid_tasks_at_start_from"] in ("node", "created", "counted")
        assert one["openblas"]["limit"] == "RLIMIT_NPROC"
    # With more processes on the node than the user's limit of 800, the node's
    # task count cannot settle a decision: the shared count did (with room
    # for the few hundred tasks the rounds create after it).
    assert figures["crowds"]["1000"]["one guarded import"]["uid_tasks_at_start_from"] == "created"
    assert "  1000 others  python -c pass" in proc.stdout
