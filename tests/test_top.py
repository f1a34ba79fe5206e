"""`threadguard top` and `threadguard stats --pid`: guarded processes publish
their counters while they run, and readers see them live, without root.

Each test starts guarded processes (tests/top_child.py: plain threads,
numpy's OpenBLAS pool, torch's pools), has each print its own stats(), and
compares with what another process reads from the published files.  Every
command runs from tests/, never the checkout's root, where `python -m
threadguard` would import the unbuilt source tree."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import threadguard
from threadguard import _native
from limits import fresh_uid, skip_unless_nobody_works

HERE = Path(__file__).resolve().parent
CHILD = HERE / "top_child.py"
MARK = "TOP-CHILD "


def clean_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("THREADGUARD_", "OMP_", "OPENBLAS_", "MKL_")) and k != "LD_PRELOAD"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


class Child:
    """A guarded top_child.py, driven over its stdin."""

    def __init__(self, kind: str = "plain", threads: int = 2, *, preload: bool = True,
                 prefix: List[str] = (), env: Optional[Dict[str, str]] = None, cwd: Path = HERE,
                 args: List[str] = ()):
        cmd = [sys.executable, str(CHILD), kind, str(threads), *args]
        if preload:
            cmd = [sys.executable, "-m", "threadguard", "run", "--", *cmd]
        self.proc = subprocess.Popen([*prefix, *cmd], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env or clean_env(), cwd=cwd)
        self.pid = self.proc.pid  # `threadguard run` execs: the same pid
        self.own: Dict = {}

    def read(self) -> Dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.own = json.loads(line[len(MARK):])
                return self.own
        raise AssertionError(f"child {self.pid} ended: {self.proc.wait()} "
                             f"{self.proc.stderr.read()}")

    def send(self, command: str) -> Dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("exit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def children():
    started: List[Child] = []
    yield started
    for child in started:
        child.stop()


def top(*args: str, prefix: List[str] = (), env: Optional[Dict[str, str]] = None,
        check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*prefix, sys.executable, "-m", "threadguard", "top", *args],
                          capture_output=True, text=True, env=env or clean_env(), cwd=HERE,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def top_json(**kwargs) -> Dict[int, Dict]:
    data = json.loads(top("--once", "--json", **kwargs).stdout)
    return {p["pid"]: p for p in data["processes"]}


def seen_counts(entry: Dict) -> Dict:
    return {"total": {k: entry["total"][k] for k in ("created", "live", "peak")},
            "libraries": {lib["name"]: [lib["created"], lib["live"], lib["peak"]]
                          for lib in entry["libraries"]}}


def own_counts(child: Child) -> Dict:
    return {"total": child.own["total"], "libraries": child.own["libraries"]}


def published_file(pid: int, uid: int = 0) -> Path:
    directory = Path(f"/dev/shm/threadguard-{uid}")
    found = [p for p in directory.glob(f"{pid}.*.live")]
    assert len(found) == 1, (pid, list(directory.iterdir()))
    return found[0]


def test_twenty_guarded_processes_are_listed_with_their_own_counts(children):
    """Acceptance: 20 guarded processes at once, every one listed by
    `top --once --json` with the counts its own stats() gives."""
    kinds = ["plain"] * 8 + ["numpy"] * 6 + ["torch"] * 2 + ["plain-import"] * 4
    for i, kind in enumerate(kinds):
        preload = kind != "plain-import"
        children.append(Child(kind.split("-")[0], threads=1 + i % 4, preload=preload))
    for child in children:
        child.read()
    seen = top_json()
    for child in children:
        assert child.pid in seen, f"{child.pid} missing from {sorted(seen)}"
        entry = seen[child.pid]
        assert entry["mode"] == child.own["mode"]
        assert seen_counts(entry) == own_counts(child), entry
    kinds_seen = {lib["kind"] for pid in seen for lib in seen[pid]["libraries"]}
    assert {"python", "openblas", "openmp"} <= kinds_seen, kinds_seen  # torch: libgomp
    # numpy's processes show the pool decision and where it came from
    numpy_pid = children[8].pid
    assert any(p["variable"] == "OPENBLAS_NUM_THREADS" for p in seen[numpy_pid]["pools"])


def test_counts_follow_threads_as_they_come_and_go(children):
    child = Child("plain", threads=2)
    children.append(child)
    child.read()
    assert seen_counts(top_json()[child.pid]) == own_counts(child)
    child.send("add 3")
    assert child.own["total"]["live"] == 5
    assert seen_counts(top_json()[child.pid]) == own_counts(child)
    child.send("stop 4")
    assert child.own["total"]["live"] == 1
    entry = top_json()[child.pid]
    assert seen_counts(entry) == own_counts(child)
    assert entry["total"]["peak"] == 5 and entry["tasks"] == 2
    path = published_file(child.pid)
    child.stop()
    assert child.pid not in top_json()
    assert not path.exists(), "the file goes at a normal exit"


def test_a_killed_process_disappears_at_the_next_look(children):
    """Acceptance: a SIGKILLed guarded process is gone from the next view,
    and its file is removed by that reader.  The reader publishes nothing
    here: a guarded process's own start also removes such files (below)."""
    reader = clean_env(THREADGUARD_PUBLISH="0")
    child = Child("numpy", threads=1)
    children.append(child)
    child.read()
    assert child.pid in top_json(env=reader)
    path = published_file(child.pid)
    child.proc.kill()
    child.proc.wait()
    assert path.exists(), "SIGKILL leaves the file behind"
    assert child.pid not in top_json(env=reader)
    assert not path.exists(), "the reader removed the dead process's file"


