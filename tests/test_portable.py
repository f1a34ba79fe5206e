"""Portable wheels: tagged manylinux_2_17 and proven on an older userland.

The wheels come from tools/build-wheels (THREADGUARD_WHEELHOUSE names the
folder) and the Debian 11 roots from tools/oldroot (THREADGUARD_OLDROOTS
names the folder holding bullseye-amd64 and bullseye-arm64).  .ci/run makes
both and sets THREADGUARD_REQUIRE_PORTABLE=1, so there a missing wheel or
root fails instead of skipping.  tests/portable/smoke_wheel.py holds the
cases run inside each userland.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "tests" / "portable" / "smoke_wheel.py"
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}
REQUIRED = os.environ.get("THREADGUARD_REQUIRE_PORTABLE") == "1"

pytestmark = pytest.mark.slow


def missing(what: str) -> None:
    """Skip, or fail where CI requires the portable stage."""
    if REQUIRED:
        pytest.fail(f"THREADGUARD_REQUIRE_PORTABLE=1 but {what}")
    pytest.skip(what)


def wheel_for(arch: str) -> Path:
    house = os.environ.get("THREADGUARD_WHEELHOUSE")
    if not house:
        missing("THREADGUARD_WHEELHOUSE is not set: build the wheels with tools/build-wheels "
                "and set it to their folder (dist)")
    # manylinux2014_ARCH.manylinux_2_17_ARCH: auditwheel adds the legacy alias
    found = sorted(Path(house).glob(f"threadguard-*-py3-none-*manylinux_2_17_{arch}*.whl"))
    if not found:
        missing(f"no manylinux_2_17_{arch} wheel in {house}: run tools/build-wheels")
    return found[-1]


def root_for(arch: str) -> Path:
    roots = os.environ.get("THREADGUARD_OLDROOTS")
    if not roots:
        missing("THREADGUARD_OLDROOTS is not set: make the roots with 'tools/oldroot make "
                f"{ARCHES[arch]} DIR/bullseye-{ARCHES[arch]}' and set it to DIR")
    root = Path(roots) / f"bullseye-{ARCHES[arch]}"
    if not (root / ".threadguard-oldroot").is_file():
        missing(f"{root} is not a root made by tools/oldroot")
    if os.geteuid() != 0:
        missing("running inside a Debian root needs root (chroot)")
    return root


def zig_python() -> Path:
    """The tools venv of tools/build-wheels, whose zig cross-compiles the shim."""
    python = REPO / ".wheel-venv" / "bin" / "python"
    if not python.is_file():
        missing(f"{python} is missing: tools/build-wheels installs zig there")
    return python


def build_fakecpus(arch: str, out: Path) -> Path:
    """The CPU shim for arch, linked against glibc 2.17 so it loads in any root."""
    subprocess.run([str(zig_python()), "-m", "ziglang", "cc", "-target",
                    f"{arch}-linux-gnu.2.17", "-shared", "-fPIC", "-O2", "-o", str(out),
                    str(REPO / "tests" / "native" / "fakecpus.c"), "-ldl"], check=True,
                   env={**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(REPO / "build" / "zig-cache")})
    return out


# ---- the wheels ------------------------------------------------------------

def required_glibc(library: bytes) -> List[str]:
    """The GLIBC_* versions an ELF shared library needs (its .gnu.version_r)."""
    from elftools.elf.elffile import ELFFile  # auditwheel's own ELF reader
    import io
    versions = set()
    elf = ELFFile(io.BytesIO(library))
    section = elf.get_section_by_name(".gnu.version_r")
    assert section is not None, "no version requirements: not linked against glibc?"
    for _needed, aux in section.iter_versions():
        for entry in aux:
            if entry.name.startswith("GLIBC_"):
                versions.add(entry.name)
    return sorted(versions, key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)))


@pytest.mark.parametrize("arch", list(ARCHES))
def test_wheel_is_manylinux_2_17(arch: str) -> None:
    wheel = wheel_for(arch)
    auditwheel = shutil.which("auditwheel") or str(Path(sys.executable).parent / "auditwheel")
    shown = subprocess.run([auditwheel, "show", str(wheel)], capture_output=True, text=True,
                           check=True).stdout
    said = " ".join(shown.split())  # auditwheel wraps its sentences
    assert f'is consistent with the following platform tag: "manylinux_2_17_{arch}"' in said, \
        shown
    with zipfile.ZipFile(wheel) as z:
        library = z.read("threadguard/libthreadguard.so")
    versions = required_glibc(library)
    assert versions[-1] == "GLIBC_2.17", f"{wheel.name} needs {versions}"
    machine = {"x86_64": 62, "aarch64": 183}[arch]  # ELF e_machine
    assert int.from_bytes(library[18:20], "little") == machine


# ---- the smoke cases, inside each userland ---------------------------------

def summary(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_in_root(root: Path, *cmd: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "tools" / "oldroot"), "run", str(root), *cmd],
                          capture_output=True, text=True, timeout=timeout)


def smoke_in_root(arch: str, pip: str = "") -> str:
    """Install the wheel by pip into a venv of the root's Python (first
    replacing the venv's pip with `pip` when given) and run the smoke cases."""
    root = root_for(arch)
    wheel = wheel_for(arch)
    stage = root / "opt" / "threadguard-smoke"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    shutil.copy(wheel, stage / wheel.name)
    shutil.copy(SMOKE, stage / SMOKE.name)
    build_fakecpus(arch, stage / "fakecpus.so")
    inside = "/opt/threadguard-smoke"
    # The user's way: a venv from the distribution's Python, the wheel by pip.
    use_pip = f"venv/bin/pip install --quiet {pip}; venv/bin/pip --version; " if pip else ""
    script = (f"set -e; cd {inside}; python3 -m venv venv; {use_pip}"
              f"venv/bin/pip install --quiet {wheel.name} numpy pytest; "
              f"THREADGUARD_SMOKE_FAKECPUS={inside}/fakecpus.so "
              f"venv/bin/python -m pytest -p no:cacheprovider -rA -q {SMOKE.name}")
    proc = run_in_root(root, "sh", "-c", script)
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, f"{root}: exit {proc.returncode}\n{proc.stdout[-6000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return summary(proc.stdout)


