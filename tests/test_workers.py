"""A job's processes share its CPUs under the preload alone, with no code
change: multiprocessing pools (fork, spawn, forkserver; with and without
numpy imported in the parent first), ProcessPoolExecutor, DataLoader
workers and MPI ranks (Open MPI and MPICH from Debian's packages).

Every worker reads its own pools and live threads from inside it
(tests/workers_child.py); each test runs the default beside the guarded run
and shows both in its assertion messages.  A node of 64 CPUs is the fakecpus
shim; "this machine" is the 2-core machine itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

HERE = Path(__file__).resolve().parent
CHILD = str(HERE / "workers_child.py")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "NUMEXPR_MAX_THREADS")
METHODS = ("fork", "spawn", "forkserver")


def clean_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("THREADGUARD_", "OMPI_", "PMI_", "SLURM_"))
           and k not in THREAD_VARIABLES and k not in ("LD_PRELOAD", "LOCAL_WORLD_SIZE",
                                                       "MPI_LOCALNRANKS")}
    env.update(extra)
    return env


def node(fakecpus: Optional[str], cpus: Optional[int], node_cpus: Optional[int] = None
         ) -> Dict[str, str]:
    """The environment of a node of `cpus` CPUs (None: this machine)."""
    if cpus is None:
        return {}
    env = {"LD_PRELOAD": fakecpus or "", "THREADGUARD_TEST_CPUS": str(cpus)}
    if node_cpus is not None:
        env["THREADGUARD_TEST_NODE_CPUS"] = str(node_cpus)
    return env


def lines(text: str) -> List[Dict[str, Any]]:
    """Every JSON object printed; MPICH's launcher may forward ranks' lines
    run together."""
    decoder, found, at = json.JSONDecoder(), [], text.find("{")
    while at >= 0:
        value, end = decoder.raw_decode(text, at)
        found.append(value)
        at = text.find("{", end)
    return found


def run(args: Sequence[str], *, guarded: bool, env: Dict[str, str],
        run_options: Sequence[str] = (), cwd: Path) -> List[Dict[str, Any]]:
    """workers_child.py ARGS, bare or under `threadguard run`: one dict per worker."""
    cmd = [sys.executable, CHILD, *args]
    if guarded:
        cmd = [sys.executable, "-m", "threadguard", "run", *run_options, "--", *cmd]
    proc = subprocess.run(cmd, env=clean_env(**env), cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return lines(proc.stdout)


def blas(workers: List[Dict[str, Any]]) -> List[int]:
    return sorted(w["pools"].get("openblas", 0) for w in workers)


def both(args: Sequence[str], env: Dict[str, str], cwd: Path,
         run_options: Sequence[str] = ()) -> Dict[str, List[Dict[str, Any]]]:
    """The default and the guarded run of the same command, printed side by side."""
    result = {"default": run(args, guarded=False, env=env, cwd=cwd),
              "guarded": run(args, guarded=True, env=env, cwd=cwd, run_options=run_options)}
    for name, workers in result.items():
        print(f"{' '.join(args)} {name}: BLAS {blas(workers)}, tasks "
              f"{sorted(w['tasks'] for w in workers)}")
    return result


# ---- multiprocessing -----------------------------------------------------------


@pytest.mark.parametrize("parent_numpy", ["numpy", "none"])
@pytest.mark.parametrize("method", METHODS)
def test_pool_workers_share_a_64_cpu_node(method, parent_numpy, fakecpus, tmp_path):
    result = both(["pool", method, parent_numpy], node(fakecpus, 64), tmp_path)
    default, guarded = result["default"], result["guarded"]
    assert len(default) == len(guarded) == 4
    assert len({w["pid"] for w in guarded}) == 4
    # The default: every worker starts a team for the whole node.
    assert blas(default) == [64] * 4, result
    # Guarded: each worker gets a quarter, and runs no more threads than that.
    assert blas(guarded) == [16] * 4, result
    assert all(w["tasks"] == 16 for w in guarded), result
    # The workers' parent (the forkserver, for that start method) and the
    # workers sharing its CPUs are named.
    parents = {w["ppid"] for w in guarded}
    assert len(parents) == 1
    parent = parents.pop()
    for w in guarded:
        assert w["source"] == f"4 workers of pid {parent}", w
        assert w["sharing"]["parent"] == parent and w["sharing"]["processes"] == 4, w
        assert sorted(w["sharing"]["pids"]) == sorted(x["pid"] for x in guarded), w
        assert w["cpus"] == 16
    if method == "fork" and parent_numpy == "numpy":
        # Inherited from the parent, configured for the node: resized in the child.
        for w in guarded:
            assert ["OPENBLAS_NUM_THREADS (fork)", 16, f"4 workers of pid {parent}"] in \
                w["decisions"], w


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_share_this_machine(method, tmp_path):
    cpus = len(os.sched_getaffinity(0))
    result = both(["pool", method, "numpy"], {}, tmp_path)
    assert blas(result["default"]) == [cpus] * 4, result
    assert blas(result["guarded"]) == [max(1, cpus // 4)] * 4, result


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_executor_workers_share_the_node(method, fakecpus, tmp_path):
    result = both(["executor", method], node(fakecpus, 64), tmp_path)
    assert blas(result["default"]) == [64] * 4, result
    assert blas(result["guarded"]) == [16] * 4, result


def test_dataloader_workers_share_the_node(fakecpus, tmp_path):
    pytest.importorskip("torch")
    result = both(["dataloader"], node(fakecpus, 64), tmp_path)
    default, guarded = result["default"], result["guarded"]
    assert len({w["pid"] for w in guarded}) == 4
    assert blas(default) == [64] * 4, result
    assert blas(guarded) == [16] * 4, result
    # torch's own pool in a DataLoader worker: 1, set by the DataLoader, both ways.
    assert {w["pools"]["torch"] for w in default + guarded} == {1}


@pytest.mark.parametrize("how", ["plain", "shell"])
def test_scripts_started_side_by_side_share_the_node(how, fakecpus, tmp_path):
    # Through a shell, each script is its shell's only child: the share is
    # the shell's, recomputed from the parent's four children.
    result = both(["fanout", how], node(fakecpus, 64), tmp_path)
    assert len(result["guarded"]) == 4
    assert blas(result["default"]) == [64] * 4, result
    assert blas(result["guarded"]) == [16] * 4, result
    # Read when each script reports (its siblings may have ended by then).
    for w in result["guarded"]:
        assert re.fullmatch(r"\d workers? of pid \d+", w["source"]), w


def test_explicit_settings_still_decide(fakecpus, tmp_path):
    env = node(fakecpus, 64)
    env["OPENBLAS_NUM_THREADS"] = "8"
    assert blas(run(["pool", "spawn", "none"], guarded=True, env=env, cwd=tmp_path)) == [8] * 4
    assert blas(run(["pool", "fork", "numpy"], guarded=True, env=env, cwd=tmp_path)) == [8] * 4
    env = node(fakecpus, 64)
    for method, parent_numpy in (("spawn", "none"), ("fork", "numpy")):
        workers = run(["pool", method, parent_numpy], guarded=True, env=env, cwd=tmp_path,
                      run_options=["--pool-threads", "4"])
        assert blas(workers) == [4] * 4, workers


# ---- MPI -------------------------------------------------------------------------

LAUNCHERS = {
    # Open MPI refuses root unless told; --oversubscribe: 4 ranks on 2 cores.
    "openmpi": (["mpirun.openmpi", "--allow-run-as-root", "--oversubscribe", "-np", "4"],
                "Open MPI: 4 local ranks"),
    "mpich": (["mpiexec.mpich", "-np", "4"], "MPICH/Intel MPI: 4 local ranks"),
}


def mpi(name: str, env: Dict[str, str], cwd: Path, *, guard: str) -> List[Dict[str, Any]]:
    """4 ranks of workers_child.py; guard: "none", "launcher" (threadguard run
    -- mpirun ...) or "ranks" (mpirun ... threadguard run -- python ...)."""
    launcher, _ = LAUNCHERS[name]
    if shutil.which(launcher[0]) is None:
        pytest.skip(f"{launcher[0]} is not installed (apt-get install "
                    f"{'openmpi-bin' if name == 'openmpi' else 'mpich'})")
    rank = [sys.executable, CHILD, "rank"]
    if guard == "ranks":
        rank = [sys.executable, "-m", "threadguard", "run", "--", *rank]
    cmd = [*launcher, *rank]
    if guard == "launcher":
        cmd = [sys.executable, "-m", "threadguard", "run", "--", *cmd]
    proc = subprocess.run(cmd, env=clean_env(**env), cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    ranks = lines(proc.stdout)
    assert len(ranks) == 4, proc.stdout + proc.stderr
    print(f"{name} {guard}: BLAS {blas(ranks)}")
    return ranks


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_mpi_ranks_share_a_64_cpu_node(name, fakecpus, tmp_path):
    env = node(fakecpus, 64)
    default = mpi(name, env, tmp_path, guard="none")
    assert blas(default) == [64] * 4
    label = LAUNCHERS[name][1]
    # Only the ranks guarded: the launcher's own variables say how many share.
    ranks = mpi(name, env, tmp_path, guard="ranks")
    assert blas(ranks) == [16] * 4, (default, ranks)
    assert {r["source"] for r in ranks} == {label}, ranks
    assert all(r["tasks"] == 16 for r in ranks), ranks
    # The launcher guarded (and with it every rank it starts).
    ranks = mpi(name, env, tmp_path, guard="launcher")
    assert blas(ranks) == [16] * 4, (default, ranks)


@pytest.mark.parametrize("bound_to, expected, source", [
    (16, 16, "Open MPI: 4 local ranks (bound: the affinity stands)"),
    (8, 8, "affinity"),
    (32, 16, "Open MPI: 4 local ranks"),
], ids=["16-disjoint", "8-each", "32-socket"])
def test_mpi_ranks_bound_by_the_launcher_keep_their_cpus(bound_to, expected, source, fakecpus,
                                                       tmp_path):
    # Each rank's affinity is `bound_to` CPUs of a 64-CPU node: a share the
    # launcher already made (16 or 8 CPUs each) is not divided again; ranks
    # bound to a socket of 32 that two of them share get 64 / 4.
    env = node(fakecpus, bound_to, node_cpus=64)
    ranks = mpi("openmpi", env, tmp_path, guard="ranks")
    assert blas(ranks) == [expected] * 4, ranks
    for r in ranks:
        assert (r["cpus"], r["source"]) == (expected, source), r


# ---- how workers end -----------------------------------------------------------


def live_files(pids: Sequence[int]) -> List[str]:
    directory = Path(f"/dev/shm/threadguard-{os.getuid()}")
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir()
                  if p.name.split(".")[0].isdigit() and int(p.name.split(".")[0]) in pids)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("method", METHODS)
def test_workers_that_end_by_exit_write_reports_and_leave_no_file(method, tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {"THREADGUARD_REPORT": str(reports / "r-%p.json")}
    out = run(["ends", method], guarded=True, env=env, cwd=tmp_path)
    pids = out[0]
    ours = [pids["main"], *pids["workers"], *pids["children"]]
    assert len(set(ours)) == 7, pids
    # multiprocessing's helpers (resource tracker, forkserver) end once the
    # main process has: wait for every process this run started.
    started = {int(p.stem.split("-")[1]) for p in reports.glob("r-*.json")} | set(ours)
    deadline = time.monotonic() + 60
    while any(running(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    written = {int(p.stem.split("-")[1]) for p in reports.glob("r-*.json")}
    # One report per process: the pool's workers and the Process children end
    # through os._exit() with fork, by returning with spawn and forkserver.
    assert set(ours) <= written, (sorted(ours), sorted(written))
    for pid in written:
        assert json.loads((reports / f"r-{pid}.json").read_text())["pid"] == pid
    assert live_files(sorted(started)) == [], pids


def test_a_published_file_takes_memory_for_what_it_holds(tmp_path):
    workers = run(["pool", "fork", "numpy"], guarded=True, env={}, cwd=tmp_path)
    for w in workers:
        # The file is as long as the layout; only the pages holding rows are there.
        assert w["published_size"] > 200_000, w
        assert w["published_bytes"] <= 64 * 1024, w


# ---- where the share is shown ------------------------------------------------------


def test_top_and_the_report_name_the_share(fakecpus, tmp_path):
    release = tmp_path / "release"
    cmd = [sys.executable, "-m", "threadguard", "run", "--", sys.executable, CHILD, "pool",
           "spawn", "none", str(release)]
    proc = subprocess.Popen(cmd, env=clean_env(**node(fakecpus, 64)), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        seen: Dict[int, str] = {}
        while len(seen) < 4 and time.monotonic() < deadline and proc.poll() is None:
            top = subprocess.run([sys.executable, "-m", "threadguard", "top", "--once"],
                                 env=clean_env(), cwd=tmp_path, capture_output=True, text=True,
                                 timeout=300)
            assert top.returncode == 0, top.stderr
            for match in re.finditer(r"OPENBLAS_NUM_THREADS=16 \(threadguard, 16 CPUs: "
                                     r"(4 workers of pid (\d+))", top.stdout):
                seen[len(seen)] = match.group(1)
            if len(seen) < 4:
                seen.clear()
                time.sleep(0.5)
        assert len(seen) == 4 and len(set(seen.values())) == 1, top.stdout
        assert seen[0] == f"4 workers of pid {proc.pid}"
    finally:
        release.touch()
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert blas(lines(out)) == [16] * 4


def test_doctor_in_a_worker_shows_whom_it_shares_with(tmp_path):
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-m', 'threadguard', "
            "'doctor'], check=True)")
    proc = subprocess.run([sys.executable, "-m", "threadguard", "run", "--", sys.executable,
                           "-c", code], env=clean_env(), cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"sources seen .*1 worker of pid \d+ \d", proc.stdout), proc.stdout
    assert re.search(r"sharing\s+pid \d+'s \d+ CPUs among 1 live guarded processes",
                     proc.stdout), proc.stdout
