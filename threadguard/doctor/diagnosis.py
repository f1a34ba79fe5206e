"""Verdicts: which limit a workload would hit first, which one a failed run
really hit, and the commands that avoid it.

Pure functions of the figures gathered by facts.gather(), the probes'
baselines and a run's failure records and output; the doctor command does
the running and the printing.
"""

from __future__ import annotations

import shlex
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import _native
from .._policy import rules
from .._stats import Failure
from .._wording import count
from .facts import MIB, thread_cost
from .messages import MEMORY, POLICY, TASKS, Match

__all__ = ["WORKLOADS", "Workload", "env_command", "explain_run", "no_room_verdict", "predict"]

# The limits by the names the library gives them (its failures, its headroom).
NPROC, PIDS, KERNEL, ADDRESS_SPACE = (rules().nproc, rules().pids, rules().kernel,
                                      rules().address_space)


class Workload:
    """A typical job: the Python code, the packages it needs and the pools
    it starts (library kind -> the facts' pool size key)."""

    def __init__(self, name: str, code: str, needs: Sequence[str], pools: Sequence[str]):
        self.name, self.code, self.needs, self.pools = name, code, tuple(needs), tuple(pools)


WORKLOADS: Tuple[Workload, ...] = (
    Workload("import numpy", "import numpy", ("numpy",), ("openblas",)),
    # torch imports numpy when it is installed: its OpenBLAS starts too.
    Workload("import torch", "import torch", ("torch",), ("openblas",)),
    Workload("torch training step",
             "import torch; m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), "
             "torch.nn.Linear(512, 10)); x = torch.randn(256, 256); "
             "torch.nn.functional.cross_entropy(m(x), torch.randint(0, 10, (256,))).backward()",
             ("torch",), ("openblas", "torch")),
)


def _task_room(facts: Dict[str, Any], own_tasks: int) -> List[Tuple[str, int]]:
    """Tasks a new process may start under each task limit, not counting
    the doctor's own."""
    t = facts["tasks"]
    room = []
    if t["nproc_applies"] and t["uid_tasks"] is not None:
        room.append((NPROC, t["rlimit_nproc_soft"] - (t["uid_tasks"] - own_tasks)))
    if t["pids_max"] is not None and t["pids_current"] is not None:
        room.append((PIDS, t["pids_max"] - (t["pids_current"] - own_tasks)))
    if t["threads_max"] is not None and t["threads_total"] is not None:
        room.append((KERNEL, t["threads_max"] - t["threads_total"]))
    return room


