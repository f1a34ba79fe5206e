"""threadguard doctor: a child under each limit, the verdict names that limit,
and every command the doctor suggests, run as printed under the same limit,
succeeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

from limits import (NOBODY, Cgroup, Runner, nobody_prefix, skip_unless_nobody_works,
                    uid_tasks)
from threadguard import _native
from threadguard._policy import rules
from threadguard._stats import Failure
from threadguard.doctor.diagnosis import (WORKLOADS, ThreadCost, env_command, explain_run,
                                          no_room_verdict, predict)
from threadguard.doctor.facts import (AddressSpaceFacts, CpuFacts, Facts, MemoryFacts,
                                      TaskFacts, User, gather, read_int)
from threadguard.doctor.messages import find_messages

MIB = 1024 * 1024
IMPORT_NUMPY = "import numpy"



def doctor(runner: Runner, args: Sequence[str], prefix: Sequence[str] = (), cpus: int = 64,
           env: Dict[str, str] | None = None) -> Dict[str, Any]:
    proc = subprocess.run([*prefix, sys.executable, "-m", "threadguard", "doctor", "--json",
                           "--timeout", "120", *args],
                          env=runner.env(env, cpus=cpus), cwd=runner.dir, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode in (0, 1), f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    result: Dict[str, Any] = json.loads(proc.stdout)
    return result


def run_printed(runner: Runner, commands: List[str], prefix: Sequence[str] = (),
                cpus: int = 64) -> None:
    """Each command, through the shell exactly as printed, under prefix."""
    assert commands, "the doctor printed no command"
    for command in commands:
        proc = subprocess.run([*prefix, "sh", "-c", command], env=runner.env(cpus=cpus),
                              cwd=runner.dir, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
        assert "pthread_create failed" not in proc.stderr, command


def numpy_cmd() -> List[str]:
    return ["--", sys.executable, "-c", IMPORT_NUMPY]


# ---- an unprivileged uid with a low RLIMIT_NPROC --------------------------

@pytest.fixture
def few_tasks(runner: Runner) -> List[str]:
    """The test uid with room for about 16 more tasks: far fewer than 64 BLAS threads."""
    skip_unless_nobody_works()
    return nobody_prefix(uid_tasks(NOBODY) + 18)


def test_node_verdict_names_rlimit_nproc(runner: Runner, few_tasks: List[str]) -> None:
    result = doctor(runner, [], prefix=few_tasks)
    verdict = result["verdict"]
    assert verdict["status"] == "fails" and verdict["limit"] == "RLIMIT_NPROC", verdict
    assert verdict["workload"] == "import numpy"
    assert result["facts"]["tasks"]["nproc_applies"] is True
    run_printed(runner, verdict["commands"], prefix=few_tasks)


def test_command_names_openblas_thread_eagain_and_rlimit_nproc(
        runner: Runner, few_tasks: List[str]) -> None:
    result = doctor(runner, numpy_cmd(), prefix=few_tasks)
    verdict, run = result["verdict"], result["run"]
    assert run["exit"] != 0, "import numpy should have failed under the task limit"
    said = next(m for m in run["messages"] if m["name"] == "openblas-thread")
    assert said["of"] == 64
    assert verdict["library"] == "OpenBLAS"
    assert verdict["thread"] == said["thread"]  # the thread OpenBLAS itself names
    assert verdict["error"] == "EAGAIN"
    assert verdict["limit"] == "RLIMIT_NPROC"
    assert "thread" in verdict["explanation"] and "RLIMIT_NPROC" in verdict["explanation"]
    run_printed(runner, verdict["commands"], prefix=few_tasks)


@pytest.fixture
def no_task_left(runner: Runner) -> List[str]:
    """The test uid with room for exactly one task: the command's own."""
    skip_unless_nobody_works()
    return nobody_prefix(uid_tasks(NOBODY) + 1)


