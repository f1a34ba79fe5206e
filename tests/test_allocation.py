"""The CPU allocation as each scheduler and launcher defines it.

Each case starts a guarded child on a node that looks like 64 CPUs (the
fakecpus shim) with the variables, files or affinity that Slurm, PBS, SGE,
LSF, Flux, Kubernetes, Python or torchrun set, and reads back from it
threadguard.allocation() (the figure, its source and every source seen)
and the OpenBLAS pool the library started with.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import threadguard

from limits import Runner

# Variables a scheduler on the test machine itself could have set.
SCHEDULER_PREFIXES = ("SLURM_", "PBS_", "NCPUS", "NSLOTS", "NHOSTS", "PE_HOSTFILE", "JOB_ID",
                      "LSB_", "FLUX_", "KUBERNETES_", "CPU_LIMIT", "PYTHON_CPU_COUNT",
                      "TORCHELASTIC_", "LOCAL_WORLD_SIZE", "OMPI_", "MPI_LOCAL", "MV2_", "PALS_",
                      "PMI_")

READ_BACK = """
import json, threadpoolctl, numpy, threadguard
a = threadguard.allocation()
blas = [i["num_threads"] for i in threadpoolctl.threadpool_info()
        if i["internal_api"] == "openblas"]
print(json.dumps({"cpus": int(a), "source": a.source, "sources": a.sources, "blas": blas[0]}))
"""

HOST = socket.gethostname()


def allocation_of(runner: Runner, env: Dict[str, str], cpus: Optional[int] = 64,
                  prefix: List[str] = (), guarded: bool = True) -> dict:
    full = {k: v for k, v in runner.env(None, cpus).items()
            if not k.startswith(SCHEDULER_PREFIXES)}
    full.update(env)
    cmd = [sys.executable, "-c", READ_BACK]
    if guarded:
        # LD_PRELOAD by hand, not `threadguard run`: one process, so each
        # message is printed once.
        full["LD_PRELOAD"] = ":".join(p for p in (threadguard.libpath(),
                                                  full.get("LD_PRELOAD")) if p)
    proc = subprocess.run([*prefix, *cmd], env=full, cwd=runner.dir, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr"] = proc.stderr
    print(env, "->", {k: v for k, v in result.items() if k != "stderr"})
    return result


@pytest.fixture
def runner(tmp_path: Path, fakecpus: str) -> Runner:
    return Runner(tmp_path, fakecpus)


CASES = {
    # Slurm: -c 3
    "slurm cpus per task": ({"SLURM_JOB_ID": "11", "SLURM_CPUS_PER_TASK": "3",
                             "SLURM_CPUS_ON_NODE": "12", "SLURM_JOB_NUM_NODES": "1"},
                            3, "SLURM_CPUS_PER_TASK"),
    # Slurm: a one-node batch job of 6 CPUs; the script is its one process.
    "slurm one node": ({"SLURM_JOB_ID": "12", "SLURM_CPUS_ON_NODE": "6",
                        "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1",
                        "SLURM_TASKS_PER_NODE": "6", "SLURM_JOB_CPUS_PER_NODE": "6"},
                       6, "SLURM_CPUS_ON_NODE"),
    # Slurm: what `sbatch -N 2 -n 8` sets in its batch script on two
    # 16-CPU nodes: SLURM_CPUS_ON_NODE is the node's 16, a task's share 4.
    "slurm two nodes": ({"SLURM_JOB_ID": "13", "SLURM_CPUS_ON_NODE": "16",
                         "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2", "SLURM_NODEID": "0",
                         "SLURM_NTASKS": "8", "SLURM_TASKS_PER_NODE": "4(x2)",
                         "SLURM_JOB_CPUS_PER_NODE": "16(x2)"},
                        4, "SLURM_CPUS_ON_NODE / tasks on the node"),
    # Slurm: an srun step of that job with 4 tasks on node 0, 2 on node 1,
    # seen from node 1 (8 CPUs allocated there).
    "slurm step second node": ({"SLURM_JOB_ID": "14", "SLURM_STEP_ID": "0",
                                "SLURM_CPUS_ON_NODE": "8", "SLURM_JOB_NUM_NODES": "2",
                                "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "4,2",
                                "SLURM_JOB_CPUS_PER_NODE": "16,8"},
                               4, "SLURM_CPUS_ON_NODE / tasks on the node"),
    # PBS/Torque: -l nodes=1:ppn=5
    "torque": ({"PBS_JOBID": "7.server", "PBS_NUM_PPN": "5", "PBS_NUM_NODES": "1"},
               5, "PBS_NUM_PPN (Torque)"),
    # PBS Pro: -l select=1:ncpus=3
    "pbs pro": ({"PBS_JOBID": "8.pbs", "NCPUS": "3", "OMP_NUM_THREADS": "3"},
                3, "NCPUS (PBS Pro)"),
    # SGE: -pe smp 4 on one host
    "sge": ({"JOB_ID": "21", "NSLOTS": "4", "NHOSTS": "1", "SGE_TASK_ID": "undefined"},
            4, "NSLOTS (SGE)"),
    # LSF: bsub -n 10 over two hosts, 2 of them here
    "lsf two hosts": ({"LSB_JOBID": "31", "LSB_DJOB_NUMPROC": "10",
                       "LSB_MCPU_HOSTS": f"otherhost 8 {HOST} 2"}, 2, "LSB_MCPU_HOSTS (LSF)"),
    # LSF: bsub -n 6 -R span[hosts=1]
    "lsf one host": ({"LSB_JOBID": "32", "LSB_DJOB_NUMPROC": "6",
                      "LSB_MCPU_HOSTS": f"{HOST} 6"}, 6, "LSB_MCPU_HOSTS (LSF)"),
    # Kubernetes: env CPU_LIMIT from resourceFieldRef limits.cpu, divisor 1m
    "kubernetes millicores": ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "CPU_LIMIT": "2500m"},
                              3, "CPU_LIMIT (Kubernetes)"),
    # Python 3.13's override of os.cpu_count()
    "python cpu count": ({"PYTHON_CPU_COUNT": "7"}, 7, "PYTHON_CPU_COUNT"),
    # torchrun --nproc_per_node=4 on the 64-CPU node
    "torchrun": ({"TORCHELASTIC_RUN_ID": "none", "LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "1"},
                 16, "torchrun: the allocation / LOCAL_WORLD_SIZE"),
    # Launchers that start ranks side by side (tests/test_workers.py runs Open
    # MPI and MPICH for real; these are the others' variables).
    "open mpi": ({"OMPI_COMM_WORLD_LOCAL_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"},
                 16, "Open MPI: 4 local ranks"),
    "mpich": ({"MPI_LOCALNRANKS": "8", "MPI_LOCALRANKID": "3"}, 8,
              "MPICH/Intel MPI: 8 local ranks"),
    "mvapich2": ({"MV2_COMM_WORLD_LOCAL_SIZE": "2"}, 32, "MVAPICH2: 2 local ranks"),
    "cray pals": ({"PALS_LOCAL_SIZE": "16", "PALS_LOCAL_RANKID": "0"}, 4,
                  "Cray PALS: 16 local ranks"),
    "deepspeed": ({"LOCAL_WORLD_SIZE": "8", "LOCAL_RANK": "0"}, 8,
                  "LOCAL_WORLD_SIZE: 8 local ranks"),
    # mpirun -np 4 inside a Slurm batch job of 8 CPUs on one node: the job's 8.
    "open mpi in slurm": ({"SLURM_JOB_ID": "16", "SLURM_CPUS_ON_NODE": "8",
                           "SLURM_JOB_NUM_NODES": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"},
                          2, "Open MPI: 4 local ranks"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scheduler_allocation(runner, case):
    env, cpus, source = CASES[case]
    result = allocation_of(runner, env)
    assert (result["cpus"], result["source"]) == (cpus, source)
    # Every source seen is listed, the node's affinity first.
    assert result["sources"][0] == ["affinity", 64]
    assert [source, cpus] in result["sources"]
    # The pools start at the share, not at the 64 CPUs the node shows.
    assert result["blas"] == cpus


def test_multi_node_slurm_cpus_on_node_is_not_the_task_share(runner):
    """A two-node job whose tasks per node are unknown: SLURM_CPUS_ON_NODE
    is not taken at all (affinity and the step's cgroup decide)."""
    env = {"SLURM_JOB_ID": "15", "SLURM_CPUS_ON_NODE": "16", "SLURM_JOB_NUM_NODES": "2"}
    result = allocation_of(runner, env)
    assert result["source"] == "affinity"
    assert all(s[0] != "SLURM_CPUS_ON_NODE" for s in result["sources"])
    one_node = allocation_of(runner, {**env, "SLURM_JOB_NUM_NODES": "1"})
    assert (one_node["cpus"], one_node["source"]) == (16, "SLURM_CPUS_ON_NODE")


def test_sge_parallel_environment_over_two_hosts(runner, tmp_path):
    hostfile = tmp_path / "pe_hostfile"
    hostfile.write_text(f"otherhost.example 5 all.q@otherhost UNDEFINED\n"
                        f"{HOST} 3 all.q@{HOST} UNDEFINED\n")
    hostfile.chmod(0o644)
    env = {"JOB_ID": "22", "NSLOTS": "8", "NHOSTS": "2", "PE_HOSTFILE": str(hostfile)}
    result = allocation_of(runner, env)
    assert (result["cpus"], result["source"]) == (3, "PE_HOSTFILE (SGE)")
    assert all(s[0] != "NSLOTS (SGE)" for s in result["sources"])


def test_a_malformed_local_rank_count_is_named_and_skipped(runner):
    result = allocation_of(runner, {"OMPI_COMM_WORLD_LOCAL_SIZE": "four"})
    assert (result["cpus"], result["source"]) == (64, "affinity")
    assert "OMPI_COMM_WORLD_LOCAL_SIZE='four' is not a whole number of CPUs" in result["stderr"]


def test_variables_outside_their_scheduler_are_ignored(runner):
    """NCPUS, NSLOTS and CPU_LIMIT are common names: read only inside a PBS
    job, an SGE job, a Kubernetes pod."""
    result = allocation_of(runner, {"NCPUS": "3", "NSLOTS": "2", "CPU_LIMIT": "1"})
    assert (result["cpus"], result["source"]) == (64, "affinity")


def test_flux_binds_cores_by_affinity(runner):
    """Flux sets no CPU count: its job shell binds the task's cores
    (cpu-affinity), which the report names as Flux's."""
    taskset = shutil.which("taskset")
    if taskset is None:
        pytest.skip("taskset (util-linux) is not installed")
    env = {"FLUX_JOB_ID": "f3Hh1Fgs", "FLUX_TASK_RANK": "0", "FLUX_JOB_SIZE": "1"}
    result = allocation_of(runner, env, cpus=None, prefix=[taskset, "-c", "0"])
    assert (result["cpus"], result["source"]) == (1, "affinity (Flux cpu-affinity)")
    assert result["blas"] == 1


def test_malformed_variable_is_named_once_and_skipped(runner):
    result = allocation_of(runner, {"SLURM_CPUS_PER_TASK": "four", "SLURM_JOB_ID": "16"})
    assert (result["cpus"], result["source"]) == (64, "affinity")
    lines = [line for line in result["stderr"].splitlines() if "SLURM_CPUS_PER_TASK" in line]
    assert lines == ["threadguard: SLURM_CPUS_PER_TASK='four' is not a whole number of CPUs "
                     "(1 or more); ignored for the CPU allocation"]


def _unshare_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "--cgroup", "true"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs root and unshare -m --cgroup (private "
                                                 "mount and cgroup namespaces to lay a cgroup "
                                                 "v2 tree over /sys/fs/cgroup)")
@pytest.mark.parametrize("cpu_limit, cpus, source", [
    (None, 2, "cgroup CPU quota"),
    ("1", 1, "CPU_LIMIT (Kubernetes)"),
])
def test_kubernetes_pod(runner, tmp_path, cpu_limit, cpus, source):
    """A pod with limits.cpu 1500m: the container's cgroup v2 cpu.max is
    "150000 100000" (2 CPUs, rounded up); the downward API's CPU_LIMIT,
    where the pod spec sets it, may say less.  As in a container on a pure
    v2 host: its own cgroup namespace, whose root is the container's group
    ("0::/", bound over this process's /proc/PID/cgroup; every command of
    the chain execs the next, so the pid stays the guarded one's)."""
    fake = tmp_path / "cgroup2"
    fake.mkdir()
    (fake / "cgroup.controllers").write_text("cpu pids memory\n")
    (fake / "cpu.max").write_text("150000 100000\n")
    lines = tmp_path / "cgroup-lines"
    lines.write_text("0::/\n")
    script = (f"mount --bind {fake} /sys/fs/cgroup && mount --bind {lines} /proc/$$/cgroup && "
              f"exec \"$@\"")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    if cpu_limit:
        env["CPU_LIMIT"] = cpu_limit
    result = allocation_of(runner, env,
                           prefix=["unshare", "-m", "--cgroup", "sh", "-c", script, "sh"])
    assert (result["cpus"], result["source"]) == (cpus, source)
    assert ["cgroup CPU quota", 2] in result["sources"]


def test_doctor_shows_every_source_and_the_one_that_decided(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_PREFIXES)}
    env.update({"PBS_JOBID": "9.server", "NCPUS": "1", "PYTHON_CPU_COUNT": "5"})
    proc = subprocess.run([sys.executable, "-m", "threadguard", "doctor", "--json"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    cpus = json.loads(proc.stdout)["facts"]["cpus"]
    assert (cpus["allocation"], cpus["allocation_from"]) == (1, "NCPUS (PBS Pro)")
    seen = {s["source"]: s["cpus"] for s in cpus["sources"]}
    assert seen["NCPUS (PBS Pro)"] == 1 and seen["PYTHON_CPU_COUNT"] == 5
    assert "affinity" in seen
    text = subprocess.run([sys.executable, "-m", "threadguard", "doctor"], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path).stdout
    assert "allocation          1 (from NCPUS (PBS Pro))" in text
    assert "NCPUS (PBS Pro) 1, PYTHON_CPU_COUNT 5" in text