def test_smoke_bullseye_amd64() -> None:
    """Debian 11, glibc 2.31, Python 3.9: every smoke case passes.  The wheel
    is installed with pip 20.2.3, which Python 3.9.0 came with: it knows the
    wheel's manylinux2014 alias, not PEP 600's manylinux_2_17 name."""
    result = smoke_in_root("x86_64", pip="pip==20.2.3")
    assert re.search(r"\b6 passed\b", result) and "skipped" not in result, result


def test_smoke_bullseye_arm64() -> None:
    """Debian 11 arm64 under qemu-user-static: every smoke case passes too."""
    result = smoke_in_root("aarch64")
    assert re.search(r"\b6 passed\b", result) and "skipped" not in result, result


@pytest.fixture
def readable_dir() -> Iterator[Path]:
    """A directory every uid can read (pytest's tmp_path is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="threadguard-portable-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_smoke_this_machine(readable_dir: Path) -> None:
    """The same cases on this machine's glibc, with the same wheel.  The venv
    comes from the distribution's python3, which the unprivileged uid of the
    task-limit cases can run (this test's own interpreter may live under
    root's home)."""
    wheel = wheel_for("x86_64")
    system_python = Path("/usr/bin/python3")
    if not system_python.is_file():
        missing("no /usr/bin/python3 to make a venv an unprivileged uid can run")
    tmp_path = readable_dir
    venv = tmp_path / "venv"
    subprocess.run([str(system_python), "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel), "numpy",
                          "pytest"], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    shim = build_fakecpus("x86_64", tmp_path / "fakecpus.so")
    env = {**os.environ, "THREADGUARD_SMOKE_FAKECPUS": str(shim)}
    env.pop("THREADGUARD_PROFILE_DIR", None)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider",
                           "-rA", "-q", str(SMOKE)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=1200)
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert re.search(r"\b6 passed\b", summary(proc.stdout)), summary(proc.stdout)


# ---- the standalone build with an older distribution's CMake and gcc -------

def test_cmake_build_and_c_tests_in_bullseye() -> None:
    """CMake 3.18 and gcc 10 build the library and its C tests from source
    on glibc 2.31, and ctest passes there."""
    root = root_for("x86_64")
    src = root / "opt" / "threadguard-src"
    shutil.rmtree(src, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                            "CMakeLists.txt", "csrc", "tests/c", "tests/native"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        target = src / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name.decode()).is_file():
            shutil.copy(REPO / name.decode(), target)
    script = ("set -e; cmake --version | head -1; cd /opt/threadguard-src; "
              "cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null; "
              "cmake --build build -- -j2 >/dev/null; cd build && ctest --output-on-failure "
              "--timeout 300")
    proc = run_in_root(root, "sh", "-c", script)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "cmake version 3.18" in proc.stdout
    assert "100% tests passed" in proc.stdout


def test_cmake_build_and_c_tests_with_the_oldest_cmake(tmp_path: Path) -> None:
    """CMakeLists.txt asks for CMake 3.14: the oldest CMake binary on PyPI
    configures, builds and runs the C tests."""
    target = tmp_path / "cmake"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--only-binary=:all:",
                          "--target", str(target), "cmake==3.14.4.post1"], capture_output=True,
                         text=True)
    if pip.returncode != 0:
        missing(f"cannot install cmake==3.14.4.post1 from PyPI: {pip.stderr[-500:]}")
    env = {**os.environ, "PYTHONPATH": str(target)}  # its launcher imports the module there
    build = tmp_path / "build"
    cmake, ctest = str(target / "bin" / "cmake"), str(target / "bin" / "ctest")
    version = subprocess.run([cmake, "--version"], env=env, capture_output=True, text=True)
    assert "cmake version 3.14.4" in version.stdout, version.stdout
    for cmd in ([cmake, "-S", str(REPO), "-B", str(build)], [cmake, "--build", str(build)]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tests = subprocess.run([ctest, "--output-on-failure", "--timeout", "300"], cwd=build, env=env,
                           capture_output=True, text=True, timeout=900)
    assert tests.returncode == 0 and "100% tests passed" in tests.stdout, tests.stdout[-4000:]


# ---- threadpoolctl: the oldest and newest allowed --------------------------

LIMIT_SCRIPT = """
import json, threadguard, numpy
from threadpoolctl import threadpool_info, __version__
def pools():
    return sorted((i["internal_api"], i["num_threads"]) for i in threadpool_info()
                  if i["internal_api"] in ("openblas", "openmp", "torch"))
seen = {"version": __version__, "before": pools()}
with threadguard.limit(1):
    seen["inside"] = pools()
seen["after"] = pools()
threadguard.limit(2)
seen["call"] = pools()
seen["info"] = sorted((p.library, p.size) for p in threadguard.info().pools)
print(json.dumps(seen))
"""


def limit_with_threadpoolctl(version: Optional[str], tmp_path: Path) -> Dict[str, object]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
    if version is not None:
        target = tmp_path / f"threadpoolctl-{version}"
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                              "--target", str(target), f"threadpoolctl=={version}"],
                             capture_output=True, text=True)
        if pip.returncode != 0:
            missing(f"cannot install threadpoolctl=={version}: {pip.stderr[-500:]}")
        env["PYTHONPATH"] = str(target)
    # Not from the repository's root: `python -c` would import its unbuilt
    # threadguard/ instead of the installed package.
    proc = subprocess.run([sys.executable, "-c", LIMIT_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    seen: Dict[str, object] = json.loads(proc.stdout)
    return seen


def test_limit_is_the_same_with_the_oldest_and_newest_threadpoolctl(tmp_path: Path) -> None:
    """pyproject allows threadpoolctl>=3.5 (3.2 added register(), which the
    torch controller needs; 3.5 is the first to find numpy 2's OpenBLAS):
    limit() must behave alike at both ends."""
    oldest = limit_with_threadpoolctl("3.5.0", tmp_path)
    newest = limit_with_threadpoolctl(None, tmp_path)
    assert oldest.pop("version") == "3.5.0"
    print(f"threadpoolctl {newest.pop('version')} and 3.5.0: {newest}")
    assert oldest == newest
    assert ["openblas", 1] in newest["inside"] and ["openblas", 2] in newest["after"]
    assert ["openblas", 2] in newest["call"] and ["openblas", 2] in newest["info"]
