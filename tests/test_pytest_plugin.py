"""The pytest plugin (hooks/pytest_threadguard.py, threadguard/_leakcheck.py):
inner test sessions run with pytester in a subprocess each, since what a
test leaves behind is process-wide."""

from __future__ import annotations

from typing import List

import pytest

pytest_plugins = ["pytester"]

LEAKS = """
import concurrent.futures, ctypes, os, threading, time

def test_leaks_a_python_thread():
    # Alive well past the check's grace, and ended before the interpreter
    # exits (which joins an executor's workers).
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pool.submit(time.sleep, 4)

def test_leaks_native_threads():
    lib = ctypes.CDLL(os.environ["LEAKY"])
    for _ in range(3):
        assert lib.leaky_start() == 0

def test_ends_its_threads():
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert pool.submit(pow, 2, 2).result() == 4
    t = threading.Thread(target=len, args=((),))
    t.start()
    t.join()
"""

POOLS = """
import numpy, torch

def test_starts_numpy_and_torchs_pools():
    a = numpy.ones((300, 300))
    assert (a @ a).sum() > 0
    t = torch.ones(300, 300)
    assert (t @ t).sum() > 0
    future = torch.jit.fork(torch.add, t, 1)
    torch.jit.wait(future)

def test_uses_them_again():
    a = numpy.ones((300, 300))
    assert (a @ a).sum() > 0
    t = torch.ones(300, 300)
    assert (t @ t).sum() > 0
"""


def run(pytester: pytest.Pytester, leaky: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=LEAKS)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args,
                                         "-W", "ignore::DeprecationWarning", timeout=300)


@pytest.fixture
def leaky_env(monkeypatch: pytest.MonkeyPatch, leaky: str) -> str:
    monkeypatch.setenv("LEAKY", leaky)
    return leaky


def test_a_test_that_leaks_python_or_native_threads_fails(pytester: pytest.Pytester,
                                                          leaky_env: str) -> None:
    result = run(pytester, leaky_env, "--threadguard-leaks")
    result.assert_outcomes(passed=3, errors=2)
    text = result.stdout.str()
    assert "ERROR at teardown of test_leaks_a_python_thread" in text
    path = pytester.path / "test_inner.py"
    result.stdout.fnmatch_lines([
        "*threadguard: this test left threads behind:",
        f"*Python: 1 thread started at {path}:7 in test_leaks_a_python_thread "
        "(ThreadPoolExecutor.submit) (ThreadPoolExecutor-*",
        "*libtg_leaky.so (other): 3 native threads (live 0 -> 3)",
    ])
    assert "test_ends_its_threads" not in text.split("short test summary")[-1]


def test_the_check_is_off_unless_asked_for(pytester: pytest.Pytester, leaky_env: str) -> None:
    result = run(pytester, leaky_env)
    result.assert_outcomes(passed=3)  # and no errors
    assert "left threads behind" not in result.stdout.str()


def test_the_ini_option_turns_it_on_and_the_allow_list_lets_pools_persist(
        pytester: pytest.Pytester, leaky_env: str) -> None:
    pytester.makeini("[pytest]\nthreadguard_leaks = true\n")
    run(pytester, leaky_env).assert_outcomes(passed=3, errors=2)
    pytester.makeini("[pytest]\nthreadguard_leaks = true\nthreadguard_leaks_allow =\n"
                     "    libtg_leaky\n    *test_inner.py:7 in *\n")
    run(pytester, leaky_env).assert_outcomes(passed=3)  # and no errors


def test_a_marker_allows_one_test(pytester: pytest.Pytester, leaky_env: str) -> None:
    pytester.makepyfile(test_marked="""
import ctypes, os, pytest

@pytest.mark.threadguard_allow("libtg_leaky.so")
def test_allowed():
    assert ctypes.CDLL(os.environ["LEAKY"]).leaky_start() == 0

def test_not_allowed():
    assert ctypes.CDLL(os.environ["LEAKY"]).leaky_start() == 0
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--threadguard-leaks",
                                           timeout=300)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_not_allowed*"])


def test_numpy_and_torch_pools_are_no_leak(pytester: pytest.Pytester) -> None:
    pytest.importorskip("numpy")
    pytest.importorskip("torch")
    pytester.makepyfile(test_pools=POOLS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--threadguard-leaks",
                                           "-W", "ignore::DeprecationWarning", timeout=300)
    result.assert_outcomes(passed=2)


def test_loading_the_plugin_imports_nothing_of_threadguard(pytester: pytest.Pytester) -> None:
    """Installed, the plugin loads in every pytest run: off, it must leave the
    process alone (importing threadguard would start counting threads)."""
    pytester.makepyfile(test_probe="""
import sys

def test_probe():
    assert "pytest_threadguard" in sys.modules
    assert "threadguard" not in sys.modules
""")
    pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300).assert_outcomes(passed=1)


def test_leak_rules_on_counts() -> None:
    """The native rule on made-up counts: a pool library's first start is its
    pool, growth past it a leak; any other library's threads a leak."""
    from threadguard._leakcheck import leaked_native

    pools: dict = {}
    openblas, other = ("libopenblas.so", "openblas"), ("libfoo.so", "other")
    assert leaked_native({}, {openblas: 3}, pools, []) == []
    assert pools == {openblas: 3}
    assert leaked_native({openblas: 3}, {openblas: 3}, pools, []) == []
    assert leaked_native({openblas: 3}, {openblas: 5}, pools, []) == [
        ("libopenblas.so", "openblas", 3, 5)]
    assert leaked_native({}, {other: 1}, pools, []) == [("libfoo.so", "other", 0, 1)]
    assert leaked_native({}, {other: 1}, pools, ["libfoo"]) == []
    assert leaked_native({}, {("libpython3.so", "python"): 4}, pools, []) == []
    found: List[str] = []
    assert leaked_native({}, {other: 2}, pools, ["other"]) == found