def test_a_new_guarded_process_removes_files_of_dead_ones(children):
    child = Child("plain", threads=1)
    children.append(child)
    child.read()
    path = published_file(child.pid)
    child.proc.kill()
    child.proc.wait()
    assert path.exists()
    subprocess.run([sys.executable, "-c", "import threadguard"], env=clean_env(), check=True,
                   cwd=HERE)
    assert not path.exists(), "the new process's start swept it"


def test_a_process_that_execs_an_unguarded_program_is_not_shown(tmp_path):
    """Same pid, same start time, but the new program maps no file: the exec
    took the file away (and top would have called it stale)."""
    code = ("import os, threadguard, threading, sys; "
            "threading.Thread(target=print).start(); "
            "env = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}; "
            "sys.stdout.flush(); os.execve('/bin/sleep', ['sleep', '60'], env)")
    proc = subprocess.Popen([sys.executable, "-m", "threadguard", "run", "--", sys.executable,
                             "-c", code], env=clean_env(), stdout=subprocess.PIPE, cwd=HERE)
    try:
        for _ in range(600):  # until the exec happened
            assert proc.poll() is None, f"the guarded program ended: {proc.returncode}"
            if os.path.basename(os.readlink(f"/proc/{proc.pid}/exe")) == "sleep":
                break
            time.sleep(0.05)
        assert list(Path("/dev/shm/threadguard-0").glob(f"{proc.pid}.*.live")) == []
        assert proc.pid not in top_json()
    finally:
        proc.kill()
        proc.wait()


def test_a_forked_child_publishes_its_own_counters_and_leaves_the_parents(children):
    parent = Child("plain", threads=3)
    children.append(parent)
    parent.read()
    forked = parent.send("fork")["child"]
    try:
        for _ in range(400):
            seen = top_json()
            if seen.get(forked, {}).get("total", {}).get("live") == 1:
                break
            time.sleep(0.05)
        assert seen[forked]["total"]["live"] == 1, seen.get(forked)
        assert seen_counts(seen[parent.pid]) == own_counts(parent), "the fork reset the parent"
        assert published_file(forked) != published_file(parent.pid)
    finally:
        os.kill(forked, signal.SIGKILL)


