"""The engines that start workers, run for real here: Ray, Dask distributed,
torchrun and joblib/loky.  Every worker reads back its own pools
(tests/engine_probe.py), by default and with threadguard's integration;
the test output shows both.  Each is skipped, with the reason, only where
its package is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

import threadguard
from engine_probe import MARK, probe

TESTS = str(Path(__file__).parent)
PROBE = str(Path(__file__).with_name("engine_probe.py"))


def pools(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r["pools"] for r in results]


def shares(pool: Dict[str, Any]) -> set:
    return set(pool.values())


@pytest.fixture
def tests_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers import engine_probe from the tests directory."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", TESTS + (os.pathsep + path if path else ""))


def bare_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("THREADGUARD_", "OMP_", "OPENBLAS_", "MKL_", "SLURM_"))
           and k not in ("LD_PRELOAD", "TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = TESTS
    env.update(extra)
    return env


def fake_node(fakecpus: str, cpus: int) -> Dict[str, str]:
    """A node that looks like `cpus` CPUs to every process (the fakecpus
    shim answers sched_getaffinity), so a share differs from 1."""
    return {"LD_PRELOAD": fakecpus, "THREADGUARD_TEST_CPUS": str(cpus)}


def probes(text: str) -> List[Dict[str, Any]]:
    return [json.loads(line[len(MARK):]) for line in text.splitlines() if line.startswith(MARK)]


# ---- Ray ---------------------------------------------------------------------

RAY_SCRIPT = """
import json, sys
import ray
import engine_probe
guarded = sys.argv[1] == "guarded"
kwargs = dict(num_cpus=2, include_dashboard=False, log_to_driver=False)
if guarded:
    import threadguard.integrations.ray as tg_ray
    kwargs["runtime_env"] = tg_ray.runtime_env()
    wrap = tg_ray.sized
else:
    wrap = lambda f: f
ray.init(**kwargs)

@ray.remote(num_cpus=1)
@wrap
def small():
    return engine_probe.probe(guarded)

@ray.remote(num_cpus=2)
@wrap
def big():
    return engine_probe.probe(guarded)

@wrap
class Actor:
    def where(self):
        return engine_probe.probe(guarded)