def test_node_verdict_with_no_task_left_names_rlimit_nproc(
        runner: Runner, no_task_left: List[str]) -> None:
    """The doctor crashed with BlockingIOError from its probe's fork, printing
    no verdict, exactly where it is needed: the limits read say enough."""
    result = doctor(runner, [], prefix=no_task_left)
    verdict = result["verdict"]
    assert verdict["status"] == "fails" and verdict["limit"] == "RLIMIT_NPROC", verdict
    assert "EAGAIN" in verdict["explanation"] and "no task is free" in verdict["explanation"]
    assert all(w["baseline"].get("started") is False for w in result["workloads"])
    # Once the doctor has exited, its task is free for what it suggests; the
    # shell the user types into holds a task of its own (here, sh -c).
    run_printed(runner, verdict["commands"], prefix=nobody_prefix(uid_tasks(NOBODY) + 2))


def test_command_with_no_task_left_names_rlimit_nproc(
        runner: Runner, no_task_left: List[str]) -> None:
    result = doctor(runner, numpy_cmd(), prefix=no_task_left)
    assert result["run"]["exit"] is None and "EAGAIN" in result["run"]["error"]
    verdict = result["verdict"]
    assert verdict["status"] == "fails" and verdict["limit"] == "RLIMIT_NPROC", verdict


@pytest.mark.parametrize("args", [["doctor"], ["doctor", "--json"], numpy_cmd.__name__,
                                  ["bench", "--quick", "--workloads", "matmul", "--no-profile"]],
                         ids=["doctor", "doctor-json", "doctor-cmd", "bench"])
