"""Loaded into everything, as a site deploys it: programs that start no pool
see nothing, lines go where the site says, setuid and listed programs are
left alone, and the files `threadguard site` prints guard every later
command (Lmod) and every Slurm job step (TaskProlog), with an opt-out."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from limits import NOBODY, nobody_prefix, skip_unless_nobody_works
from slurm_cluster import SlurmCluster, why_not

import threadguard

LIB = threadguard.libpath()
LMOD_INIT = Path("/usr/share/lmod/lmod/init/bash")


def plain_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("THREADGUARD_", "LD_PRELOAD", "SLURM_"))}
    env.update(extra or {})
    return env


def threadguard_command(*args: str) -> subprocess.CompletedProcess:
    beside = Path(sys.executable).with_name("threadguard")
    return subprocess.run([str(beside), *args], capture_output=True, text=True, timeout=300,
                          cwd="/")


# Each a shell script, run as a fresh uid in a directory of its own.  None of
# them sizes a pool but numpy, and every one must show what it shows bare.
PROGRAMS = {
    "coreutils": "printf 'b\\na\\n' | sort; echo hello | tr a-z A-Z; seq 3 | paste -sd+; "
                 "ls -d /; cat /proc/self/comm; wc -l < /etc/passwd > /dev/null; echo done",
    "environment": "env | grep -v '^LD_PRELOAD=' | sort",
    "bash": "bash -c 'for i in 1 2 3; do echo $((i * i)); done; type cd; exit 3'",
    "cc": "printf '#include <stdio.h>\\nint main(void){puts(\"built\");return 4;}\\n' > h.c && "
          "cc -o h h.c && ./h",
    "git": "git init -q repo && cd repo && echo x > f && git add f && "
           "git -c user.name=t -c user.email=t@example.org commit -qm first && "
           "git log --format=%s && git status --short && git rev-list --count HEAD",
    "python thread pool": f"{sys.executable} -c 'from concurrent.futures import "
                          "ThreadPoolExecutor as P; print(sum(P(8).map(abs, range(-99, 99))))'",
    "python numpy": f"{sys.executable} -c 'import numpy; a = numpy.arange(16.).reshape(4, 4); "
                    "print(a @ a)'",
    # The guarded shell becomes a static program (Debian's ldconfig), which
    # can take nothing away: the shell's file must go before its image.
    "exec into a static program": "exec /sbin/ldconfig --version",
}


def run_program(script: str, where: Path, preload: bool) -> subprocess.CompletedProcess:
    env = plain_env({"HOME": str(where), "LC_ALL": "C"})
    if preload:
        env["LD_PRELOAD"] = LIB
    return subprocess.run([*nobody_prefix(4096), "sh", "-c", script], env=env, cwd=where,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def open_dir():
    """A directory the test uid can reach (pytest's own are root's, 0700)."""
    where = Path(tempfile.mkdtemp(prefix="threadguard-site-"))
    where.chmod(0o755)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def test_programs_under_the_preload_show_what_they_show_bare(open_dir):
    """The site-wide case: no setting, nothing asked of threadguard.  Output,
    errors and exit status are the bare ones, the environment a program
    prints is its own, and no published file is left in /dev/shm."""
    skip_unless_nobody_works()
    missing = [tool for tool in ("cc", "git") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    shared = Path(f"/dev/shm/threadguard-{NOBODY}")
    shutil.rmtree(shared, ignore_errors=True)
    for name, script in PROGRAMS.items():
        runs = []
        where = open_dir / name.replace(" ", "-")  # the same for both: paths show in output
        for preload in (False, True):
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir()
            os.chown(where, NOBODY, NOBODY)
            runs.append(run_program(script, where, preload))
        bare, guarded = runs
        assert (guarded.returncode, guarded.stdout, guarded.stderr) == \
            (bare.returncode, bare.stdout, bare.stderr), name
        assert bare.stdout.strip(), (name, bare.stderr)  # the program did run
    # No published file stays; the headroom ledger does (a user with a task
    # limit: it carries the user's task count to the next process).
    left = sorted(os.listdir(shared)) if shared.exists() else []
    assert left in ([], ["ledger"]), left


def test_warnings_go_where_threadguard_output_says(tmp_path):
    log = tmp_path / "site.log"
    sock_path = tmp_path / "log.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(sock_path))
    receiver.settimeout(60)
    try:
        for output in (str(log), f"syslog:{sock_path}", "off", "stderr"):
            proc = subprocess.run(["/bin/true"], env=plain_env({
                "LD_PRELOAD": LIB, "THREADGUARD_OUTPUT": output, "THREADGUARD_STACK": "abc"}),
                capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0
            if output == "stderr":
                assert proc.stderr.startswith("threadguard: THREADGUARD_STACK='abc'"), proc.stderr
            else:
                assert proc.stderr == "", (output, proc.stderr)
        lines = log.read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith("true["), lines
        assert "]: threadguard: THREADGUARD_STACK='abc' is not valid" in lines[0]
        datagram = receiver.recv(4096).decode()
        assert datagram.startswith("<12>threadguard[") and "]: true: threadguard: " \
            "THREADGUARD_STACK='abc' is not valid" in datagram, datagram
        receiver.setblocking(False)
        with pytest.raises(BlockingIOError):  # "off" sent nothing
            receiver.recv(4096)
    finally:
        receiver.close()


NUMPY_POOL = ("import numpy, threadpoolctl, threadguard; "
              "print([p['num_threads'] for p in threadpoolctl.threadpool_info() "
              "if p['internal_api'] == 'openblas'][0], threadguard.mode())")


@pytest.mark.parametrize("left_alone", [
    {}, {"THREADGUARD_DISABLE": "1"},
    {"THREADGUARD_SKIP": f"sh:{os.path.basename(os.path.realpath(sys.executable))}"},
    {"THREADGUARD_SKIP": os.path.realpath(sys.executable)},
], ids=["guarded", "disable", "skip by name", "skip by path"])
def test_disable_and_skip_leave_the_process_alone(left_alone, fakecpus, tmp_path):
    """On a node shown as 64 CPUs, a guarded numpy gets the pool size asked
    for and a report; one left alone gets OpenBLAS's own 64, no report, no
    line, no published file."""
    env = plain_env({"LD_PRELOAD": f"{LIB}:{fakecpus}", "THREADGUARD_TEST_CPUS": "64",
                     "THREADGUARD_POOL_THREADS": "3", "THREADGUARD_REPORT": "stderr",
                     **left_alone})
    proc = subprocess.run([sys.executable, "-c", NUMPY_POOL], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    if not left_alone:
        assert proc.stdout.split() == ["3", "preload"]
        assert "threadguard: pid" in proc.stderr
    else:
        assert proc.stdout.split() == ["64", "off"], proc.stdout
        assert proc.stderr == ""


def test_site_files_refuse_bad_input():
    bad = threadguard_command("site", "taskprolog", "--set", "THREADGUARD_STACK=abc")
    assert bad.returncode == 2 and "THREADGUARD_STACK='abc'" in bad.stderr
    unknown = threadguard_command("site", "modulefile", "--set", "OMP_NUM_THREADS=4")
    assert unknown.returncode == 2 and "not VARIABLE=VALUE for a THREADGUARD_" in unknown.stderr
    relative = threadguard_command("site", "preload", "--library", "lib/libthreadguard.so")
    assert relative.returncode == 2 and "absolute path" in relative.stderr
    assert threadguard_command("site", "preload").stdout.strip() == LIB


def test_module_load_guards_every_later_command(tmp_path):
    """Debian's Lmod: `module load threadguard` (the modulefile `threadguard
    site modulefile` prints) guards the shell's later commands; unload ends
    it."""
    if not LMOD_INIT.is_file():
        pytest.skip("Lmod is not installed (Debian: apt-get install lmod; .ci/run installs it)")
    modules = tmp_path / "modules"
    modules.mkdir()
    made = threadguard_command("site", "modulefile", "--set", "THREADGUARD_REPORT=stderr")
    assert made.returncode == 0, made.stderr
    (modules / "threadguard.lua").write_text(made.stdout)
    script = f"""
source {LMOD_INIT}
module use {modules}
module load threadguard
echo "loaded: $LD_PRELOAD"
{sys.executable} -c 'import numpy'
module unload threadguard
echo "unloaded: [${{LD_PRELOAD:-}}] [${{THREADGUARD_REPORT:-}}]"
{sys.executable} -c 'import numpy'
"""
    proc = subprocess.run(["bash", "-c", script], env=plain_env(), capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"loaded: {LIB}" in proc.stdout.splitlines()
    assert "unloaded: [] []" in proc.stdout.splitlines()
    # Every command between load and unload reports (Lmod's own lua too);
    # Python's report is the loaded one's alone.
    python = os.path.basename(os.path.realpath(sys.executable))
    reports = [line for line in proc.stderr.splitlines()
               if line.startswith("threadguard: pid") and f"({python})" in line]
    assert len(reports) == 1 and "threads by creating library" in reports[0], proc.stderr


@pytest.fixture(scope="module")
def slurm_with_taskprolog(tmp_path_factory):
    reason = why_not()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm-site")
    reports = root / "reports"
    reports.mkdir()
    made = threadguard_command("site", "taskprolog", "--set",
                               f"THREADGUARD_REPORT={reports}/%p.json")
    assert made.returncode == 0, made.stderr
    prolog = root / "taskprolog.sh"
    prolog.write_text(made.stdout)
    prolog.chmod(0o755)
    cluster = SlurmCluster(root, extra_conf=f"TaskProlog={prolog}\n")
    cluster.start()
    try:
        yield cluster, reports
    finally:
        cluster.stop()


STEP = ("import os, numpy; print(os.environ['SLURM_JOB_ID'], os.environ['SLURM_STEP_ID'], "
        "os.environ.get('LD_PRELOAD', ''))")


def step_reports(reports: Path, job: str) -> List[dict]:
    found = []
    for path in reports.glob("*.json"):
        report = json.loads(path.read_text())
        if (report.get("job") or {}).get("job_id") == job:
            found.append(report)
    return found


def test_a_slurm_step_is_guarded_by_the_site_and_its_report_names_it(slurm_with_taskprolog):
    cluster, reports = slurm_with_taskprolog
    proc = cluster.srun(["-n", "1", "-c", "1", sys.executable, "-c", STEP])
    assert proc.returncode == 0, proc.stderr + cluster.logs()
    job, step, preload = proc.stdout.split()
    assert preload.split(":")[0] == LIB
    found = step_reports(reports, job)
    assert len(found) == 1, found
    report = found[0]
    assert report["job"] == {"scheduler": "slurm", "job_id": job, "step_id": step, "task": "0"}
    assert report["mode"] == "preload" and report["program"].endswith(
        os.path.basename(os.path.realpath(sys.executable)))
    pools = {p["variable"]: p for p in report["pools"]}
    assert pools["OPENBLAS_NUM_THREADS"]["value"] == 1  # -c 1: one CPU


def test_a_job_that_opts_out_is_not_guarded(slurm_with_taskprolog):
    cluster, reports = slurm_with_taskprolog
    proc = cluster.srun(["-n", "1", "--export=ALL,THREADGUARD_DISABLE=1", sys.executable, "-c",
                         STEP])
    assert proc.returncode == 0, proc.stderr + cluster.logs()
    job, _, *preload = proc.stdout.split()
    assert preload == []
    assert step_reports(reports, job) == []


# ---- /etc/ld.so.preload in a Debian root -----------------------------------

# Each a shell script run in the root as root (the setuid ones drop to uid
# 4242 first), once bare and once with the library in /etc/ld.so.preload:
# the list of the issue, each giving output and status that do not vary.
ROOT_USER = "setpriv --reuid=4242 --regid=4242 --clear-groups"
ROOT_PROGRAMS = {
    "apt-get install": "export DEBIAN_FRONTEND=noninteractive; "
                       "apt-get install -y -qq --no-download hello 2>&1; hello; "
                       "apt-get purge -y -qq hello 2>&1; echo status $?",
    "dpkg": "dpkg -l coreutils bash | tail -2; dpkg -S /bin/ls; dpkg --verify coreutils; "
            "echo status $?",
    "bash script": "bash -c 'declare -A m=([a]=1 [b]=2); for k in a b; do echo $k=${m[$k]}; "
                   "done; echo $((2 ** 10)); exit 6'",
    "sh script": "sh -c 'x=$(echo hi | tr a-z A-Z); echo $x; exit 5'",
    "coreutils": "ls /usr/share/doc | head -5; seq 5 | sort -r | head -2; printf abc | md5sum; "
                 "env | sort; id -u; cat /proc/self/comm; du -s /etc/apt | cut -f2",
    "gcc": "cd /tmp && printf '#include <pthread.h>\\n#include <stdio.h>\\nstatic void *f(void *a)"
           "{return a;}\\nint main(void){pthread_t t; pthread_create(&t, 0, f, 0); "
           "pthread_join(t, 0); puts(\"built\"); return 0;}\\n' > p.c && gcc -O2 -pthread -o p p.c"
           " && ./p; status=$?; rm -f p p.c; exit $status",
    "git": "rm -rf /tmp/g && git init -q /tmp/g && cd /tmp/g && echo x > f && git add f && "
           "git -c user.name=t -c user.email=t@example.org commit -qm one && "
           "git log --format=%s && git rev-list --count HEAD; cd / && rm -rf /tmp/g",
    "python3 numpy": "python3 -c 'import numpy; a = numpy.arange(9.).reshape(3, 3); "
                     "print(a @ a); print(numpy.linalg.inv(a + numpy.eye(3)).round(3))'",
    "python3 thread pool": "python3 -c 'from concurrent.futures import ThreadPoolExecutor as P; "
                           "print(sorted(P(16).map(pow, range(8), range(8))))'",
    # Setuid (su, passwd) and file capabilities (ping): secure execution.  A
    # setting that would print a line and write a report: nothing may come.
    "su (setuid)": f"{ROOT_USER} env THREADGUARD_STACK=abc THREADGUARD_REPORT=/tmp/su.json "
                   "su -c true root < /dev/null 2>&1; echo status $?",
    "passwd (setuid)": f"{ROOT_USER} env THREADGUARD_STACK=abc THREADGUARD_REPORT=/tmp/pw.json "
                       "passwd -S root 2>&1; echo status $?",
    "ping (capabilities)": f"{ROOT_USER} env THREADGUARD_STACK=abc ping -c 1 -W 5 127.0.0.1 "
                           "> /dev/null 2>&1; echo status $?",
    "busybox (static)": "busybox echo static; busybox sh -c 'echo $((6 * 7))'",
}
ROOT_PACKAGES = "git python3-numpy libopenblas0-pthread busybox-static iputils-ping passwd"
ROOT_LIBRARY = "/usr/lib/threadguard/libthreadguard.so"


def in_root(root: Path, script: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "LANG": "C.UTF-8"}
    return subprocess.run(["chroot", str(root), "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def preload_root():
    """An overlay of the Debian 11 root of tools/oldroot (the cached root is
    never changed), with /proc, /sys and /dev, and a /dev/shm of its own so
    that what the programs leave there can be seen."""
    from test_portable import root_for
    root = root_for("x86_64")
    work = Path(tempfile.mkdtemp(prefix="threadguard-preload-root-"))
    merged = work / "root"
    for d in ("upper", "work", "root"):
        (work / d).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={root},upperdir={work / 'upper'},workdir={work / 'work'}",
                    str(merged)], check=True)
    try:
        for fs in ("proc", "sys", "dev"):
            subprocess.run(["mount", "--rbind", f"/{fs}", str(merged / fs)], check=True)
            subprocess.run(["mount", "--make-rslave", str(merged / fs)], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(merged / "dev" / "shm")], check=True)
        shutil.copy("/etc/resolv.conf", merged / "etc" / "resolv.conf")
        yield merged
    finally:
        for fs in ("dev", "sys", "proc"):
            if subprocess.run(["umount", "-R", str(merged / fs)]).returncode != 0:
                subprocess.run(["umount", "-lR", str(merged / fs)])
        subprocess.run(["umount", str(merged)])
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
def test_ld_so_preload_in_a_debian_root_changes_no_program(preload_root):
    """Loaded into every program of a Debian 11 root (glibc 2.31) through
    /etc/ld.so.preload, the library from the manylinux wheel changes the
    output and exit status of none of the list, and leaves nothing in
    /dev/shm or at a report path."""
    import zipfile

    from test_portable import wheel_for
    root = preload_root
    with zipfile.ZipFile(wheel_for("x86_64")) as wheel:
        library = wheel.read("threadguard/libthreadguard.so")
    (root / ROOT_LIBRARY.lstrip("/")).parent.mkdir(parents=True)
    (root / ROOT_LIBRARY.lstrip("/")).write_bytes(library)
    setup = in_root(root, "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && "
                          f"apt-get install -y -qq --no-install-recommends {ROOT_PACKAGES} "
                          "> /dev/null && apt-get install -y -qq --download-only hello > /dev/null")
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    preload_file = root / "etc" / "ld.so.preload"
    differences = []
    for name, script in ROOT_PROGRAMS.items():
        results = []
        for preloaded in (False, True):
            if preloaded:
                preload_file.write_text(ROOT_LIBRARY + "\n")
            proc = in_root(root, script)
            preload_file.unlink(missing_ok=True)
            results.append((proc.returncode, proc.stdout, proc.stderr))
        bare, guarded = results
        assert bare[1].strip(), (name, bare)  # the program ran and said something
        if bare != guarded:
            differences.append((name, bare, guarded))
    assert differences == []
    assert os.listdir(root / "dev" / "shm") == []
    assert not (root / "tmp" / "su.json").exists() and not (root / "tmp" / "pw.json").exists()
    # The library was there: every program mapped it, and a guarded numpy
    # sized its pool and wrote the report it was asked for.
    preload_file.write_text(ROOT_LIBRARY + "\n")
    proof = in_root(root, "grep -c libthreadguard /proc/self/maps; THREADGUARD_REPORT=/tmp/r.json"
                          " python3 -c 'import numpy'; cat /tmp/r.json; rm /tmp/r.json")
    preload_file.unlink()
    count, _, text = proof.stdout.partition("\n")
    assert proof.returncode == 0 and int(count) >= 1, proof.stderr
    report = json.loads(text)
    assert report["mode"] == "preload"
    assert any(p["kind"] == "openblas" for p in report["pools"]), report["pools"]
    assert os.listdir(root / "dev" / "shm") == []


@pytest.mark.parametrize("form", ["l", "lp", "le", "v", "vp", "vpe", "ve", "fail"])
def test_every_exec_form_takes_the_published_file_away(form, tmp_path):
    """The new program (a shell threadguard skips) finds no file of its pid:
    the exec took it away.  An exec that fails gives the file back."""
    compiler = next((c for c in map(shutil.which, ("cc", "gcc")) if c), None)
    if compiler is None:
        pytest.skip("no C compiler")
    program = tmp_path / "exec_forms"
    subprocess.run([compiler, "-O1", "-pthread", "-o", str(program),
                    str(Path(__file__).parent / "native" / "exec_forms.c")], check=True)
    count = 'ls /dev/shm/threadguard-$(id -u) 2>/dev/null | grep -c "^$$\\." ; true'
    proc = subprocess.run([str(program), form, f"echo after: $({count})"],
                          env=plain_env({"LD_PRELOAD": LIB, "THREADGUARD_SKIP": "sh"}),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc
    if form == "fail":
        assert proc.stdout.splitlines() == ["before: 1", "after a failed exec: 1"]
    else:
        assert proc.stdout.splitlines() == ["before: 1", "after: 0"]


def test_programs_other_than_python_start_lazily(tmp_path):
    """A program under the preload, given no setting and starting no thread,
    has published nothing (it has not initialised: ls, which lists its own
    pid's files); given a setting it has, and Python always has (it may
    start workers with vfork, and they look for its file)."""
    def own_files(program: List[str], extra: Dict[str, str]) -> int:
        proc = subprocess.Popen([*program], env=plain_env({"LD_PRELOAD": LIB, **extra}),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                cwd=tmp_path)
        out, _ = proc.communicate(timeout=300)
        return sum(name.startswith(f"{proc.pid}.") for name in out.split())

    listing = ["sh", "-c", f"exec ls -1 /dev/shm/threadguard-{os.getuid()}"]
    python = [sys.executable, "-c", "import os; print(*os.listdir("
              "f'/dev/shm/threadguard-{os.getuid()}'))"]
    assert own_files(listing, {}) == 0
    assert own_files(listing, {"THREADGUARD_POOL_THREADS": "2"}) == 1
    assert own_files(python, {}) == 1
