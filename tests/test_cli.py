"""The threadguard command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import threadguard
from threadguard._preload import preload_environment

PRINT_PRELOAD = "import os; print(os.environ.get('LD_PRELOAD', ''))"


def tg(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "threadguard", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


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
    # run's own usage, not the top level's list of commands
    assert proc.stderr.startswith("usage: threadguard run "), proc.stderr
    assert "{run,libpath" not in proc.stderr


def test_stats_into_a_closed_pipe_prints_no_traceback(tmp_path):
    """`threadguard stats r.json | head -1` ended in BrokenPipeError: here the
    pipe's reader is gone before anything is written, so every write fails."""
    report = tmp_path / "r.json"
    code = "import threading; t = threading.Thread(target=sum, args=([1],)); t.start(); t.join()"
    assert tg("run", "--report", str(report), "--", sys.executable, "-c", code,
              cwd=tmp_path).returncode == 0
    for extra in ((), ("--json",)):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = subprocess.run([sys.executable, "-m", "threadguard", "stats", str(report),
                                   *extra], stdout=write_end, stderr=subprocess.PIPE, text=True,
                                  cwd=tmp_path, timeout=600)
        finally:
            os.close(write_end)
        assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, \
            proc.stderr
        assert proc.returncode == 141


def test_run_refuses_a_stack_under_the_floor(tmp_path):
    """--stack 100k was accepted, then raised to 256k at run time with a warning,
    though bad values are refused before anything starts."""
    proc = tg("run", "--stack", "100k", "--", sys.executable, "-c", "print('ran')",
              cwd=tmp_path)
    assert proc.returncode == 2 and "ran" not in proc.stdout
    assert "--stack" in proc.stderr and "under the 256k" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_of_a_missing_command(tmp_path):
    proc = tg("run", "--", "no-such-command-xyz", cwd=tmp_path)
    assert proc.returncode == 127
    assert proc.stderr.strip() == "threadguard run: command not found: no-such-command-xyz"


def test_run_rejects_a_bad_report_value_with_the_librarys_words(tmp_path):
    proc = tg("run", "--report", "out.txt", "--", "true", cwd=tmp_path)
    assert proc.returncode == 2
    assert ("THREADGUARD_REPORT='out.txt' is not valid; expected 'stderr', 'off' or a file path "
            "ending in .json") in proc.stderr


def test_run_report_off_behaves_as_the_variable_does(tmp_path):
    """--report takes what THREADGUARD_REPORT takes: the library parses both."""
    show = "import os; print(os.environ['THREADGUARD_REPORT'])"
    by_flag = tg("run", "--report", "off", "--", sys.executable, "-c", show, cwd=tmp_path)
    by_variable = subprocess.run(
        [sys.executable, "-m", "threadguard", "run", "--", sys.executable, "-c", show],
        env=dict(os.environ, THREADGUARD_REPORT="off"), cwd=tmp_path, capture_output=True,
        text=True, timeout=600)
    assert by_flag.returncode == by_variable.returncode == 0, by_flag.stderr
    assert by_flag.stdout == by_variable.stdout == "off\n"
    assert by_flag.stderr == by_variable.stderr == ""
    assert list(tmp_path.iterdir()) == []


def test_libpath_prints_the_packaged_library(tmp_path):
    proc = tg("libpath", cwd=tmp_path)
    assert proc.returncode == 0 and os.path.isfile(proc.stdout.strip())
    assert proc.stdout.strip().endswith("libthreadguard.so")


def test_stats_reads_a_report(tmp_path):
    report = tmp_path / "r.json"
    # After join, wait until the OS thread is gone too (see TWO_THREADS in test_report.py).
    code = ("import os, threading, time; t = threading.Thread(target=sum, args=([1],)); "
            "t.start(); t.join()\n"
            "while len(os.listdir('/proc/self/task')) > 1: time.sleep(0.001)\n")
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


def test_each_command_is_one_module_with_the_same_interface_listed_once():
    """threadguard/commands/NAME.py for each entry of the one list, with
    add_arguments(parser) and run(args, parser); no module left unlisted."""
    import importlib
    import inspect
    from pathlib import Path

    from threadguard._cli import COMMANDS
    names = [name for name, _ in COMMANDS]
    assert len(names) == len(set(names))
    folder = Path(threadguard.__file__).parent / "commands"
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "arguments"}
    assert modules == set(names)
    for name in names:
        module = importlib.import_module(f"threadguard.commands.{name}")
        assert list(inspect.signature(module.add_arguments).parameters) == ["parser"]
        assert list(inspect.signature(module.run).parameters) == ["args", "parser"]
        assert module.__all__[:1] == ["add_arguments"] and "run" in module.__all__