def test_no_traceback_with_no_task_left(runner: Runner, no_task_left: List[str],
                                        args: Any) -> None:
    if args == numpy_cmd.__name__:
        args = ["doctor", *numpy_cmd()]
    proc = subprocess.run([*no_task_left, sys.executable, "-m", "threadguard", *args,
                           *(["--out", str(runner.dir / "bench")] if args[0] == "bench"
                             else [])],
                          env=runner.env(), cwd=runner.dir, capture_output=True, text=True,
                          timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode in (1, 2), proc.stderr[-3000:]
    said = proc.stderr + proc.stdout
    assert "EAGAIN" in said or "Resource temporarily unavailable" in said, said[-3000:]
    assert "None" not in proc.stderr, proc.stderr[-3000:]  # "cannot write None: ..." was said


# ---- a thread leak under RLIMIT_NPROC -------------------------------------

EXECUTOR_LEAK = """import concurrent.futures, time
executors = []
def cycle(i):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    executors.append(pool)  # kept, never shut down
    return pool.submit(pow, i, 2).result()
for i in range(1000):
    cycle(i)
    time.sleep(0.02)
"""

NATIVE_LEAK = """import ctypes, sys, time
lib = ctypes.CDLL(sys.argv[1])
for i in range(1000):
    if lib.leaky_start() != 0:
        raise SystemExit("leaky_start failed")
    time.sleep(0.02)
"""


@pytest.fixture
def nproc_150(runner: Runner) -> List[str]:
    """The test uid under RLIMIT_NPROC 150, as the field report had it."""
    skip_unless_nobody_works()
    return nobody_prefix(uid_tasks(NOBODY) + 150)


def test_an_executor_leak_is_named_by_its_line_and_nothing_is_suggested(
        runner: Runner, nproc_150: List[str]) -> None:
    program = runner.dir / "leak.py"
    program.write_text(EXECUTOR_LEAK)
    result = doctor(runner, ["--", sys.executable, str(program)], prefix=nproc_150, cpus=2)
    verdict = result["verdict"]
    assert result["run"]["exit"] != 0
    assert verdict["status"] == "leak" and verdict["limit"] == "RLIMIT_NPROC", verdict
    assert verdict["site"] == f"{program}:6 in cycle (ThreadPoolExecutor.submit)"
    assert f"{program}:6 in cycle" in verdict["explanation"]
    leak = result["run"]["failures"][0]["leak"]
    assert leak["live"] >= 100 and leak["steps"] >= 100 and leak["settled"] == 1, leak
    # No command: a sizing suggestion cannot fix a leak.  The one the doctor
    # suggested before (`threadguard run`) fails in the same way.
    assert verdict["commands"] == []
    proc = subprocess.run([*nproc_150, sys.executable, "-m", "threadguard", "run", "--report",
                           "off", "--", sys.executable, str(program)],
                          env=runner.env(cpus=2), cwd=runner.dir, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0 and "can't start new thread" in proc.stderr, proc.stderr[-2000:]


def test_a_native_leak_is_named_by_its_library(runner: Runner, nproc_150: List[str],
                                               leaky: str) -> None:
    program = runner.dir / "native_leak.py"
    program.write_text(NATIVE_LEAK)
    result = doctor(runner, ["--", sys.executable, str(program), leaky], prefix=nproc_150,
                    cpus=2)
    verdict = result["verdict"]
    assert verdict["status"] == "leak" and verdict["limit"] == "RLIMIT_NPROC", verdict
    assert verdict["library"] == "libtg_leaky.so" and verdict["site"] is None
    assert verdict["library_file"] == leaky
    assert "threads of libtg_leaky.so were alive" in verdict["explanation"]
    assert verdict["commands"] == []


def test_a_pool_at_import_under_a_small_limit_is_no_leak(
        runner: Runner, few_tasks: List[str]) -> None:
    """OpenBLAS's 63 workers hit the limit in one step: today's verdict stands."""
    result = doctor(runner, numpy_cmd(), prefix=few_tasks)
    assert result["verdict"]["status"] == "fails", result["verdict"]
    assert all(f["leak"] is None for f in result["run"]["failures"])


# ---- RLIMIT_AS ---------------------------------------------------------------

def _numpy_vmsize(runner: Runner) -> int:
    code = ("import numpy\ns = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
            "print(int(s['VmSize'].split()[0]) * 1024)")
    proc = runner.run(code, guarded=False, cpus=64)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


def test_command_under_rlimit_as_names_rlimit_as_not_nproc(runner: Runner) -> None:
    """OpenBLAS prints "RLIMIT_NPROC ... current" while the task limit is far
    away (root: it does not even apply); the verdict names RLIMIT_AS and the
    per-thread stack and buffer cost."""
    full = _numpy_vmsize(runner)
    for share in (0.92, 0.88, 0.84, 0.8, 0.76):
        limit = int(full * share) // MIB * MIB
        prefix = ["prlimit", f"--as={limit}", "--"]
        result = doctor(runner, numpy_cmd(), prefix=prefix)
        if any(m["name"] == "openblas-nproc" for m in result["run"]["messages"]):
            break
    else:
        pytest.skip("no RLIMIT_AS made OpenBLAS blame RLIMIT_NPROC on this machine")
    verdict = result["verdict"]
    assert verdict["limit"] == "RLIMIT_AS", verdict
    assert verdict["library"] == "OpenBLAS" and verdict["error"] == "EAGAIN"
    stack = result["facts"]["address_space"]["default_thread_stack"]
    # The library's cost of an OpenBLAS worker (policy.h): a guard page, its
    # malloc arena (the run changed nothing, so arenas are not capped) and
    # OpenBLAS's 32 MiB buffer.
    assert not result["facts"]["address_space"]["arenas_capped"]
    extra = os.sysconf("SC_PAGE_SIZE") + 64 * MIB + 32 * MIB
    assert verdict["thread_cost"] == {"stack": stack, "extra": extra, "total": stack + extra}
    assert "RLIMIT_NPROC, wrongly" in verdict["explanation"]
    run_printed(runner, verdict["commands"], prefix=prefix)


SET_64 = ("import torch\ntorch.set_num_threads(64)\n"
          "a = torch.ones(600, 600); assert (a @ a)[0, 0].item() == 600\n")


def test_suggestions_under_rlimit_as_work_when_the_program_sets_its_own_size(
        runner: Runner) -> None:
    """Under RLIMIT_AS, for a program calling torch.set_num_threads(64)
    itself, the suggested variables-only command still died: no variable
    overrides that call. Every command printed must fix the run."""
    code = ("import torch\ns = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
            "print(int(s['VmSize'].split()[0]) * 1024)")
    proc = runner.run(code, guarded=False, cpus=64)
    assert proc.returncode == 0, proc.stderr
    base = int(proc.stdout.strip())
    script = runner.dir / "set64.py"
    script.write_text(SET_64)
    for extra in (600, 800, 1000, 400):
        prefix = ["prlimit", f"--as={(base + extra * MIB) // MIB * MIB}", "--"]
        if runner.run(SET_64, guarded=False, prefix=prefix, cpus=64).returncode != 0:
            break
    else:
        pytest.skip("no RLIMIT_AS made torch.set_num_threads(64) fail on this machine")
    result = doctor(runner, ["--", sys.executable, str(script)], prefix=prefix)
    verdict = result["verdict"]
    assert verdict["limit"] == "RLIMIT_AS", verdict
    assert "torch.set_num_threads(64)" in verdict["explanation"], verdict
    assert not any("OMP_NUM_THREADS=" in c for c in verdict["commands"]), verdict
    run_printed(runner, verdict["commands"], prefix=prefix)


ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_a_workload_that_fails_with_one_thread_is_not_called_ok(runner: Runner) -> None:
    """Under an RLIMIT_AS too small for `import torch` itself, the probe
    (one thread per pool) died with std::bad_alloc and the doctor said
    "import torch fits ... verdict: ok"."""
    pytest.importorskip("torch")
    vmsize = {}
    for module in ("numpy", "torch"):
        code = (f"import {module}\ns = dict(l.split(':', 1) for l in open('/proc/self/status'))"
                "\nprint(int(s['VmSize'].split()[0]) * 1024)")
        proc = runner.run(code, guarded=False, cpus=64, env=ONE_THREAD)
        assert proc.returncode == 0, proc.stderr
        vmsize[module] = int(proc.stdout.strip())
    if vmsize["torch"] < vmsize["numpy"] + 200 * MIB:
        pytest.skip(f"torch's address space here is too close to numpy's: {vmsize}")
    limit = (vmsize["numpy"] + 100 * MIB) // MIB * MIB
    prefix = ["prlimit", f"--as={limit}", "--"]
    assert runner.run("import torch", guarded=False, prefix=prefix, cpus=64,
                      env=ONE_THREAD).returncode != 0
    result = doctor(runner, [], prefix=prefix)
    torch_row = next(w for w in result["workloads"] if w["workload"] == "import torch")
    assert torch_row["status"] == "fails" and torch_row["limit"] == "RLIMIT_AS", torch_row
    assert "even with one thread per pool" in torch_row["explanation"]
    assert torch_row["commands"] == []  # no thread setting fixes it: none is suggested
    assert result["verdict"]["status"] == "fails", result["verdict"]


def test_node_verdict_names_rlimit_as(runner: Runner) -> None:
    prefix = ["prlimit", f"--as={int(_numpy_vmsize(runner) * 0.8) // MIB * MIB}", "--"]
    result = doctor(runner, [], prefix=prefix)
    verdict = result["verdict"]
    assert verdict["status"] == "fails" and verdict["limit"] == "RLIMIT_AS", verdict
    run_printed(runner, verdict["commands"], prefix=prefix)


# ---- cgroup pids.max -------------------------------------------------------

def test_pids_max_verdicts(runner: Runner, pids_cgroup: Cgroup) -> None:
    pids_cgroup.write("pids.max", 20)
    node = doctor(runner, [], prefix=pids_cgroup.prefix())
    assert node["verdict"]["limit"] == "cgroup pids.max", node["verdict"]
    run_printed(runner, node["verdict"]["commands"], prefix=pids_cgroup.prefix())
    ran = doctor(runner, numpy_cmd(), prefix=pids_cgroup.prefix())
    assert ran["verdict"]["limit"] == "cgroup pids.max", ran["verdict"]
    assert ran["verdict"]["library"] == "OpenBLAS"
    run_printed(runner, ran["verdict"]["commands"], prefix=pids_cgroup.prefix())


# ---- CPU quota ---------------------------------------------------------------

def test_cpu_quota_verdict_sizes_pools_to_the_quota(runner: Runner, cpu_cgroup: Cgroup) -> None:
    cpu_cgroup.write("cpu.cfs_period_us", 100000)
    cpu_cgroup.write("cpu.cfs_quota_us", 200000)  # 2 CPUs of the 64 the libraries see
    result = doctor(runner, [], prefix=cpu_cgroup.prefix())
    verdict = result["verdict"]
    assert verdict["status"] == "slow" and verdict["limit"] == "cgroup CPU quota", verdict
    assert "OPENBLAS_NUM_THREADS=2 " in verdict["commands"][-1]
    run_printed(runner, verdict["commands"], prefix=cpu_cgroup.prefix())


def test_no_limit_no_complaint(runner: Runner) -> None:
    result = doctor(runner, [], cpus=2)
    assert result["verdict"]["status"] == "ok", result["verdict"]
    assert [w["status"] for w in result["workloads"]] == ["ok"] * len(result["workloads"])


# ---- messages and facts ----------------------------------------------------

SAMPLES = {
    "openblas-thread": "OpenBLAS blas_thread_init: pthread_create failed for thread 26 of 64: "
                       "Resource temporarily unavailable",
    "libgomp-thread": "libgomp: Thread creation failed: Resource temporarily unavailable",
    "tls": "python: cannot allocate memory for thread-local data: ABORT",
    "python-thread": "RuntimeError: can't start new thread",
    "torch-alloc": "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. "
                   "DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes.",
    "os-error-12": "OSError: Cannot allocate memory (os error 12)",
    "clone3-eperm": "clone3 failed: Operation not permitted",
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_usual_messages_are_recognised(name: str) -> None:
    found = find_messages("some output\n" + SAMPLES[name] + "\nmore\n")
    assert [m.message.name for m in found] == [name]


def test_message_maps_to_the_limit_this_node_has() -> None:
    facts = gather()
    facts = replace(facts, address_space=replace(facts.address_space, rlimit_as=1 << 30))
    gomp = explain_run(facts, ["x"], ["threadguard"], 1, False, [],
                       find_messages(SAMPLES["libgomp-thread"]))
    assert gomp.limit == "RLIMIT_AS" and gomp.library == "libgomp (OpenMP)"
    seccomp = explain_run(facts, ["x"], ["threadguard"], 1, False, [],
                          find_messages(SAMPLES["clone3-eperm"]))
    assert seccomp.limit == "seccomp (clone3)"
    clean = explain_run(facts, ["x"], ["threadguard"], 0, False, [], [])
    assert clean.status == "ok"


def test_unreadable_files_and_bad_variables_are_unknown_not_errors(tmp_path: Path) -> None:
    assert read_int(str(tmp_path / "missing")) is None
    (tmp_path / "max").write_text("max\n")
    assert read_int(str(tmp_path / "max")) is None
    facts = gather({"OMP_NUM_THREADS": "abc"})
    row = next(r for r in facts.environment if r["name"] == "OMP_NUM_THREADS")
    assert row["effect"].startswith("not a positive number")
    assert facts.pools["openblas"] >= 1


# ---- the verdicts' pure functions, on figures made up here ----------------


def made_up(*, nproc: Optional[int] = None, uid_tasks: int = 10, cpus: int = 4,
            openblas: int = 64, as_limit: Optional[int] = None, capped: bool = False) -> Facts:
    """Facts of a node that is not this one."""
    stack = 8 * MIB
    return Facts(
        user=User(4242, "someone"), platform={},
        tasks=TaskFacts(rlimit_nproc_soft=nproc, rlimit_nproc_hard=nproc,
                        nproc_applies=nproc is not None, uid_tasks=uid_tasks, pids_max=None,
                        pids_current=None, threads_max=None, threads_total=None, pid_max=None),
        address_space=AddressSpaceFacts(rlimit_as=as_limit, rlimit_as_hard=as_limit,
                                        rlimit_stack=stack, default_thread_stack=stack,
                                        rlimit_nofile=None, arenas_capped=capped),
        memory=MemoryFacts(None, None, None, None, None, None),
        cpus=CpuFacts(online=64, physical=32, affinity=cpus, cgroup_quota=None,
                      slurm_cpus_per_task=None, slurm_cpus_on_node=None, omp_thread_limit=None,
                      allocation=cpus, allocation_from="affinity", sources=(), sharing=None,
                      local_ranks=0),
        environment=(), pools={"openblas": openblas, "torch": cpus, "mkl": cpus},
        libraries=())


NUMPY = next(w for w in WORKLOADS if w.name == "import numpy")
PYTHON, GUARD = ["python"], ["threadguard"]


def test_predict_names_the_task_limit_and_the_thread_that_fails() -> None:
    # 50 tasks allowed, 10 used (2 of them this doctor's), numpy's probe at 1
    # task: OpenBLAS's 63 workers fail at thread 50 - 8 - 1 + 1 = 42.
    prediction = predict(made_up(nproc=50, uid_tasks=10), NUMPY, {"tasks": 1, "vmsize": None},
                         2, PYTHON, GUARD)
    verdict = prediction.verdict
    assert (verdict.status, verdict.limit, verdict.thread) == ("fails", "RLIMIT_NPROC", 42)
    assert prediction.threads_started == 63
    # The fix sizes every pool to what fits with the library's reserve:
    # 1 + (42 - 1 - reserve) threads, within the 4 CPUs.
    assert verdict.commands == ("threadguard run -- python -c 'import numpy'",
                                env_command(4, [*PYTHON, "-c", "import numpy"]))
    assert prediction.to_json()["status"] == "fails"


def test_predict_under_an_address_space_limit_uses_the_librarys_cost() -> None:
    facts = made_up(as_limit=1 << 30, openblas=64, cpus=64)
    cost = _native.thread_cost("openblas", 8 * MIB, False)
    prediction = predict(facts, NUMPY, {"tasks": 1, "vmsize": 600 * MIB}, 0, PYTHON, GUARD)
    assert prediction.thread_cost == {"openblas": cost}
    # The first worker whose cost no longer fits under the limit.
    assert prediction.verdict.thread == (424 * MIB) // cost + 1
    assert prediction.verdict.limit == "RLIMIT_AS"
    usable = _native.address_space_usable(1 << 30, 600 * MIB, 0)
    assert f"OPENBLAS_NUM_THREADS={1 + usable // cost} " in prediction.verdict.commands[-1]
    assert "MALLOC_ARENA_MAX=2" in prediction.verdict.commands[-1]


def test_predict_calls_pools_above_the_cpus_slow_and_a_fitting_one_ok() -> None:
    slow = predict(made_up(cpus=2, openblas=8), NUMPY, {"tasks": 1}, 0, PYTHON, GUARD).verdict
    assert (slow.status, slow.limit) == ("slow", "affinity")
    assert "OPENBLAS_NUM_THREADS=2 " in slow.commands[-1]
    ok = predict(made_up(cpus=8, openblas=8), NUMPY, {"tasks": 1}, 0, PYTHON, GUARD).verdict
    assert (ok.status, ok.commands) == ("ok", ())


def test_a_failure_record_gives_the_library_the_limit_and_the_fix() -> None:
    failure = Failure(library="libscipy_openblas.so", path="/x/libscipy_openblas.so",
                      kind="openblas", thread=20, errno=11, error="EAGAIN",
                      message="Resource temporarily unavailable", cause="RLIMIT_AS",
                      stack=8 * MIB, limits={"vmsize": 900 * MIB, "rlimit_as": 1 << 30})
    verdict = explain_run(made_up(as_limit=1 << 30, cpus=64), ["python", "t.py"], GUARD, -6,
                          False, [failure], [])
    assert (verdict.status, verdict.limit, verdict.library, verdict.thread) == (
        "fails", "RLIMIT_AS", "OpenBLAS", 20)
    total = _native.thread_cost("openblas", 8 * MIB, False)
    assert verdict.thread_cost == ThreadCost(8 * MIB, total - 8 * MIB, total)
    # thread 20 failed: 20 - 1 - the reserve fit.
    assert verdict.commands[-1].startswith(f"OPENBLAS_NUM_THREADS={19 - rules().reserve} ")
    assert verdict.to_json()["thread_cost"] == {"stack": 8 * MIB, "extra": total - 8 * MIB,
                                                "total": total}


def test_no_room_names_the_full_limit() -> None:
    verdict = no_room_verdict(made_up(nproc=50, uid_tasks=50), 3, "could not start x: EAGAIN",
                              "EAGAIN", None, "it never ran")
    assert (verdict.status, verdict.limit) == ("fails", "RLIMIT_NPROC")
    assert "no task is free" in verdict.explanation and verdict.commands == ()
