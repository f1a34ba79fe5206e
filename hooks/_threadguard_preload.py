"""threadguard's hook for interpreters started with libthreadguard.so preloaded.

The wheel installs it beside the threadguard package, with threadguard.pth,
whose one line imports it only when LD_PRELOAD names libthreadguard.  It
makes the first Thread.start hand over to threadguard._sites, which counts
Python threads by the code that started them.  Until a thread starts,
nothing of threadguard's is imported: a program that starts no thread pays
for this module and, when it imports threading, a lookup in sys.meta_path.
"""

import os
import sys


def _import_sites():
    """threadguard._sites of the installation this hook came with (the
    directory beside it), not a threadguard/ source tree that the current
    directory or the program's own may put first on sys.path."""
    if "threadguard" not in sys.modules:
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, here)
        try:
            import threadguard  # noqa: F401
        finally:
            sys.path.remove(here)
    from threadguard import _sites

    return _sites


def _wrap(threading):
    original = threading.Thread.start

    def start(self):
        try:
            _sites = _import_sites()
            # install() replaces this wrapper with threadguard's own.
            if _sites.install():
                return _sites.start_from(self, sys._getframe(1))
        except Exception:
            pass  # the program's thread starts as it would without threadguard
        threading.Thread.start = original
        return original(self)

    start._threadguard_original = original  # what install() wraps instead of this
    threading.Thread.start = start


class _AfterThreading:
    """A meta-path finder that finds nothing itself: it has the loader of
    threading, found by the finders after it, call _wrap once it has run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "threading":
            return None
        sys.meta_path.remove(self)
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        exec_module = getattr(spec.loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then(module):
            exec_module(module)
            try:
                _wrap(module)
            except Exception:
                pass

        spec.loader.exec_module = exec_then
        return spec


if "threading" in sys.modules:
    _wrap(sys.modules["threading"])
else:
    sys.meta_path.insert(0, _AfterThreading())
