"""Sizing whose cost does not grow with the node: RLIMIT_NPROC's count of the
user's tasks is bounded from above (the node's tasks; the last count plus
every task created on the node since) and /proc is walked only when the
bound leaves a pool decision in doubt.

Each test fills the node with sleeping processes (benchmarks/crowd.c): of
another uid, which a walk of /proc pays for and the bound does not, and of
the test uid itself, which must still be counted exactly when they bring it
close to its limit.  benchmarks/bench_node_scale.py measures the cost.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

import threadguard
from conftest import REPO
from limits import NOBODY, Runner, died, fresh_uid, nobody_prefix, skip_unless_nobody_works, \
    uid_tasks

pytestmark = pytest.mark.slow

NUMPY_MATMUL = ("import numpy as np\n"
                "a = np.ones((400, 400)); assert (a @ a)[0, 0] == 400\n"
                "print('matmul ok')\n")


@pytest.fixture(scope="module")
def crowd_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    skip_unless_nobody_works()
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build benchmarks/crowd.c")
    exe = tmp_path_factory.mktemp("crowd") / "crowd"
    subprocess.run([compiler, "-O2", "-o", str(exe), str(REPO / "benchmarks" / "crowd.c")],
                   check=True)
    return exe


class Crowd:
    """count sleeping processes of uid while the with-block runs."""

    def __init__(self, exe: Path, uid: int, count: int):
        self.args = [str(exe), str(uid), str(count)]
        self.count = count

    def __enter__(self) -> "Crowd":
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        started = self.proc.stdout.readline().strip()
        if started != str(self.count):
            self.__exit__()
            pytest.skip(f"the machine could start only {started or 'none'} of {self.count} "
                        f"sleeping processes")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=600)


@pytest.fixture
def no_shared_count() -> Iterator[None]:
    """The test uid's ledger (and with it the user's last count) removed, so
    that the first guarded process has no count to start from."""
    ledger = Path(f"/dev/shm/threadguard-{NOBODY}/ledger")
    ledger.unlink(missing_ok=True)
    yield


def preloaded(runner: Runner, code: str, nproc: int) -> subprocess.CompletedProcess:
    """code as the test uid under RLIMIT_NPROC=nproc on a node shown as 64
    CPUs, with the library preloaded by hand rather than by `threadguard
    run`, whose own interpreter would size a pool (and count) first."""
    env = {"LD_PRELOAD": f"{threadguard.libpath()}:{runner.fakecpus}",
           "THREADGUARD_REPORT": str(runner.report_path)}
    return runner.run(code, guarded=False, prefix=nobody_prefix(nproc), env=env, cpus=64)


def other_uid() -> int:
    uid = fresh_uid()
    while uid == NOBODY:
        uid = random.randint(3_000_000, 2_000_000_000)
    return uid


def test_far_from_the_limit_another_users_crowd_is_not_walked(runner: Runner, crowd_exe: Path,
                                                             no_shared_count: None) -> None:
    """3,000 processes of another uid, more than the test uid's task limit:
    the node's task count alone cannot show that a pool fits.  The first
    guarded process counts once (no count to start from), the second not at
    all (the first's count, shared in the ledger, plus the tasks created
    since), and both give OpenBLAS its whole allocation."""
    nproc = uid_tasks(NOBODY) + 2000
    with Crowd(crowd_exe, other_uid(), 3000):
        reports = []
        for _ in range(2):
            proc = preloaded(runner, NUMPY_MATMUL, nproc)
            assert proc.returncode == 0 and "matmul ok" in proc.stdout, proc.stderr[-2000:]
            reports.append(runner.report())
    first, second = reports
    assert first.headroom_now["uid_task_walks"] == 1
    assert second.headroom_now["uid_task_walks"] == 0
    [pool] = [p for p in second.pools if p.variable == "OPENBLAS_NUM_THREADS"]
    assert pool.value == 64 and not pool.lowered
    # The figure it used is a lower bound, and the report says so.
    assert pool.limit == "RLIMIT_NPROC" and pool.free_at_least
    assert pool.free is not None and 64 + 2 <= pool.free <= nproc
    assert second.headroom_at_start["uid_tasks_from"] == "created"
    assert "at least" in second.table
    # The report's own figure, now, is counted.
    assert second.headroom_now["uid_tasks_from"] == "counted"


def test_close_to_the_limit_the_tasks_left_are_counted(runner: Runner, crowd_exe: Path,
                                                       no_shared_count: None) -> None:
    """Hundreds of the user's own processes alive and a few tasks free: bare,
    OpenBLAS's 64 threads do not fit and the program dies; guarded, the pool
    is sized to the tasks left, counted, though a count from before those
    processes started was kept (it bounds them: each was created since)."""
    own = 370
    nproc = uid_tasks(NOBODY) + own + 1 + 30  # the crowd, its parent, 30 tasks free
    with Crowd(crowd_exe, other_uid(), 1000):
        # A count from before: with 1,000 other processes on the node, a
        # guarded start counts (the node's tasks exceed the limit).
        warm = preloaded(runner, "pass", nproc)
        assert warm.returncode == 0, warm.stderr[-2000:]
        assert runner.report().headroom_now["uid_task_walks"] == 1
        with Crowd(crowd_exe, NOBODY, own):
            bare = runner.run(NUMPY_MATMUL, guarded=False, prefix=nobody_prefix(nproc), cpus=64)
            guarded = preloaded(runner, NUMPY_MATMUL, nproc)
    assert died(bare) and "pthread_create failed" in bare.stderr, bare.stderr[-2000:]
    assert guarded.returncode == 0 and "matmul ok" in guarded.stdout, guarded.stderr[-2000:]
    assert "pthread_create failed" not in guarded.stderr
    report = runner.report()
    [pool] = [p for p in report.pools if p.variable == "OPENBLAS_NUM_THREADS"]
    assert pool.limit == "RLIMIT_NPROC" and not pool.free_at_least
    assert pool.free is not None and pool.free <= 30
    assert pool.value == pool.free - 2 + 1 < 64
    assert report.of_kind("openblas").failed == 0
    assert report.headroom_now["uid_task_walks"] >= 1
