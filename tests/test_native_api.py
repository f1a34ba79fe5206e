"""The cffi binding: kept in step with the header, loading, errors."""

from __future__ import annotations

import re

import pytest

import threadguard
from threadguard import _native
from conftest import REPO


def _declarations(text: str) -> set:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    decls = re.findall(r"THREADGUARD_API\s+([^;{]+\))\s*;", text)
    return {re.sub(r"\s+", " ", d).strip() for d in decls}


def test_cdef_matches_the_public_header():
    header = (REPO / "csrc" / "include" / "threadguard.h").read_text()
    from_header = _declarations(header)
    from_cdef = {re.sub(r"\s+", " ", line.rstrip(";")).strip()
                 for line in _native.CDEF.splitlines() if "(" in line}
    assert from_header and from_cdef == from_header
    fields = re.search(r"enum threadguard_field \{(.*?)\};", header, re.S).group(1)
    names = re.findall(r"THREADGUARD_(\w+) = (\d+)", fields)
    assert tuple(n.lower() for n, _ in sorted(names, key=lambda x: int(x[1]))) == _native.FIELDS


def test_import_mode_counts_nothing_and_says_so():
    s = threadguard.stats()
    assert not threadguard.preloaded() and not s.interposing
    assert s.libraries == () and s.total.created == 0
    assert s.tasks is not None and s.tasks >= 1
    assert "not preloaded" in s.format_table()


def test_libpath_is_the_packaged_library():
    assert threadguard.libpath() == str(_native.packaged_path())
    assert _native.packaged_path().is_file()


def test_missing_library_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "packaged_path", lambda: tmp_path / "libthreadguard.so")
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
