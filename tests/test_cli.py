"""The threadguard command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import threadguard
from threadguard.preload import preload_environment

PRINT_PRELOAD = "import os; print(os.environ.get('LD_PRELOAD', ''))"


def tg(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "threadguard", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_run_prepends_to_an_existing_ld_preload(tmp_path, fakecpus):
    env = dict(os.environ, LD_PRELOAD=fakecpus)
    proc = tg("run", "--", sys.executable, "-c", PRINT_PRELOAD, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().split(":") == [threadguard.libpath(), fakecpus]


def test_run_sets_up_a_guarded_process(tmp_path):
    code = "import threadguard; print(threadguard.preloaded(), threadguard.libpath())"
    proc = tg("run", "--", sys.executable, "-c", code, cwd=tmp_path)
    assert proc.stdout.split() == ["True", threadguard.libpath()]


def test_preload_environment_does_not_duplicate():
    lib = threadguard.libpath()
    env = preload_environment(lib, {"LD_PRELOAD": f"/a.so {lib}:/b.so"})
    assert env["LD_PRELOAD"] == f"{lib}:/a.so:/b.so"


def test_run_passes_the_exit_status_through(tmp_path):
    assert tg("run", "--", sys.executable, "-c", "exit(7)", cwd=tmp_path).returncode == 7


def test_run_without_a_command_explains(tmp_path):
    proc = tg("run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "give the command after --" in proc.stderr


def test_run_of_a_missing_command(tmp_path):
    proc = tg("run", "--", "no-such-command-xyz", cwd=tmp_path)
    assert proc.returncode == 127
    assert proc.stderr.strip() == "threadguard run: command not found: no-such-command-xyz"


def test_run_rejects_a_bad_report_value(tmp_path):
    proc = tg("run", "--report", "out.txt", "--", "true", cwd=tmp_path)
    assert proc.returncode == 2 and "neither 'stderr' nor a path ending in .json" in proc.stderr


def test_libpath_prints_the_packaged_library(tmp_path):
    proc = tg("libpath", cwd=tmp_path)
    assert proc.returncode == 0 and os.path.isfile(proc.stdout.strip())
    assert proc.stdout.strip().endswith("libthreadguard.so")


def test_stats_reads_a_report(tmp_path):
    report = tmp_path / "r.json"
    code = "import threading; t = threading.Thread(target=sum, args=([1],)); t.start(); t.join()"
    assert tg("run", "--report", str(report), "--", sys.executable, "-c", code,
              cwd=tmp_path).returncode == 0
    as_json = tg("stats", str(report), "--json", cwd=tmp_path)
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout) == json.loads(report.read_text())
    table = tg("stats", str(report), cwd=tmp_path)
    [row] = [line for line in table.stdout.splitlines() if " python " in line]
    assert row.split()[2:4] == ["1", "0"]


def test_stats_of_a_missing_report(tmp_path):
    proc = tg("stats", str(tmp_path / "none.json"), cwd=tmp_path)
    assert proc.returncode == 2 and "no report at" in proc.stderr


def test_help_explains_every_command(tmp_path):
    out = tg("--help", cwd=tmp_path).stdout
    for word in ("run", "libpath", "stats", "examples"):
        assert word in out
    assert "--report" in tg("run", "--help", cwd=tmp_path).stdout


def test_console_script_is_installed(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "threadguard")
    proc = subprocess.run([script, "libpath"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.strip() == threadguard.libpath()
