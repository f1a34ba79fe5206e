"""Threads are counted under the library that created them (issue 2 acceptance)."""

from __future__ import annotations

import pytest

pytest.importorskip("numpy")

# After join, wait until the OS threads are gone too: Thread.join returns a
# moment before a thread's exit is counted (it failed under load).
EIGHT_THREADS = """
import os, threading, time
threads = [threading.Thread(target=sum, args=([1, 2],)) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
while len(os.listdir('/proc/self/task')) > 1: time.sleep(0.001)
"""


def test_python_threads_counted_under_libpython(guarded):
    _, report = guarded.run(EIGHT_THREADS)
    python = report.of_kind("python")
    assert (python.created, python.live) == (8, 0)
    assert report.interposing
    [row] = [lib for lib in report.libraries if lib.kind == "python"]
    assert "python" in row.name


def test_openblas_workers_counted_under_openblas(guarded, fakecpus):
    # The shim shows 64 CPUs, so OpenBLAS honours 4: the caller plus 3 workers.
    _, report = guarded.run(
        "import numpy; a = numpy.ones((300, 300)); a @ a",
        env={"OPENBLAS_NUM_THREADS": "4", "THREADGUARD_TEST_CPUS": "64"},
        preload_extra=fakecpus)
    blas = report.of_kind("openblas")
    assert (blas.created, blas.live) == (3, 3)
    assert any("openblas" in lib.name for lib in report.libraries)
    assert report.of_kind("python").created == 0


def test_torch_workers_counted_under_its_libgomp(guarded):
    pytest.importorskip("torch")
    # MKL_DYNAMIC=FALSE: torch's MKL would otherwise cap OMP_NUM_THREADS at the cores here.
    proc, report = guarded.run(
        "import torch; x = torch.ones(1000, 1000); (x @ x).sum(); "
        "print(torch.get_num_threads())",
        env={"OMP_NUM_THREADS": "3", "MKL_DYNAMIC": "FALSE"})
    assert proc.stdout.strip() == "3"
    gomp = [lib for lib in report.libraries if lib.kind == "openmp"]
    assert [lib.created for lib in gomp] == [2], report.format_table()
    assert "/torch/lib/" in gomp[0].path and "gomp" in gomp[0].name


FORK = """
import os, threading, threadguard, time
stop = threading.Event()
parked = [threading.Thread(target=stop.wait) for _ in range(2)]
for t in parked: t.start()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    s0 = threadguard.stats().total
    t = threading.Thread(target=sum, args=([1],)); t.start(); t.join()
    while len(os.listdir('/proc/self/task')) > 1: time.sleep(0.001)  # see EIGHT_THREADS
    s1 = threadguard.stats().total
    os.write(w, f"{s0.created} {s0.live} {s1.created} {s1.live}".encode())
    os._exit(0)
os.waitpid(pid, 0)
print(os.read(r, 100).decode())
stop.set()
for t in parked: t.join()
"""


def test_forked_child_starts_from_its_own_count(guarded):
    proc, report = guarded.run(FORK)
    assert proc.stdout.split() == ["0", "0", "1", "0"]
    # The parent's count is its own: 2 parked threads, none from the child.
    assert report.of_kind("python").created == 2


def test_threads_from_before_the_library_are_reconciled(tmp_path):
    """Loaded into a process that already runs threads (no preload, so in
    import mode), the library sees them in /proc/self/task as untracked,
    not as missing."""
    import subprocess
    import sys

    code = """
import threading
stop = threading.Event()
ts = [threading.Thread(target=stop.wait) for _ in range(3)]
for t in ts: t.start()
import threadguard
s = threadguard.stats()
print(s.mode, s.tasks_at_start, s.untracked, s.total.created)
stop.set()
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["import", "3", "3", "0"]


def test_std_thread_in_a_late_loaded_library_counts_under_that_library(guarded, cxxpool):
    """libstdc++ arrives with the library, after threadguard started (as with
    torch): its std::threads go to the library above libstdc++."""
    _, report = guarded.run(f"import ctypes; ctypes.CDLL({cxxpool!r}).cxxpool_run(5)")
    rows = {lib.name: lib.created for lib in report.libraries}
    assert rows.get("libtg_cxxpool.so") == 5, report.format_table()
    assert not any(name.startswith("libstdc++") for name in rows)
