"""Smoke tests of an installed threadguard wheel, run inside each userland
it supports: Debian 11 roots (glibc 2.31, Python 3.9) for amd64 and, under
qemu, arm64, and this machine.  tests/test_portable.py puts them there and
runs them with the venv's pytest; they need only the installed wheel,
numpy, and the fakecpus shim built for the root's architecture.

Environment: THREADGUARD_SMOKE_FAKECPUS, the shim (makes libraries see N
CPUs), built for the root's architecture.

Not collected by the main suite (the file name does not start with test_).
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest

PY = sys.executable
FAKECPUS = os.environ.get("THREADGUARD_SMOKE_FAKECPUS", "")
THREAD_VARIABLES = ("THREADGUARD_", "OMP_", "OPENBLAS_", "MKL_", "GOTO_", "SLURM_")

def env_with(cpus: Optional[int] = None, **extra: str) -> Dict[str, str]:
    """This environment less every thread setting, with the CPU shim for cpus."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(THREAD_VARIABLES) and k != "LD_PRELOAD"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if cpus is not None:
        assert Path(FAKECPUS).is_file(), f"THREADGUARD_SMOKE_FAKECPUS={FAKECPUS!r} is not a file"
        env["LD_PRELOAD"] = FAKECPUS
        env["THREADGUARD_TEST_CPUS"] = str(cpus)
    env.update(extra)
    return env


