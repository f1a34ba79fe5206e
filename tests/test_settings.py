"""THREADGUARD_* settings: every bad value gets one line on stderr naming the
variable and what is expected, the default applies and the host runs on;
`threadguard run` refuses the same values before starting anything."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import pytest

import threadguard
from threadguard._settings import OPTIONS, SITE_VARIABLES, check_setting
from conftest import REPO

BAD_VALUES = {
    "THREADGUARD_STACK": [b"abc", b"-1", b"99999999G", b"", "é".encode(), b"\xff\xfe"],
    "THREADGUARD_MAX_THREADS": [b"abc", b"-1", b"0", b"", b"99999999999999", "٣".encode()],
    "THREADGUARD_POOL_THREADS": [b"two", b"-1", b"", b"1.5"],
    "THREADGUARD_ON_LIMIT": [b"", b"block", b"DENY"],
    "THREADGUARD_ARENAS": [b"", b"-1", b"many"],
    "THREADGUARD_NPROC": [b"", b"-1", b"unlimited"],
    "THREADGUARD_DEBUG": [b"", b"maybe"],
    "THREADGUARD_IMPORT": [b"", b"never"],
    "THREADGUARD_OBSERVE": [b"", b"sometimes"],
    "THREADGUARD_OUTPUT": [b"", b"bogus", b"relative/file.log", b"syslog:dev/log"],
    "THREADGUARD_DISABLE": [b"", b"perhaps"],
    "THREADGUARD_SKIP": [b"", b"ls::cat", b":ls", b"ls:"],
}
CASES = [(name, value) for name, values in BAD_VALUES.items() for value in values]


def run_with(name: str, value: bytes) -> subprocess.CompletedProcess:
    env = {k.encode(): v.encode() for k, v in os.environ.items()
           if not k.startswith("THREADGUARD_")}
    env[b"LD_PRELOAD"] = threadguard.libpath().encode()
    env[name.encode()] = value
    code = ("import threading; t = threading.Thread(target=print, args=('ran',)); "
            "t.start(); t.join()")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          timeout=300)


@pytest.mark.parametrize("name,value", CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_bad_value_gets_one_line_and_the_default(name, value):
    proc = run_with(name, value)
    assert proc.returncode == 0 and proc.stdout == b"ran\n"
    lines = proc.stderr.decode("utf-8", "replace").splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"threadguard: {name}")
    assert "expected" in lines[0] and "using the default" in lines[0]
    assert "\\x" in lines[0] or value.isascii()  # non-ASCII bytes are shown escaped


def test_stack_under_the_floor_is_raised_to_256k(tmp_path):
    proc = run_with("THREADGUARD_STACK", b"64k")
    assert proc.returncode == 0
    assert "using 256k" in proc.stderr.decode()


def test_good_values_are_silent():
    for name, value in [("THREADGUARD_STACK", b"512k"), ("THREADGUARD_MAX_THREADS", b"64"),
                        ("THREADGUARD_ON_LIMIT", b"deny"), ("THREADGUARD_NPROC", b"max"),
                        ("THREADGUARD_ARENAS", b"2"), ("THREADGUARD_DEBUG", b"0")]:
        proc = run_with(name, value)
        assert proc.returncode == 0 and proc.stderr == b"", (name, proc.stderr)


def test_random_byte_strings_never_crash_the_parser():
    """A property test through the Python binding (the C fuzz test runs the
    same under ASan/UBSan): any value is accepted or explained."""
    rng = random.Random(1234)
    names = [option.variable for option in OPTIONS] + ["THREADGUARD_REPORT",
                                                       "THREADGUARD_IMPORT",
                                                       *SITE_VARIABLES]
    for _ in range(20000):
        value = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(0, 40)))
        name = rng.choice(names)
        try:
            check_setting(name, value.decode("utf-8", "surrogateescape"))
        except ValueError as exc:
            assert str(exc).startswith(name) and "expected" in str(exc)


@pytest.mark.parametrize("option,value", [("--stack", "abc"), ("--max-threads", "0"),
                                          ("--on-limit", "block"), ("--arenas", "-1")])
def test_run_refuses_bad_options(tmp_path, option, value):
    proc = subprocess.run([sys.executable, "-m", "threadguard", "run", option, value, "--",
                           "true"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"argument {option}" in proc.stderr and "expected" in proc.stderr


def test_secure_execution_is_left_alone(tmp_path):
    """A setuid program run by another uid must not write where the caller's
    environment says (THREADGUARD_REPORT=PATH), nor say anything."""
    from limits import NOBODY, nobody_prefix, skip_unless_nobody_works
    skip_unless_nobody_works()
    compiler = next((c for c in map(shutil.which, ("cc", "gcc")) if c), None)
    if compiler is None:
        pytest.skip("no C compiler to build the setuid test program")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    program = shared / "secure_prog"
    libdir = os.path.dirname(threadguard.libpath())
    subprocess.run([compiler, "-o", str(program), str(REPO / "tests/native/secure_prog.c"),
                    f"-L{libdir}", "-l:libthreadguard.so", f"-Wl,-rpath,{libdir}", "-pthread"],
                   check=True)
    program.chmod(0o4755)  # setuid root
    report = shared / "r.json"
    env = {"PATH": os.environ["PATH"], "THREADGUARD_REPORT": str(report)}

    plain = subprocess.run([str(program)], env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and report.is_file()  # an ordinary run writes it
    report.unlink()

    # Left alone altogether (loaded into everything, a site's preload reaches
    # su and passwd too): no report, no line, no published file, even with
    # a setting that would print one.
    env["THREADGUARD_STACK"] = "abc"
    shared = f"/dev/shm/threadguard-{NOBODY}"  # earlier tests may have left the ledger
    before = set(os.listdir(shared)) if os.path.isdir(shared) else set()
    secure = subprocess.run([*nobody_prefix(64), str(program)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert secure.returncode == 0 and secure.stdout == "ran\n"
    assert secure.stderr == ""
    assert not report.exists()
    after = set(os.listdir(shared)) if os.path.isdir(shared) else set()
    assert after <= before, after - before
