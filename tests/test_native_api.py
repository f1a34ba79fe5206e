"""The cffi binding: kept in step with the header, loading, errors."""

from __future__ import annotations

import os
import re

import pytest

import threadguard
from threadguard import _native
from threadguard._cdef import CDEF
from conftest import REPO


def _declarations(text: str) -> set:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    decls = re.findall(r"THREADGUARD_API\s+([^;{]+\))\s*;", text)
    return {re.sub(r"\s+", " ", d).strip() for d in decls}


def test_cdef_matches_the_public_header():
    header = (REPO / "csrc" / "include" / "threadguard.h").read_text()
    from_header = _declarations(header)
    from_cdef = {re.sub(r"\s+", " ", line.rstrip(";")).strip()
                 for line in CDEF.splitlines() if "(" in line}
    assert from_header and from_cdef == from_header
    fields = re.search(r"enum threadguard_field \{(.*?)\};", header, re.S).group(1)
    names = re.findall(r"THREADGUARD_(\w+) = (\d+)", fields)
    assert tuple(n.lower() for n, _ in sorted(names, key=lambda x: int(x[1]))) == _native.FIELDS


def test_without_a_preload_import_mode_counts_and_says_so():
    s = threadguard.stats()
    assert not threadguard.preloaded() and threadguard.mode() == "import"
    assert s.interposing and s.mode == "import"
    assert s.tasks is not None and s.tasks >= 1
    assert "import mode" in s.format_table()


def test_libpath_is_the_packaged_library():
    assert threadguard.libpath() == str(_native.packaged_path())
    assert _native.packaged_path().is_file()


def test_missing_library_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_library_file", lambda: str(tmp_path / "libthreadguard.so"))
    monkeypatch.setattr(_native, "_open_preloaded", lambda: None)
    _native.load.cache_clear()
    try:
        with pytest.raises(threadguard.LibraryNotFoundError, match="Reinstall threadguard"):
            _native.load()
    finally:
        _native.load.cache_clear()


def test_public_api_is_typed_and_documented():
    for name in threadguard.__all__:
        obj = getattr(threadguard, name)
        if callable(obj) and not isinstance(obj, type):
            assert obj.__doc__, name
            assert obj.__annotations__.get("return"), name


def test_report_json_says_how_much_room_it_needs():
    lib = _native.load()
    full = lib.threadguard_report_json(_native.ffi.NULL, 0)
    assert full > 100
    small = _native.ffi.new("char[]", 10)
    assert lib.threadguard_report_json(small, 10) == full  # cut, but the length is the whole
    assert _native.ffi.string(small) == _native.ffi.buffer(small, 9)[:]  # 9 bytes + NUL
    assert lib.threadguard_report_json(_native.ffi.NULL, 10) < 0  # NULL with a size: an error
    assert "buffer is NULL" in _native.text(lib.threadguard_last_error())


def test_stats_carries_the_headroom_now():
    now = threadguard.stats().headroom_now
    assert isinstance(now["cpus"], int) and now["cpus"] >= 1
    assert now["cpus_affinity"] == len(os.sched_getaffinity(0))
