"""threadguard.limit(): applied to pools already running, restored, inherited
by workers; the seeds' "set after import" trap; bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import threadguard
from limits import Runner

# Helpers run inside the child: CPU time of every thread but the main one
# (a pool's workers), and the pool sizes threadpoolctl and torch report.
PROBES = """
import json, os, threading
def worker_cpu_ticks():
    main = os.getpid()
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == main:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])   # utime + stime
    return total
def worker_ticks_during(work, times=6):
    start = worker_cpu_ticks()
    for _ in range(times): work()
    return worker_cpu_ticks() - start
def sizes():
    from threadpoolctl import threadpool_info
    import torch
    return sorted({(i["internal_api"], i["num_threads"]) for i in threadpool_info()}) + \\
        [("torch.get_num_threads", torch.get_num_threads())]
"""


def run_child(tmp_path: Path, fakecpus: str, code: str, cpus: int = 4, timeout: float = 300,
              **env: str) -> dict:
    runner = Runner(tmp_path, fakecpus)
    script = tmp_path / "child.py"
    script.write_text(PROBES + code)
    proc = subprocess.run([sys.executable, str(script)], env=runner.env(env, cpus=cpus),
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr"] = proc.stderr
    return result


LIMIT_ONE = """
import numpy, torch
import threadguard
a = numpy.ones((1200, 1200))
before = sizes()
with threadguard.limit(1):
    inside = sizes()
    blas_workers_inside = worker_ticks_during(lambda: a @ a)
    torch.ones(800, 800) @ torch.ones(800, 800)
    openmp_inside = threadguard.stats().of_kind("openmp").created
after = sizes()
blas_workers_after = worker_ticks_during(lambda: a @ a)
torch.ones(800, 800) @ torch.ones(800, 800)
openmp_after = threadguard.stats().of_kind("openmp").created
print(json.dumps(dict(before=before, inside=inside, after=after,
                      blas_workers_inside=blas_workers_inside,
                      blas_workers_after=blas_workers_after,
                      openmp_inside=openmp_inside, openmp_after=openmp_after)))
"""


# torch's MKL caps its default at the physical cores (2 here) unless told:
# a user's OMP_NUM_THREADS=4 with MKL_DYNAMIC=FALSE gives every pool 4.
FOUR = {"OMP_NUM_THREADS": "4", "MKL_DYNAMIC": "FALSE"}


def test_limit_one_after_numpy_and_torch_runs_one_worker_and_restores(tmp_path, fakecpus):
    out = run_child(tmp_path, fakecpus, LIMIT_ONE, cpus=4, **FOUR)
    defaults = [["openblas", 4], ["openmp", 4], ["torch", 4], ["torch.get_num_threads", 4]]
    assert out["before"] == defaults
    assert out["inside"] == [["openblas", 1], ["openmp", 1], ["torch", 1],
                             ["torch.get_num_threads", 1]]
    # The native counters: inside the limit torch's matmul started no
    # OpenMP worker; after it, the team of 3 starts.
    assert out["openmp_inside"] == 0
    assert out["openmp_after"] == 3
    # OpenBLAS's 3 workers (started at import) did no work inside the limit.
    assert out["blas_workers_inside"] <= 2, out
    assert out["blas_workers_after"] > 10, out
    assert out["after"] == defaults


SAME_SIZE = """
import os, threadguard, torch, numpy
from threadpoolctl import threadpool_limits
torch.ones(300, 300) @ torch.ones(300, 300)
tasks = lambda: len(os.listdir("/proc/self/task"))
before = (tasks(), torch.get_num_threads())
for _ in range(3):
    with threadpool_limits(1, user_api="blas"):
        pass
print(json.dumps(dict(before=before, after=(tasks(), torch.get_num_threads()))))
"""


def test_a_blas_limit_block_does_not_touch_torch(tmp_path, fakecpus):
    """threadpoolctl 3.8 restores every controller at the end of a
    threadpool_limits() block, whatever user_api was asked: after `import
    threadguard`, each block called torch.set_num_threads(2) on a torch at 2,
    and torch started one more thread each time (3 -> 4 tasks)."""
    out = run_child(tmp_path, fakecpus, SAME_SIZE, cpus=2)
    assert out["after"] == out["before"], out


SET_AFTER_IMPORT = """
import os, torch
os.environ["OMP_NUM_THREADS"] = "1"          # too late: torch has read it
torch.ones(800, 800) @ torch.ones(800, 800)
ignored = torch.get_num_threads()
matmul = lambda: torch.ones(1000, 1000) @ torch.ones(1000, 1000)
workers_cpu_before = worker_ticks_during(matmul)
import threadguard
openmp_before = threadguard.stats().of_kind("openmp").created
threadguard.limit(1)
workers_cpu = worker_ticks_during(matmul)
print(json.dumps(dict(ignored=ignored, limited=torch.get_num_threads(),
                      workers_cpu_before=workers_cpu_before,
                      workers_cpu=workers_cpu)))