def test_stats_pid_prints_the_exit_reports_table(children, tmp_path):
    report = tmp_path / "exit.json"
    child = Child("numpy", threads=2, env=clean_env(THREADGUARD_REPORT=str(report)))
    children.append(child)
    child.read()
    live = subprocess.run([sys.executable, "-m", "threadguard", "stats", "--pid",
                           str(child.pid)], capture_output=True, text=True, env=clean_env(),
                          cwd=HERE)
    assert live.returncode == 0, live.stderr
    as_json = json.loads(subprocess.run(
        [sys.executable, "-m", "threadguard", "stats", "--pid", str(child.pid), "--json"],
        capture_output=True, text=True, env=clean_env(), check=True, cwd=HERE).stdout)
    assert as_json["pid"] == child.pid and as_json["pools"]
    child.proc.stdin.write("exit\n")
    child.proc.stdin.flush()
    child.proc.wait(timeout=60)
    at_exit = threadguard.load_report(report).format_table()
    # Line for line the exit table, but for the moment ("now", "at exit")
    # and the threads the child joined before it exited.
    normalise = re.compile(r"\d+|now|at exit")
    live_lines = [normalise.sub("#", line) for line in live.stdout.splitlines()]
    exit_lines = [normalise.sub("#", line) for line in at_exit.splitlines()]
    assert live_lines == exit_lines, (live.stdout, at_exit)
    assert f"pid {child.pid}" in live.stdout and "libscipy_openblas" in live.stdout


def test_stats_pid_of_an_unguarded_process_says_why():
    proc = subprocess.run([sys.executable, "-m", "threadguard", "stats", "--pid", "1"],
                          capture_output=True, text=True, env=clean_env(), cwd=HERE)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "publishes no threadguard counters" in proc.stderr


def test_publish_off_publishes_nothing(children):
    child = Child("plain", threads=1, env=clean_env(THREADGUARD_PUBLISH="0"))
    children.append(child)
    child.read()
    assert not list(Path("/dev/shm/threadguard-0").glob(f"{child.pid}.*"))
    assert child.pid not in top_json()
    code = "import threadguard._native as n; print(repr(n.published_path()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=clean_env(THREADGUARD_PUBLISH="0"), check=True, cwd=HERE).stdout
    assert out.strip() == "''"


def test_corrupt_and_truncated_files_are_rejected_with_one_line(children, tmp_path):
    corrupt, truncated = Child("plain", threads=1), Child("plain", threads=1)
    children.extend([corrupt, truncated])
    corrupt.read()
    truncated.read()
    with open(published_file(corrupt.pid), "r+b") as f:
        f.write(b"\xffgarbage")
    os.truncate(published_file(truncated.pid), 1000)
    proc = top("--once", "--json")
    seen = {p["pid"] for p in json.loads(proc.stdout)["processes"]}
    assert corrupt.pid not in seen and truncated.pid not in seen
    lines = proc.stderr.splitlines()
    assert len([line for line in lines if str(corrupt.pid) in line]) == 1, proc.stderr
    assert len([line for line in lines if str(truncated.pid) in line]) == 1, proc.stderr
    assert any("bad magic" in line for line in lines), proc.stderr
    assert any("truncated (1000 bytes" in line for line in lines), proc.stderr
    stats = subprocess.run([sys.executable, "-m", "threadguard", "stats", "--pid",
                            str(truncated.pid)], capture_output=True, text=True, env=clean_env(),
                           cwd=HERE)
    assert stats.returncode == 2 and stats.stderr.count("\n") == 1, stats.stderr
    assert "rejected: truncated" in stats.stderr
    # Files nothing maps, read directly: an empty one, another layout, noise.
    for name, content in [("empty", b""), ("noise", os.urandom(4096)),
                          ("other", b"\x74\x67\x74\x67\x70\x75\x62\x31" + b"\x09" * 400000)]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(threadguard.PublishedFileError, match=f"{path}: rejected: "):
            _native.read_published(str(path))
    # the processes themselves never noticed: kill them (the truncated one
    # would fault when it next touched the cut pages)
    for child in (corrupt, truncated):
        child.proc.kill()
        child.proc.wait()


