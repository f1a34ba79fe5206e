"""Open libthreadguard.so through cffi in ABI mode.

One native library, one copy of its state: the preloaded copy when there is
one (found by the path it is mapped from), the packaged copy otherwise.
The declarations (threadguard/_cdef.py) were compiled into _ffi.py when
the package was built (cffi's out-of-line ABI mode): importing this module
loads cffi's backend and parses no C, which every `import threadguard` and
every `threadguard run` would otherwise pay for.
"""

from __future__ import annotations

import os

from ._errors import LibraryNotFoundError

# Not typing.TYPE_CHECKING: importing typing would cost more than the rest
# of `import threadguard` (mypy reads any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Callable, Dict, Optional, Tuple

try:
    from ._ffi import ffi
except ImportError as exc:  # an unbuilt source tree: load() says what to do
    ffi = None
    _FFI_MISSING: Optional[ImportError] = exc
else:
    _FFI_MISSING = None

LIBRARY_NAME = "libthreadguard.so"

# enum threadguard_field, in the header's order.
FIELDS = ("created", "live", "peak", "failed", "denied", "last_errno")
TOTAL_ROW = -1

def _library_file() -> str:
    """packaged_path() as a str, without importing pathlib."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def packaged_path() -> Path:
    """Where the library installed with this package lives (it may be missing)."""
    from pathlib import Path  # not at import: `import threadguard` stays lean
    return Path(_library_file())


def _open_preloaded() -> Optional[Any]:
    # By the mapped path, not the bare soname: for a name without '/', cffi
    # falls back to ctypes.util.find_library, which runs ldconfig and gcc.
    path = loaded_path()
    if path is None:
        return None
    try:
        return ffi.dlopen(path, os.RTLD_NOW | os.RTLD_NOLOAD)
    except OSError:
        return None


_handle: Optional[Any] = None


def load() -> Any:
    """The library handle: the preloaded copy if any, else the packaged one
    (opened once; load.cache_clear() forgets it, as functools' caches do)."""
    global _handle
    if _handle is None:
        _handle = _open()
    return _handle


def _cache_clear() -> None:
    global _handle
    _handle = None


load.cache_clear = _cache_clear  # type: ignore[attr-defined]


def _open() -> Any:
    if ffi is None:
        raise LibraryNotFoundError(
            f"threadguard/_ffi.py is missing ({_FFI_MISSING}): it is generated when the package "
            "is built. Reinstall threadguard ('pip install .' in a source checkout); importing "
            "it from an unbuilt source tree does not work.")
    lib = _open_preloaded()
    if lib is not None:
        return lib
    path = _library_file()
    if not os.path.isfile(path):
        raise LibraryNotFoundError(
            f"{LIBRARY_NAME} is not preloaded and is missing from the package ({path}). "
            "Reinstall threadguard with 'pip install --force-reinstall threadguard' (or "
            "'pip install .' in a source checkout); importing it from an unbuilt source "
            "tree does not work."
        )
    try:
        return ffi.dlopen(path, os.RTLD_NOW)
    except OSError as exc:
        raise LibraryNotFoundError(
            f"{path} exists but could not be loaded: {exc}. Reinstall threadguard."
        ) from exc


def load_if_available() -> Optional[Any]:
    """The library handle, or None when it cannot be found or loaded."""
    try:
        return load()
    except LibraryNotFoundError:
        return None


def enable_import_mode() -> Optional[str]:
    """Count threads without a preload (GOT patching); None on success or
    when preloaded, else why it could not."""
    try:
        lib = load()
    except LibraryNotFoundError as exc:
        return str(exc)  # says what to do (reinstall, or not import an unbuilt tree)
    if int(lib.threadguard_import_mode()) != 0:
        return text(lib.threadguard_last_error())
    return None


def loaded_path() -> Optional[str]:
    """Path of the copy of the library mapped into this process, if any."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                # address perms offset dev inode [path]
                fields = line.rstrip("\n").split(None, 5)
                if len(fields) == 6 and os.path.basename(fields[5]).startswith("libthreadguard"):
                    return fields[5]
    except OSError:
        return None
    return None


def _json_document(fill: Callable[[Any, int], int], size: int) -> Dict[str, Any]:
    """A JSON document the library writes with fill(buffer, size), which
    returns its full length (retried with a buffer that large) or an error
    code below 0."""
    import json  # only reports and the policy need it

    while True:
        buffer = ffi.new("char[]", size)
        length = int(fill(buffer, size))
        if length < 0:
            raise MemoryError(text(load().threadguard_last_error()))
        if length < size:
            data: Dict[str, Any] = json.loads(ffi.buffer(buffer, length)[:].decode("utf-8",
                                                                                   "replace"))
            return data
        size = length + 1


def report_json() -> Dict[str, Any]:
    """The native report (counters, settings, pool sizes, headroom now) as a dict."""
    return _json_document(load().threadguard_report_json, 1 << 16)


def live_threads_by_library() -> Dict[Tuple[str, str], int]:
    """Live threads now by (library file name, kind), from a snapshot of
    the counters alone: no report, no /proc walk."""
    lib = load()
    handle = ffi.new("threadguard_stats **")
    if int(lib.threadguard_stats_take(handle)) != 0:
        raise MemoryError(text(lib.threadguard_last_error()))
    snapshot = handle[0]
    try:
        live = FIELDS.index("live")
        counts: Dict[Tuple[str, str], int] = {}
        for row in range(int(lib.threadguard_stats_rows(snapshot))):
            key = (text(lib.threadguard_stats_name(snapshot, row)),
                   text(lib.threadguard_stats_kind(snapshot, row)))
            counts[key] = counts.get(key, 0) + int(lib.threadguard_stats_get(snapshot, row, live))
        return counts
    finally:
        lib.threadguard_stats_free(snapshot)


def policy_json() -> Dict[str, Any]:
    """The library's sizing policy (threadguard_policy_json) as a dict."""
    return _json_document(load().threadguard_policy_json, 1024)


def thread_cost(kind: str, stack: int, arenas_capped: bool) -> int:
    """Address space one new thread of this library kind costs, as the
    library counts it (threadguard_thread_cost)."""
    lib = load()
    cost = int(lib.threadguard_thread_cost(kind.encode(), stack, int(arenas_capped)))
    if cost < 0:
        raise ValueError(text(lib.threadguard_last_error()))
    return cost


def address_space_usable(as_limit: int, vmsize: int, arenas: int) -> int:
    """Bytes new threads may take under as_limit, as the library counts
    them (threadguard_address_space_usable): the share kept for data left
    out."""
    lib = load()
    usable = int(lib.threadguard_address_space_usable(as_limit, vmsize, arenas))
    if usable < 0:
        raise ValueError(text(lib.threadguard_last_error()))
    return usable


def note_unrestored(library_address: int, what: str, value: int, previous: int) -> None:
    """Record in the report a pool size set here that cannot be put back
    (threadguard_note_unrestored); nothing when the library is not loaded."""
    lib = load_if_available()
    if lib is not None:
        lib.threadguard_note_unrestored(ffi.cast("void *", library_address), what.encode(),
                                        value, previous)


def published_path() -> str:
    """The file this process publishes its counters in ("" when none)."""
    return text(load().threadguard_published_path())


def read_published(path: str) -> Dict[str, Any]:
    """Another process's report, read from the file it publishes, as a dict.
    PublishedFileError, with the library's one-line reason, when the file
    is gone or rejected."""
    import json

    from ._errors import PublishedFileError

    lib = load()
    size = 1 << 18
    encoded = os.fsencode(path)
    while True:
        buffer = ffi.new("char[]", size)
        length = int(lib.threadguard_read_published(encoded, buffer, size))
        if length < 0:
            raise PublishedFileError(text(lib.threadguard_last_error()))
        if length < size:
            try:
                data: Dict[str, Any] = json.loads(
                    ffi.buffer(buffer, length)[:].decode("utf-8", "replace"))
            except ValueError as exc:
                raise PublishedFileError(f"{path}: rejected: its document is not valid JSON "
                                         f"({exc})") from None
            return data
        size = length + 1


def text(ptr: Any) -> str:
    """A C string from the library as str ('' for NULL)."""
    if ptr == ffi.NULL:
        return ""
    raw = ffi.string(ptr)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