"""


def test_env_var_set_after_import_torch_is_ignored_but_limit_takes_effect(tmp_path, fakecpus):
    out = run_child(tmp_path, fakecpus, SET_AFTER_IMPORT, cpus=4, **FOUR)
    assert out["ignored"] == 4  # the seeds' bug: the variable changed nothing
    assert out["workers_cpu_before"] > 10, out  # and torch's 3 workers did the work
    assert out["limited"] == 1
    # torch's OpenMP team (3 workers, started before) stays parked.
    assert out["workers_cpu"] <= 2, out


SPAWN_POOL = """
import multiprocessing as mp
import threadguard

def probe(_):
    import numpy, torch
    from threadpoolctl import threadpool_info
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    return blas[0], torch.get_num_threads()

if __name__ == "__main__":
    allocation = threadguard.allocation()
    with threadguard.limit("auto", workers=4):
        with mp.get_context("spawn").Pool(4) as pool:
            inside = pool.map(probe, range(4), chunksize=1)
    with mp.get_context("spawn").Pool(4) as pool:
        outside = pool.map(probe, range(4), chunksize=1)
    with mp.get_context("spawn").Pool(4, initializer=threadguard.pool_initializer(4)) as pool:
        initialized = pool.map(probe, range(4), chunksize=1)
    print(json.dumps(dict(allocation=allocation, inside=inside, outside=outside,
                          initialized=initialized)))
"""


def test_spawn_pool_inside_limit_auto_workers_gets_a_quarter_each(tmp_path, fakecpus):
    out = run_child(tmp_path, fakecpus, SPAWN_POOL, cpus=4)
    assert out["allocation"] == 4
    assert out["inside"] == [[1, 1]] * 4
    # Default pools: OpenBLAS one per CPU, torch one per physical core (2).
    assert out["outside"] == [[4, 2]] * 4
    assert out["initialized"] == [[1, 1]] * 4


DATALOADER = """
import torch
from torch.utils.data import DataLoader, Dataset
import threadguard

class Threads(Dataset):
    def __len__(self): return 4
    def __getitem__(self, i): return torch.get_num_threads()

if __name__ == "__main__":
    plain = sorted(int(x) for x in DataLoader(Threads(), num_workers=2, batch_size=None))
    shared = sorted(int(x) for x in DataLoader(
        Threads(), num_workers=2, batch_size=None,
        worker_init_fn=threadguard.dataloader_worker_init(2)))
    print(json.dumps(dict(plain=plain, shared=shared)))
"""


def test_dataloader_worker_init_fn_gives_each_worker_its_share(tmp_path, fakecpus):
    out = run_child(tmp_path, fakecpus, DATALOADER, cpus=8)
    assert out["plain"] == [1, 1, 1, 1]  # DataLoader's own default
    assert out["shared"] == [4, 4, 4, 4]


DECORATOR_AND_INTEROP = """
import warnings, torch
torch.set_num_interop_threads(3)          # allowed once: now fixed
import threadguard
start = torch.get_num_threads()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")

    @threadguard.limit(1)
    def work():
        return torch.get_num_threads()

    after_decorating = torch.get_num_threads()
    inside = work()
    after_call = torch.get_num_threads()
    inside_again = work()
print(json.dumps(dict(start=start, after_decorating=after_decorating, inside=inside,
                      after_call=after_call, inside_again=inside_again,
                      interop=torch.get_num_interop_threads(),
                      warnings=[str(w.message) for w in caught])))
"""


def test_decorator_applies_around_each_call_and_interop_warns(tmp_path, fakecpus):
    out = run_child(tmp_path, fakecpus, DECORATOR_AND_INTEROP, cpus=4, **FOUR)
    assert (out["start"], out["after_decorating"], out["inside"], out["after_call"],
            out["inside_again"]) == (4, 4, 1, 4, 1)
    # The inter-op pool was fixed before: one warning, not one per call.
    assert out["interop"] == 3
    assert len(out["warnings"]) == 1 and "inter-op" in out["warnings"][0]


DECORATED_NEVER_CALLED = """
import json, torch, threadguard
pools = lambda: (torch.get_num_threads(), torch.get_num_interop_threads())
before = pools()
@threadguard.limit(1)
def work():
    return pools()
@threadguard.limit(1)
class Model:
    pass
after_decorating = pools()
inside = work()
after_call = pools()
with threadguard.limit(1) as block:
    pass
print(json.dumps(dict(before=before, after_decorating=after_decorating, inside=inside,
                      after_call=after_call, after_block=pools(), kept=block.not_restored,
                      shown=repr(block))))
