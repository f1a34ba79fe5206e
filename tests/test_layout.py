"""Dependencies run one way: no include or call cycle between csrc/ files,
every C dependency points to its own layer or below, no import cycle in the
package, internal modules named as internal (tools/check-layout)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "check-layout"

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="check-layout compiles csrc/ and needs a C compiler")


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), "--root", str(root)],
                          capture_output=True, text=True, timeout=600)


def copy_tree(tmp_path: Path) -> Path:
    for part in ("csrc", "threadguard"):
        shutil.copytree(REPO / part, tmp_path / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return tmp_path


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


def test_the_layout_holds():
    result = check(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "layout holds" in result.stdout
    # every file of csrc/ was compiled and read
    sources = len(list((REPO / "csrc").glob("*.c")))
    assert f"C: {sources} files" in result.stdout


def test_a_c_call_cycle_is_found(tmp_path):
    root = copy_tree(tmp_path)
    # procfs.c and error.c are both helpers: calling each other is a cycle,
    # not a layer violation.
    append(root / "csrc" / "procfs.c", '\n#include "error.h"\n'
           "void tg_test_cycle_a(void);\nvoid tg_test_cycle_a(void) { tg_warn(\"x\"); }\n")
    append(root / "csrc" / "error.c", '\n#include "procfs.h"\n'
           "void tg_test_cycle_b(void);\nvoid tg_test_cycle_b(void) { tg_count_tasks(); }\n")
    result = check(root)
    assert result.returncode == 1
    assert "C call cycle: error -> procfs -> error" in result.stderr
    assert "C include cycle" not in result.stderr  # .c files include headers only


def test_a_call_up_the_layers_is_found(tmp_path):
    root = copy_tree(tmp_path)
    append(root / "csrc" / "registry.c", '\n#include "lifecycle.h"\n'
           "void tg_test_up(void);\nvoid tg_test_up(void) { tg_init(); }\n")
    result = check(root)
    assert result.returncode == 1
    assert "registry (state) -> lifecycle (lifecycle)" in result.stderr


def test_a_python_import_cycle_is_found(tmp_path):
    root = copy_tree(tmp_path)
    # _policy imports _wording; a lazy import back closes the cycle.
    append(root / "threadguard" / "_wording.py", "\n\ndef _back():\n    from . import _policy\n")
    result = check(root)
    assert result.returncode == 1
    assert "Python import cycle" in result.stderr and "threadguard._wording" in result.stderr


def test_imports_only_for_type_checking_are_not_a_cycle(tmp_path):
    root = copy_tree(tmp_path)
    append(root / "threadguard" / "_wording.py",
           "\n\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import _stats\n")
    assert check(root).returncode == 0


def test_an_internal_module_named_as_public_is_found(tmp_path):
    root = copy_tree(tmp_path)
    (root / "threadguard" / "_wording.py").rename(root / "threadguard" / "wording.py")
    result = check(root)
    assert "threadguard/wording.py: a top-level module" in result.stderr
