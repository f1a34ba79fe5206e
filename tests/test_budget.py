"""Budgets before libraries start: pools sized to the headroom under a real
task limit, cgroup pids limit and address-space limit; clamped setters;
CPU allocation; the report of every decision.

Each limit test first shows the failure without threadguard, then the same
command passing under `threadguard run` with no options."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from limits import (Runner, died, nobody_prefix, skip_unless_nobody_works,
                    uid_tasks, NOBODY)

NUMPY_MATMUL = ("import numpy as np\n"
                "a = np.ones((400, 400)); assert (a @ a)[0, 0] == 400\n"
                "print('matmul ok')\n")
TORCH_MATMUL = ("import torch\n"
                "a = torch.ones(600, 600); assert (a @ a)[0, 0].item() == 600\n"
                "x = torch.ones(4_000_000); assert (x * 2 + 1).sum().item() == 12_000_000\n"
                "print('matmul ok')\n")
TORCH_SET_64 = "import torch\ntorch.set_num_threads(64)\n" + TORCH_MATMUL.split("\n", 1)[1]
# Threads a task-limited child may still start: "a handful".
FREE = 6


@pytest.fixture
def nobody(runner: Runner):
    """A prefix that runs a command as the test uid with FREE tasks left."""
    skip_unless_nobody_works()
    return lambda free=FREE: nobody_prefix(uid_tasks(NOBODY) + 1 + free)


def assert_guarded_pass(proc, runner: Runner):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "matmul ok" in proc.stdout
    assert "pthread_create failed" not in proc.stderr
    assert "Thread creation failed" not in proc.stderr
    return runner.report()


# ---- task limit (RLIMIT_NPROC) as an unprivileged uid ---------------------

def test_openblas_64_threads_under_a_task_limit(runner, nobody):
    env = {"OPENBLAS_NUM_THREADS": "64"}
    bare = runner.run(NUMPY_MATMUL, guarded=False, prefix=nobody(), env=env, cpus=64)
    assert died(bare) and "pthread_create failed" in bare.stderr, bare.stderr[-2000:]

    code = NUMPY_MATMUL + "import os; print('numexpr', os.environ.get('NUMEXPR_MAX_THREADS'))\n"
    proc = runner.run(code, guarded=True, prefix=nobody(), env=env, cpus=64)
    report = assert_guarded_pass(proc, runner)
    # numexpr reads os.environ: its variable is set in the environment at start.
    [numexpr] = [p for p in report.pools if p.variable == "NUMEXPR_MAX_THREADS"]
    assert f"numexpr {numexpr.value}" in proc.stdout and numexpr.value == FREE - 2 + 1
    [pool] = [p for p in report.pools if p.variable == "OPENBLAS_NUM_THREADS"]
    assert pool.source == "user" and pool.requested == 64 and pool.lowered
    assert pool.limit == "RLIMIT_NPROC" and pool.free == FREE
    assert pool.value == FREE - 2 + 1  # two threads kept in reserve, plus the caller
    assert report.of_kind("openblas").created == pool.value - 1
    assert report.of_kind("openblas").failed == 0
    assert "lowered to" in proc.stderr  # the user's explicit value was changed: say so


def test_omp_64_threads_for_torch_under_a_task_limit(runner, nobody):
    # MKL_DYNAMIC=FALSE: otherwise torch's MKL quietly caps OMP_NUM_THREADS at the cores.
    env = {"OMP_NUM_THREADS": "64", "MKL_DYNAMIC": "FALSE"}
    bare = runner.run(TORCH_MATMUL, guarded=False, prefix=nobody(), env=env, cpus=64)
    assert died(bare) and "Thread creation failed" in bare.stderr, bare.stderr[-2000:]

    proc = runner.run(TORCH_MATMUL, guarded=True, prefix=nobody(), env=env, cpus=64)
    report = assert_guarded_pass(proc, runner)
    omp = [p for p in report.pools if p.kind == "openmp" and p.variable == "OMP_NUM_THREADS"]
    assert omp and all(p.lowered and p.requested == 64 for p in omp)
    assert report.total.failed == 0
    assert report.total.peak <= FREE


def test_torch_set_num_threads_64_is_clamped(runner, nobody):
    bare = runner.run(TORCH_SET_64, guarded=False, prefix=nobody())
    assert died(bare), f"torch.set_num_threads(64) survived the task limit:\n{bare.stderr}"

    proc = runner.run(TORCH_SET_64, guarded=True, prefix=nobody())
    report = assert_guarded_pass(proc, runner)
    # torch calls at::set_num_threads again itself, with the value it kept.
    [clamp] = [p for p in report.pools
               if p.variable == "torch.set_num_threads()" and p.requested == 64]
    assert clamp.lowered and clamp.value < 64 and clamp.limit == "RLIMIT_NPROC"
    assert report.total.failed == 0


def test_a_library_loaded_late_is_sized_with_the_headroom_left_then(runner, nobody):
    # Four threads of the program's own are running when numpy is imported.
    code = ("import threading, time\n"
            "stop = threading.Event()\n"
            "ts = [threading.Thread(target=stop.wait, daemon=True) for _ in range(4)]\n"
            "[t.start() for t in ts]\n" + NUMPY_MATMUL + "stop.set()\n")
    env = {"OPENBLAS_NUM_THREADS": "64"}
    proc = runner.run(code, guarded=True, prefix=nobody(free=10), env=env, cpus=64)
    report = assert_guarded_pass(proc, runner)
    [pool] = [p for p in report.pools if p.variable == "OPENBLAS_NUM_THREADS"]
    assert pool.free == 10 - 4
    assert pool.value == 10 - 4 - 2 + 1
    assert report.headroom_at_start["free"] == 10


def test_tasks_of_the_uids_other_processes_count(runner, nobody):
    """RLIMIT_NPROC counts the uid's tasks in every process, not just this one."""
    helper_code = ("import threading, sys\n"
                   "stop = threading.Event()\n"
                   "ts = [threading.Thread(target=stop.wait, daemon=True) for _ in range(3)]\n"
                   "[t.start() for t in ts]; print('ready', flush=True); sys.stdin.read()\n")
    helper = subprocess.Popen([*nobody_prefix(64), sys.executable, "-c", helper_code],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=runner.env())
    try:
        assert helper.stdout.readline() == "ready\n"
        assert uid_tasks(NOBODY) == 4
        env = {"OPENBLAS_NUM_THREADS": "64"}
        proc = runner.run(NUMPY_MATMUL, guarded=True, prefix=nobody(), env=env, cpus=64)
        report = assert_guarded_pass(proc, runner)
        assert report.headroom_at_start["uid_tasks"] == 4 + 1
        [pool] = [p for p in report.pools if p.variable == "OPENBLAS_NUM_THREADS"]
        assert pool.free == FREE and pool.value == FREE - 2 + 1
    finally:
        helper.communicate(timeout=300)