def test_another_users_processes_are_invisible_and_root_sees_all(children, tmp_path):
    skip_unless_nobody_works()
    first, second = fresh_uid(), fresh_uid()
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o777)

    def plain_uid(uid: int) -> List[str]:
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]

    def as_uid(uid: int) -> List[str]:
        # The capability to search directories lets the uid run this
        # interpreter wherever it lives (under /root here); the checks of
        # the files' own permissions below run without it.
        return [*plain_uid(uid), "--inh-caps=-all,+dac_read_search",
                "--ambient-caps=+dac_read_search"]

    try:
        child = Child("plain", threads=2, prefix=as_uid(first), cwd=home)
        children.append(child)
        child.read()
        path = published_file(child.pid, uid=first)
        assert path.stat().st_uid == first and path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        for what in (["cat", str(path)], ["ls", str(path.parent)]):
            denied = subprocess.run([*plain_uid(second), *what], capture_output=True, text=True)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        mine = top_json(prefix=as_uid(first))
        assert seen_counts(mine[child.pid]) == own_counts(child)
        assert child.pid not in top_json(prefix=as_uid(second))
        as_root = top_json()  # root sees every user's
        assert as_root[child.pid]["uid"] == first
        root_only = json.loads(top("--once", "--json", "--mine").stdout)["processes"]
        assert child.pid not in {p["pid"] for p in root_only}
        stats = subprocess.run([*as_uid(second), sys.executable, "-m", "threadguard", "stats",
                                "--pid", str(child.pid)], capture_output=True, text=True,
                               env=clean_env(), cwd=home)
        assert stats.returncode == 2 and "publishes no threadguard counters" in stats.stderr
    finally:
        for uid in (first, second):
            shutil.rmtree(f"/dev/shm/threadguard-{uid}", ignore_errors=True)


def test_prometheus_textfile_and_loopback_port(children, tmp_path):
    parser = pytest.importorskip("prometheus_client.parser")
    child = Child("numpy", threads=2)
    children.append(child)
    child.read()
    out = tmp_path / "threadguard.prom"
    top("--once", "--textfile", str(out))

    def samples(text: str) -> Dict:
        found = {}
        for family in parser.text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("pid") == str(child.pid):
                    found[(sample.name, sample.labels.get("library", ""))] = sample.value
        return found

    from_file = samples(out.read_text())
    for name, (created, live, peak) in child.own["libraries"].items():
        assert from_file[("threadguard_threads_live", name)] == live
        assert from_file[("threadguard_threads_peak", name)] == peak
        assert from_file[("threadguard_threads_created_total", name)] == created
    assert from_file[("threadguard_process_tasks", "")] >= child.own["total"]["live"] + 1
    bad = top("--textfile", str(tmp_path / "x.txt"), check=False)
    assert bad.returncode == 2 and "reads only *.prom" in bad.stderr

    server = subprocess.Popen([sys.executable, "-m", "threadguard", "top", "--listen",
                               "127.0.0.1:0"], stderr=subprocess.PIPE, text=True,
                              env=clean_env(), cwd=HERE)
    try:
        line = server.stderr.readline()
        url = re.search(r"http://\S+/metrics", line).group(0)
        with urllib.request.urlopen(url, timeout=60) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            served = samples(response.read().decode())
        assert served == from_file
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0
    assert "warning" not in server.stderr.read()  # the loopback is not news


SECRET = "--secret-token=abc123"


def test_the_default_export_names_the_program_and_pid_never_the_arguments(children, tmp_path):
    """A guarded command with a token among its arguments: the textfile and
    the port label it pid, user and program, and nothing of its command
    line appears anywhere in them; --command-label is what puts it there."""
    parser = pytest.importorskip("prometheus_client.parser")
    child = Child("numpy", threads=2, args=[SECRET])
    children.append(child)
    child.read()
    program = os.path.basename(os.path.realpath(sys.executable))  # python3.X

    def labels_of(text: str) -> List[Dict[str, str]]:
        return [sample.labels for family in parser.text_string_to_metric_families(text)
                for sample in family.samples if sample.labels.get("pid") == str(child.pid)]

    out = tmp_path / "threadguard.prom"
    top("--once", "--textfile", str(out))
    text = out.read_text()
    assert "abc123" not in text
    seen = labels_of(text)
    assert seen and all(labels["program"] == program and "command" not in labels
                        for labels in seen), seen
    pools = [labels for labels in seen if labels.get("variable") == "OPENBLAS_NUM_THREADS"]
    assert pools and all(labels["program"] == program for labels in pools)

    server = subprocess.Popen([sys.executable, "-m", "threadguard", "top", "--listen",
                               "127.0.0.1:0"], stderr=subprocess.PIPE, text=True,
                              env=clean_env(), cwd=HERE)
    try:
        url = re.search(r"http://\S+/metrics", server.stderr.readline()).group(0)
        with urllib.request.urlopen(url, timeout=60) as response:
            served = response.read().decode()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    assert "abc123" not in served and labels_of(served)

    top("--once", "--textfile", str(out), "--command-label")
    commands = {labels["command"] for labels in labels_of(out.read_text())}
    assert len(commands) == 1 and SECRET in commands.pop()


