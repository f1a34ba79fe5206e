"""Thread leaks: the growth rule the library applies to each creating library
and each Python start site, and the start sites themselves (in import mode
and under the preload)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

import threadguard
from threadguard._stats import Stats

# The child prints its own snapshot last: at exit, Python joins executor
# threads, so the exit report would show them ended.
SNAPSHOT = "\nimport json, threadguard\nprint(json.dumps(threadguard.stats().to_json()))\n"


def snapshot(tmp_path: Path, code: str, preload: bool = True,
             env: Optional[Dict[str, str]] = None, then: str = "") -> Stats:
    """Stats taken inside a child running code (under `threadguard run`, or
    in import mode with preload False); then runs after the snapshot."""
    script = tmp_path / "child.py"
    script.write_text(code + SNAPSHOT + then)
    prefix = [sys.executable, "-m", "threadguard", "run", "--report", "off", "--"] if preload \
        else []
    full_env = {**os.environ, **(env or {})}
    full_env.pop("THREADGUARD_REPORT", None)
    proc = subprocess.run([*prefix, sys.executable, str(script)], env=full_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Stats.from_json(json.loads(proc.stdout.splitlines()[-1]))


def row(stats: Stats, name: str) -> threadguard.LibraryStats:
    [found] = [lib for lib in stats.libraries if lib.name == name]
    return found


LEAKY = "import ctypes, time\nlib = ctypes.CDLL({path!r})\n"


# ---- the growth rule, per library ---------------------------------------

def test_a_pool_started_at_once_is_one_step_and_no_leak(tmp_path: Path, leaky: str) -> None:
    stats = snapshot(tmp_path, LEAKY.format(path=leaky) +
                     "for _ in range(32):\n    assert lib.leaky_start() == 0\n")
    lib = row(stats, "libtg_leaky.so")
    assert lib.live == 32
    assert lib.growth.steps == 1 and not lib.growth.leaking, lib


def test_threads_started_each_cycle_and_never_ended_are_a_leak(tmp_path: Path,
                                                               leaky: str) -> None:
    stats = snapshot(tmp_path, LEAKY.format(path=leaky) +
                     "for _ in range(12):\n    assert lib.leaky_start() == 0\n"
                     "    time.sleep(0.03)\n")
    lib = row(stats, "libtg_leaky.so")
    assert lib.live == 12
    assert lib.growth.steps == 12 and lib.growth.settled == 1, lib
    assert lib.growth.leaking
    assert "LEAKING: grew from 1 in 12 steps" in stats.format_table()


def test_a_pool_library_starting_slowly_within_its_cpus_is_no_leak(
        tmp_path: Path, leaky: str, fakecpus: str) -> None:
    """Under an emulator or on a loaded node a pool's workers may start more
    than the quiet gap apart (OpenBLAS's 20 threads were called a leak under
    qemu): a pool library's threads within the CPUs it sees are its pool.
    The same threads from any other library are a leak."""
    as_openblas = tmp_path / "libopenblas_slow.so"
    as_openblas.write_bytes(Path(leaky).read_bytes())
    slow = ("for _ in range(20):\n    assert lib.leaky_start() == 0\n    time.sleep(0.03)\n")
    env = {"LD_PRELOAD": fakecpus, "THREADGUARD_TEST_CPUS": "64"}
    pool = row(snapshot(tmp_path, LEAKY.format(path=str(as_openblas)) + slow, env=env),
               "libopenblas_slow.so")
    assert pool.kind == "openblas" and pool.live == 20 and pool.growth.steps == 20
    assert not pool.growth.leaking
    other = row(snapshot(tmp_path, LEAKY.format(path=leaky) + slow, env=env), "libtg_leaky.so")
    assert other.live == 20 and other.growth.leaking


def test_few_steps_are_no_leak(tmp_path: Path, leaky: str) -> None:
    """Three pools of 8 started a while apart: 24 live threads, but three
    steps are what a program sizing three pools makes."""
    stats = snapshot(tmp_path, LEAKY.format(path=leaky) +
                     "for _ in range(3):\n    [lib.leaky_start() for _ in range(8)]\n"
                     "    time.sleep(0.03)\n")
    lib = row(stats, "libtg_leaky.so")
    assert lib.live == 24 and lib.growth.steps == 3 and not lib.growth.leaking, lib


def test_threads_that_end_are_no_leak(tmp_path: Path) -> None:
    """A thread started and joined each cycle never raises the high again."""
    stats = snapshot(tmp_path, "import threading, time\nfor _ in range(12):\n"
                     "    t = threading.Thread(target=time.sleep, args=(0,))\n"
                     "    t.start(); t.join(); time.sleep(0.03)\n")
    python = stats.of_kind("python")
    assert python.created == 12 and python.peak == 1
    [lib] = [lib for lib in stats.libraries if lib.kind == "python"]
    assert lib.growth.steps == 1 and not lib.growth.leaking
    [site] = stats.python_sites
    assert site.created == 12 and site.live == 0 and not site.growth.leaking


def test_an_executor_growing_to_its_size_is_no_leak(tmp_path: Path) -> None:
    """ThreadPoolExecutor(8) adds a worker per submit while all are busy: 8
    steps, then no more.  Growth under 8 threads past the first step is not
    a leak (TG_LEAK_GROWTH)."""
    stats = snapshot(tmp_path, "import threading, time, concurrent.futures\n"
                     "go = threading.Event()\n"
                     "pool = concurrent.futures.ThreadPoolExecutor(8)\n"
                     "for _ in range(8):\n    pool.submit(go.wait); time.sleep(0.03)\n"
                     "for _ in range(8):\n    pool.submit(go.wait); time.sleep(0.03)\n",
                     then="go.set()\n")
    [site] = stats.python_sites
    assert site.live == 8 and site.growth.steps == 8, site
    assert not site.growth.leaking


# ---- Python start sites ---------------------------------------------------

EXECUTOR_LEAK = """import concurrent.futures, time
executors = []
def cycle():
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    executors.append(pool)  # kept, never shut down
    pool.submit(pow, 2, 2).result()
