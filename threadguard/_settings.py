"""The THREADGUARD_* settings: their names, their `threadguard run` options,
and validation by the native library's own parser (one definition of a
valid value, in C)."""

from __future__ import annotations

from collections import namedtuple

from . import _native

TYPE_CHECKING = False  # not typing's: `threadguard run` reads this module (see _cli.py)
if TYPE_CHECKING:
    from typing import Tuple

__all__ = ["OPTIONS", "SITE_VARIABLES", "Option", "check_setting"]


class Option(namedtuple("Option", "variable flag metavar help")):
    """One setting: its environment variable, its `threadguard run` flag
    (without the leading dashes) and what it does.  (A named tuple, not a
    dataclass: importing dataclasses would cost `threadguard run` more than
    the rest of its Python.)"""

    __slots__ = ()

    variable: str
    flag: str
    metavar: str
    help: str


OPTIONS: Tuple[Option, ...] = (
    Option("THREADGUARD_REPORT", "report", "stderr|off|PATH.json",
           "at exit, print the threads by library on stderr, or write them as JSON to "
           "PATH.json ('%p' in PATH becomes the pid); 'off' (the default) writes nothing"),
    Option("THREADGUARD_MAX_THREADS", "max-threads", "N",
           "budget of live threads in the process (besides the main one); pools are sized "
           "to fit it, and a thread over it is allowed with a warning or refused (--on-limit)"),
    Option("THREADGUARD_POOL_THREADS", "pool-threads", "N",
           "size of every pool (OpenBLAS, OpenMP, MKL, BLIS, numexpr, torch) the program "
           "leaves unsized, instead of the CPU allocation, and the ceiling of the program's own "
           "*_NUM_THREADS variables and torch.set_num_threads-style calls (smaller values are "
           "kept); still lowered to what fits"),
    Option("THREADGUARD_ON_LIMIT", "on-limit", "warn|deny",
           "over --max-threads: 'warn' lets the thread start and warns once per library "
           "(default); 'deny' makes pthread_create return EAGAIN, naming the library"),
    Option("THREADGUARD_STACK", "stack", "SIZE",
           "default thread stack, like 512k or 2M (at least 256k); default: the system's; "
           "under an address-space limit (RLIMIT_AS) only the pools that need it get 1M"),
    Option("THREADGUARD_ARENAS", "arenas", "N",
           "cap malloc arenas at N (each reserves 64 MiB of address space); default: glibc's, "
           "or 2 under an address-space limit"),
    Option("THREADGUARD_NPROC", "nproc", "max|N",
           "raise the soft RLIMIT_NPROC (task limit) to N or to the hard limit"),
    Option("THREADGUARD_DEBUG", "debug", "0|1",
           "print every pool size decision on stderr as it is made"),
    Option("THREADGUARD_OBSERVE", "observe", "0|1",
           "count threads and record failed creations, but change nothing: no pool sizes, "
           "stack, arenas or limits (what `threadguard doctor -- CMD` uses)"),
    Option("THREADGUARD_PUBLISH", "publish", "0|1",
           "publish the thread counters in /dev/shm/threadguard-UID/ while the program runs, "
           "for `threadguard top` and `threadguard stats --pid` (default 1; 0 turns it off)"),
    Option("THREADGUARD_OUTPUT", "output", "stderr|off|syslog|/PATH",
           "where threadguard's warnings go: stderr (the default), nowhere, syslog (/dev/log; "
           "'syslog:/SOCKET' for another socket) or appended to an absolute file path, each "
           "line naming the program and pid"),
)

# Read by the library before anything else, to leave a process alone; a
# site sets them, not `threadguard run` (docs/site.md).
SITE_VARIABLES: Tuple[str, ...] = ("THREADGUARD_DISABLE", "THREADGUARD_SKIP")


def check_setting(variable: str, value: str) -> None:
    """Raise ValueError, with the native library's one-line explanation, when
    value is not valid for the THREADGUARD_* setting variable."""
    lib = _native.load()
    if lib.threadguard_check_setting(variable.encode(), value.encode("utf-8",
                                                                     "surrogateescape")) != 0:
        raise ValueError(_native.text(lib.threadguard_last_error()))