def test_the_export_is_bounded_and_says_what_it_left_out(children, tmp_path):
    parser = pytest.importorskip("prometheus_client.parser")
    for threads in (1, 2, 3):
        children.append(Child("plain", threads=threads))
    for child in children:
        child.read()
    out = tmp_path / "threadguard.prom"
    top("--once", "--textfile", str(out), "--max-processes", "2")
    pids, left_out, guarded = set(), None, 0
    for family in parser.text_string_to_metric_families(out.read_text()):
        for sample in family.samples:
            if "pid" in sample.labels:
                pids.add(sample.labels["pid"])
            if sample.name == "threadguard_processes_left_out":
                left_out = sample.value
            if sample.name == "threadguard_processes":
                guarded += sample.value
    assert len(pids) == 2, pids
    assert left_out == guarded - 2 and left_out >= 1
    bad = top("--once", "--textfile", str(out), "--max-processes", "0", check=False)
    assert bad.returncode == 2 and "1 or more" in bad.stderr


def test_python_start_sites_beyond_the_cap_are_summed_as_one():
    from threadguard._stats import Counters, Growth, PythonSite, Stats
    from threadguard.top import metrics
    from threadguard.top.snapshot import Process, Snapshot
    sites = tuple(PythonSite(where=f"job.py:{n} in f", created=n, live=n, peak=n, failed=0,
                             growth=Growth(leaking=n == 1))
                  for n in range(1, 26))
    stats = Stats(libraries=(), total=Counters(), tasks=1, untracked=0, tasks_at_start=0,
                  interposing=True, pid=42, program="python3", version="0", python_sites=sites)
    process = Process(pid=42, uid=0, user="root", command="python3 job.py --token=x",
                      stats=stats, cgroup=None)
    text = metrics.render(Snapshot(time=0.0, host="h", processes=[process], users=[],
                                   cgroups=[]))
    live = {m.group(1): int(m.group(2)) for m in re.finditer(
        r'threadguard_python_site_threads_live\{.*site="([^"]+)"\} (\d+)', text)}
    assert len(live) == metrics.SITES_PER_PROCESS
    assert live[metrics.OTHER_SITES] == sum(range(1, 17))  # the 16 least busy, added up
    assert min(v for k, v in live.items() if k != metrics.OTHER_SITES) == 17
    assert re.search(r'threadguard_python_site_threads_leaking\{.*site="\(other sites\)"\} 1',
                     text)
    assert "token" not in text


def test_listening_beyond_the_loopback_says_so():
    server = subprocess.Popen([sys.executable, "-m", "threadguard", "top", "--listen",
                               "0.0.0.0:0"], stderr=subprocess.PIPE, text=True,
                              env=clean_env(), cwd=HERE)
    try:
        assert "serving http://0.0.0.0:" in server.stderr.readline()
        warning = server.stderr.readline()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    assert warning.startswith("threadguard top: warning: 0.0.0.0 is not a loopback address")
    from threadguard.top.metrics import is_loopback
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")


