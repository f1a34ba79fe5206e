"""Shared fixtures: the installed package, guarded subprocesses, the CPU shim."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest

import threadguard
from threadguard import _native

from limits import Cgroup, Runner, make_cgroup

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # limit("auto") reads a node profile from ~/.cache/threadguard/profiles: a
    # `threadguard bench` run on this machine must not change what tests see.
    # Subprocesses inherit the empty directory.
    import tempfile
    os.environ["THREADGUARD_PROFILE_DIR"] = tempfile.mkdtemp(prefix="threadguard-profiles-")
    if not _native.packaged_path().is_file():
        raise pytest.UsageError(
            f"threadguard was imported from {Path(threadguard.__file__).parent}, which has no "
            "libthreadguard.so: install the package (pip install '.[test]') and run pytest "
            "from that environment, not 'python -m pytest' from an unbuilt tree")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ.get("THREADGUARD_PROFILE_DIR", ""), ignore_errors=True)


class Guarded:
    """Run Python code under 'threadguard run' with a JSON report."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path

    def run(self, code: str, env: Optional[Dict[str, str]] = None,
            preload_extra: Optional[str] = None, timeout: float = 600):
        report = self.tmp_path / "report.json"
        if report.exists():
            report.unlink()
        full_env = dict(os.environ)
        full_env.pop("THREADGUARD_REPORT", None)
        if preload_extra:
            full_env["LD_PRELOAD"] = preload_extra
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "threadguard", "run", "--report", str(report), "--",
               sys.executable, "-c", code]
        proc = subprocess.run(cmd, env=full_env, cwd=self.tmp_path, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc, threadguard.load_report(report)


@pytest.fixture
def guarded(tmp_path: Path) -> Guarded:
    return Guarded(tmp_path)


def _build_shared_library(factory: pytest.TempPathFactory, compilers: tuple, source: str,
                          name: str, *flags: str) -> str:
    """Compile a test-only helper library, or skip when no compiler is found."""
    compiler = next((c for c in map(shutil.which, compilers) if c), None)
    if compiler is None:
        pytest.skip(f"no compiler ({' or '.join(compilers)}) to build {name}")
    out = factory.mktemp("native") / name
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", *flags, "-o", str(out),
                    str(REPO / source)], check=True)
    return str(out)


@pytest.fixture(scope="session")
def fakecpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a shim that makes libraries see THREADGUARD_TEST_CPUS CPUs."""
    return _build_shared_library(tmp_path_factory, ("cc", "gcc"), "tests/native/fakecpus.c",
                                 "fakecpus.so", "-ldl")


@pytest.fixture(scope="session")
def cxxpool(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A shared library whose cxxpool_run(n) starts n std::threads."""
    return _build_shared_library(tmp_path_factory, ("c++", "g++"), "tests/c/cxxpool.cpp",
                                 "libtg_cxxpool.so", "-pthread")


@pytest.fixture(scope="session")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A shared library whose leaky_start() starts a thread that waits for
    leaky_release() and is never joined: a native leak, named by its file."""
    return _build_shared_library(tmp_path_factory, ("cc", "gcc"), "tests/native/leaky.c",
                                 "libtg_leaky.so", "-pthread")


# Children under a limit (tests/limits.py): shared by the budget and doctor tests.
@pytest.fixture
def runner(tmp_path: Path, fakecpus: str) -> "Runner":
    return Runner(tmp_path, fakecpus)


@pytest.fixture
def pids_cgroup() -> Iterator["Cgroup"]:
    yield from make_cgroup("pids")


@pytest.fixture
def cpu_cgroup() -> Iterator["Cgroup"]:
    yield from make_cgroup("cpu")


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """A test that sizes pools in the pytest process itself must put the
    environment back: a leftover OPENBLAS_NUM_THREADS=4096 reached every
    later test's children once (threadguard.limit() called and not undone)."""
    before = {k: v for k, v in os.environ.items()
              if k.endswith(("_NUM_THREADS", "_MAX_THREADS", "_THREAD_LIMIT"))
              or k.startswith("THREADGUARD_")}
    yield
    after = {k: v for k, v in os.environ.items()
             if k.endswith(("_NUM_THREADS", "_MAX_THREADS", "_THREAD_LIMIT"))
             or k.startswith("THREADGUARD_")}
    assert after == before, "the test left thread variables changed in the pytest process"
