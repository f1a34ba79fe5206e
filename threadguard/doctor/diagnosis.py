"""Verdicts: which limit a workload would hit first, which one a failed run
really hit, and the commands that avoid it.

Pure functions of the figures gathered by facts.gather(), the probes'
baselines and a run's failure records and output; the doctor command does
the running and the printing.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .. import _native
from .._policy import rules
from .._stats import Failure, Leak
from .._wording import count
from .facts import MIB, Facts, thread_cost
from .messages import MEMORY, POLICY, TASKS, Match

__all__ = ["WORKLOADS", "Prediction", "ThreadCost", "Verdict", "Workload", "env_command",
           "explain_run", "leak_verdict", "no_room_verdict", "predict"]

# The limits by the names the library gives them (its failures, its headroom).
NPROC, PIDS, KERNEL, ADDRESS_SPACE = (rules().nproc, rules().pids, rules().kernel,
                                      rules().address_space)


@dataclass(frozen=True)
class ThreadCost:
    """The address space one thread of the failed kind costs: its stack,
    and the rest (guard page, arena, OpenBLAS's buffer)."""

    stack: int
    extra: int
    total: int


@dataclass(frozen=True)
class Verdict:
    """What is in the way, and the fix.  status: "ok", "fails", "leak"
    (threads that keep growing until a limit stops them), "slow"
    (oversubscribed), "hang" or "error"; limit: the limit's name (None: no
    limit); commands: shell lines that avoid it, each tested to work.  A
    failed run names the library, its file, the thread and the error; a
    prediction the workload; thread_cost is the failed thread's
    (ThreadCost) or, from a prediction, each pool's, by kind."""

    status: str
    explanation: str
    limit: Optional[str] = None
    commands: Tuple[str, ...] = ()
    workload: Optional[str] = None
    library: Optional[str] = None
    library_file: Optional[str] = None
    thread: Optional[int] = None
    error: Optional[str] = None
    thread_cost: Union[ThreadCost, Dict[str, int], None] = None
    site: Optional[str] = None  # a leak's Python start site

    def to_json(self) -> Dict[str, Any]:
        """The verdict as the JSON the doctor prints."""
        return asdict(self)


@dataclass(frozen=True)
class Prediction:
    """What one typical workload would do here (see predict()): the pools
    it starts, the probe's baseline and the verdict for it."""

    workload: str
    command: str
    pools: Dict[str, int]
    threads_started: int
    baseline: Dict[str, Any]
    thread_cost: Dict[str, int]
    verdict: Verdict

    @property
    def status(self) -> str:
        return self.verdict.status

    def to_json(self) -> Dict[str, Any]:
        """One row of the doctor's "workloads": the verdict's fields beside
        the workload's own."""
        row = {"workload": self.workload, "command": self.command, "pools": dict(self.pools),
               "threads_started": self.threads_started, "baseline": dict(self.baseline),
               "thread_cost": dict(self.thread_cost)}
        verdict = self.verdict
        row.update(status=verdict.status, limit=verdict.limit, thread=verdict.thread,
                   explanation=verdict.explanation, commands=list(verdict.commands))
        return row


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


def _task_room(facts: Facts, own_tasks: int) -> List[Tuple[str, int]]:
    """Tasks a new process may start under each task limit, not counting
    the doctor's own."""
    t = facts.tasks
    room = []
    if t.nproc_applies and t.uid_tasks is not None and t.rlimit_nproc_soft is not None:
        room.append((NPROC, t.rlimit_nproc_soft - (t.uid_tasks - own_tasks)))
    if t.pids_max is not None and t.pids_current is not None:
        room.append((PIDS, t.pids_max - (t.pids_current - own_tasks)))
    if t.threads_max is not None and t.threads_total is not None:
        room.append((KERNEL, t.threads_max - t.threads_total))
    return room


def _fitting_pool(facts: Facts, pools: Sequence[str], base_tasks: int,
                  base_vmsize: Optional[int], own_tasks: int) -> int:
    """The largest pool size, the same for every pool, that fits every
    limit with the reserve, and no more than the CPU allocation."""
    fit = int(facts.cpus.allocation)
    for _, room in _task_room(facts, own_tasks):
        fit = min(fit, 1 + max(0, room - base_tasks - rules().reserve) // max(1, len(pools)))
    as_limit = facts.address_space.rlimit_as
    if as_limit is not None and base_vmsize is not None:
        stack = facts.address_space.default_thread_stack
        per_step = sum(thread_cost(p, stack, facts.address_space.arenas_capped)
                       for p in pools)
        capped = facts.address_space.arenas_capped
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


def predict(facts: Facts, workload: Workload, baseline: Dict[str, Any],
            own_tasks: int, python: Sequence[str], guard: Sequence[str]) -> Prediction:
    """Which limit workload would hit first here, at which thread, and the
    commands that avoid it. baseline: the probe's {"tasks", "vmsize"} with
    every pool at one thread (vmsize None if unknown)."""
    stack = facts.address_space.default_thread_stack
    capped = facts.address_space.arenas_capped
    sizes = facts.pools
    workers = [(p, sizes[p] - 1) for p in workload.pools]
    started = sum(n for _, n in workers)
    base_tasks = int(baseline.get("tasks") or 1)
    base_vmsize = baseline.get("vmsize")
    hits: List[Tuple[int, str]] = []  # (the new thread that fails, the limit)
    for limit, room in _task_room(facts, own_tasks):
        if base_tasks + started > room:
            hits.append((max(1, room - base_tasks + 1), limit))
    as_limit = facts.address_space.rlimit_as
    costs = {p: thread_cost(p, stack, capped) for p in workload.pools}
    if as_limit is not None and base_vmsize is not None:
        used = base_vmsize
        for index, kind in enumerate((k for k, n in workers for _ in range(n)), 1):
            used += costs[kind]
            if used > as_limit:
                hits.append((index, ADDRESS_SPACE))
                break
    argv = [*python, "-c", workload.code]
    pools = {p: sizes[p] for p in workload.pools}
    prediction = Prediction(workload.name, shlex.join(argv), pools, started, baseline, costs,
                            Verdict("ok", ""))
    allocation = facts.cpus.allocation
    fit = _fitting_pool(facts, workload.pools, base_tasks, base_vmsize, own_tasks)
    fixes = [shlex.join([*guard, "run", "--", *argv])]
    probe_error = baseline.get("error")
    if probe_error and baseline.get("started") is not False:
        # The probe ran with every pool at one thread and still did not
        # work: nothing threads-related to predict, and no thread setting fixes it.
        return replace(prediction, verdict=_unmeasured(facts, workload, probe_error))
    if hits:
        thread, limit = min(hits)
        explanation = (
            f"{workload.name} starts {count(started, 'thread')} ({_pool_text(pools)}); "
            f"new thread {thread} would fail against {limit}: "
            f"{_limit_text(facts, limit, own_tasks)}")
        if limit == ADDRESS_SPACE:
            need = (base_vmsize or 0) + sum(costs[k] * n for k, n in workers)
            explanation = (
                f"{workload.name} starts {count(started, 'thread')} ({_pool_text(pools)}) and "
                f"would need about {_mib(need)} of address space: {_mib(base_vmsize)} for the "
                f"program itself and {_cost_text(costs, stack)} per thread; "
                f"{_limit_text(facts, limit)}, so thread creation fails partway (at about "
                f"thread {thread} or earlier)")
        fixes.append(env_command(fit, argv, limit == ADDRESS_SPACE))
        verdict = Verdict("fails", explanation, limit, tuple(fixes), thread=thread)
    elif any(sizes[p] > allocation for p in workload.pools):
        verdict = Verdict(
            "slow", f"{workload.name} starts pools of {_pool_text(pools)} threads on "
                    f"{allocation} CPUs ({facts.cpus.allocation_from}): oversubscribed, the "
                    f"threads take turns",
            facts.cpus.allocation_from, (*fixes, env_command(min(fit, allocation), argv)))
    else:
        verdict = Verdict("ok", f"{workload.name} fits: {count(started, 'new thread')}, "
                                "within every limit")
    return replace(prediction, verdict=verdict)


def _unmeasured(facts: Facts, workload: Workload, error: str) -> Verdict:
    """The verdict on a probe with one thread per pool that failed or did
    not finish."""
    if error.startswith("did not finish"):
        return Verdict("error", f"{workload.name} could not be measured: with one thread per "
                                f"pool it {error}")
    as_limit = facts.address_space.rlimit_as
    text = f"{workload.name} fails even with one thread per pool ({error})"
    if as_limit is not None:
        hard = facts.address_space.rlimit_as_hard
        text += (f": under RLIMIT_AS {_mib(as_limit)} the program itself does not fit, so no "
                 f"thread setting fixes it; only a higher address-space limit does"
                 + (f" (`ulimit -v {hard // 1024}`, the hard limit)" if isinstance(hard, int)
                    and hard > as_limit else " (ask for one: the hard limit is reached)"
                    if isinstance(hard, int) else ""))
    return Verdict("fails", text, ADDRESS_SPACE if as_limit is not None else None)


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


def _limit_text(facts: Facts, limit: str, own_tasks: int = 0) -> str:
    t, a = facts.tasks, facts.address_space
    if limit == NPROC:
        besides = " besides this doctor" if own_tasks else ""
        return (f"RLIMIT_NPROC is {t.rlimit_nproc_soft} (hard {t.rlimit_nproc_hard}) and "
                f"user {facts.user.name} runs "
                f"{count((t.uid_tasks or 0) - own_tasks, 'task')}{besides}")
    if limit == PIDS:
        besides = " besides this doctor" if own_tasks else ""
        return (f"the cgroup allows {t.pids_max} tasks and holds "
                f"{count((t.pids_current or 0) - own_tasks, 'task')}{besides}")
    if limit == KERNEL:
        return f"the kernel allows {t.threads_max} threads and runs {t.threads_total}"
    if limit == ADDRESS_SPACE:
        return f"RLIMIT_AS is {_mib(a.rlimit_as)}"
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
                  "torch": "PyTorch", "python": "Python", "blis": "BLIS",
                  "cuda": "CUDA"}


def explain_run(facts: Facts, argv: Sequence[str], guard: Sequence[str],
                returncode: Optional[int], timed_out: bool, failures: Sequence[Failure],
                matches: Sequence[Match], setters: Sequence[Tuple[str, int]] = ()
                ) -> Verdict:
    """What happened in a run: the limit really hit, by whom, and the fix.
    setters: the pool-size calls the program made itself (name, size), like
    ("torch.set_num_threads()", 64): no variable overrides those."""
    openblas_guess = next((m for m in matches if m.message.name == "openblas-nproc"), None)
    leaked = next(((f, f.leak) for f in failures if f.leak is not None), None)
    if leaked is not None:
        return leak_verdict(*leaked, len(failures))
    if failures:
        f = failures[0]
        library = _LIBRARY_NAMES.get(f.kind, f.kind)
        text = (f"{library} ({f.library}) asked for its thread {f.thread} and pthread_create "
                f"failed with {f.error} ({f.message}): {f.cause}, since {_failure_text(f)}")
        cost: Optional[ThreadCost] = None
        if f.cause == ADDRESS_SPACE:
            total = thread_cost(f.kind, f.stack, facts.address_space.arenas_capped)
            cost = ThreadCost(f.stack, total - f.stack, total)
            extra = {"openblas": "32 MiB buffer"}.get(f.kind, "malloc arena")
            text += (f"; each {library} thread costs {_mib(total)} of address space "
                     f"({_mib(f.stack)} stack + {extra})")
            if openblas_guess is not None:
                text += ("; OpenBLAS's own message blames RLIMIT_NPROC, wrongly: the task "
                         f"limit had {_nproc_free(f)} free")
        if len(failures) > 1:
            text += f" ({count(len(failures), 'creation')} failed in all)"
        pool = max(1, min(facts.cpus.allocation, f.thread - 1 - rules().reserve))
        fixes = [shlex.join([*guard, "run", "--", *argv])]
        t = facts.tasks
        raisable = (t.rlimit_nproc_hard or 0) > (t.rlimit_nproc_soft or 0)
        if f.cause == NPROC and raisable:
            fixes.append(shlex.join([*guard, "run", "--nproc", "max", "--", *argv]))
        overriding = [(name, n) for name, n in setters if n > pool]
        if overriding:
            calls = ", ".join(f"{name[:-2]}({n})" for name, n in overriding)
            text += (f". The thread variables alone cannot fix this run: the program itself "
                     f"calls {calls}, which overrides them; `threadguard run` lowers that call "
                     f"to what fits (or change it in the program)")
        else:
            fixes.append(env_command(pool, argv, f.cause == ADDRESS_SPACE))
        return Verdict("fails", text, None if f.cause == "unknown" else f.cause, tuple(fixes),
                       library=library, library_file=f.library, thread=f.thread,
                       error=f.error, thread_cost=cost)
    if matches:
        m = matches[0]
        limit = _limit_for_message(facts, m.message.causes)
        return Verdict("fails", f"{m.message.source} printed \"{m.line}\": {m.message.meaning}"
                                + (f"; the limit in the way here is {limit}" if limit else ""),
                       limit, (shlex.join([*guard, "run", "--", *argv]),),
                       library=m.message.source)
    if timed_out:
        return Verdict("hang", "the command did not finish in time and was stopped; no thread "
                               "failed (a pool missing a worker can spin forever)")
    if returncode not in (0, None):
        return Verdict("error", f"the command exited with status {returncode}, but no thread "
                                f"creation failed and no known message was printed: the "
                                f"limits are not the cause")
    return Verdict("ok", "the command ran; no thread creation failed")


def leak_verdict(f: Failure, leak: Leak, failed: int) -> Verdict:
    """A failed creation that came after the library's leak rule held: the
    leak is named, by its Python start site or its library, and no command
    is suggested (no limit or pool size lets threads that never end go on
    being started)."""
    if leak.site is not None:
        who = f"Python threads started at {leak.site}"
        fix = ("shut the executor down (a with block or shutdown()), join the thread, or start "
               "one pool and reuse it")
    else:
        name = _LIBRARY_NAMES.get(leak.kind, "")
        who = f"threads of {leak.library}" + (f" ({name})" if leak.kind in _LIBRARY_NAMES else "")
        fix = ("find the call into it that starts a thread each time (`threadguard top` shows "
               "the count growing as the job runs) and make the threads end, or start them once")
    failing = (f"{_LIBRARY_NAMES[f.kind]} ({f.library})" if f.kind in _LIBRARY_NAMES
               else f.library)
    text = (f"a thread leak: {leak.live} {who} were alive when the creation failed, "
            f"of {count(leak.created, 'thread')} created there; they had grown from "
            f"{leak.settled} in {leak.steps} steps without ending. Then {failing} "
            f"asked for its thread {f.thread} and pthread_create failed with "
            f"{f.error} ({f.message}): {f.cause}, since {_failure_text(f)}"
            + (f" ({count(failed, 'creation')} failed in all)" if failed > 1 else "")
            + f". No limit or pool size fixes a leak: {fix}")
    return Verdict("leak", text, None if f.cause == "unknown" else f.cause, (),
                   library=leak.library or "Python", library_file=leak.path or None,
                   thread=f.thread, error=f.error, site=leak.site)


def _full_task_limits(facts: Facts) -> List[str]:
    """The task limits with no task free now, this process's own counted."""
    t = facts.tasks
    full = []
    if t.nproc_applies and t.uid_tasks is not None and t.rlimit_nproc_soft is not None \
            and t.uid_tasks >= t.rlimit_nproc_soft:
        full.append(NPROC)
    if t.pids_max is not None and t.pids_current is not None \
            and t.pids_current >= t.pids_max:
        full.append(PIDS)
    if t.threads_max is not None and t.threads_total is not None \
            and t.threads_total >= t.threads_max:
        full.append(KERNEL)
    return full


def no_room_verdict(facts: Facts, own_tasks: int, error: str, errno_name: str,
                    worst: Optional[Prediction], consequence: str) -> Verdict:
    """The verdict when the doctor could not start a process at all: the
    limits read are the whole answer. worst: the workloads' worst prediction
    made without a probe, if any; consequence: what the failure cost, in
    words ("nothing could be measured")."""
    full = _full_task_limits(facts)
    limit = full[0] if full else worst.verdict.limit if worst is not None else None
    if limit is None and errno_name == "ENOMEM":
        limit = ADDRESS_SPACE if facts.address_space.rlimit_as is not None else "memory"
    text = f"{error}, so {consequence}"
    if full:
        t = facts.tasks
        figures = {
            NPROC: f"RLIMIT_NPROC is {t.rlimit_nproc_soft} (hard {t.rlimit_nproc_hard}) and "
                   f"user {facts.user.name} runs {count(t.uid_tasks or 0, 'task')} already, "
                   f"this doctor's {own_tasks} included",
            PIDS: f"the cgroup allows {t.pids_max} tasks and holds {t.pids_current}, this "
                  f"doctor's {own_tasks} included",
            KERNEL: f"the kernel allows {t.threads_max} threads and runs {t.threads_total}"}
        text += f": {figures[full[0]]}, so no task is free"
    elif limit is not None:
        text += f"; the limit most likely in the way is {limit}"
    else:
        text += "; no task limit read here is full, so the cause is outside them"
    if worst is not None and worst.status == "fails":
        return Verdict("fails", f"{text}. Once this doctor has exited: "
                                f"{worst.verdict.explanation}", limit, worst.verdict.commands,
                       workload=worst.workload, thread=worst.verdict.thread,
                       thread_cost=worst.thread_cost)
    return Verdict("fails", text, limit)


def _nproc_free(f: Failure) -> str:
    free = f.limits.get("nproc_free")
    return "all its tasks" if not isinstance(free, int) else count(free, "task")


def _limit_for_message(facts: Facts, causes: str) -> Optional[str]:
    """The limit a message points to, from what this node limits."""
    if causes == POLICY:
        return "seccomp (clone3)"
    if causes != TASKS and facts.address_space.rlimit_as is not None:
        return ADDRESS_SPACE
    if causes == MEMORY:
        return "cgroup memory limit" if facts.memory.cgroup_limit is not None else None
    t = facts.tasks
    if t.nproc_applies:
        return NPROC
    if t.pids_max is not None:
        return PIDS
    return None
