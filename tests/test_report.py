"""THREADGUARD_REPORT: the table, the JSON file, and bad settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import threadguard

# Thread.join returns once Python is done with a thread, a moment before the
# OS thread (and threadguard's exit count in it) has finished: the program
# waits until /proc/self/task shows only the main thread, so "live 0" at exit
# does not depend on that race (it failed once on a loaded machine).
# One after the other: started together, the peak is 1 or 2 by timing, and
# the two runs of a test below would differ.
TWO_THREADS = ("import os, threading, time\n"
               "for _ in range(2):\n"
               "    t = threading.Thread(target=sum, args=([1],)); t.start(); t.join()\n"
               "    while len(os.listdir('/proc/self/task')) > 1: time.sleep(0.001)\n")


def run_preloaded(tmp_path: Path, report: str, code: str = TWO_THREADS):
    env = dict(os.environ, LD_PRELOAD=threadguard.libpath(), THREADGUARD_REPORT=report)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def test_one_formatter_for_the_exit_table_and_threadguard_stats(tmp_path):
    """The table on stderr at exit and `threadguard stats REPORT.json` come
    from the same C code (the JSON carries the table): the same run twice,
    once each way, prints the same lines, but for the pid, the report's
    destination and the headroom figures of the moment.  The live table
    says "now" where these say "at exit"."""
    proc = run_preloaded(tmp_path, "stderr", TWO_THREADS)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "r.json"
    assert run_preloaded(tmp_path, str(path), TWO_THREADS).returncode == 0
    shown = subprocess.run([sys.executable, "-m", "threadguard", "stats", str(path)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr

    def comparable(table: str) -> list:
        lines = [re.sub(r"pid \d+", "pid N", line) for line in table.splitlines()
                 if not line.startswith("  headroom at start")]
        return [re.sub(r"THREADGUARD_REPORT=\S+", "THREADGUARD_REPORT=...", line)
                for line in lines]
    assert comparable(shown.stdout) == comparable(proc.stderr)
    assert "threads by creating library, at exit" in shown.stdout
    assert "  tasks at exit: 1 (main thread + 0 counted live" in shown.stdout
    import threading
    thread = threading.Thread(target=sum, args=([1],))
    thread.start()
    thread.join()
    live = threadguard.stats().format_table()  # this process, in import mode
    assert "(import mode: GOT slots patched), now" in live and "  tasks now: " in live


def test_a_report_without_a_table_says_so(tmp_path):
    path = tmp_path / "r.json"
    assert run_preloaded(tmp_path, str(path)).returncode == 0
    data = json.loads(path.read_text())
    del data["table"]
    path.write_text(json.dumps(data))
    with pytest.raises(threadguard.ReportError, match="no table"):
        threadguard.load_report(path).format_table()


def test_json_report_matches_the_python_reader(tmp_path):
    path = tmp_path / "r.json"
    proc = run_preloaded(tmp_path, str(path))
    assert proc.returncode == 0 and proc.stderr == ""
    data = json.loads(path.read_text())
    report = threadguard.load_report(path)
    assert report.to_json() == data  # the C writer and the Python reader agree field by field
    assert report.of_kind("python").created == 2
    assert report.total.created == 2 and report.pid > 0
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file, renamed


def test_stderr_table(tmp_path):
    proc = run_preloaded(tmp_path, "stderr")
    assert proc.returncode == 0
    lines = proc.stderr.splitlines()
    assert "threads by creating library" in lines[0]
    [row] = [line for line in lines if " python " in line]
    assert row.split()[2:4] == ["2", "0"]  # created, live


def test_unwritable_report_path_is_one_line_not_a_crash(tmp_path):
    target = tmp_path / "no-such-dir" / "r.json"
    proc = run_preloaded(tmp_path, str(target), code="print('done')")
    assert proc.returncode == 0 and proc.stdout == "done\n"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1
    assert "cannot write the report" in lines[0] and str(target) in lines[0]


@pytest.mark.parametrize("value", ["report.txt", "/tmp/", "stdout"])
def test_bad_report_value_is_named_and_ignored(tmp_path, value):
    proc = run_preloaded(tmp_path, value, code="print('done')")
    assert proc.returncode == 0 and proc.stdout == "done\n"
    assert proc.stderr.splitlines() == [
        f"threadguard: THREADGUARD_REPORT='{value}' is not valid; expected 'stderr', 'off' or "
        f"a file path ending in .json; using the default (no report)"]
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere it could be


def test_pid_in_path_gives_one_report_per_process(tmp_path):
    code = ("import os, threading\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    t = threading.Thread(target=sum, args=([1],)); t.start(); t.join()\n"
            "    raise SystemExit(0)  # a normal exit, so the library's destructor reports\n"
            "os.waitpid(pid, 0)\n")
    proc = run_preloaded(tmp_path, str(tmp_path / "r-%p.json"), code=code)
    assert proc.returncode == 0, proc.stderr
    reports = {threadguard.load_report(p).pid: threadguard.load_report(p)
               for p in tmp_path.glob("r-*.json")}
    assert len(reports) == 2
    assert sorted(r.total.created for r in reports.values()) == [0, 1]


def test_forked_child_does_not_overwrite_the_parents_report(tmp_path):
    # The child outlives the parent, so a child that wrote the report would
    # replace the parent's: the parent's must be the one left.
    path = tmp_path / "r.json"
    code = ("import os, sys, threading, time\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    time.sleep(0.5); sys.exit(0)\n"
            "print(os.getpid(), pid)\n" + TWO_THREADS)
    proc = run_preloaded(tmp_path, str(path), code=code)
    parent, child = map(int, proc.stdout.split())
    for _ in range(100):  # wait for the orphaned child to exit
        if not os.path.exists(f"/proc/{child}") or "Z" in _proc_state(child):
            break
        time.sleep(0.05)
    time.sleep(0.1)
    assert threadguard.load_report(path).pid == parent
    assert threadguard.load_report(path).total.created == 2


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_malformed_report_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"pid": 1}')
    with pytest.raises(threadguard.ReportError, match="not a threadguard report"):
        threadguard.load_report(bad)
    with pytest.raises(threadguard.ReportError, match="no report at"):
        threadguard.load_report(tmp_path / "missing.json")


@pytest.mark.parametrize("text, names", [
    # This said "missing or bad field string indices must be integers, not 'str'".
    ('{"libraries": "x", "total": 5}', "'libraries' is a JSON string, expected an array"),
    ('{"libraries": [], "total": 5}', "'total' is a JSON number, expected an object"),
    ('{"libraries": [1], "total": {}}', "'libraries' holds something other than objects"),
    ('[1, 2]', "is not a threadguard report (expected a JSON object)"),
])
def test_a_report_of_the_wrong_shape_names_the_field(tmp_path, text, names):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(threadguard.ReportError) as error:
        threadguard.load_report(bad)
    assert names in str(error.value)
    assert "string indices" not in str(error.value)


def test_a_count_of_one_is_singular(runner, pids_cgroup):
    """"1 threads free", "1 new threads": a count of one takes the singular,
    in the C table, the C warnings and the Python reader's table alike."""
    pids_cgroup.write("pids.max", 2)  # the process and one more task
    proc = runner.run("import numpy", guarded=True, prefix=pids_cgroup.prefix(), cpus=1,
                      options=["--debug"])
    assert proc.returncode == 0, proc.stderr
    assert "(1 CPU from" in proc.stderr, proc.stderr
    said = runner.report().format_table()
    proc = runner.run("import numpy", guarded=True, prefix=pids_cgroup.prefix(), cpus=4,
                      options=["--report", "stderr"])
    assert proc.returncode == 0, proc.stderr
    assert "1 thread free under cgroup pids.max" in proc.stderr, proc.stderr
    assert "1 thread free under cgroup pids.max" in said, said
    for text in (proc.stderr, said):
        assert not re.search(r"\b1 (thread|task|CPU)s(?![-\w])", text), text