def test_nproc_setting_raises_the_soft_limit(runner):
    skip_unless_nobody_works()
    used = uid_tasks(NOBODY) + 1
    prefix = nobody_prefix(used + 2)
    prefix[prefix.index(f"--nproc={used + 2}")] = f"--nproc={used + 2}:{used + 40}"
    code = ("import threading\n"
            "stop = threading.Event()\n"
            "ts = [threading.Thread(target=stop.wait) for _ in range(8)]\n"
            "try:\n"
            "    [t.start() for t in ts]\n"
            "finally:\n"
            "    stop.set()\n"
            "print('matmul ok')\n")
    bare = runner.run(code, guarded=False, prefix=prefix)
    assert died(bare) and "can't start new thread" in bare.stderr

    proc = runner.run(code, guarded=True, prefix=prefix, options=["--nproc", "max"])
    report = assert_guarded_pass(proc, runner)
    assert report.applied["rlimit_nproc"] == {"value": used + 40, "source": "user"}


# ---- cgroup pids.max, as root ----------------------------------------------

def test_openblas_64_threads_under_a_cgroup_pids_limit(runner, pids_cgroup):
    env = {"OPENBLAS_NUM_THREADS": "64"}
    # The shell that moves itself into the group becomes the program: one task.
    pids_cgroup.write("pids.max", 1 + FREE)
    bare = runner.run(NUMPY_MATMUL, guarded=False, prefix=pids_cgroup.prefix(), env=env, cpus=64)
    assert died(bare) and "pthread_create failed" in bare.stderr, bare.stderr[-2000:]

    proc = runner.run(NUMPY_MATMUL, guarded=True, prefix=pids_cgroup.prefix(), env=env, cpus=64)
    report = assert_guarded_pass(proc, runner)
    [pool] = [p for p in report.pools if p.variable == "OPENBLAS_NUM_THREADS"]
    assert pool.limit == "cgroup pids.max" and pool.free == FREE and pool.lowered
    assert report.headroom_at_start["pids_max"] == 1 + FREE


