"""`threadguard doctor`: explain this node's thread limits, or a failed run.

Without a command it reads the limits, probes each typical workload with
every pool at one thread (a few tasks, to measure its own size) and
predicts which limit the full pools would hit. With `-- CMD` it runs CMD
under the guard in observe mode (counting and recording only, changing
nothing), shows its output as it comes, and explains the failures the
guard recorded and the messages the output holds. It never needs root and
changes nothing.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

import psutil

from .. import _native
from .._policy import rules
from .._preload import preload_environment
from .._stats import Failure, Stats
from .diagnosis import WORKLOADS, Verdict, explain_run, no_room_verdict, predict
from .facts import gather, installed
from .messages import find_messages

__all__ = ["check_command", "check_node"]

# The probe: a workload with every pool at one thread, then its own size.
_PROBE = ("import sys; exec(sys.argv[1]); "
          "s = dict(l.split(':', 1) for l in open('/proc/self/status')); "
          "print('THREADGUARD-PROBE', int(s['VmSize'].split()[0]) * 1024, "
          "int(s['Threads']))")
def _one_thread() -> Dict[str, str]:
    """Every pool the library sizes at one thread."""
    return dict.fromkeys(rules().pool_variables, "1")
_OUTPUT_KEPT = 256 * 1024


def _spelled(name: str, fallback: List[str]) -> List[str]:
    """name if PATH finds it beside this interpreter, else fallback: the
    printed commands must run as printed."""
    found = shutil.which(name)
    here = os.path.dirname(os.path.abspath(sys.executable))
    if found and os.path.dirname(os.path.abspath(found)) == here:
        return [name]
    return fallback


def _python() -> List[str]:
    return _spelled("python", [sys.executable])


def _guard() -> List[str]:
    return _spelled("threadguard", [sys.executable, "-m", "threadguard"])


def _probe(code: str, timeout: float) -> Dict[str, Any]:
    """The workload's size with one thread per pool, measured in a child;
    "started" is False when no child could be made at all (no task or
    memory left), which is itself the answer the doctor is asked for."""
    env = {**os.environ, **_one_thread()}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, code], env=env, text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"vmsize": None, "tasks": None, "error": f"did not finish in {timeout:.0f} s"}
    except OSError as exc:
        return {"vmsize": None, "tasks": None, "started": False,
                "error": f"could not start a process: {_errno_text(exc)}",
                "errno": errno.errorcode.get(exc.errno or 0, "unknown")}
    for line in proc.stdout.splitlines():
        if line.startswith("THREADGUARD-PROBE "):
            _, vmsize, tasks = line.split()
            return {"vmsize": int(vmsize), "tasks": int(tasks), "error": None}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1].strip()
    how = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
           else f"exit {proc.returncode}")
    return {"vmsize": None, "tasks": None, "error": f"{how}: {tail}"}


def _errno_text(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    return f"{name} ({exc.strerror})" if name else str(exc)


def check_node(timeout: float, progress: TextIO) -> Dict[str, Any]:
    """The node's figures, a prediction per installed workload and the verdict."""
    facts = gather()
    own = psutil.Process().num_threads()
    predictions = []
    unstarted: Optional[Dict[str, Any]] = None  # the probe no process could be made for
    for workload in WORKLOADS:
        if not all(installed(p) for p in workload.needs):
            continue
        if unstarted is None:
            print(f"threadguard doctor: measuring {workload.name} with one thread per pool...",
                  file=progress, flush=True)
            baseline = _probe(workload.code, timeout)
            if baseline.get("started") is False:
                unstarted = baseline
                print(f"threadguard doctor: {baseline['error']}; the verdict comes from the "
                      "limits alone", file=progress, flush=True)
        else:
            baseline = unstarted  # no second try: it would fail the same way
        predictions.append(predict(facts, workload, baseline, own, _python(), _guard()))
    worst = next((p for status in ("fails", "error", "slow") for p in predictions
                  if p.status == status), None)
    if unstarted is not None:
        verdict = no_room_verdict(facts, own, unstarted["error"], unstarted["errno"], worst,
                                  "nothing could be measured")
    elif worst is None:
        verdict = Verdict("ok", "no limit is in the way of the typical workloads"
                          if predictions else "numpy and torch are not installed: nothing to "
                                              "predict")
    else:
        verdict = replace(worst.verdict, workload=worst.workload, thread_cost=worst.thread_cost)
    return {"facts": facts.to_json(), "workloads": [p.to_json() for p in predictions],
            "verdict": verdict.to_json()}