"""


@pytest.mark.parametrize("how", ["script", "-c"])
def test_decorating_changes_no_pool_until_the_call(tmp_path, fakecpus, how):
    """`@threadguard.limit(1)` above a def once lowered torch's inter-op pool
    (which cannot be raised again) when the module was imported, whether or
    not the function was ever called."""
    runner = Runner(tmp_path, fakecpus)
    script = tmp_path / "decorated.py"
    script.write_text(DECORATED_NEVER_CALLED)
    argv = [str(script)] if how == "script" else ["-c", DECORATED_NEVER_CALLED]
    proc = subprocess.run([sys.executable, *argv], env=runner.env(FOUR, cpus=4),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # (torch's inter-op pool defaults to the physical cores: 2 here.)
    assert out["before"][0] == 4 and out["before"][1] > 1
    assert out["after_decorating"] == out["before"]
    assert out["inside"] == [1, 1]
    # Outside the call torch's intra-op pool is back; its inter-op pool, set
    # once, stays at 1, and the block that found it there lowered nothing.
    assert out["after_call"] == out["after_block"] == [4, 1]
    assert out["kept"] == []


def test_a_limit_that_lowers_the_inter_op_pool_says_it_stays(tmp_path, fakecpus):
    code = """
import json, torch, threadguard
before = torch.get_num_interop_threads()
with threadguard.limit(1) as block:
    pass
pools = threadguard._policy.native_report()["pools"]
noted = [p for p in pools if p["variable"] == "set_num_interop_threads()"]
print(json.dumps(dict(before=before, kept=block.not_restored, shown=repr(block),
                      after=torch.get_num_interop_threads(), noted=noted,
                      table=threadguard.stats().format_table())))