def run(cmd: Sequence[str], env: Dict[str, str], cwd: Path,
        timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def guarded(code: str, report: Path, options: Sequence[str] = ()) -> List[str]:
    return [PY, "-m", "threadguard", "run", "--report", str(report), *options, "--",
            PY, "-c", code]


def rows(report: Dict[str, Any], kind: str) -> Dict[str, int]:
    """The summed counters of every row of one kind."""
    total = {"created": 0, "live": 0, "failed": 0}
    for row in report["libraries"]:
        if row["kind"] == kind:
            for key in total:
                total[key] += row[key]
    return total


def running_glibc() -> str:
    return platform.libc_ver()[1]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged uid can reach and write its report into
    (pytest's own tmp_path lies under a directory only root may enter)."""
    path = Path(tempfile.mkdtemp(prefix="threadguard-smoke-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_counting_under_run(shared_dir: Path) -> None:
    """Python threads and numpy's OpenBLAS workers counted by library, with
    the running glibc named in the report."""
    report_path = shared_dir / "report.json"
    code = ("import numpy, threading\n"
            "a = numpy.ones((300, 300)); a @ a\n"
            "ts = [threading.Thread(target=sum, args=([1],)) for _ in range(3)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n")
    proc = run(guarded(code, report_path), env_with(8, OPENBLAS_NUM_THREADS="4"), shared_dir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(report_path.read_text())
    assert report["mode"] == "preload"
    assert rows(report, "python")["created"] == 3, report["libraries"]
    assert rows(report, "openblas")["created"] == 3, report["libraries"]  # 4 less the caller
    plat = report["platform"]
    assert plat["glibc"] == running_glibc(), plat
    assert plat["arch"] == platform.machine(), plat
    minor = int(running_glibc().split(".")[1])
    assert ("_dl_find_object" in " ".join(plat["fallbacks"])) == (minor < 35), plat
    assert plat["limitations"] == [], plat  # every glibc >= 2.18 keeps every promise
    print(f"glibc {plat['glibc']} {plat['arch']}: fallbacks {plat['fallbacks']}; "
          f"counted python {rows(report, 'python')}, openblas {rows(report, 'openblas')}")


def test_preload_sizing(shared_dir: Path) -> None:
    """A 64-CPU node, an allocation of 3 CPUs (SLURM_CPUS_PER_TASK): bare,
    OpenBLAS starts 63 workers; guarded, it is sized to 3 before it starts.
    Counted as the tasks import numpy adds (qemu-user runs a thread of its
    own in every emulated process)."""
    code = ("import os\n"
            "before = len(os.listdir('/proc/self/task'))\n"
            "import numpy\n"
            "print(len(os.listdir('/proc/self/task')) - before)\n")
    env = env_with(64, SLURM_CPUS_PER_TASK="3")
    bare = run([PY, "-c", code], env, shared_dir)
    assert bare.returncode == 0, bare.stderr
    assert int(bare.stdout) == 63, bare.stdout
    report_path = shared_dir / "report.json"
    proc = run(guarded(code, report_path), env, shared_dir)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == 2, proc.stdout
    report = json.loads(report_path.read_text())
    assert rows(report, "openblas")["created"] == 2, report["libraries"]
    pool = next(p for p in report["pools"] if p["variable"] == "OPENBLAS_NUM_THREADS")
    assert pool["value"] == 3 and pool["source"] == "threadguard", pool
    assert report["headroom"]["at_start"]["cpus_from"] == "SLURM_CPUS_PER_TASK"
    print(f"threads started by import numpy: bare {int(bare.stdout)}, guarded {int(proc.stdout)}")


def test_import_mode(shared_dir: Path) -> None:
    """Without a preload, import threadguard counts Python threads and the
    OpenBLAS workers numpy's loading starts (adopted through the dlopen hook)."""
    code = ("import json, threading, threadguard\n"
            "import numpy\n"
            "ts = [threading.Thread(target=sum, args=([1],)) for _ in range(2)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "s = threadguard.stats()\n"
            "print(json.dumps({'mode': threadguard.mode(), 'python': s.of_kind('python').created,"
            " 'openblas': s.of_kind('openblas').created}))\n")
    proc = run([PY, "-c", code], env_with(4), shared_dir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"mode": "import", "python": 2, "openblas": 3}, proc.stdout


def fresh_uid() -> int:
    """A uid no process runs as: RLIMIT_NPROC then counts only the test's tasks."""
    used = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("Uid:"):
                    used.update(int(x) for x in line.split()[1:])
        except OSError:
            continue
    while True:
        uid = random.randint(200_000, 2_000_000_000)
        if uid not in used:
            return uid


def limited(uid: int, nproc: int) -> List[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "prlimit", f"--nproc={nproc}", "--"]


NUMPY_WORK = "import numpy; a = numpy.ones((300, 300)); print(float((a @ a).sum()))"


def test_task_limit_bare_dies_guarded_completes(shared_dir: Path) -> None:
    """An unprivileged uid with 24 tasks, OPENBLAS_NUM_THREADS=64 on a node
    that reports 64 CPUs: bare, OpenBLAS fails to start its threads and the
    process dies; guarded, the pool is sized to fit and it completes."""
    prefix = limited(fresh_uid(), 24)
    env = env_with(64, OPENBLAS_NUM_THREADS="64")
    bare = run([*prefix, PY, "-c", NUMPY_WORK], env, shared_dir, timeout=120)
    assert bare.returncode != 0, f"bare run survived:\n{bare.stdout}\n{bare.stderr}"
    assert "pthread_create failed" in bare.stderr, bare.stderr[-2000:]
    report_path = shared_dir / "report.json"
    proc = run([*prefix, *guarded(NUMPY_WORK, report_path)], env, shared_dir, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pthread_create failed" not in proc.stderr
    report = json.loads(report_path.read_text())
    assert report["failures_total"] == 0, report["failures"]
    pool = next(p for p in report["pools"] if p["variable"] == "OPENBLAS_NUM_THREADS")
    assert pool["lowered"] and pool["limit"] == "RLIMIT_NPROC" and pool["value"] < 24, pool
    print(f"bare: exit {bare.returncode}; guarded: exit 0, OPENBLAS_NUM_THREADS 64 -> "
          f"{pool['value']} ({pool['free']} free under {pool['limit']})")


def test_limit(shared_dir: Path) -> None:
    """limit() as a context manager and a call, read back with threadpoolctl."""
    code = ("import json, threadguard, numpy\n"
            "from threadpoolctl import threadpool_info\n"
            "def blas():\n"
            "    return [i['num_threads'] for i in threadpool_info()"
            " if i['internal_api'] == 'openblas']\n"
            "before = blas()\n"
            "with threadguard.limit(1):\n"
            "    inside = blas()\n"
            "after = blas()\n"
            "threadguard.limit(2)\n"
            "print(json.dumps({'before': before, 'inside': inside, 'after': after,"
            " 'set': blas()}))\n")
    proc = run([PY, "-c", code], env_with(8, OPENBLAS_NUM_THREADS="4"), shared_dir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"before": [4], "inside": [1], "after": [4], "set": [2]}


def test_doctor_names_the_task_limit(shared_dir: Path) -> None:
    """Under the task limit, the doctor explains why import numpy died, and
    shows the glibc it runs on."""
    prefix = limited(fresh_uid(), 24)
    proc = run([*prefix, PY, "-m", "threadguard", "doctor", "--json", "--timeout", "120", "--",
                PY, "-c", "import numpy"], env_with(64), shared_dir, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    verdict = result["verdict"]
    assert verdict["limit"] == "RLIMIT_NPROC" and verdict["library"] == "OpenBLAS", verdict
    assert result["facts"]["platform"]["glibc"] == running_glibc()
    text = run([PY, "-m", "threadguard", "doctor", "--no-color"], env_with(), shared_dir)
    assert text.returncode in (0, 1), text.stderr[-2000:]
    assert f"glibc {running_glibc()} on {platform.machine()}: every threadguard feature works" \
        in text.stdout, text.stdout
