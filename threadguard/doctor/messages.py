"""The messages thread and memory failures print, and what each one means.

Each library words the same few failures its own way, and some guess the
cause wrongly (OpenBLAS names RLIMIT_NPROC for any failed thread, even when
the address space ran out). A Message says who prints it, what it means and
which kind of limit can cause it; the doctor then names the limit from the
measured figures, not from the library's guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Pattern, Tuple

__all__ = ["MESSAGES", "Match", "Message", "find_messages"]

# What can cause a message: a task limit (RLIMIT_NPROC, pids.max,
# threads-max), the address space or memory, either, or a security policy.
TASKS = "tasks"
MEMORY = "memory"
TASKS_OR_MEMORY = "tasks or memory"
POLICY = "policy"


@dataclass(frozen=True)
class Message:
    """A known failure message: a name, the pattern, who prints it, what
    it means and which kind of limit causes it."""

    name: str
    pattern: Pattern[str]
    source: str
    meaning: str
    causes: str


@dataclass(frozen=True)
class Match:
    """A message found in a program's output: the Message, the line, and the
    figures the line gives (OpenBLAS: "thread", "of", "nproc_current")."""

    message: Message
    line: str
    figures: Dict[str, int] = field(default_factory=dict)


def _m(name: str, pattern: str, source: str, meaning: str, causes: str) -> Message:
    return Message(name, re.compile(pattern, re.IGNORECASE), source, meaning, causes)


MESSAGES: Tuple[Message, ...] = (
    _m("openblas-thread",
       r"pthread_create failed for thread (?P<thread>\d+) of (?P<of>\d+)", "OpenBLAS",
       "OpenBLAS could not start one of its worker threads at load (it then raises SIGINT "
       "and carries on with a worker missing); it always suggests RLIMIT_NPROC, whatever "
       "failed", TASKS_OR_MEMORY),
    _m("openblas-nproc", r"RLIMIT_NPROC (?P<nproc_current>-?\d+) current, (?P<nproc_max>-?\d+) max",
       "OpenBLAS", "OpenBLAS printing the task limit after a failed thread: a guess, not a "
       "diagnosis", TASKS_OR_MEMORY),
    _m("openblas-memory", r"OpenBLAS.*Memory allocation still failed", "OpenBLAS",
       "OpenBLAS could not map a thread's buffer (32 MiB each)", MEMORY),
    _m("libgomp-thread", r"libgomp: Thread creation failed", "libgomp (OpenMP)",
       "the OpenMP runtime could not start a team thread and exits the process", TASKS_OR_MEMORY),
    _m("tls", r"cannot allocate memory for thread-local data", "glibc",
       "glibc could not allocate a new thread's thread-local storage and exits with status 127",
       MEMORY),
    _m("python-thread", r"can't start new thread", "Python",
       "threading.Thread.start() got an error from pthread_create", TASKS_OR_MEMORY),
    _m("torch-alloc", r"DefaultCPUAllocator: can't allocate memory", "PyTorch",
       "torch could not allocate a tensor", MEMORY),
    _m("os-error-12", r"os error 12|\[Errno 12\]|Cannot allocate memory", "the OS (ENOMEM)",
       "a system call returned ENOMEM: a mapping did not fit the address space or memory",
       MEMORY),
    _m("map-segment", r"failed to map segment from shared object", "the dynamic loader",
       "a shared library could not be mapped into the address space", MEMORY),
    _m("bad-alloc", r"std::bad_alloc|MemoryError", "C++ / Python",
       "an allocation failed", MEMORY),
    _m("clone3-eperm", r"clone3.*(Operation not permitted|EPERM)|"
       r"(Operation not permitted|EPERM).*clone3", "a container's seccomp profile",
       "clone3 is refused with EPERM by an old seccomp profile (Docker < 20.10, old runc); "
       "glibc falls back to clone only on ENOSYS", POLICY),
    _m("eagain", r"Resource temporarily unavailable", "the OS (EAGAIN)",
       "a thread or process could not be created", TASKS_OR_MEMORY),
)


def find_messages(text: str, limit: int = 50) -> List[Match]:
    """The known messages in text, in order, at most limit (each distinct
    line once). OpenBLAS's thread lines keep only the first."""
    found: List[Match] = []
    seen_lines = set()
    seen_names = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line in seen_lines:
            continue
        for message in MESSAGES:
            hit = message.pattern.search(line)
            if hit is None:
                continue
            if message.name in ("openblas-thread", "openblas-nproc") and message.name in seen_names:
                break  # one line per OpenBLAS failure is enough: the first names the thread
            seen_lines.add(line)
            seen_names.add(message.name)
            figures = {k: int(v) for k, v in hit.groupdict().items() if v is not None}
            found.append(Match(message, line, figures))
            break
        if len(found) >= limit:
            break
    return found
