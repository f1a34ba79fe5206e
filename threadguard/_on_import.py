"""Run a function right after a module is first imported, without importing it.

`import threadguard` registers a threadpoolctl controller for torch's pool,
so that every threadpoolctl user sees it.  Importing threadpoolctl for that
would cost every `import threadguard` (and every spawn worker) as much as
all the rest of it; instead the registration waits for threadpoolctl, which
whoever uses it (threadguard.limit, a library, the program) imports anyway.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: see _native.py
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Sequence


class _AfterImport:
    """A meta-path finder that finds nothing itself: for `name`, it asks the
    finders after it for the spec and has the loader call `then` once the
    module has run."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Any = None) -> Any:
        if fullname != self.name:
            return None
        _remove(self)  # once: a failed import is not retried through us
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec  # a legacy loader: threadguard.info() and limit() register then

        def exec_then(module: Any) -> None:
            exec_module(module)
            _run(self.then, self.name)

        loader.exec_module = exec_then  # this spec's loader only
        return spec


def _remove(finder: _AfterImport) -> None:
    try:
        sys.meta_path.remove(finder)
    except ValueError:
        pass


def _run(then: Callable[[], None], name: str) -> None:
    # The program imported `name`, not threadguard: a failure here must not
    # fail its import.
    try:
        then()
    except Exception as exc:
        import warnings
        warnings.warn(f"threadguard: could not register with {name}: {exc!r}", RuntimeWarning,
                      stacklevel=2)


def after(name: str, then: Callable[[], None]) -> None:
    """Call then() now if module `name` is imported, else right after it is."""
    if name in sys.modules:
        _run(then, name)
        return
    if not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, then))