def test_cgroup_v2_files_are_read(runner):
    """cgroup v2 (pids.max, cpu.max), on a machine whose pids controller is v1:
    a private mount namespace puts a v2-shaped tree over /sys/fs/cgroup, and
    the process's /proc/PID/cgroup (bound over) says "0::/job", as on a pure
    v2 host.  It checks the parsing and the sizing, not the kernel's
    enforcement (the v1 test above does that).  Every command of the chain
    execs the next, so the pid whose file is bound over is the guarded one's."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    root = "/sys/fs/cgroup"
    script = (f"mount -t tmpfs threadguard-test {root} && mkdir {root}/job && "
              f"echo 7 > {root}/job/pids.max && echo 1 > {root}/job/pids.current && "
              f"echo '150000 100000' > {root}/job/cpu.max && "
              f"echo 0::/job > {root}/lines && mount --bind {root}/lines /proc/$$/cgroup && "
              f"exec \"$@\"")
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}")
    proc = runner.run(NUMPY_MATMUL, guarded=True, cpus=64, prefix=prefix,
                      env={"OPENBLAS_NUM_THREADS": "64"})
    report = assert_guarded_pass(proc, runner)
    start = report.headroom_at_start
    assert (start["pids_max"], start["pids_current"], start["pids_free"]) == (7, 1, 6)
    assert (start["cpus_quota"], start["cpus_from"]) == (2, "cgroup CPU quota")
    [pool] = [p for p in report.pools if p.variable == "OPENBLAS_NUM_THREADS"]
    assert (pool.value, pool.limit, pool.lowered) == (6 - 2 + 1, "cgroup pids.max", True)


# ---- address space (RLIMIT_AS) ---------------------------------------------

VMSIZE = ("import numpy as np, torch\n"
          "a = np.ones((400, 400)); b = a @ a\n"
          "t = torch.ones(400, 400); u = t @ t\n"
          "status = open('/proc/self/status').read()\n"
          "field = lambda name: int(status.split(name + ':')[1].split()[0])\n"
          "print('matmul ok', field('VmSize') * 1024, field('Threads'))\n")


def vmsize_and_threads(proc) -> tuple:
    line = next(line for line in proc.stdout.splitlines() if line.startswith("matmul ok"))
    _, _, vmsize, threads = line.split()
    return int(vmsize), int(threads)


def test_address_space_limit(runner):
    """A 64-CPU node's default pools overflow an RLIMIT_AS that a guarded run fits in."""
    env = {"MKL_DYNAMIC": "FALSE"}
    single = runner.run(VMSIZE, guarded=False, cpus=64,
                        env={**env, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    base_vm, base_threads = vmsize_and_threads(single)
    default = runner.run(VMSIZE, guarded=False, cpus=64, env=env)
    full_vm, full_threads = vmsize_and_threads(default)
    per_thread_before = (full_vm - base_vm) / (full_threads - base_threads)

    limit = base_vm + (full_vm - base_vm) // 2  # room for half of the default threads
    prefix = ["prlimit", f"--as={limit}", "--"]
    bare = runner.run(VMSIZE, guarded=False, cpus=64, env=env, prefix=prefix)
    assert died(bare), f"the default pools fit in RLIMIT_AS={limit}"

    proc = runner.run(VMSIZE, guarded=True, cpus=64, env=env, prefix=prefix)
    report = assert_guarded_pass(proc, runner)
    assert report.headroom_at_start["rlimit_as"] == limit
    assert any(p.limit == "RLIMIT_AS" for p in report.pools)
    # The default stack is left alone; only the pools that did not fit got 1M.
    assert report.applied["stack"]["source"] == "default"
    assert report.applied["pool_stack"] == {"value": 1 << 20, "source": "threadguard"}
    assert proc.stderr.count("workers get 1M stacks") >= 1, proc.stderr

    tuned = runner.run(VMSIZE, guarded=True, cpus=64, env=env, prefix=prefix,
                       options=["--stack", "256k", "--arenas", "1"])
    assert_guarded_pass(tuned, runner)
    for label, run in (("no options", proc), ("--stack 256k --arenas 1", tuned)):
        vm, threads = vmsize_and_threads(run)
        per_thread_after = (vm - base_vm) / max(threads - base_threads, 1)
        print(f"VmSize per thread: {per_thread_before / 2**20:.1f} MiB by default, "
              f"{per_thread_after / 2**20:.1f} MiB guarded ({label}); "
              f"{full_threads} threads by default, {threads} guarded under RLIMIT_AS={limit}")
        assert vm <= limit
        assert per_thread_after < per_thread_before


# ---- CPU allocation ---------------------------------------------------------

@pytest.mark.parametrize("variable", ["SLURM_CPUS_PER_TASK", "OMP_THREAD_LIMIT"])
def test_scheduler_cpu_allocation_sizes_pools(runner, variable):
    proc = runner.run(NUMPY_MATMUL, guarded=True, cpus=64, env={variable: "3"})
    report = assert_guarded_pass(proc, runner)
    [pool] = [p for p in report.pools if p.variable == "OPENBLAS_NUM_THREADS"]
    assert (pool.value, pool.source, pool.cpus) == (3, "threadguard", 3)
    assert report.headroom_at_start["cpus_from"] == variable
    assert report.of_kind("openblas").created == 2


def test_cgroup_cpu_quota_sizes_pools(runner, cpu_cgroup):
    """OpenBLAS ignores the CFS quota; a guarded process does not."""
    cpu_cgroup.write("cpu.cfs_period_us", 100000)
    cpu_cgroup.write("cpu.cfs_quota_us", 150000)  # 1.5 CPUs: 2 threads
    bare = runner.run(NUMPY_MATMUL + "import threadpoolctl\n"
                      "print('blas', threadpoolctl.threadpool_info()[0]['num_threads'])\n",
                      guarded=False, cpus=64, prefix=cpu_cgroup.prefix())
    assert "blas 64" in bare.stdout
    proc = runner.run(NUMPY_MATMUL, guarded=True, cpus=64, prefix=cpu_cgroup.prefix())
    report = assert_guarded_pass(proc, runner)
    [pool] = [p for p in report.pools if p.variable == "OPENBLAS_NUM_THREADS"]
    assert (pool.value, pool.source) == (2, "threadguard")
    assert report.headroom_at_start["cpus_quota"] == 2
    assert report.headroom_at_start["cpus_from"] == "cgroup CPU quota"


@pytest.fixture(scope="module")
def pool_readers(tmp_path_factory) -> dict:
    """Stand-ins for BLIS and MKL, built under names threadguard classifies."""
    from conftest import _build_shared_library
    return {name: _build_shared_library(tmp_path_factory, ("cc", "gcc"),
                                        "tests/native/poolreader.c", f"lib{name}_test.so")
            for name in ("blis", "mkl")}


@pytest.mark.parametrize("library,variable", [("blis", "BLIS_NUM_THREADS"),
                                              ("mkl", "MKL_NUM_THREADS")])
def test_blis_and_mkl_read_a_fitted_pool_size(runner, pool_readers, library, variable):
    code = ("import ctypes\n"
            f"lib = ctypes.CDLL({pool_readers[library]!r})\n"
            "lib.read_pool_variable.restype = ctypes.c_char_p\n"
            f"print('got', lib.read_pool_variable({variable.encode()!r}))\n"
            f"print('unmanaged', lib.read_pool_variable(b'HOME') is not None)\n"
            "print('matmul ok')\n")
    env = {variable: "64", "OMP_NUM_THREADS": "64"}
    bare = runner.run(code, guarded=False, env=env, cpus=64)
    assert "got b'64'" in bare.stdout
    proc = runner.run(code, guarded=True, env=env, cpus=64, options=["--max-threads", "7"])
    report = assert_guarded_pass(proc, runner)
    assert "got b'6'" in proc.stdout  # 7 - 2 in reserve + the caller
    assert "unmanaged True" in proc.stdout
    [pool] = [p for p in report.pools if p.variable == variable]
    assert (pool.kind, pool.value, pool.lowered) == (library, 6, True)


def test_no_settings_no_limits_keeps_library_defaults(runner):
    proc = runner.run(NUMPY_MATMUL, guarded=True, cpus=64)
    report = assert_guarded_pass(proc, runner)
    [pool] = [p for p in report.pools if p.variable == "OPENBLAS_NUM_THREADS"]
    assert (pool.value, pool.source) == (64, "default")
    assert report.of_kind("openblas").created == 63


def test_pool_threads_sizes_every_pool(runner):
    env = {"OPENBLAS_NUM_THREADS": "8", "MKL_DYNAMIC": "FALSE"}
    proc = runner.run(NUMPY_MATMUL + TORCH_MATMUL, guarded=True, cpus=64, env=env,
                      options=["--pool-threads", "2"])
    report = assert_guarded_pass(proc, runner)
    sized = {(p.kind, p.variable): p.value for p in report.pools}
    assert sized[("openblas", "OPENBLAS_NUM_THREADS")] == 2
    assert sized[("openmp", "OMP_NUM_THREADS")] == 2
    assert report.of_kind("openblas").created == 1
    assert report.of_kind("openmp").peak == 1
    setting = {s.name: s for s in report.settings}["THREADGUARD_POOL_THREADS"]
    assert (setting.value, setting.source) == ("2", "user")


TORCH_OWN_SIZES = ("import os, torch, threadpoolctl\n"
                   "torch.set_num_threads(64)\n"
                   + TORCH_MATMUL.split("\n", 1)[1] +
                   "print('torch', torch.get_num_threads())\n"
                   "print('openblas', [i['num_threads'] for i in threadpoolctl.threadpool_info()\n"
                   "                   if i['internal_api'] == 'openblas'])\n"
                   "print('tasks', len(os.listdir('/proc/self/task')))\n")


def test_pool_threads_is_a_ceiling_for_setters_and_the_programs_variables(runner):
    """--pool-threads 1 was not a ceiling: a program's torch.set_num_threads(64)
    kept 64 (127 tasks on 2 CPUs). Every pool is bounded, setters and the
    program's own variables included, and the report says which were
    lowered and by what."""
    env = {"OPENBLAS_NUM_THREADS": "8", "MKL_DYNAMIC": "FALSE"}
    bare = runner.run("import numpy\n" + TORCH_OWN_SIZES, guarded=False, cpus=64, env=env)
    assert "torch 64" in bare.stdout, bare.stderr[-2000:]
    proc = runner.run("import numpy\n" + TORCH_OWN_SIZES, guarded=True, cpus=64, env=env,
                      options=["--pool-threads", "1"])
    report = assert_guarded_pass(proc, runner)
    assert "torch 1" in proc.stdout and "openblas [1]" in proc.stdout, proc.stdout
    assert "tasks 1" in proc.stdout, proc.stdout
    rows = {(p.variable, p.requested): p for p in report.pools}
    for key in (("OPENBLAS_NUM_THREADS", 8), ("torch.set_num_threads()", 64)):
        row = rows[key]
        assert (row.value, row.lowered) == (1, True), row
        assert row.lowered_by == "THREADGUARD_POOL_THREADS", row
        assert row.source == "user", row
    assert "lowered from 64 by THREADGUARD_POOL_THREADS" in report.format_table()


def test_pool_threads_keeps_a_smaller_program_value(runner):
    proc = runner.run(NUMPY_MATMUL, guarded=True, cpus=64, env={"OPENBLAS_NUM_THREADS": "2"},
                      options=["--pool-threads", "4"])
    report = assert_guarded_pass(proc, runner)
    [pool] = [p for p in report.pools if p.variable == "OPENBLAS_NUM_THREADS"]
    assert (pool.value, pool.source, pool.lowered) == (2, "user", False)


def test_setter_calls_are_labelled_by_the_library_that_made_them(runner):
    """torch.set_num_threads(3) makes libtorch_cpu call omp_set_num_threads(3)
    itself: that row was labelled "user"."""
    code = ("import torch\ntorch.set_num_threads(3)\n" + TORCH_MATMUL.split("\n", 1)[1])
    proc = runner.run(code, guarded=True, cpus=64)
    report = assert_guarded_pass(proc, runner)
    [own] = [p for p in report.pools if p.variable == "torch.set_num_threads()"
             and p.source == "user"]
    assert own.caller == "libtorch_python.so" and own.value == 3
    made = [p for p in report.pools if p.variable == "omp_set_num_threads()" and p.value == 3]
    assert made and all(p.source == "library" and p.caller == "libtorch_cpu.so" for p in made)
    assert "library libtorch_cpu.so" in report.format_table()


def test_report_lists_values_sources_and_headroom(runner):
    env = {"OPENBLAS_NUM_THREADS": "3"}
    proc = runner.run(NUMPY_MATMUL, guarded=True, cpus=64, env=env,
                      options=["--max-threads", "20"])
    report = assert_guarded_pass(proc, runner)
    [pool] = [p for p in report.pools if p.variable == "OPENBLAS_NUM_THREADS"]
    assert (pool.value, pool.source, pool.requested, pool.lowered) == (3, "user", 3, False)
    assert pool.limit == "THREADGUARD_MAX_THREADS"
    data = json.loads(runner.report_path.read_text())
    for key in ("rlimit_nproc_soft", "pids_free", "threads_max", "rlimit_as", "max_threads",
                "free", "limit", "cpus_affinity", "cpus_quota", "slurm_cpus_per_task", "cpus"):
        assert key in data["headroom"]["at_start"], key
    assert data["headroom"]["at_start"]["max_threads"] == 20
    names = [s["name"] for s in data["settings"]]
    assert names == ["THREADGUARD_MAX_THREADS", "THREADGUARD_POOL_THREADS",
                     "THREADGUARD_ON_LIMIT", "THREADGUARD_STACK", "THREADGUARD_ARENAS",
                     "THREADGUARD_NPROC", "THREADGUARD_REPORT", "THREADGUARD_DEBUG",
                     "THREADGUARD_IMPORT", "THREADGUARD_OBSERVE", "THREADGUARD_PUBLISH",
                     "THREADGUARD_OUTPUT", "THREADGUARD_DISABLE", "THREADGUARD_SKIP"]
    assert set(data["applied"]) == {"stack", "pool_stack", "arenas", "rlimit_nproc"}
    table = runner.run(NUMPY_MATMUL, guarded=True, cpus=64, env=env,
                       options=["--max-threads", "20", "--report", "stderr"])
    assert table.returncode == 0
    [row] = [line for line in table.stderr.splitlines() if "OPENBLAS_NUM_THREADS" in line]
    assert row.split()[2:4] == ["3", "user"] and "under THREADGUARD_MAX_THREADS" in row
    assert "settings: THREADGUARD_MAX_THREADS=20" in table.stderr
    assert "headroom at start: 64 CPUs (affinity)" in table.stderr