def test_growth_is_shown_while_the_job_runs(children, tmp_path):
    """A process whose threads grow cycle after cycle: marked in top, in
    `stats --pid` and in the Prometheus export, with its Python start site."""
    parser = pytest.importorskip("prometheus_client.parser")
    child = Child("plain", threads=0)
    children.append(child)
    child.read()
    assert "LEAKING" not in top("--once").stdout
    child.send("grow 12")
    line = next(n for n, text in enumerate(CHILD.read_text().splitlines(), 1)
                if text.strip() == "t.start()")
    function = "main.<locals>.start" if sys.version_info >= (3, 11) else "start"
    site = f"{CHILD}:{line} in {function}"
    shown = top("--once").stdout
    assert f"python threads started at {site} 12/12 LEAKING (from 1 in 12 steps)" in shown, shown
    assert "libpython" in shown and "12/12 LEAKING" in shown
    table = subprocess.run([sys.executable, "-m", "threadguard", "stats", "--pid",
                            str(child.pid)], capture_output=True, text=True, env=clean_env(),
                           cwd=HERE, timeout=120).stdout
    assert "LEAKING: grew from 1 in 12 steps" in table and site in table, table
    out = tmp_path / "threadguard.prom"
    top("--once", "--textfile", str(out))
    leaking = {}
    for family in parser.text_string_to_metric_families(out.read_text()):
        for sample in family.samples:
            if sample.labels.get("pid") == str(child.pid) and "leaking" in sample.name:
                leaking[sample.labels.get("site") or sample.labels["library"]] = sample.value
    assert leaking[site] == 1
    assert [v for k, v in leaking.items() if k.startswith("libpython")] == [1]


def test_top_once_text_shows_the_process_and_the_user_totals(children):
    child = Child("numpy", threads=2)
    children.append(child)
    child.read()
    out = top("--once", "--filter", str(child.pid)).stdout
    assert "filter: " in out and f"{child.pid} root" in out
    assert "threads (live/peak): libpython" in out and "OPENBLAS_NUM_THREADS=" in out
    assert re.search(r"user root \(uid 0\): \d+ tasks = \d+ in \d+ guarded process(es)? \+ "
                     r"\d+ unguarded; RLIMIT_NPROC", out), out
    assert "(no guarded process matches the filter)" in top("--once", "--filter",
                                                             "no-such-thing").stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)")
def test_full_screen_view_in_a_real_terminal(children, tmp_path):
    """The curses view in tmux: it lists the child, filters and sorts on
    keys, drops the child at the refresh after SIGKILL, and quits on q."""
    child = Child("plain", threads=3)
    children.append(child)
    child.read()
    session = f"tgtop{os.getpid()}"
    socket_path = tmp_path / "tmux.sock"
    tmux = ["tmux", "-S", str(socket_path)]
    env = clean_env(TERM="xterm-256color")
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "40", "-c",
                    str(HERE),
                    f"{sys.executable} -m threadguard top --interval 1; sleep 30"],
                   env=env, check=True)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], env=env,
                              capture_output=True, text=True).stdout

    def wait_for(predicate, what: str) -> str:
        for _ in range(600):
            text = screen()
            if predicate(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"never {what}:\n{text}")

    try:
        row = re.compile(rf"^\s*{child.pid} root\s+\d+\s+3\s+3\s", re.M)
        wait_for(lambda t: row.search(t), "listed the child with its 3 live threads")
        subprocess.run([*tmux, "send-keys", "-t", session, "s"], check=True)
        wait_for(lambda t: "sort: peak" in t, "sorted by peak")
        subprocess.run([*tmux, "send-keys", "-t", session, "/", f"{child.pid}", "Enter"],
                       check=True)
        shown = wait_for(lambda t: f"filter: '{child.pid}' (1 shown)" in t, "filtered")
        (tmp_path / "screen.txt").write_text(shown)
        child.proc.kill()
        child.proc.wait()
        wait_for(lambda t: not row.search(t) and "(0 shown)" in t, "dropped the killed child")
        subprocess.run([*tmux, "send-keys", "-t", session, "q"], check=True)
        wait_for(lambda t: "threadguard top" not in t, "quit on q")
    finally:
        subprocess.run([*tmux, "kill-server"], env=env, capture_output=True)
