"""What threadguard does on a glibc older than the one it was built on.

THREADGUARD_TEST_GLIBC=2.17 makes the native library treat every glibc
facility newer than 2.17 as absent (csrc/glibc.c), so the fallbacks a
CentOS 7 node takes run here; the Debian 11 root of test_portable.py runs
them on a real glibc 2.31.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STACK_LIMITATION = "glibc before 2.18 has no pthread_setattr_default_np"


def test_errno_table_agrees_with_glibc() -> None:
    """The fallback table's names and texts are glibc's own (os.strerror is
    glibc's strerror, untranslated in the C locale of LC_MESSAGES)."""
    source = (REPO / "csrc" / "glibc.c").read_text()
    entries = re.findall(r'\{(E[A-Z]+), "(E[A-Z]+)", "([^"]+)"\}', source)
    assert len(entries) >= 30, entries
    assert {"EAGAIN", "ENOMEM", "EPERM", "EINVAL"} <= {name for _, name, _ in entries}
    for macro, name, text in entries:
        assert macro == name
        assert os.strerror(getattr(errno, name)) == text, name


# Subprocesses run outside the checkout: `python -c` puts the working
# directory first on sys.path, and the source tree has no built library.
NEUTRAL_DIR = "/"


def guarded_stderr_report(extra_env: dict) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADGUARD_")}
    env.update(extra_env)
    code = "import threading; t = threading.Thread(target=print); t.start(); t.join()"
    proc = subprocess.run([sys.executable, "-m", "threadguard", "run", "--report", "stderr",
                           "--stack", "512k", "--", sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=600, cwd=NEUTRAL_DIR)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_report_states_the_stack_limitation_in_one_line() -> None:
    old = guarded_stderr_report({"THREADGUARD_TEST_GLIBC": "2.17"})
    lines = [ln for ln in old.splitlines() if STACK_LIMITATION in ln]
    assert len(lines) == 1, old
    assert lines[0].startswith("  glibc 2.17 (test): "), lines
    assert STACK_LIMITATION not in guarded_stderr_report({})


def test_stats_table_states_the_stack_limitation_too(tmp_path: Path) -> None:
    """`threadguard stats` (the Python formatter) says what the exit table says."""
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADGUARD_")}
    env["THREADGUARD_TEST_GLIBC"] = "2.17"
    code = "import threading; t = threading.Thread(target=print); t.start(); t.join()"
    run = subprocess.run([sys.executable, "-m", "threadguard", "run", "--report", str(report),
                          "--", sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=600, cwd=NEUTRAL_DIR)
    assert run.returncode == 0, run.stderr
    table = subprocess.run([sys.executable, "-m", "threadguard", "stats", str(report)],
                           capture_output=True, text=True, timeout=600, cwd=NEUTRAL_DIR)
    assert table.returncode == 0, table.stderr
    lines = [ln for ln in table.stdout.splitlines() if STACK_LIMITATION in ln]
    assert len(lines) == 1 and lines[0].startswith("  glibc 2.17 (test): "), table.stdout


def doctor(extra_env: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADGUARD_")}
    env.update(extra_env)
    return subprocess.run([sys.executable, "-m", "threadguard", "doctor", "--no-color"], env=env,
                          capture_output=True, text=True, timeout=600, cwd=NEUTRAL_DIR)


def test_doctor_states_what_this_glibc_cannot_do() -> None:
    old = doctor({"THREADGUARD_TEST_GLIBC": "2.17"})
    assert old.returncode in (0, 1), old.stderr
    assert "glibc 2.17 (test) on x86_64: 1 feature(s) limited" in old.stdout \
        or "glibc 2.17 (test) on aarch64: 1 feature(s) limited" in old.stdout, old.stdout
    assert sum(STACK_LIMITATION in ln for ln in old.stdout.splitlines()) == 1, old.stdout
    new = doctor({})
    assert new.returncode in (0, 1), new.stderr
    assert "every threadguard feature works" in new.stdout, new.stdout
    assert STACK_LIMITATION not in new.stdout


def test_report_platform_names_the_fallbacks() -> None:
    """The JSON report's platform object: glibc version, fallbacks taken."""
    code = ("import json, threadguard\n"
            "print(json.dumps(threadguard._native.report_json()['platform']))")
    for pretend, fallbacks in (("2.17", 3), ("2.33", 1), ("2.35", 0)):
        env = {**os.environ, "THREADGUARD_TEST_GLIBC": pretend}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=600, cwd=NEUTRAL_DIR)
        assert proc.returncode == 0, proc.stderr
        platform = json.loads(proc.stdout)
        assert platform["glibc"] == f"{pretend} (test)"
        assert len(platform["fallbacks"]) == fallbacks, platform
        assert (len(platform["limitations"]) == 1) == (pretend == "2.17"), platform
