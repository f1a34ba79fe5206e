"""threadguard bench: configurations run guarded in fresh processes, the
recommendation rule, the files it writes, and the profile limit("auto") reads.

Timings are the benchmark's output, not something these tests assert: they
check that each figure is measured and used, not how fast anything is."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

import threadguard
from threadguard.bench.command import default_threads, default_workers
from threadguard.bench.child import measure_windows, relative_spread
from threadguard.bench.results import (grid_choices, loader_curves, profile_doubts,
                                       profile_figures, recommend, summarize)
from threadguard.bench.runner import QUICK, plan
from threadguard.bench.workloads import WORKLOADS


def hang_guard(configurations: int) -> float:
    """Seconds after which a bench run is stuck, not slow: the bench ends each
    configuration at its own timeout, so a loaded machine can only come near
    this (a fixed 300 s failed a --quick run under load; no test asserts on
    wall time)."""
    return 120 + configurations * QUICK.timeout


def run_bench(tmp_path: Path, *args: str, env: Dict[str, str] = None,
              configurations: int = 4) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, THREADGUARD_PROFILE_DIR=str(tmp_path / "profiles"))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "threadguard", "bench", "--out",
                           str(tmp_path / "out"), *args], env=full_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=hang_guard(configurations))


def written(tmp_path: Path) -> dict:
    files = list((tmp_path / "out").glob("bench-*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def live(row: dict, kind: str) -> int:
    return sum(lib["live"] for lib in row["threads_by_library"] if lib["kind"] == kind)


def test_tiny_sweep_runs_guarded_configs_and_writes_json_png_and_profile(tmp_path):
    proc = run_bench(tmp_path, "--quick", "--workloads", "matmul", "--threads", "1,2",
                     "--workers", "1,2")
    assert proc.returncode == 0, proc.stderr
    result = written(tmp_path)
    rows = {(r["threads"], r["workers"]): r for r in result["rows"]}
    assert sorted(rows) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for row in rows.values():
        assert row["rate"]["n"] >= 1 and row["rate"]["median"] > 0
        assert row["peak_rss"] > 10 * 2**20 and row["vmsize"] > row["peak_rss"]
    # Each configuration ran in its own process under the guard, which counted
    # OpenBLAS's threads: 1 thread is the caller alone, 2 is the caller and one worker.
    assert live(rows[(1, 1)], "openblas") == 0
    if threadguard.allocation() >= 2:
        assert live(rows[(2, 1)], "openblas") == 1
    # The grid: 2 processes timed the same windows, their rates added.
    grid_row = rows[(1, 2)]
    assert grid_row["processes"] == 2 and len(grid_row["worker_rates"]) == 2
    assert grid_row["rates"][0] == pytest.approx(sum(w[0] for w in grid_row["worker_rates"]))

    recommendation = result["recommendations"]["matmul"]
    one_process = {t: rows[(t, 1)]["rate"]["median"] for t in (1, 2)}
    best = max(one_process.values())
    assert recommendation["threads"] == min(t for t, r in one_process.items() if r >= 0.95 * best)
    assert recommendation["cost_1"] == pytest.approx(100 * (1 - one_process[1] / best), abs=0.1)

    assert (tmp_path / "out" / f"bench-{result['machine']['host']}-"
            f"{result['machine']['allocation']}cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if result["profile_doubts"]:
        # A busy machine: the measurements did not agree, so no profile (the
        # rule itself is tested with fixed figures below).
        assert result["profile"] is None and not (tmp_path / "profiles").exists()
        assert "no node profile: the measurements do not agree" in proc.stdout
    else:
        profile = Path(result["profile"]["path"])
        assert profile.parent == tmp_path / "profiles"
        saved = json.loads(profile.read_text())
        assert saved["threads"] == recommendation["threads"]
        assert saved["per_worker"] == {"2": result["grid"]["2"]["threads"]}
        # limit("auto") finds that very file, in another process.
        found = subprocess.run(
            [sys.executable, "-c", "import threadguard; print(threadguard.profile_path("
             "threadguard.allocation()))"], env=dict(os.environ, THREADGUARD_PROFILE_DIR=str(
                 tmp_path / "profiles")), capture_output=True, text=True,
            check=True).stdout.strip()
        assert found == str(profile)
    assert "[1/4] matmul threads=1 workers=1:" in proc.stderr
    assert "recommended: the fewest threads within 5% of the best" in proc.stdout


@pytest.mark.slow
def test_quick_runs_every_workload_and_skips_cuda_with_one_line(tmp_path):
    started = time.monotonic()
    configurations = len(plan(list(WORKLOADS), default_threads(threadguard.allocation(), True),
                              default_workers(True)))
    proc = run_bench(tmp_path, "--quick", configurations=configurations)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    result = written(tmp_path)
    threads = default_threads(threadguard.allocation(), quick=True)
    for name, workload in WORKLOADS.items():
        if workload.device == "cuda" and not cuda_works():
            assert proc.stderr.count(f"{name}: skipped: ") == 1
            continue
        measured = sorted(r["threads"] for r in result["rows"]
                          if r["workload"] == name and r["workers"] == 1)
        assert measured == threads, name
        assert name in result["recommendations"]
    assert sorted(result["grid"]) == ["1", "4"]
    assert (result["profile"] is None) == bool(result["profile_doubts"])
    if result["profile"] is not None:
        assert Path(result["profile"]["path"]).is_file()
    assert list((tmp_path / "out").glob("*.png"))
    print(f"threadguard bench --quick took {elapsed:.0f} s")


def cuda_works() -> bool:
    """Whether torch can use a CUDA device here, asked of torch itself."""
    if importlib.util.find_spec("torch") is None:
        return False
    return subprocess.run([sys.executable, "-c", "import sys, torch; "
                           "sys.exit(0 if torch.cuda.is_available() else 1)"]).returncode == 0


def test_without_cuda_the_gpu_workload_is_a_skip_line_not_an_error(tmp_path):
    if cuda_works():
        pytest.skip("this machine has a CUDA device: the CUDA workload runs instead")
    proc = run_bench(tmp_path, "--device", "cuda")
    assert proc.returncode == 0, proc.stderr
    result = written(tmp_path)
    reason = result["skipped"]["gpu-train"]
    assert "CUDA" in reason or "torch is not installed" in reason
    assert proc.stderr.count(f"gpu-train: skipped: {reason}") == 1
    assert "Traceback" not in proc.stderr
    assert result["rows"] == [] and list(result["skipped"]) == ["gpu-train"]
    assert result["profile"] is None and not (tmp_path / "profiles").exists()
    assert "no node profile" in proc.stdout


def test_a_failing_configuration_is_reported_and_the_rest_still_run(tmp_path):
    # A sitecustomize that makes only the guarded benchmark processes fail.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'libthreadguard' in os.environ.get('LD_PRELOAD', '') and "
        "os.environ.get('OPENBLAS_NUM_THREADS') == '2':\n"
        "    sys.stderr.write('injected failure\\n'); sys.stderr.flush(); os._exit(3)\n")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    proc = run_bench(tmp_path, "--quick", "--workloads", "matmul", "--threads", "1,2",
                     "--workers", "1", env={"PYTHONPATH": path})
    assert proc.returncode == 1
    rows = {r["threads"]: r for r in written(tmp_path)["rows"]}
    assert "exited with status 3: injected failure" in rows[2]["error"]
    assert rows[1]["rate"]["median"] > 0
    assert "error: the benchmark process exited with status 3" in proc.stdout
    assert "1 configuration(s) failed" in proc.stderr


def test_interrupted_bench_keeps_what_it_measured_and_writes_no_profile(tmp_path):
    env = dict(os.environ, THREADGUARD_PROFILE_DIR=str(tmp_path / "profiles"))
    proc = subprocess.Popen([sys.executable, "-m", "threadguard", "bench", "--quick",
                             "--workloads", "matmul", "--threads", "1,2", "--workers", "1",
                             "--out", str(tmp_path / "out")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    assert first.startswith("[1/2] matmul threads=1"), first
    proc.send_signal(signal.SIGINT)  # during the second configuration
    stdout, stderr = proc.communicate(timeout=hang_guard(1))
    assert proc.returncode == 130, stderr
    assert "interrupted after 1 of 2 configurations" in stderr
    result = written(tmp_path)
    assert result["interrupted"] and [r["threads"] for r in result["rows"]] == [1]
    assert result["profile"] is None and not (tmp_path / "profiles").exists()


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "'0' is not a list of counts from 1 to 4096"),
    (["--threads", "two"], "'two' is not a list of counts"),
    (["--workers", "1,,4"], "'1,,4' is not a list of counts"),
    (["--workloads", "nope"], "'nope' names no workload of matmul, solve"),
    (["--device", "cpu", "--workloads", "gpu-train"], "gpu-train do not run with --device cpu"),
])
def test_bad_options_are_refused_with_what_is_expected(tmp_path, args, message):
    proc = run_bench(tmp_path, *args, configurations=0)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("unwritable", ["out", "profiles"])
def test_unwritable_outputs_are_refused_before_measuring(tmp_path, unwritable):
    """--out DIR was checked only after every measurement had run, so an
    unwritable DIR lost the whole run."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "out" if unwritable == "out" else tmp_path / "out"
    env = dict(os.environ, THREADGUARD_PROFILE_DIR=str(
        blocker / "profiles" if unwritable == "profiles" else tmp_path / "profiles"))
    proc = subprocess.run([sys.executable, "-m", "threadguard", "bench", "--quick",
                           "--workloads", "matmul", "--threads", "1", "--workers", "1",
                           "--out", str(out)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=hang_guard(1))
    assert proc.returncode == 2, proc.stderr
    assert "[1/1]" not in proc.stderr  # nothing was measured
    assert f"cannot write to {'--out' if unwritable == 'out' else 'the node profile'}" \
        in proc.stderr, proc.stderr
    assert "Nothing was measured" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_the_workloads_and_the_profile_directory():
    proc = subprocess.run([sys.executable, "-m", "threadguard", "bench", "--help"],
                          capture_output=True, text=True, check=True)
    for name in WORKLOADS:
        assert name in proc.stdout
    assert "THREADGUARD_PROFILE_DIR" in proc.stdout and "srun" in proc.stdout


# ---- the measuring and the recommendation rule ------------------------------------------

class FakeClock:
    """A monotonic clock that moves only when told: the window arithmetic is
    tested exactly, whatever the load on the machine (real sleeps overshoot
    on a busy node)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    from threadguard.bench import child as bench_child
    fake = FakeClock()
    monkeypatch.setattr(bench_child, "time", fake)
    return fake


def test_windows_share_each_steps_work_by_overlap(clock):
    # Steps of 25 ms doing 1 unit each: every 100 ms window does 4 units.
    rates = measure_windows(lambda: clock.sleep(0.025), 1.0, 0.1, clock.now, 3, 10.0,
                            0.5, fixed=4)
    assert rates == pytest.approx([40.0] * 4)
    # A step longer than a window still spreads its work over the windows it spans.
    rates = measure_windows(lambda: clock.sleep(0.25), 1.0, 0.1, clock.now, 3, 10.0,
                            0.5, fixed=5)
    assert rates == pytest.approx([4.0] * 5)
    # Steps of uneven length: each window gets the work of the time it overlaps.
    lengths = iter([0.03, 0.12, 0.05] * 10)
    rates = measure_windows(lambda: clock.sleep(next(lengths)), 1.0, 0.1, clock.now, 3, 10.0,
                            0.5, fixed=2)
    assert rates[0] == pytest.approx((1 + 0.07 / 0.12) / 0.1)


def test_timing_stops_when_windows_agree_or_the_budget_is_spent(clock):
    steady = measure_windows(lambda: clock.sleep(0.01), 1.0, 0.05, clock.now, 3, 5.0, 0.5)
    assert len(steady) == 3  # the first 3 windows agree: long before the 5 s budget
    durations = iter([0.001, 0.03] * 1000)
    noisy = measure_windows(lambda: clock.sleep(next(durations)), 1.0, 0.02, clock.now, 3,
                            0.3, 0.0)
    assert len(noisy) == 15  # never agree exactly: the whole 0.3 s budget


def _rows(workload: str, rates: Dict[int, float], workers: int = 1) -> List[dict]:
    return [{"workload": workload, "threads": t, "workers": workers,
             "processes": workers if WORKLOADS[workload].device == "cpu" else 1,
             "rate": {"median": r}} for t, r in rates.items()]


def test_recommendation_is_the_fewest_threads_within_five_percent():
    rows = _rows("matmul", {1: 50.0, 2: 96.0, 4: 100.0, 8: 90.0})
    rec = recommend(rows)["matmul"]
    assert rec["threads"] == 2 and rec["best_threads"] == 4 and rec["best"] == 100.0
    assert rec["cost_1"] == 50.0 and rec["cost_2"] == 4.0
    rec = recommend(_rows("solve", {1: 10.0, 4: 10.4}))["solve"]
    assert rec["threads"] == 1 and rec["cost_2"] is None  # 2 threads were not run
    # A CUDA workload: each thread count's best over its DataLoader workers.
    gpu = _rows("gpu-train", {1: 100.0, 2: 150.0}, 0) + _rows("gpu-train", {1: 200.0}, 4)
    rec = recommend(gpu)["gpu-train"]
    assert rec["threads"] == 1 and rec["loader_workers"] == 4


def test_grid_and_profile_figures():
    rows = _rows("matmul", {1: 30.0, 2: 60.0}) + _rows("matmul", {1: 61.0, 2: 15.0}, 4)
    grid = grid_choices(rows)
    assert grid["1"]["threads"] == 2 and grid["4"]["threads"] == 1
    recommendations = recommend(rows + _rows("mlp-train", {1: 20.0, 2: 18.0}))
    figures = profile_figures(recommendations, grid)
    assert figures == {"threads": 2, "per_worker": {"4": 1}}
    assert profile_figures(recommend(_rows("gpu-train", {1: 1.0}, 0)), {}) is None


def _noisy(rates: Dict[int, List[float]]) -> List[dict]:
    rows = _rows("matmul", {t: 0.0 for t in rates})
    for row in rows:
        row["rate"] = summarize(rates[row["threads"]], 3, 0.05)
    return rows


def test_noisy_measurements_make_no_profile():
    """Under load (spreads up to 265%, rows "budget spent") the bench wrote
    "threads": 1 on a 2-CPU node, and limit("auto") silently gave 1."""
    settled = _noisy({1: [50.0, 50.5, 50.2, 50.1], 2: [97.0, 96.5, 97.2, 97.0]})
    assert profile_doubts(settled) == []
    unsettled = _noisy({1: [50.0, 150.0, 20.0], 2: [30.0, 97.0, 300.0]})
    [doubt] = [d for d in profile_doubts(unsettled) if "never settled" in d]
    assert doubt.startswith("2 measurements of 2 never settled")
    # Each row settled, but 1 and 2 threads overlap: the choice is noise.
    moving = _noisy({1: [85.0, 88.0, 96.0, 96.0, 96.0], 2: [100.0] * 5})
    assert all(r["rate"]["converged"] for r in moving)
    assert any("moves within the measurements' quartiles" in d for d in profile_doubts(moving))


def _fake_run_config(rates: Dict[int, List[float]]):
    def run_config(config, timing, quick):
        return {"rates": rates[config.threads], "peak_rss": 40 << 20, "vmsize": 150 << 20,
                "threads_by_library": []}
    return run_config


@pytest.mark.parametrize("noisy", [True, False])
def test_bench_writes_a_profile_only_from_measurements_that_agree(tmp_path, monkeypatch, capsys,
                                                                 noisy):
    from threadguard.bench import runner as bench_runner
    from threadguard.bench.command import BenchOptions, bench
    rates = ({1: [50.0, 150.0, 20.0], 2: [30.0, 97.0, 300.0]} if noisy else
             {1: [50.0, 50.5, 50.2], 2: [97.0, 96.5, 97.2]})
    monkeypatch.setattr(bench_runner, "run_config", _fake_run_config(rates))
    monkeypatch.setenv("THREADGUARD_PROFILE_DIR", str(tmp_path / "profiles"))
    status = bench(BenchOptions(quick=True, workloads=["matmul"], threads=[1, 2], workers=[1],
                                out=tmp_path / "out"), stderr=open(os.devnull, "w"))
    assert status == 0
    result = written(tmp_path)
    said = capsys.readouterr().out
    if noisy:
        assert result["profile"] is None and not (tmp_path / "profiles").exists()
        assert result["profile_doubts"] and "never settled" in result["profile_doubts"][0]
        assert "no node profile: the measurements do not agree" in said
    else:
        assert result["profile_doubts"] == []
        assert json.loads(Path(result["profile"]["path"]).read_text())["threads"] == 2


def test_summary_spread_and_convergence():
    summary = summarize([10.0, 20.0, 10.1, 10.0, 10.05], 3, 0.05)
    assert summary["median"] == 10.05 and summary["n"] == 5 and summary["converged"]
    assert summary["spread"] == pytest.approx(10.0 / 10.05)
    assert not summarize([10.0, 20.0, 10.0], 3, 0.05)["converged"]
    assert relative_spread([5.0]) == 0.0


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_gpu_training_step_and_its_data_loading_work_on_the_cpu(loader_workers):
    # The CUDA workload's step, on the CPU device: its DataLoader (in-process
    # or worker processes), augmentation and training step run.
    torch = pytest.importorskip("torch")
    from threadguard.bench.workloads import loader_training
    step, samples = loader_training(torch, torch.device("cpu"), True, loader_workers)
    step()
    step()
    assert samples == 32


def test_a_child_that_ends_its_output_before_exiting_is_reported_by_its_status(tmp_path):
    """On a busy node the exit status comes a moment after the end of the
    child's output: the failure must still read "exited with status N", not
    "did not finish in time" (it did, once, under CI load)."""
    from threadguard.bench.runner import _Child
    stderr = (tmp_path / "stderr").open("w+", encoding="utf-8")
    code = ("import os, sys, time\nsys.stderr.write('going\\n'); sys.stderr.flush()\n"
            "os.close(1); time.sleep(1); os._exit(3)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=stderr, text=True)
    child = _Child(proc, stderr)
    child.start_reader()
    assert child.wait_for("never", time.monotonic() + hang_guard(1)) is None  # at EOF
    assert child.why_failed() == "the benchmark process exited with status 3: going"


def test_a_cuda_workload_is_plotted_per_dataloader_worker_count(tmp_path):
    """The run on an H200 (benchmarks/results/bench-h200-gpu.json): its
    DataLoader workers, not its threads, decide the throughput, and the
    PNG has a panel that shows it."""
    pytest.importorskip("matplotlib")
    from threadguard.bench.view import plot
    result = json.loads((Path(__file__).resolve().parent.parent / "benchmarks" / "results" /
                         "bench-h200-gpu.json").read_text())
    curves = loader_curves(result["rows"])["gpu-train"]
    assert sorted(curves) == [0, 2, 4, 8]
    assert all([t for t, _ in points] == [1, 2, 4, 8, 16] for points in curves.values())
    best = {k: max(rate for _, rate in points) for k, points in curves.items()}
    assert best[8] > 4 * best[0]  # eight loader workers feed the GPU, one process does not
    assert plot(result, tmp_path / "gpu.png") is None
    assert (tmp_path / "gpu.png").stat().st_size > 10_000
    # The unit rows: one line per worker count, its points in thread order.
    rows = _rows("gpu-train", {2: 20.0, 1: 10.0}, 0) + _rows("gpu-train", {1: 40.0}, 4) + \
        _rows("matmul", {1: 5.0})
    assert loader_curves(rows) == {"gpu-train": {0: [(1, 10.0), (2, 20.0)], 4: [(1, 40.0)]}}