"""
    out = run_child(tmp_path, fakecpus, code, cpus=4, **FOUR)
    assert out["before"] > 1
    kept = f"torch's inter-op pool ({out['before']} -> 1 threads)"
    assert out["kept"] == [kept]
    assert f"not restored: {kept}" in out["shown"]
    assert out["after"] == 1
    # The report says so too: a pool row for libtorch_cpu, lowered by limit() for good.
    [noted] = out["noted"]
    assert noted["library"].startswith("libtorch_cpu") and noted["value"] == 1
    assert noted["requested"] == out["before"] and noted["source"] == "threadguard"
    assert noted["lowered_by"] == "threadguard.limit() (not restorable)"
    assert f"lowered from {out['before']} by threadguard.limit() (not restorable)" in out["table"]


@pytest.mark.parametrize("args, kwargs, accepted", [
    ((0,), {}, "1 or more"),
    ((-3,), {}, "1 or more"),
    (("lots",), {}, '"auto"'),
    ((2.5,), {}, "whole number"),
    ((True,), {}, "whole number"),
    ((2,), {"workers": 0}, "workers must be"),
    ((2,), {"workers": 1.5}, "workers must be"),
    # Accepted once, it exported THREADGUARD_POOL_THREADS=1000000000, which every
    # guarded child then rejected.
    ((10**9,), {}, "at most 4096"),
])
def test_bad_arguments_raise_valueerror_saying_what_is_accepted(args, kwargs, accepted):
    with pytest.raises(ValueError) as error:
        threadguard.limit(*args, **kwargs)
    assert accepted in str(error.value)
    assert repr(args[0] if not kwargs else kwargs["workers"]) in str(error.value)


def test_workers_split_is_at_least_one_each():
    with threadguard.limit(2, workers=8) as limited:
        assert limited.threads == 1
    with threadguard.limit(8, workers=3) as limited:
        assert limited.threads == 2


def test_limit_sets_variables_for_children_and_restores_them(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with threadguard.limit(3):
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'], "
             "os.environ['OPENBLAS_NUM_THREADS'], os.environ['MKL_NUM_THREADS'])"],
            capture_output=True, text=True, check=True).stdout.split()
    assert child == ["3", "3", "3"]
    import os
    assert os.environ["OMP_NUM_THREADS"] == "7" and "OPENBLAS_NUM_THREADS" not in os.environ


def test_auto_uses_the_node_profile_and_ignores_a_broken_one(tmp_path, monkeypatch):
    monkeypatch.setenv("THREADGUARD_PROFILE_DIR", str(tmp_path))
    cpus = threadguard.allocation()
    path = threadguard.profile_path(cpus)
    assert path.parent == tmp_path
    with threadguard.limit("auto") as limited:
        assert limited.threads == cpus  # no profile: the allocation
    path.write_text(json.dumps({"threads": 1}))
    with threadguard.limit("auto") as limited:
        assert limited.threads == 1
        # It says so: a profile decided, and which file (it was silent).
        assert limited.decision.source == "profile" and limited.decision.profile == path
        assert f"from the node profile {path}" in repr(limited)
    found = threadguard.info()
    assert found.auto is not None and found.auto.profile == path
    assert f'limit("auto"): 1 thread, from the node profile {path}' in str(found)
    path.write_text("{not json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with threadguard.limit("auto") as limited:
            assert limited.threads == cpus
    assert any(str(path) in str(w.message) for w in caught)


def test_auto_with_workers_uses_the_profiles_threads_per_worker(tmp_path, monkeypatch):
    from threadguard._policy import per_process_threads
    monkeypatch.setenv("THREADGUARD_PROFILE_DIR", str(tmp_path))
    cpus = threadguard.allocation()
    path = threadguard.profile_path(cpus)
    # The grid found 1 thread per worker best for 3 workers, and (say) the
    # whole allocation for 5: both differ from the split of "threads".
    path.write_text(json.dumps({"threads": 1, "per_worker": {"3": 1, "5": cpus, "x": 2,
                                                             "7": 0}}))
    assert per_process_threads("auto") == 1
    assert per_process_threads("auto", workers=5) == cpus
    assert per_process_threads("auto", workers=3) == 1
    assert per_process_threads("auto", workers=2) == 1  # not measured: threads // 2, at least 1
    assert per_process_threads("auto", workers=7) == 1  # a bad entry is ignored
    path.write_text(json.dumps({"threads": cpus, "per_worker": {"5": 10 * cpus}}))
    assert per_process_threads("auto", workers=5) == cpus  # never above the allocation
    with threadguard.limit("auto", workers=5) as limited:
        assert limited.threads == cpus


def test_info_lists_pools_and_threads_per_creator():
    import numpy  # noqa: F401  (loads OpenBLAS)
    found = threadguard.info()
    assert found.mode in ("import", "preload")
    libraries = {pool.library for pool in found.pools}
    assert "openblas" in libraries
    assert all(pool.size is None or pool.size >= 1 for pool in found.pools)
    assert found.threads is not None and found.threads.interposing
    text = str(found)
    assert "openblas" in text and "threads by creating library" in text


class _FakePool:
    """Stands in for numexpr / numba (not installed here): records the sizes set."""

    def __init__(self, start: int):
        self.size = start
        self.config = type("config", (), {"NUMBA_NUM_THREADS": 16})
        self.__version__ = "0-test"
        self.__file__ = "fake.py"

    def set_num_threads(self, n: int) -> int:
        previous, self.size = self.size, n
        return previous

    def get_num_threads(self) -> int:
        return self.size


def test_numexpr_and_numba_when_imported_are_sized_and_restored(monkeypatch):
    numexpr, numba = _FakePool(8), _FakePool(6)
    monkeypatch.setitem(sys.modules, "numexpr", numexpr)
    monkeypatch.setitem(sys.modules, "numba", numba)
    with threadguard.limit(2):
        assert (numexpr.size, numba.size) == (2, 2)
        libraries = {pool.library: pool.size for pool in threadguard.info().pools}
        assert libraries["numexpr"] == 2 and libraries["numba"] == 2
    assert (numexpr.size, numba.size) == (8, 6)


def test_auto_stays_within_the_task_headroom(monkeypatch):
    from threadguard import _policy as policy
    monkeypatch.setattr(policy, "headroom", lambda: {"cpus": 8, "free": 5})
    assert policy.per_process_threads("auto") == 3  # 5 free, 2 kept in reserve
    assert policy.per_process_threads("auto", workers=4) == 1
    monkeypatch.setattr(policy, "headroom", lambda: {"cpus": 8, "free": -1})  # no limit
    assert policy.per_process_threads("auto", workers=4) == 2


def test_native_pool_size_sizes_libraries_loaded_later(guarded, fakecpus):
    """limit() also sets the native pool size: under the preload, a library
    loaded afterwards is sized by it even with no variable to read."""
    code = ("import threadguard; from threadguard import _native; "
            "lib = _native.load(); print(lib.threadguard_set_pool_threads(3), "
            "lib.threadguard_set_pool_threads(3), lib.threadguard_set_pool_threads(0)); "
            "import numpy")
    proc, report = guarded.run(code, env={"THREADGUARD_TEST_CPUS": "8"}, preload_extra=fakecpus)
    assert proc.stdout.split() == ["-1", "3", "-2"]
    assert report.of_kind("openblas").created == 2  # a pool of 3: 2 workers + the caller


def test_docstrings_say_what_the_arguments_are():
    """pool_initializer's docstring did not say its first argument is the
    number of workers; stats()'s said rows are empty without a preload,
    though import mode fills them."""
    assert "workers: the number of worker processes" in threadguard.pool_initializer.__doc__
    assert "workers: the DataLoader's num_workers" in threadguard.dataloader_worker_init.__doc__
    assert "import mode" in threadguard.stats.__doc__
    assert "otherwise every row is empty" not in threadguard.stats.__doc__