# One task of 1 CPU, then one of 2 in the worker it leaves idle (Ray reuses
# workers), then an actor of 2 CPUs.
first = ray.get(small.remote())
second = ray.get(big.remote())
actor = ray.remote(num_cpus=2)(Actor).remote()
third = ray.get(actor.where.remote())
print(engine_probe.MARK + json.dumps([first, second, third]))
ray.shutdown()
"""


def test_ray_tasks_and_actors_get_their_num_cpus(tests_on_path, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install ray)")
    results = {}
    for mode in ("default", "guarded"):
        proc = subprocess.run([sys.executable, "-c", RAY_SCRIPT, mode], capture_output=True,
                              text=True, timeout=300, env=bare_env(RAY_AUTH_MODE="disabled"),
                              cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        [results[mode]] = probes(proc.stdout)
    print("Ray num_cpus 1, 2 (reused worker), actor 2: default",
          pools(results["default"]), "threadguard", pools(results["guarded"]))
    small, big, actor = results["guarded"]
    assert shares(small["pools"]) == {1}
    assert shares(big["pools"]) == {2}
    assert shares(actor["pools"]) == {2}
    # Preloaded through runtime_env: the native counters see the workers.
    assert big["mode"] == "preload"
    assert big["live"].get("openblas") == 1
    # The default: the reused worker keeps the first task's 1 thread.
    default_small, default_big, _ = results["default"]
    if default_big["pid"] == default_small["pid"]:
        assert shares(default_big["pools"]) == {1}


# ---- Dask --------------------------------------------------------------------

DASK_SCRIPT = """
import json, sys
from distributed import Client, LocalCluster
import engine_probe
guarded, workers = sys.argv[1] == "guarded", int(sys.argv[2])
with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                  dashboard_address=None) as cluster, Client(cluster) as client:
    client.wait_for_workers(workers)
    if guarded:
        from threadguard.integrations.dask import ThreadguardPlugin
        client.register_plugin(ThreadguardPlugin())
    found = client.run(engine_probe.probe, guarded)
    print(engine_probe.MARK + json.dumps(list(found.values())))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_dask_workers_get_their_share_of_the_node(tests_on_path, tmp_path, workers):
    pytest.importorskip("distributed", reason="dask distributed is not installed")
    cpus = len(os.sched_getaffinity(0))
    share = max(1, cpus // workers)
    results = {}
    for mode in ("default", "guarded"):
        proc = subprocess.run([sys.executable, "-c", DASK_SCRIPT, mode, str(workers)],
                              capture_output=True, text=True, timeout=300, env=bare_env(),
                              cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        [results[mode]] = probes(proc.stdout)
    print(f"Dask LocalCluster, {workers} worker(s) x 1 thread on {cpus} CPUs: default",
          pools(results["default"]), "threadguard", pools(results["guarded"]))
    assert len(results["guarded"]) == workers
    for worker in results["guarded"]:
        assert shares(worker["pools"]) == {share}
    # The nanny forces 1 whatever the node has to spare.
    for worker in results["default"]:
        assert shares(worker["pools"]) == {1}


# ---- torchrun ----------------------------------------------------------------

def test_torchrun_ranks_get_the_allocation_over_nproc(fakecpus, tmp_path):
    pytest.importorskip("torch.distributed.run", reason="torch is not installed")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]
    node = bare_env(**fake_node(fakecpus, 4))
    bare = subprocess.run([*torchrun, PROBE, "--bare"], capture_output=True, text=True,
                          timeout=300, env=node, cwd=tmp_path)
    guarded = subprocess.run([sys.executable, "-m", "threadguard", "run", "--", *torchrun,
                              PROBE], capture_output=True, text=True, timeout=300, env=node,
                             cwd=tmp_path)
    assert bare.returncode == 0 and guarded.returncode == 0, bare.stderr + guarded.stderr
    default, ranks = probes(bare.stdout), probes(guarded.stdout)
    print("torchrun --nproc_per_node=2 on 4 CPUs: default", pools(default), "threadguard",
          pools(ranks), [r["source"] for r in ranks])
    assert len(ranks) == 2
    for rank in ranks:
        assert shares(rank["pools"]) == {2}
        assert rank["source"] == "torchrun: the allocation / LOCAL_WORLD_SIZE"
        assert rank["live"].get("openblas") == 1
    # torchrun's forced OMP_NUM_THREADS=1.
    assert all(shares(r["pools"]) == {1} for r in default)


def test_torchrun_keeps_the_users_omp_num_threads(fakecpus, tmp_path):
    """OMP_NUM_THREADS=1 given by the user (not forced by torchrun) stays."""
    pytest.importorskip("torch.distributed.run", reason="torch is not installed")
    node = bare_env(OMP_NUM_THREADS="1", **fake_node(fakecpus, 4))
    proc = subprocess.run([sys.executable, "-m", "threadguard", "run", "--", sys.executable,
                           "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           PROBE], capture_output=True, text=True, timeout=300, env=node,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ranks = probes(proc.stdout)
    assert len(ranks) == 2
    assert all(r["pools"]["openmp"] == 1 and r["pools"]["torch"] == 1 for r in ranks)


# ---- joblib ------------------------------------------------------------------

JOBLIB_SCRIPT = """
import json, sys
from joblib import Parallel, delayed
import engine_probe
guarded = sys.argv[1] == "guarded"
if guarded:
    from threadguard.integrations.joblib import parallel_config
    config = parallel_config(2)
else:
    from joblib import parallel_config
    config = parallel_config(backend="loky", n_jobs=2)
with config:
    found = Parallel()(delayed(engine_probe.probe)(False) for _ in range(6))
print(engine_probe.MARK + json.dumps(list({r["pid"]: r for r in found}.values())))
"""


def test_joblib_loky_workers_get_the_guards_share(fakecpus, tmp_path):
    """An 8-CPU node where Slurm granted 2 CPUs without binding them: loky
    sees 8 and gives each of 2 workers 4 threads; the guard's share is 1."""
    pytest.importorskip("joblib", reason="joblib is not installed")
    env = bare_env(SLURM_JOB_ID="9", SLURM_CPUS_PER_TASK="2", **fake_node(fakecpus, 8))
    results = {}
    for mode in ("default", "guarded"):
        proc = subprocess.run([sys.executable, "-c", JOBLIB_SCRIPT, mode], capture_output=True,
                              text=True, timeout=300, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        [results[mode]] = probes(proc.stdout)
    print("joblib loky n_jobs=2, 2 of 8 CPUs granted: default", pools(results["default"]),
          "threadguard", pools(results["guarded"]))
    assert results["guarded"] and all(shares(w["pools"]) == {1} for w in results["guarded"])
    assert all(w["pools"]["openblas"] == 4 for w in results["default"])


def test_integration_arguments_are_checked():
    joblib_integration = pytest.importorskip("threadguard.integrations.joblib",
                                             reason="joblib is not installed")
    with pytest.raises(ValueError, match="n_jobs must be a whole number"):
        joblib_integration.parallel_config(0)
    dask_integration = pytest.importorskip("threadguard.integrations.dask",
                                           reason="dask distributed is not installed")
    with pytest.raises(ValueError, match="workers_per_node must be"):
        dask_integration.ThreadguardPlugin(workers_per_node=0)
    with pytest.raises(ValueError, match="threads must be"):
        dask_integration.ThreadguardPlugin(threads=0)
    assert threadguard.allocation() >= 1
    assert probe(False)["pools"]["openblas"] >= 1
