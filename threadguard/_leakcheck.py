"""The checks of the pytest plugin (hooks/pytest_threadguard.py): which
threads a test left behind.

A test's threads are those alive after its teardown that were not alive
after its setup (a fixture's threads are the fixture's to end).  Python
threads are told apart by their Thread objects and named by their start
site; native threads by the live count of their creating library, as the
native library counts them:

- a pool library (OpenBLAS, OpenMP, MKL, BLIS, torch, CUDA) may start its
  pool once: the first test after which it has more live threads sets the
  pool's size, and only a later test that leaves it above that size leaks;
- any other library's threads left alive are a leak;
- libpython's threads are the Python threads above, checked by object.

Threads that end within a short grace after teardown (an executor shut
down without waiting) are not leaks.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import pytest

from . import _native
from ._sites import install, site_of_thread

__all__ = ["POOL_KINDS", "LeakCheck", "NativeCounts", "leaked_native", "leaked_python"]

# The kinds whose libraries start a persistent pool once.
POOL_KINDS = frozenset({"openblas", "openmp", "mkl", "blis", "torch", "cuda"})
# How long threads started by a test may take to end after its teardown.
GRACE_SECONDS = 1.0
_NAMES = {"openblas": "OpenBLAS", "openmp": "OpenMP", "mkl": "MKL", "blis": "BLIS",
          "torch": "torch's pools", "cuda": "CUDA", "python": "Python"}

# (library file name, kind) -> live threads
NativeCounts = Dict[Tuple[str, str], int]


def _native_counts() -> NativeCounts:
    """Live threads by creating library (the native library's snapshot: no
    report, no /proc walk, cheap enough for every test)."""
    return _native.live_threads_by_library()


def _allowed(patterns: Sequence[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) or pattern == name
               or (not any(c in pattern for c in "*?[") and pattern in name)
               for pattern in patterns for name in names if name)


def leaked_python(before: Set[threading.Thread], allow: Sequence[str],
                  grace: float = GRACE_SECONDS) -> List[threading.Thread]:
    """Python threads alive now that were not in before, after waiting up
    to grace seconds for them to end, less the allowed ones."""
    deadline = time.monotonic() + grace
    left = []
    for thread in threading.enumerate():
        # A _DummyThread is a native thread that called into Python: the
        # native check counts it by its library.
        if thread in before or isinstance(thread, threading._DummyThread):
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive() and not _allowed(allow, thread.name, site_of_thread(thread)):
            left.append(thread)
    return left


def leaked_native(before: NativeCounts, after: NativeCounts, pools: Dict[Tuple[str, str], int],
                  allow: Sequence[str]) -> List[Tuple[str, str, int, int]]:
    """(library, kind, live before, live after) of each library that leaked,
    by the rules above; pools holds the pool sizes seen so far (updated)."""
    leaks = []
    for key, live in sorted(after.items()):
        name, kind = key
        was = before.get(key, 0)
        if live <= was or kind == "python" or _allowed(allow, name, kind):
            continue
        if kind in POOL_KINDS:
            size = pools.get(key)
            if size is None or live <= size:
                pools[key] = max(live, size or 0)  # its pool started (or is within its size)
                continue
        leaks.append((name, kind, was, live))
    return leaks


def _describe(python: Iterable[threading.Thread],
              native: Iterable[Tuple[str, str, int, int]]) -> str:
    lines = ["threadguard: this test left threads behind:"]
    by_site: Dict[str, List[str]] = {}
    for thread in python:
        by_site.setdefault(site_of_thread(thread) or "an unknown site", []).append(thread.name)
    for site, names in sorted(by_site.items()):
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        lines.append(f"  Python: {len(names)} thread{'s' if len(names) != 1 else ''} started "
                     f"at {site} ({shown})")
    for name, kind, was, live in native:
        label = _NAMES.get(kind, kind)
        lines.append(f"  {name} ({label}): {live - was} native thread"
                     f"{'s' if live - was != 1 else ''} (live {was} -> {live})")
    lines.append("  end them in the test (shutdown(), join(), close()), or allow a pool meant "
                 "to persist: threadguard_leaks_allow in the ini file or "
                 "@pytest.mark.threadguard_allow(PATTERN)")
    return "\n".join(lines)


class LeakCheck:
    """The plugin object registered when the check is enabled."""

    def __init__(self, allow: Sequence[str]) -> None:
        self.allow = list(allow)
        self.pools: Dict[Tuple[str, str], int] = {}
        self.threads: Set[threading.Thread] = set()
        self.counts: NativeCounts = {}

    def pytest_configure(self, config: pytest.Config) -> None:
        # Counting starts here: import threadguard (import mode) and the
        # start sites.  Threads started before are adopted by their library.
        install()

    # trylast: after pytest's own, which set the fixtures up and tear them down.
    @pytest.hookimpl(trylast=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.threads = set(threading.enumerate())
        self.counts = _native_counts()

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: Optional[pytest.Item]) -> None:
        allow = list(self.allow)
        for marker in item.iter_markers("threadguard_allow"):
            allow += [str(a) for a in marker.args]
        python = leaked_python(self.threads, allow)
        native = leaked_native(self.counts, _native_counts(), self.pools, allow)
        if python or native:
            pytest.fail(_describe(python, native), pytrace=False)
