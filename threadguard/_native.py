"""Open libthreadguard.so through cffi in ABI mode.

One native library, one copy of its state: the preloaded copy when there is
one (found with RTLD_NOLOAD by its soname), the packaged copy otherwise.
The declarations below mirror csrc/include/threadguard.h; a test keeps them
in step.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional

from cffi import FFI

from ._errors import LibraryNotFoundError

LIBRARY_NAME = "libthreadguard.so"

CDEF = """
typedef struct threadguard_stats threadguard_stats;
const char *threadguard_version(void);
const char *threadguard_last_error(void);
int threadguard_interposing(void);
int threadguard_stats_take(threadguard_stats **out);
void threadguard_stats_free(threadguard_stats *stats);
int threadguard_stats_rows(const threadguard_stats *stats);
const char *threadguard_stats_name(const threadguard_stats *stats, int row);
const char *threadguard_stats_path(const threadguard_stats *stats, int row);
const char *threadguard_stats_kind(const threadguard_stats *stats, int row);
long long threadguard_stats_get(const threadguard_stats *stats, int row, int field);
long long threadguard_stats_tasks(const threadguard_stats *stats);
long long threadguard_stats_untracked(const threadguard_stats *stats);
long long threadguard_stats_tasks_at_start(const threadguard_stats *stats);
long long threadguard_report_json(char *buffer, size_t size);
int threadguard_check_setting(const char *name, const char *value);
int threadguard_import_mode(void);
int threadguard_mode(void);
long long threadguard_import_slots(void);
long long threadguard_set_pool_threads(long long threads);
"""

# enum threadguard_field, in the header's order.
FIELDS = ("created", "live", "peak", "failed", "denied", "last_errno")
TOTAL_ROW = -1

ffi = FFI()
ffi.cdef(CDEF)


def packaged_path() -> Path:
    """Where the library installed with this package lives (it may be missing)."""
    return Path(str(resources.files(__package__) / LIBRARY_NAME))


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


@lru_cache(maxsize=1)
def load() -> Any:
    """The library handle: the preloaded copy if any, else the packaged one."""
    lib = _open_preloaded()
    if lib is not None:
        return lib
    path = packaged_path()
    if not path.is_file():
        raise LibraryNotFoundError(
            f"{LIBRARY_NAME} is not preloaded and is missing from the package ({path}). "
            "Reinstall threadguard with 'pip install --force-reinstall threadguard' (or "
            "'pip install .' in a source checkout); importing it from an unbuilt source "
            "tree does not work."
        )
    try:
        return ffi.dlopen(str(path), os.RTLD_NOW)
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
    lib = load_if_available()
    if lib is None:
        return f"{LIBRARY_NAME} could not be loaded"
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


def report_json() -> Dict[str, Any]:
    """The native report (counters, settings, pool sizes, headroom now) as a dict."""
    lib = load()
    size = 1 << 16
    while True:
        buffer = ffi.new("char[]", size)
        length = int(lib.threadguard_report_json(buffer, size))
        if length < 0:
            raise MemoryError(text(lib.threadguard_last_error()))
        if length < size:
            data: Dict[str, Any] = json.loads(ffi.buffer(buffer, length)[:].decode("utf-8",
                                                                                   "replace"))
            return data
        size = length + 1


def text(ptr: Any) -> str:
    """A C string from the library as str ('' for NULL)."""
    if ptr == ffi.NULL:
        return ""
    raw = ffi.string(ptr)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