def _fitting_pool(facts: Dict[str, Any], pools: Sequence[str], base_tasks: int,
                  base_vmsize: Optional[int], own_tasks: int) -> int:
    """The largest pool size, the same for every pool, that fits every
    limit with the reserve, and no more than the CPU allocation."""
    fit = int(facts["cpus"]["allocation"])
    for _, room in _task_room(facts, own_tasks):
        fit = min(fit, 1 + max(0, room - base_tasks - rules().reserve) // max(1, len(pools)))
    as_limit = facts["address_space"]["rlimit_as"]
    if as_limit is not None and base_vmsize is not None:
        stack = facts["address_space"]["default_thread_stack"]
        per_step = sum(thread_cost(p, stack, facts["address_space"]["arenas_capped"])
                       for p in pools)
        capped = facts["address_space"]["arenas_capped"]
        usable = _native.address_space_usable(as_limit, base_vmsize,
                                              rules().capped_arenas if capped else 0)
        fit = min(fit, 1 + max(0, usable) // per_step)
    return max(1, fit)


def env_command(pool: int, argv: Sequence[str], address_space: bool = False) -> str:
    """A shell line that runs argv with every pool at `pool` threads."""
    env = [f"{variable}={pool}" for variable in rules().pool_variables]
    if address_space:
        env.append(f"MALLOC_ARENA_MAX={rules().capped_arenas}")
    return " ".join(env) + " " + shlex.join(argv)


def predict(facts: Dict[str, Any], workload: Workload, baseline: Dict[str, Any],
            own_tasks: int, python: Sequence[str], guard: Sequence[str]) -> Dict[str, Any]:
    """Which limit workload would hit first here, at which thread, and the
    commands that avoid it. baseline: the probe's {"tasks", "vmsize"} with
    every pool at one thread (vmsize None if unknown)."""
    stack = facts["address_space"]["default_thread_stack"]
    capped = facts["address_space"]["arenas_capped"]
    sizes = facts["pools"]
    workers = [(p, sizes[p] - 1) for p in workload.pools]
    started = sum(n for _, n in workers)
    base_tasks = int(baseline.get("tasks") or 1)
    base_vmsize = baseline.get("vmsize")
    hits: List[Tuple[int, str]] = []  # (the new thread that fails, the limit)
    for limit, room in _task_room(facts, own_tasks):
        if base_tasks + started > room:
            hits.append((max(1, room - base_tasks + 1), limit))
    as_limit = facts["address_space"]["rlimit_as"]
    costs = {p: thread_cost(p, stack, capped) for p in workload.pools}
    if as_limit is not None and base_vmsize is not None:
        used = base_vmsize
        for index, kind in enumerate((k for k, n in workers for _ in range(n)), 1):
            used += costs[kind]
            if used > as_limit:
                hits.append((index, ADDRESS_SPACE))
                break
    argv = [*python, "-c", workload.code]
    result: Dict[str, Any] = {
        "workload": workload.name, "command": shlex.join(argv),
        "pools": {p: sizes[p] for p in workload.pools}, "threads_started": started,
        "baseline": baseline, "thread_cost": costs,
    }
    allocation = facts["cpus"]["allocation"]
    fit = _fitting_pool(facts, workload.pools, base_tasks, base_vmsize, own_tasks)
    fixes = [shlex.join([*guard, "run", "--", *argv])]
    probe_error = baseline.get("error")
    if probe_error and baseline.get("started") is not False:
        # The probe ran with every pool at one thread and still did not
        # work: nothing threads-related to predict, and no thread setting fixes it.
        _unmeasured(result, facts, workload, probe_error)
        return result
    if hits:
        thread, limit = min(hits)
        result.update(status="fails", limit=limit, thread=thread)
        result["explanation"] = (
            f"{workload.name} starts {count(started, 'thread')} "
            f"({_pool_text(result['pools'])}); "
            f"new thread {thread} would fail against {limit}: "
            f"{_limit_text(facts, limit, own_tasks)}")
        if limit == ADDRESS_SPACE:
            need = (base_vmsize or 0) + sum(costs[k] * n for k, n in workers)
            result["explanation"] = (
                f"{workload.name} starts {count(started, 'thread')} "
                f"({_pool_text(result['pools'])}) and "
                f"would need about {_mib(need)} of address space: {_mib(base_vmsize)} for the "
                f"program itself and {_cost_text(costs, stack)} per thread; "
                f"{_limit_text(facts, limit)}, so thread creation fails partway (at about "
                f"thread {thread} or earlier)")
        fixes.append(env_command(fit, argv, limit == ADDRESS_SPACE))
    elif any(sizes[p] > allocation for p in workload.pools):
        result.update(status="slow", limit=facts["cpus"]["allocation_from"], thread=None)
        result["explanation"] = (
            f"{workload.name} starts pools of {_pool_text(result['pools'])} threads on "
            f"{allocation} CPUs ({facts['cpus']['allocation_from']}): oversubscribed, the "
            f"threads take turns")
        fixes.append(env_command(min(fit, allocation), argv))
    else:
        result.update(status="ok", limit=None, thread=None,
                      explanation=f"{workload.name} fits: {count(started, 'new thread')}, "
                                  "within every limit")
        fixes = []
    result["commands"] = fixes
    return result


def _unmeasured(result: Dict[str, Any], facts: Dict[str, Any], workload: Workload,
                error: str) -> None:
    """A probe with one thread per pool that failed or did not finish."""
    result.update(thread=None, commands=[])
    if error.startswith("did not finish"):
        result.update(status="error", limit=None,
                      explanation=f"{workload.name} could not be measured: with one thread per "
                                  f"pool it {error}")
        return
    as_limit = facts["address_space"]["rlimit_as"]
    text = f"{workload.name} fails even with one thread per pool ({error})"
    if as_limit is not None:
        hard = facts["address_space"].get("rlimit_as_hard")
        text += (f": under RLIMIT_AS {_mib(as_limit)} the program itself does not fit, so no "
                 f"thread setting fixes it; only a higher address-space limit does"
                 + (f" (`ulimit -v {hard // 1024}`, the hard limit)" if isinstance(hard, int)
                    and hard > as_limit else " (ask for one: the hard limit is reached)"
                    if isinstance(hard, int) else ""))
    result.update(status="fails", limit=ADDRESS_SPACE if as_limit is not None else None,
                  explanation=text)


def _pool_text(pools: Dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in pools.items())


def _mib(n: Optional[int]) -> str:
    return "unknown" if n is None else f"{n / MIB:.0f} MiB"


def _cost_text(costs: Dict[str, int], stack: int) -> str:
    parts = []
    for kind, cost in costs.items():
        extra = cost - stack
        what = {"openblas": "buffer", "torch": "malloc arena"}.get(kind, "extra")
        parts.append(f"{kind} {_mib(cost)} ({_mib(stack)} stack"
                     + (f" + {_mib(extra)} {what})" if extra else ")"))
    return ", ".join(parts)


def _limit_text(facts: Dict[str, Any], limit: str, own_tasks: int = 0) -> str:
    t, a = facts["tasks"], facts["address_space"]
    if limit == NPROC:
        besides = " besides this doctor" if own_tasks else ""
        return (f"RLIMIT_NPROC is {t['rlimit_nproc_soft']} (hard {t['rlimit_nproc_hard']}) and "
                f"user {facts['user']['name']} runs "
                f"{count(t['uid_tasks'] - own_tasks, 'task')}{besides}")
    if limit == PIDS:
        besides = " besides this doctor" if own_tasks else ""
        return (f"the cgroup allows {t['pids_max']} tasks and holds "
                f"{count(t['pids_current'] - own_tasks, 'task')}{besides}")
    if limit == KERNEL:
        return f"the kernel allows {t['threads_max']} threads and runs {t['threads_total']}"
    if limit == ADDRESS_SPACE:
        return f"RLIMIT_AS is {_mib(a['rlimit_as'])}"
    return limit


def _failure_text(f: Failure) -> str:
    lim = f.limits
    figures = {
        NPROC: f"the user had {count(_int(lim.get('uid_tasks')), 'task')} of "
                        f"RLIMIT_NPROC "
                        f"{lim.get('rlimit_nproc_soft')}",
        PIDS: f"the cgroup held {count(_int(lim.get('pids_current')), 'task')} "
                           f"of pids.max "
                           f"{lim.get('pids_max')}",
        ADDRESS_SPACE: f"VmSize was {_mib(_int(lim.get('vmsize')))} of RLIMIT_AS "
                     f"{_mib(_int(lim.get('rlimit_as')))}, and the thread needed a "
                     f"{_mib(f.stack)} stack",
        KERNEL: f"the kernel ran {lim.get('threads_total')} of threads-max "
                              f"{lim.get('threads_max')}",
    }
    return figures.get(f.cause, f"no limit was full ({f.cause})")


def _int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) else None


_LIBRARY_NAMES = {"openblas": "OpenBLAS", "openmp": "OpenMP (libgomp)", "mkl": "MKL",
                  "torch": "PyTorch", "python": "Python", "blis": "BLIS"}


def explain_run(facts: Dict[str, Any], argv: Sequence[str], guard: Sequence[str],
                returncode: Optional[int], timed_out: bool, failures: Sequence[Failure],
                matches: Sequence[Match], setters: Sequence[Tuple[str, int]] = ()
                ) -> Dict[str, Any]:
    """What happened in a run: the limit really hit, by whom, and the fix.
    setters: the pool-size calls the program made itself (name, size), like
    ("torch.set_num_threads()", 64): no variable overrides those."""
    verdict: Dict[str, Any] = {"status": "ok", "limit": None, "library": None, "thread": None,
                               "error": None, "commands": []}
    openblas_guess = next((m for m in matches if m.message.name == "openblas-nproc"), None)
    if failures:
        f = failures[0]
        library = _LIBRARY_NAMES.get(f.kind, f.kind)
        verdict.update(status="fails", limit=None if f.cause == "unknown" else f.cause,
                       library=library, library_file=f.library, thread=f.thread, error=f.error)
        text = (f"{library} ({f.library}) asked for its thread {f.thread} and pthread_create "
                f"failed with {f.error} ({f.message}): {f.cause}, since {_failure_text(f)}")
        if f.cause == ADDRESS_SPACE:
            cost = thread_cost(f.kind, f.stack, facts["address_space"]["arenas_capped"])
            verdict["thread_cost"] = {"stack": f.stack, "extra": cost - f.stack, "total": cost}
            extra = {"openblas": "32 MiB buffer"}.get(f.kind, "malloc arena")
            text += (f"; each {library} thread costs {_mib(cost)} of address space "
                     f"({_mib(f.stack)} stack + {extra})")
            if openblas_guess is not None:
                text += ("; OpenBLAS's own message blames RLIMIT_NPROC, wrongly: the task "
                         f"limit had {_nproc_free(f)} free")
        if len(failures) > 1:
            text += f" ({count(len(failures), 'creation')} failed in all)"
        verdict["explanation"] = text
        pool = max(1, min(facts["cpus"]["allocation"], f.thread - 1 - rules().reserve))
        fixes = [shlex.join([*guard, "run", "--", *argv])]
        t = facts["tasks"]
        raisable = (t["rlimit_nproc_hard"] or 0) > (t["rlimit_nproc_soft"] or 0)
        if f.cause == NPROC and raisable:
            fixes.append(shlex.join([*guard, "run", "--nproc", "max", "--", *argv]))
        overriding = [(name, n) for name, n in setters if n > pool]
        if overriding:
            calls = ", ".join(f"{name[:-2]}({n})" for name, n in overriding)
            verdict["explanation"] += (
                f". The thread variables alone cannot fix this run: the program itself calls "
                f"{calls}, which overrides them; `threadguard run` lowers that call to what "
                f"fits (or change it in the program)")
        else:
            fixes.append(env_command(pool, argv, f.cause == ADDRESS_SPACE))
        verdict["commands"] = fixes
    elif matches:
        m = matches[0]
        limit = _limit_for_message(facts, m.message.causes)
        verdict.update(status="fails", limit=limit, library=m.message.source)
        verdict["explanation"] = (f"{m.message.source} printed \"{m.line}\": {m.message.meaning}"
                                  + (f"; the limit in the way here is {limit}" if limit else ""))
        verdict["commands"] = [shlex.join([*guard, "run", "--", *argv])]
    elif timed_out:
        verdict.update(status="hang", explanation="the command did not finish in time and was "
                       "stopped; no thread failed (a pool missing a worker can spin forever)")
    elif returncode not in (0, None):
        verdict.update(status="error", explanation=f"the command exited with status "
                       f"{returncode}, but no thread creation failed and no known message "
                       f"was printed: the limits are not the cause")
    else:
        verdict["explanation"] = "the command ran; no thread creation failed"
    return verdict


def _full_task_limits(facts: Dict[str, Any]) -> List[str]:
    """The task limits with no task free now, this process's own counted."""
    t = facts["tasks"]
    full = []
    if t["nproc_applies"] and t["uid_tasks"] is not None \
            and t["uid_tasks"] >= t["rlimit_nproc_soft"]:
        full.append(NPROC)
    if t["pids_max"] is not None and t["pids_current"] is not None \
            and t["pids_current"] >= t["pids_max"]:
        full.append(PIDS)
    if t["threads_max"] is not None and t["threads_total"] is not None \
            and t["threads_total"] >= t["threads_max"]:
        full.append(KERNEL)
    return full


def no_room_verdict(facts: Dict[str, Any], own_tasks: int, error: str, errno_name: str,
                    worst: Optional[Dict[str, Any]], consequence: str) -> Dict[str, Any]:
    """The verdict when the doctor could not start a process at all: the
    limits read are the whole answer. worst: the workloads' worst prediction
    made without a probe, if any; consequence: what the failure cost, in
    words ("nothing could be measured")."""
    full = _full_task_limits(facts)
    limit = full[0] if full else (worst or {}).get("limit")
    if limit is None and errno_name == "ENOMEM":
        limit = ADDRESS_SPACE if facts["address_space"]["rlimit_as"] is not None else "memory"
    text = f"{error}, so {consequence}"
    if full:
        t = facts["tasks"]
        figures = {
            NPROC: f"RLIMIT_NPROC is {t['rlimit_nproc_soft']} (hard "
                            f"{t['rlimit_nproc_hard']}) and user {facts['user']['name']} runs "
                            f"{count(t['uid_tasks'], 'task')} already, this "
                            f"doctor's {own_tasks} included",
            PIDS: f"the cgroup allows {t['pids_max']} tasks and holds "
                               f"{t['pids_current']}, this doctor's {own_tasks} included",
            KERNEL: f"the kernel allows {t['threads_max']} threads and runs "
                                  f"{t['threads_total']}"}
        text += f": {figures[full[0]]}, so no task is free"
    elif limit is not None:
        text += f"; the limit most likely in the way is {limit}"
    else:
        text += "; no task limit read here is full, so the cause is outside them"
    verdict: Dict[str, Any] = {"status": "fails", "limit": limit, "workload": None,
                               "thread": None, "commands": [], "thread_cost": None,
                               "explanation": text}
    if worst is not None and worst["status"] == "fails":
        verdict.update(workload=worst["workload"], thread=worst["thread"],
                       commands=worst["commands"], thread_cost=worst["thread_cost"])
        verdict["explanation"] = (f"{text}. Once this doctor has exited: "
                                  f"{worst['explanation']}")
    return verdict


def _nproc_free(f: Failure) -> str:
    free = f.limits.get("nproc_free")
    return "all its tasks" if not isinstance(free, int) else count(free, "task")


def _limit_for_message(facts: Dict[str, Any], causes: str) -> Optional[str]:
    """The limit a message points to, from what this node limits."""
    if causes == POLICY:
        return "seccomp (clone3)"
    if causes != TASKS and facts["address_space"]["rlimit_as"] is not None:
        return ADDRESS_SPACE
    if causes == MEMORY:
        return "cgroup memory limit" if facts["memory"]["cgroup_limit"] is not None else None
    t = facts["tasks"]
    if t["nproc_applies"]:
        return NPROC
    if t["pids_max"] is not None:
        return PIDS
    return None