def _pump(proc: "subprocess.Popen[bytes]", echo: Tuple[TextIO, TextIO], deadline: Optional[float]
          ) -> Tuple[str, bool]:
    """Copy the child's stdout and stderr through as they come, keeping the
    tail of both; True when the deadline passed. One thread: the doctor may
    run where no task is left for another."""
    selector = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    selector.register(proc.stdout, selectors.EVENT_READ, echo[0])
    selector.register(proc.stderr, selectors.EVENT_READ, echo[1])
    kept = bytearray()
    open_streams = 2
    while open_streams:
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            return kept.decode(errors="replace"), True
        for key, _ in selector.select(wait):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                open_streams -= 1
                continue
            key.data.write(chunk.decode(errors="replace"))
            key.data.flush()
            kept += chunk
            del kept[:-_OUTPUT_KEPT]
    return kept.decode(errors="replace"), False


def _read_reports(folder: Path) -> Tuple[List[Failure], List[Stats]]:
    """Failures and final reports of every guarded process of the run."""
    failures: Dict[int, List[Failure]] = {}
    reports = []
    for path in sorted(folder.glob("report-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pid = int(data.get("pid", 0))
        found = [Failure.from_json(r) for r in data.get("failures", ())]
        if path.name.endswith(".failures.json"):
            failures.setdefault(pid, found)
            continue
        failures[pid] = found  # the final report has them all
        try:
            reports.append(Stats.from_json(data))
        except ValueError:
            pass
    return [f for pid in sorted(failures) for f in failures[pid]], reports


def _program_setters(reports: Sequence[Stats]) -> List[Tuple[str, int]]:
    """The pool-size calls the program made itself (observe mode records
    them unchanged), largest first: ("torch.set_num_threads()", 64)."""
    largest: Dict[str, int] = {}
    for report in reports:
        for pool in report.pools:
            if pool.variable.endswith("()") and pool.source == "user":
                largest[pool.variable] = max(largest.get(pool.variable, 0), pool.value)
    return sorted(largest.items(), key=lambda item: -item[1])


def check_command(argv: Sequence[str], timeout: Optional[float], as_json: bool
                  ) -> Dict[str, Any]:
    """Run argv guarded in observe mode and explain what happened."""
    facts = gather()
    echo = (sys.stderr, sys.stderr) if as_json else (sys.stdout, sys.stderr)
    with tempfile.TemporaryDirectory(prefix="threadguard-doctor-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o777)  # a command that drops privileges still writes its report
        env = preload_environment(str(_native.packaged_path()),
                                  report=str(folder / "report-%p.json"),
                                  settings={"THREADGUARD_OBSERVE": "1"})
        try:
            proc = subprocess.Popen(list(argv), env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) \
                as exc:
            raise FileNotFoundError(f"cannot run {argv[0]}: {exc.strerror}") from None
        except OSError as exc:
            # No process could be made (EAGAIN, ENOMEM): that is the failure to explain.
            own = psutil.Process().num_threads()
            return {"facts": facts.to_json(),
                    "run": {"command": list(argv), "exit": None, "timed_out": False,
                            "signal": None, "failures": [], "messages": [],
                            "threads_created": {}, "guarded_processes": 0,
                            "error": f"could not start: {_errno_text(exc)}"},
                    "verdict": no_room_verdict(
                        facts, own, f"could not start {argv[0]}: {_errno_text(exc)}",
                        errno.errorcode.get(exc.errno or 0, "unknown"), None,
                        "it never ran").to_json()}
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            output, timed_out = _pump(proc, echo, deadline)
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGINT)
            output, timed_out = "", False
        if timed_out:
            os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
        failures, reports = _read_reports(folder)
    matches = find_messages(output)
    verdict = explain_run(facts, argv, _guard(), None if timed_out else returncode, timed_out,
                          failures, matches, _program_setters(reports))
    threads: Dict[str, int] = {}
    for report in reports:
        for lib in report.libraries:
            threads[lib.name] = threads.get(lib.name, 0) + lib.created
    return {
        "facts": facts.to_json(),
        "run": {"command": list(argv), "exit": returncode, "timed_out": timed_out,
                "signal": signal.Signals(-returncode).name if returncode < 0 else None,
                "failures": [{**asdict(f), "limits": dict(f.limits)} for f in failures],
                "messages": [{"name": m.message.name, "source": m.message.source,
                              "line": m.line, "meaning": m.message.meaning, **m.figures}
                             for m in matches],
                "threads_created": threads, "guarded_processes": len(reports)},
        "verdict": verdict.to_json(),
    }
