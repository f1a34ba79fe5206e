"""Shared fixtures: the installed package, guarded subprocesses, the CPU shim."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

import threadguard
from threadguard import _native

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    if not _native.packaged_path().is_file():
        raise pytest.UsageError(
            f"threadguard was imported from {Path(threadguard.__file__).parent}, which has no "
            "libthreadguard.so: install the package (pip install '.[test]') and run pytest "
            "from that environment, not 'python -m pytest' from an unbuilt tree")


class Guarded:
    """Run Python code under 'threadguard run' with a JSON report."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path

    def run(self, code: str, env: Optional[Dict[str, str]] = None,
            preload_extra: Optional[str] = None, timeout: float = 120):
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


@pytest.fixture(scope="session")
def fakecpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a shim that makes libraries see THREADGUARD_TEST_CPUS CPUs."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the CPU-count shim")
    out = tmp_path_factory.mktemp("shim") / "fakecpus.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(out),
                    str(REPO / "tests" / "native" / "fakecpus.c"), "-ldl"], check=True)
    return str(out)


def report_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def cxxpool(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A shared library whose cxxpool_run(n) starts n std::threads."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the std::thread pool library")
    out = tmp_path_factory.mktemp("cxx") / "libtg_cxxpool.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-pthread", "-o", str(out),
                    str(REPO / "tests" / "c" / "cxxpool.cpp")], check=True)
    return str(out)
