"""Import mode: without a preload, `import threadguard` counts every thread
by its creator from then on (GOT patching plus a dlopen hook)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from limits import Runner


def _cc() -> str:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the test libraries")
    return compiler


def _build(out: Path, source: str, *flags: str) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([_cc(), "-shared", "-fPIC", "-O2", *flags, "-o", str(out),
                    str(REPO / "tests" / "native" / source), "-pthread"], check=True)
    return str(out)


@pytest.fixture(scope="module")
def spawners(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """spawner.c built three ways: -fno-plt -Wl,-z,now; plain (opened with
    RTLD_DEEPBIND); and a RUNPATH plugin loader with its plugin in sub/."""
    root = tmp_path_factory.mktemp("spawners")
    return {
        "noplt": _build(root / "libtg_noplt.so", "spawner.c", "-fno-plt", "-Wl,-z,now"),
        "deep": _build(root / "libtg_deep.so", "spawner.c"),
        "loader": _build(root / "libtg_loader.so", "loader.c", "-ldl",
                         "-Wl,--enable-new-dtags,-rpath,$ORIGIN/sub"),
        "plugin": _build(root / "sub" / "libtg_plugin.so", "spawner.c"),
    }


COUNT_EVERYTHING = """
import ctypes, json, os, sys, threading
import threadguard
mode = threadguard.mode()
import numpy                                   # OpenBLAS: threads started in its constructor
import torch
torch.set_num_threads(3)
torch.ones(600, 600) @ torch.ones(600, 600)    # libgomp starts its team
threads = [threading.Thread(target=len, args=((),)) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
noplt = ctypes.CDLL(sys.argv[1]).spawner_run(5)
deep = ctypes.CDLL(sys.argv[2], mode=os.RTLD_NOW | os.RTLD_DEEPBIND).spawner_run(6)
s = threadguard.stats()
print(json.dumps({"mode": mode, "noplt": noplt, "deep": deep,
                  "by_name": {lib.name: lib.created for lib in s.libraries},
                  "by_kind": {k: s.of_kind(k).created for k in ("openblas", "openmp", "python")},
                  "untracked": s.untracked}))
"""


def test_import_mode_counts_every_creator_per_library(tmp_path, fakecpus, spawners):
    runner = Runner(tmp_path, fakecpus)
    proc = subprocess.run([sys.executable, "-c", COUNT_EVERYTHING, spawners["noplt"],
                           spawners["deep"]], env=runner.env(cpus=4), capture_output=True,
                          text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["mode"] == "import"
    assert out["noplt"] == 5 and out["deep"] == 6
    # OpenBLAS on 4 CPUs: 3 workers, started in its load-time constructor.
    assert out["by_kind"]["openblas"] == 3, out
    # torch.set_num_threads(3): libgomp's team of 2 workers.
    assert out["by_kind"]["openmp"] == 2, out
    assert out["by_kind"]["python"] == 4, out
    assert out["by_name"].get("libtg_noplt.so") == 5, out
    assert out["by_name"].get("libtg_deep.so") == 6, out


def test_preloaded_the_mode_is_preload(guarded):
    proc, report = guarded.run("import threadguard; print(threadguard.mode())")
    assert proc.stdout.strip() == "preload"
    assert report.mode == "preload"


def test_dlopen_hook_keeps_the_callers_runpath(tmp_path, spawners):
    """A plugin loader finds its plugin through its own RUNPATH ($ORIGIN/sub)
    even though dlopen is now called from threadguard's hook; the plugin's
    threads are counted."""
    code = """
import ctypes, sys
import threadguard
n = ctypes.CDLL(sys.argv[1]).loader_run(b"libtg_plugin.so", 3)
print(n, threadguard.stats().libraries and
      {l.name: l.created for l in threadguard.stats().libraries}.get("libtg_plugin.so"))
"""
    proc = subprocess.run([sys.executable, "-c", code, spawners["loader"]], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "3"]


def test_unpatched_pointer_shows_as_untracked_not_lost(tmp_path):
    """A pthread_create pointer taken with dlsym bypasses GOT patching (dlsym is
    not hooked): the thread is not counted, and /proc/self/task shows it."""
    code = """
import ctypes, threading, time
import threadguard
libc = ctypes.CDLL(None)
create = libc.pthread_create   # dlsym: straight to libc
sleep = ctypes.cast(libc.pause, ctypes.c_void_p)
tid = ctypes.c_ulong()
assert create(ctypes.byref(tid), None, sleep, None) == 0
time.sleep(0.1)
s = threadguard.stats()
print(s.total.created, s.untracked)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "1"]


def test_threadguard_import_off_leaves_the_process_alone(tmp_path):
    code = ("import threading, threadguard; from threadguard import _native; "
            "t = threading.Thread(target=len, args=((),)); t.start(); t.join(); "
            "print(threadguard.mode(), threadguard.stats().total.created, "
            "_native.load().threadguard_import_slots())")
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADGUARD_")}
    results = {}
    for value in ("off", "on"):
        proc = subprocess.run([sys.executable, "-c", code],
                              env={**env, "THREADGUARD_IMPORT": value},
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        results[value] = proc.stdout.split()
    assert results["off"] == ["off", "0", "0"]
    assert results["on"][:2] == ["import", "1"] and int(results["on"][2]) > 0
