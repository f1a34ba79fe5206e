"""Helpers that put a child process under a real limit: an unprivileged uid
with a low RLIMIT_NPROC, a cgroup v1 `pids` group, RLIMIT_AS.

Root ignores RLIMIT_NPROC, so task-limit children run as an unprivileged
uid through setpriv: a fresh uid number, chosen once per test session, that
no process on the machine runs as (it needs no passwd entry), so the limit
counts only the test's own tasks and no other user shares its headroom.
They keep CAP_DAC_READ_SEARCH (as an ambient capability) only so they can
read this interpreter and the installed packages wherever they
live (root's home here); the kernel exempts only CAP_SYS_RESOURCE and
CAP_SYS_ADMIN from RLIMIT_NPROC, so the limit applies in full.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import psutil
import pytest

import threadguard

CGROUP_ROOT = Path("/sys/fs/cgroup")


def fresh_uid() -> int:
    """A uid no process runs as now."""
    used = set()
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids is not None:
            used.update(uids)
    while True:
        uid = random.randint(3_000_000, 2_000_000_000)
        if uid not in used:
            return uid


NOBODY = fresh_uid()


@atexit.register
def _remove_ledger() -> None:
    """The shared directory of NOBODY's guarded children: the headroom ledger
    they shared, and the files of any that were killed."""
    shutil.rmtree(f"/dev/shm/threadguard-{NOBODY}", ignore_errors=True)


def uid_tasks(uid: int) -> int:
    """Tasks (threads) the uid runs now: what RLIMIT_NPROC counts."""
    total = 0
    for proc in psutil.process_iter(["uids", "num_threads"]):
        uids = proc.info["uids"]
        if uids is not None and uids.real == uid:
            total += proc.info["num_threads"] or 0
    return total


def nobody_prefix(nproc: int) -> List[str]:
    """Command prefix running the rest as the test uid with RLIMIT_NPROC=nproc."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
            "prlimit", f"--nproc={nproc}", "--"]


def skip_unless_nobody_works() -> None:
    """Skip (with the reason) where a child cannot run as the test uid under a task limit."""
    if os.geteuid() != 0:
        pytest.skip("task-limit tests drop to an unprivileged uid with setpriv, which needs root")
    for tool in ("setpriv", "prlimit"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux) is not installed")
    probe = subprocess.run([*nobody_prefix(64), sys.executable, "-c",
                            "import os, threadguard; print(os.getuid())"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0 or probe.stdout.strip() != str(NOBODY):
        pytest.skip(f"cannot run this interpreter as uid {NOBODY} with setpriv: "
                    f"{probe.stderr.strip()[-300:]}")


class Runner:
    """Runs Python code bare or under `threadguard run`, with a JSON report
    in a directory any uid can write."""

    def __init__(self, tmp_path: Path, fakecpus: Optional[str] = None):
        self.dir = tmp_path / "shared"
        self.dir.mkdir(exist_ok=True)
        self.dir.chmod(0o777)
        self.fakecpus = fakecpus
        self.report_path = self.dir / "report.json"

    def env(self, extra: Optional[Dict[str, str]] = None, cpus: Optional[int] = None
            ) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("THREADGUARD_", "OMP_", "OPENBLAS_", "MKL_", "GOTO_"))
               and k != "LD_PRELOAD"}
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # the unprivileged child must not write caches
        if cpus is not None:
            assert self.fakecpus, "cpus= needs the fakecpus shim"
            env["LD_PRELOAD"] = self.fakecpus
            env["THREADGUARD_TEST_CPUS"] = str(cpus)
        env.update(extra or {})
        return env

    def run(self, code: str, *, guarded: bool, prefix: Sequence[str] = (),
            env: Optional[Dict[str, str]] = None, cpus: Optional[int] = None,
            options: Sequence[str] = (), timeout: float = 600) -> subprocess.CompletedProcess:
        if self.report_path.exists():
            self.report_path.unlink()
        cmd = [sys.executable, "-c", code]
        if guarded:
            cmd = [sys.executable, "-m", "threadguard", "run", "--report",
                   str(self.report_path), *options, "--", *cmd]
            return subprocess.run([*prefix, *cmd], env=self.env(env, cpus), cwd=self.dir,
                                  capture_output=True, text=True, timeout=timeout)
        # Bare, OpenBLAS raises SIGINT when a pthread_create fails, and goes
        # on with the threads it has when SIGINT is ignored (a run started in
        # the background by a non-interactive shell): then it spins for ever.
        # That is the bare failure too.
        try:
            return subprocess.run([*prefix, *cmd], env=self.env(env, cpus), cwd=self.dir,
                                  capture_output=True, text=True, timeout=min(timeout, 120))
        except subprocess.TimeoutExpired as exc:
            def text(data: object) -> str:
                return data.decode(errors="replace") if isinstance(data, bytes) else str(data or "")
            return subprocess.CompletedProcess(exc.cmd, -9, text(exc.stdout),
                                               text(exc.stderr) + "\n[hung: killed after 120 s]")

    def report(self) -> threadguard.Stats:
        return threadguard.load_report(self.report_path)


def died(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode != 0


class Cgroup:
    """A cgroup v1 group (of one controller) a child can be started in."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, name: str, value: int) -> None:
        (self.path / name).write_text(str(value))

    def prefix(self) -> List[str]:
        """Command prefix: move the shell into the group, then exec the rest."""
        procs = self.path / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh"]


def make_cgroup(controller: str) -> Iterator[Cgroup]:
    """A fresh group under /sys/fs/cgroup/CONTROLLER, removed afterwards; skip
    where the machine has no writable v1 hierarchy for it."""
    if os.geteuid() != 0:
        pytest.skip("creating a cgroup needs root")
    root = CGROUP_ROOT / controller
    if not (root / "cgroup.procs").exists():
        pytest.skip(f"no cgroup v1 {controller} hierarchy at {root}")
    path = root / f"threadguard-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a {controller} cgroup at {path}: {exc}")
    try:
        yield Cgroup(path)
    finally:
        try:
            path.rmdir()
        except OSError:
            pass