def direct():
    import threading
    t = threading.Thread(target=time.sleep, args=(0,), name="direct")
    t.start()
    t.join()
for _ in range(12):
    cycle()
    time.sleep(0.03)
direct()
"""


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "import-mode"])
def test_python_sites_name_the_line_that_started_the_threads(tmp_path: Path,
                                                             preload: bool) -> None:
    code = EXECUTOR_LEAK if preload else "import threadguard\n" + EXECUTOR_LEAK
    first = 6 if preload else 7
    stats = snapshot(tmp_path, code, preload=preload)
    script = tmp_path / "child.py"
    sites = {site.where: site for site in stats.python_sites}
    submit = sites[f"{script}:{first} in cycle (ThreadPoolExecutor.submit)"]
    assert submit.created == 12 and submit.live == 12
    assert submit.growth.leaking and submit.growth.steps == 12
    direct = sites[f"{script}:{first + 4} in direct"]
    assert direct.created == 1 and direct.live == 0 and not direct.growth.leaking
    assert "Python threads by start site" in stats.format_table()


def test_the_preload_hook_imports_nothing_until_a_thread_starts(tmp_path: Path) -> None:
    """A program that starts no thread pays for the .pth line and one small
    module; threadguard itself is imported at the first Thread.start."""
    code = ("import sys, threading\n"
            "before = 'threadguard' in sys.modules\n"
            "t = threading.Thread(target=len, args=((),)); t.start(); t.join()\n"
            "print(before, 'threadguard' in sys.modules, '_threadguard_preload' in sys.modules)")
    run = [sys.executable, "-m", "threadguard", "run", "--report", "off", "--",
           sys.executable, "-c", code]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.stdout.split() == ["False", "True", "True"], proc.stderr
    bare = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert bare.stdout.split() == ["False", "False", "False"], bare.stderr


def test_the_preload_hook_uses_the_installed_package_not_a_source_tree(tmp_path: Path) -> None:
    """Run from a checkout, `python -c` finds the unbuilt threadguard/ first on
    sys.path: the hook imports the package installed beside it, and says
    nothing (it printed the unbuilt tree's warning on every thread start)."""
    repo = Path(__file__).resolve().parent.parent
    code = ("import sys, threading\n"
            "t = threading.Thread(target=len, args=((),)); t.start(); t.join()\n"
            "print(sys.modules['threadguard'].__file__)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADGUARD_")}
    env["LD_PRELOAD"] = threadguard.libpath()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=repo, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert Path(proc.stdout.strip()).parent == Path(threadguard.__file__).parent


def test_a_thread_started_before_counting_has_no_site(tmp_path: Path) -> None:
    code = ("import threading\nt = threading.Thread(target=len, args=((),)); t.start(); t.join()\n"
            "import threadguard\nfrom threadguard._sites import site_of_thread\n"
            "u = threading.Thread(target=len, args=((),)); u.start(); u.join()\n"
            "print(repr(site_of_thread(t)), repr(site_of_thread(u)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["''", "'<string>:5", "in", "<module>'"], proc.stdout
