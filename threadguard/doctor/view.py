"""The doctor's findings as text for people: sections of figures, then the
verdict and the commands, in colour only on a terminal."""

from __future__ import annotations

import shlex
from typing import Any, Dict, List, Optional

from .._wording import count

__all__ = ["render"]

_COLOURS = {"ok": "32", "slow": "33", "fails": "31", "leak": "31", "hang": "31", "error": "33"}


def _size(n: Optional[int]) -> str:
    if n is None:
        return "unlimited/unknown"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _n(v: Any) -> str:
    return "unknown" if v is None else str(v)


def _facts_lines(f: Dict[str, Any]) -> List[str]:
    t, a, m, c = f["tasks"], f["address_space"], f["memory"], f["cpus"]
    nproc = (f"{_n(t['rlimit_nproc_soft'])} soft / {_n(t['rlimit_nproc_hard'])} hard, "
             f"user {f['user']['name']} runs {count(t['uid_tasks'], 'task')}"
             + ("" if t["nproc_applies"] else " (does not apply: root or unlimited)"))
    lines = [
        "tasks",
        f"  RLIMIT_NPROC        {nproc}",
        f"  cgroup pids         max {_n(t['pids_max'])}, current {_n(t['pids_current'])}",
        f"  kernel              threads-max {_n(t['threads_max'])} (running "
        f"{_n(t['threads_total'])}), pid_max {_n(t['pid_max'])}",
        "address space",
        f"  RLIMIT_AS           {_size(a['rlimit_as'])}",
        f"  RLIMIT_STACK        {_size(a['rlimit_stack'])}: new threads get "
        f"{_size(a['default_thread_stack'])} stacks",
        f"  RLIMIT_NOFILE       {_n(a['rlimit_nofile'])}",
        "memory",
        f"  cgroup limit        {_size(m['cgroup_limit'])}",
        f"  MemAvailable        {_size(m['mem_available'])} of {_size(m['mem_total'])}",
        f"  overcommit          mode {_n(m['overcommit_memory'])}, committed "
        f"{_size(m['committed_as'])} of {_size(m['commit_limit'])}",
        "CPUs",
        f"  allocation          {c['allocation']} (from {c['allocation_from']}); affinity "
        f"{c['affinity']}, online {_n(c['online'])}, physical cores {_n(c['physical'])}",
        "  sources seen        " + (", ".join(
            f"{x['source']} {x['cpus']}" for x in c.get("sources") or []) or "none"),
    ]
    sharing = c.get("sharing")
    if sharing:
        lines.append(f"  sharing             pid {sharing['parent']}'s {sharing['parent_cpus']} "
                     f"CPUs among {sharing['processes']} live guarded processes (pids "
                     f"{', '.join(map(str, sharing['pids']))})")
    if c.get("local_ranks"):
        lines.append(f"  local ranks         {c['local_ranks']} (a launcher's ranks on this "
                     f"node divide the job's CPUs)")
    lines += _platform_lines(f.get("platform") or {})
    lines.append("thread variables")
    lines += [f"  {e['name']}={e['value']}: {e['effect']}" for e in f["environment"]] or [
        "  none set: every library sizes its pool by itself"]
    lines.append("threaded libraries installed (pool each starts here, address space per thread)")
    lines += [f"  {x['library']:<18} {x['package']:<6} {x['pool']:>4} threads {x['starts']}, "
              f"{_size(x['thread_cost'])} each ({x['cost_is']})" for x in f["libraries"]] or [
        "  none found"]
    return lines


def _platform_lines(p: Dict[str, Any]) -> List[str]:
    """glibc and architecture, then one line per feature that cannot work there."""
    if not p:
        return ["platform", "  libthreadguard.so could not be loaded: glibc not checked"]
    limitations = p.get("limitations") or []
    lines = ["platform", f"  glibc {p.get('glibc')} on {p.get('arch')}: "
             + ("every threadguard feature works" if not limitations
                else f"{len(limitations)} feature(s) limited")]
    lines += [f"  limited: {text}" for text in limitations]
    return lines


def render(result: Dict[str, Any], colour: bool) -> str:
    """The doctor's result as text."""
    lines = _facts_lines(result["facts"])
    for w in result.get("workloads", ()):
        lines.append(f"{w['workload']}: {w['status']} - {w['explanation']}")
    run = result.get("run")
    if run is not None and run.get("error"):
        lines.append(f"{shlex.join(run['command'])}: {run['error']}")
    elif run is not None:
        lines.append(f"ran {shlex.join(run['command'])}: exit {run['exit']}"
                     + (f" ({run['signal']})" if run["signal"] else "")
                     + (", stopped after the timeout" if run["timed_out"] else ""))
        for m in run["messages"]:
            lines.append(f"  seen: {m['line']}\n        {m['source']}: {m['meaning']}")
        if run["threads_created"]:
            lines.append("  threads created: " + ", ".join(
                f"{k} {v}" for k, v in run["threads_created"].items()))
    v = result["verdict"]
    head = f"verdict: {v['status']}" + (f" - {v['limit']}" if v.get("limit") else "")
    if colour:
        head = f"\033[1;{_COLOURS.get(v['status'], '0')}m{head}\033[0m"
    lines += ["", head, f"  {v['explanation']}"]
    if v.get("commands"):
        lines.append("  to avoid it, run one of:" if len(v["commands"]) > 1 else
                     "  to avoid it, run:")
        lines += [f"    {cmd}" for cmd in v["commands"]]
    return "\n".join(lines)
