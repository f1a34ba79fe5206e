"""Python threads by the code that started them.

`threading.Thread.start` is wrapped so that the native library counts each
Python thread under its start site as well as under libpython: the first
frame outside the standard library (the line that called
``Thread(...).start()``, ``executor.submit(...)`` or ``ThreadPool(...)``),
with the standard library's entry point it went through.  The library
keeps the counts (created, live, peak, growth) in the table it publishes,
so the report, ``threadguard top``, ``stats --pid`` and the doctor show
them, and the leak rule applies to a site as to a library.

What it costs: nothing until a thread starts; then a walk of the few
frames above the call, a dict lookup, and two calls into the library
(about 2 microseconds, against the 50 or more microseconds of starting a
thread).  Installed by ``import threadguard`` and, under the preload,
by the ``threadguard.pth`` hook at the first ``Thread.start``.
"""

from __future__ import annotations

import os
import sys
import threading

TYPE_CHECKING = False  # not typing's: see _native.py
if TYPE_CHECKING:
    from types import CodeType, FrameType
    from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["install", "installed", "site_of_thread", "start_from"]

# The attribute a started Thread keeps its site in (read by the pytest plugin).
SITE_ATTRIBUTE = "_threadguard_site"

_original_start: Optional[Callable[[threading.Thread], None]] = None
_site_ids: Dict[Tuple[str, int, str, str], Tuple[int, str]] = {}
_library_file: Dict[str, bool] = {}
_lib: Any = None


def _standard_library_roots() -> Tuple[str, ...]:
    # os and threading are both in the standard library's directory
    # (sysconfig would say the same, for a millisecond of import).
    return tuple(sorted({os.path.join(os.path.dirname(module.__file__ or ""), "")
                         for module in (os, threading)}))


_ROOTS = _standard_library_roots()


def _in_standard_library(filename: str) -> bool:
    known = _library_file.get(filename)
    if known is None:
        known = filename.startswith("<frozen") or (
            filename.startswith(_ROOTS)
            and "site-packages" not in filename and "dist-packages" not in filename)
        _library_file[filename] = known
    return known


def _qualified_name(code: CodeType) -> str:
    return str(getattr(code, "co_qualname", code.co_name))


def _site(frame: Optional[FrameType]) -> Tuple[str, int, str, str]:
    """(file, line, function, via) of the first frame outside the standard
    library, via being the standard library's function it called."""
    via = ""
    outermost = frame
    while frame is not None and _in_standard_library(frame.f_code.co_filename):
        via = _qualified_name(frame.f_code)
        outermost = frame
        frame = frame.f_back
    if frame is None:  # started by the standard library on its own
        frame, via = outermost, ""
    if frame is None:
        return ("<unknown>", 0, "", "")
    return (frame.f_code.co_filename, frame.f_lineno or 0, _qualified_name(frame.f_code), via)


def _site_id(key: Tuple[str, int, str, str]) -> Tuple[int, str]:
    known = _site_ids.get(key)
    if known is None:
        filename, line, function, via = key
        where = f"{filename}:{line} in {function}" + (f" ({via})" if via else "")
        if len(where) > 255:  # the library's row holds 255 bytes: keep the end
            where = "..." + where[-252:]
        known = (int(_lib.threadguard_python_site(where.encode("utf-8", "replace"))), where)
        _site_ids[key] = known
    return known


def _start(self: threading.Thread) -> None:
    start_from(self, sys._getframe(1))


def start_from(self: threading.Thread, caller: Optional[FrameType]) -> None:
    """Thread.start, counting the thread under the site of caller (the
    frame that called start)."""
    # Any failure in finding the site must not stop the thread starting.
    site = 0
    try:
        site, where = _site_id(_site(caller))
        setattr(self, SITE_ATTRIBUTE, where)
    except Exception:
        pass
    previous = _lib.threadguard_python_site_set(site)
    try:
        assert _original_start is not None
        _original_start(self)
    finally:
        _lib.threadguard_python_site_set(previous)


def install() -> bool:
    """Wrap Thread.start (once); False where the native library cannot be
    loaded, and the start sites are then not counted."""
    global _original_start, _lib
    if _original_start is not None:
        return True
    from . import _native

    _lib = _native.load_if_available()
    if _lib is None:
        return False
    current = threading.Thread.start
    # Under the preload, the hook's wrapper (hooks/_threadguard_preload.py)
    # may be there still: wrap what it wraps.
    _original_start = getattr(current, "_threadguard_original", current)
    threading.Thread.start = _start  # type: ignore[method-assign]
    return True


def installed() -> bool:
    """Whether Thread.start is wrapped in this interpreter."""
    return _original_start is not None


def site_of_thread(thread: threading.Thread) -> str:
    """Where a thread was started ("path:line in function (via)"), or ""
    for a thread started before install() or by the interpreter itself."""
    return str(getattr(thread, SITE_ATTRIBUTE, ""))
