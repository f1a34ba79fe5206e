"""Under a real one-node Slurm (tests/slurm_cluster.py): every task's pools
sized to its share, and the report naming Slurm as the source.

Each task runs tests/engine_probe.py, bare (the default) and under
`threadguard run`, and prints its pools, live threads by library and
allocation as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from engine_probe import MARK
from slurm_cluster import SlurmCluster, why_not

PROBE = str(Path(__file__).with_name("engine_probe.py"))
GUARDED = [sys.executable, "-m", "threadguard", "run", "--", sys.executable, PROBE]
BARE = [sys.executable, PROBE, "--bare"]

pytestmark = pytest.mark.skipif(why_not() is not None, reason=f"no local Slurm: {why_not()}")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


def probes(text: str) -> List[Dict[str, Any]]:
    return [json.loads(line[len(MARK):]) for line in text.splitlines() if line.startswith(MARK)]


def run_tasks(slurm: SlurmCluster, args: List[str], tasks: int) -> List[Dict[str, Any]]:
    proc = slurm.srun(args)
    assert proc.returncode == 0, proc.stderr + slurm.logs()
    found = probes(proc.stdout)
    assert len(found) == tasks, proc.stdout + proc.stderr
    return found


def check_tasks(slurm: SlurmCluster, options: List[str], tasks: int, share: int) -> None:
    bare = run_tasks(slurm, [*options, *BARE], tasks)
    guarded = run_tasks(slurm, [*options, *GUARDED], tasks)
    print(f"srun {' '.join(options)}: default {[b['pools'] for b in bare]}, "
          f"threadguard {[g['pools'] for g in guarded]}, source "
          f"{[g['source'] for g in guarded]}, live {[g['live'] for g in guarded]}")
    for task in guarded:
        assert task["pools"] == {"openblas": share, "openmp": share, "torch": share}
        assert task["allocation"] == share
        assert task["source"].startswith("SLURM_"), task["source"]
        # Threads alive by library, from the native counters: the BLAS pool
        # has its share less the calling thread.
        assert task["live"].get("openblas", 0) == share - 1


def test_srun_one_cpu_per_task(slurm):
    check_tasks(slurm, ["-c", "1"], tasks=1, share=1)


def test_srun_two_tasks_one_cpu_each(slurm):
    check_tasks(slurm, ["-n", "2", "-c", "1"], tasks=2, share=1)


def test_srun_two_tasks_without_cpus_per_task(slurm):
    """No -c: Slurm sets no SLURM_CPUS_PER_TASK; the step's share is the
    node's CPUs over the tasks on it."""
    bare = run_tasks(slurm, ["-n", "2", *GUARDED], 2)
    assert {t["source"] for t in bare} == {"SLURM_CPUS_ON_NODE / tasks on the node"}
    assert all(t["pools"]["openblas"] == 1 for t in bare)


def test_job_array_of_two_tasks_with_two_cpus(slurm, tmp_path):
    if slurm.cpus < 2:
        pytest.skip("the node has one CPU; -c 2 cannot be granted")
    out = tmp_path / "array"
    out.mkdir()
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n"
                      f"#SBATCH --array=0-1\n#SBATCH -c 2\n#SBATCH -o {out}/%a.out\n"
                      f"{' '.join(GUARDED)}\n")
    job = slurm.sbatch([str(script)])
    slurm.wait_idle(job)
    found = {}
    for index in (0, 1):
        text = (out / f"{index}.out").read_text()
        [found[index]] = probes(text)
    print("job array -c 2:", {i: (t["pools"], t["source"]) for i, t in found.items()})
    for task in found.values():
        assert task["pools"] == {"openblas": 2, "openmp": 2, "torch": 2}
        assert task["source"] == "SLURM_CPUS_PER_TASK"


def test_bench_per_node_writes_the_shared_profile(slurm, tmp_path):
    """`srun --ntasks-per-node=1 threadguard bench` on every node of a job
    writes each node's profile into the shared THREADGUARD_PROFILE_DIR;
    a later task on that node sizes "auto" from it."""
    profiles = tmp_path / "profiles"
    # bench writes no profile from measurements that disagree (by design: a
    # busy CI machine's noise); that run is measured again, up to 3 times.
    for _ in range(3):
        proc = slurm.srun(["-N", "1", "--ntasks-per-node=1", "-c", str(slurm.cpus),
                           sys.executable, "-m", "threadguard", "bench", "--quick", "--workloads",
                           "matmul", "--workers", "1", "--out", str(tmp_path / "bench")],
                          env={"THREADGUARD_PROFILE_DIR": str(profiles)}, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        if "the measurements do not agree" not in proc.stdout:
            break
    found = list(profiles.glob("*.json"))
    assert len(found) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    [profile] = found
    print("profile written:", profile.name)
    check = slurm.srun(["-c", str(slurm.cpus), sys.executable, "-c",
                        "import threadguard; d = threadguard.info().auto; "
                        "print(d.source, d.profile)"],
                       env={"THREADGUARD_PROFILE_DIR": str(profiles)})
    assert check.returncode == 0, check.stderr
    assert check.stdout.split() == ["profile", str(profile)]
