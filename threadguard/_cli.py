"""The threadguard command: run a program guarded, find the library, read reports."""

from __future__ import annotations

import argparse
import os
import sys

from . import _native
from ._errors import ThreadguardError
from ._preload import preload_environment
from ._settings import OPTIONS, Option, check_setting

# `threadguard run` imports nothing it does not use (typing, json, pathlib,
# the bench and doctor packages): it is on the start-up path of every job
# it guards.  mypy reads any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, List, Optional, Sequence

__all__ = ["main"]

_EPILOG = """\
examples:
  threadguard run -- python train.py          size pools to fit, count threads by library
  threadguard run --max-threads 16 --on-limit deny -- python train.py
  threadguard run --stack 512k --arenas 2 -- python train.py
  threadguard run --report stderr -- python -c "import numpy"
  threadguard run --report out.json -- python train.py && threadguard stats out.json
  LD_PRELOAD=$(threadguard libpath) python train.py   the same, by hand
  threadguard doctor                          which limit a job would hit here, and the fix
  threadguard doctor -- python train.py       why this command failed
  threadguard bench --quick                   what fewer threads cost here; a node profile
  threadguard top                             every guarded process's threads by library, live
  threadguard stats --pid 1234                one running process's table, as at its exit
"""


# Settings that are on/off switches: `threadguard run --debug`, not `--debug 1`.
_FLAGS = ("THREADGUARD_DEBUG", "THREADGUARD_OBSERVE")


def _wrap(text: str) -> str:
    """A paragraph for the raw help formatter, which keeps the epilog's
    layout but does not wrap."""
    import shutil
    import textwrap
    return textwrap.fill(text, width=min(100, shutil.get_terminal_size().columns - 2))


def _escaped(help_text: str) -> str:
    """help_text as argparse's help formatting (printf-style) prints it."""
    return help_text.replace("%", "%%")


def _pid(value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a process id (a whole number above 0)")
    return int(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e7:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds above 0")
    return seconds


def _setting_value(option: Option) -> Callable[[str], str]:
    def check(value: str) -> str:
        try:
            check_setting(option.variable, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).split("; using the default")[0]) from None
        return value
    check.__name__ = option.flag  # argparse names the option in its message
    return check


# The subcommands' one-line help, for the top-level listing.
_DOCTOR_HELP = "explain this node's thread limits, or why a command failed"
_BENCH_HELP = "measure what fewer threads cost here and save a node profile"
_TOP_HELP = "every guarded process on this node: threads by library, pools, limits, live"
_TOP_DESCRIPTION = (
    "Show every guarded process of this user on this node (root: of every user), refreshed "
    "like top: its threads live and at peak by the library that created them, its pool sizes "
    "and where they came from, its failed creations, and each user's tasks against "
    "RLIMIT_NPROC and each cgroup's pids.max, with the tasks of unguarded processes shown as "
    "such. Guarded processes (started by `threadguard run` or that `import threadguard`) "
    "publish their counters in /dev/shm/threadguard-UID/ (THREADGUARD_PUBLISH=0 turns that "
    "off); reading them needs no root and never stops or slows them. Keys: q quits, s cycles "
    "the sort, / sets a filter, Esc clears it.")


def _command_in(argv: Sequence[str]) -> Optional[str]:
    """The subcommand argv names (its first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def _parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The command line's parser.  The doctor and bench subparsers, whose
    help texts cost imports, are built in full only when argv names them
    (or names no subcommand, for the top-level help and its errors)."""
    wanted = _command_in(argv)
    full = {name: wanted in (None, name) for name in ("doctor", "bench", "top")}
    parser = argparse.ArgumentParser(
        prog="threadguard",
        description="Count, size and budget the threads of numpy, SciPy and PyTorch programs.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"threadguard {_package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run a command with libthreadguard.so preloaded",
        description="Run CMD with libthreadguard.so first in LD_PRELOAD (an existing "
                    "LD_PRELOAD is kept after it). With no options, every thread pool "
                    "(OpenBLAS, OpenMP, MKL, BLIS, numexpr, torch) is sized before it starts "
                    "to at most the CPU allocation and at most the threads the task limits, "
                    "cgroup and address space leave; explicit *_NUM_THREADS settings are kept "
                    "when they fit. Each option sets the THREADGUARD_* variable named in its "
                    "help. The command replaces this process, so its exit status and signals "
                    "are its own.")
    for option in OPTIONS:
        if option.variable in _FLAGS:
            run.add_argument(f"--{option.flag}", action="store_true",
                             help=f"{_escaped(option.help)}; sets {option.variable}=1")
            continue
        run.add_argument(f"--{option.flag}", type=_setting_value(option), metavar=option.metavar,
                         help=f"{_escaped(option.help)}; sets {option.variable}")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                     help="the command to run, after --")
    run.set_defaults(subparser=run)  # a usage error shows run's usage, not the top level's

    commands.add_parser("libpath", help="print the path of libthreadguard.so, for LD_PRELOAD",
                        description="Print the path of the packaged libthreadguard.so.")

    if full["doctor"]:
        _add_doctor(commands)
    else:
        commands.add_parser("doctor", help=_DOCTOR_HELP)
    if full["bench"]:
        _add_bench(commands)
    else:
        commands.add_parser("bench", help=_BENCH_HELP)

    if full["top"]:
        from .top.command import add_arguments
        top = commands.add_parser("top", help=_TOP_HELP, description=_wrap(_TOP_DESCRIPTION),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(top, _seconds)
    else:
        commands.add_parser("top", help=_TOP_HELP)

    stats = commands.add_parser(
        "stats", help="show a report written with THREADGUARD_REPORT=PATH.json, or a running "
                      "process's",
        description="Show the thread counters in a report file written at exit by a program "
                    "run with --report PATH.json (or THREADGUARD_REPORT=PATH.json), or, with "
                    "--pid, those of a guarded process running now (the same table its exit "
                    "report would print, read from the counters it publishes).")
    stats.add_argument("report", metavar="REPORT.json", nargs="?", help="the report file")
    stats.add_argument("--pid", type=_pid, help="a running guarded process instead of a file")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(subparser=stats)
    return parser


def _add_doctor(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    doctor = commands.add_parser(
        "doctor", help=_DOCTOR_HELP,
        description=_wrap("Without a command: print this user's and cgroup's task limits, address "
                    "space, memory and CPU allocation, the thread variables and threaded "
                    "libraries, then predict which limit 'import numpy', 'import torch' and a "
                    "torch training step would hit first (each is run once with one thread per "
                    "pool to measure it) and print the commands that avoid it. With -- CMD: run "
                    "CMD with the guard counting but changing nothing, and explain which "
                    "library's thread failed, with which error, against which limit. Needs no "
                    "root and changes nothing. Exit status: 0 when nothing is in the way, 1 "
                    "when a limit was hit or would be, 2 on a usage error."),
        epilog="examples:\n  threadguard doctor\n  threadguard doctor --json\n"
               "  threadguard doctor -- python -c 'import numpy'\n"
               "  threadguard doctor --timeout 600 -- python train.py",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    doctor.add_argument("--json", action="store_true",
                        help="print the figures and the verdict as JSON on stdout (CMD's own "
                             "output then goes to stderr)")
    doctor.add_argument("--no-color", action="store_true",
                        help="no colour, even on a terminal (also: NO_COLOR=1)")
    doctor.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                        help="stop CMD after this long and report a hang (default: wait), and "
                             "give up on a workload probe (default: 120)")
    doctor.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                        help="the command to run and explain, after --")


def _counts(value: str) -> List[int]:
    from ._policy import rules
    largest = rules().max_pool_threads
    counts = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= largest:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a list of counts from 1 to {largest}, like 1,2,4")
        counts.append(int(part))
    return sorted(set(counts))


def _names(value: str) -> List[str]:
    from .bench.workloads import WORKLOADS
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{value!r} names no workload of {', '.join(WORKLOADS)}")
    return names


def _add_bench(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from pathlib import Path

    from .bench.workloads import GRID_WORKLOAD, WORKLOADS
    listing = "\n".join(f"  {w.name:14} {w.title} ({w.unit}; {w.device})"
                        for w in WORKLOADS.values())
    bench = commands.add_parser(
        "bench", help=_BENCH_HELP,
        description=_wrap("Run standard workloads at several thread counts, each configuration in "
                    "a fresh process under the guard (pool sizes are fixed when a library "
                    "loads), warmed up, then timed in windows until they agree within a few "
                    "percent or the time budget is spent. Prints a table with the median "
                    "throughput, its spread, peak RSS, VmSize and the live threads by library, "
                    "and recommends for each workload the fewest threads within 5% of the "
                    "best, with what 1 and 2 threads cost. The oversubscription grid runs "
                    f"{GRID_WORKLOAD} in k worker processes at once, for each k of --workers. "
                    "Writes DIR/bench-HOST-NCPUcpu.json and .png, and the node profile that "
                    "limit(\"auto\") reads (threadguard.profile_path(); directory "
                    "$THREADGUARD_PROFILE_DIR, default ~/.cache/threadguard/profiles). Exit "
                    "status: 0, 1 when a configuration failed, 2 on a usage error."),
        epilog=f"workloads:\n{listing}\n\n"
               + _wrap("The CUDA workload varies the CPU side of a GPU training step: "
                       "--threads are torch's intra-op threads, --workers its DataLoader "
                       "workers (0 is always run). Without a CUDA device it is skipped with "
                       "one line.") + "\n\n"
               "examples:\n  threadguard bench --quick\n"
               "  threadguard bench --workloads matmul,mlp-train --threads 1,2,4,8,16\n"
               "  threadguard bench --device cuda --workers 2,4,8\n"
               "  THREADGUARD_PROFILE_DIR=/shared/profiles srun --ntasks-per-node=1 "
               "threadguard bench --out /shared/bench",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--quick", action="store_true",
                       help="smaller problems, shorter timing, threads 1, 2 and the allocation, "
                            "workers 1 and 4 (about a minute on 2 cores)")
    bench.add_argument("--workloads", type=_names, metavar="NAME,...",
                       help="workloads to run (default: all; listed below)")
    bench.add_argument("--threads", type=_counts, metavar="N,...",
                       help="threads per process (default: powers of two up to the CPU "
                            "allocation, and the allocation)")
    bench.add_argument("--workers", type=_counts, metavar="K,...",
                       help=f"worker processes of the oversubscription grid ({GRID_WORKLOAD}), "
                            "and DataLoader workers of the CUDA workload (default: 1,2,4; "
                            "quick: 1,4)")
    bench.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                       help="run the CPU workloads, the CUDA one, or all (default)")
    bench.add_argument("--out", type=Path, default=Path("threadguard-bench"), metavar="DIR",
                       help="where the JSON and PNG go (default: ./threadguard-bench)")
    bench.add_argument("--no-profile", action="store_true",
                       help="do not write the node profile")


def _bench(args: argparse.Namespace) -> int:
    from .bench.command import BenchOptions, bench
    options = BenchOptions(quick=args.quick, workloads=args.workloads, threads=args.threads,
                           workers=args.workers, device=args.device, out=args.out,
                           profile=not args.no_profile)
    try:
        return bench(options)
    except ValueError as exc:
        print(f"threadguard bench: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise  # not a file: no process or memory for a measurement (main says so)
        print(f"threadguard bench: cannot write {exc.filename}: {exc.strerror}",
              file=sys.stderr)
        return 2


def _package_version() -> str:
    from . import __version__
    return __version__


def _packaged_library() -> str:
    path = _native._library_file()  # a str: pathlib would cost `run` a few ms
    if not os.path.isfile(path):
        raise ThreadguardError(f"{path} is missing: reinstall threadguard")
    return path


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    cmd: List[str] = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        parser.error("give the command after --, like: threadguard run -- python train.py")
    settings = {}
    for option in OPTIONS:
        value = getattr(args, option.flag.replace("-", "_"))
        if option.variable in _FLAGS:
            value = "1" if value else None
        if value is not None:
            settings[option.variable] = value
    env = preload_environment(_packaged_library(), settings=settings)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(cmd[0], cmd, env)
    except FileNotFoundError:
        print(f"threadguard run: command not found: {cmd[0]}", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"threadguard run: permission denied: {cmd[0]}", file=sys.stderr)
        return 126
    except OSError as exc:
        print(f"threadguard run: cannot run {cmd[0]}: {exc.strerror}", file=sys.stderr)
        return 126
    return 0  # not reached: execvpe replaced this process


def _doctor(args: argparse.Namespace) -> int:
    import json

    from .doctor.command import check_command, check_node
    from .doctor.view import render
    cmd: List[str] = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    try:
        if cmd:
            result = check_command(cmd, args.timeout, args.json)
        else:
            result = check_node(args.timeout or 120.0, sys.stderr)
    except FileNotFoundError as exc:
        print(f"threadguard doctor: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        colour = sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")
        print(render(result, colour))
    return 0 if result["verdict"]["status"] == "ok" else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the threadguard console script and python -m threadguard.

    A failure of the environment (a closed pipe, no task or memory left, a
    refused system call) ends the command with one line, never a traceback.
    """
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return status
    except BrokenPipeError:
        # The reader went away (`threadguard stats r.json | head -1`): nothing
        # more to say.  Point stdout at /dev/null so the interpreter's own
        # flush at exit does not raise again; 141 is what a shell reports for
        # a command ended by a closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (OSError, MemoryError) as exc:
        what = f"[Errno {exc.errno}] {exc.strerror}" if isinstance(exc, OSError) and exc.errno \
            else type(exc).__name__
        print(f"threadguard: the system refused what this command needs: {what}; "
              f"it ran out of tasks, memory or permissions (see `threadguard doctor`)",
              file=sys.stderr)
        return 2


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = _parser(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)  # option values are checked by the native library
        if args.command == "run":
            return _run(args, args.subparser)
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "libpath":
            print(_packaged_library())
            return 0
        if args.command == "top":
            from .top.command import main as top
            return top(args)
        if args.command == "stats":
            import json

            from ._stats import load_report, stats
            if (args.report is None) == (args.pid is None):
                args.subparser.error("give a report file or --pid PID (one of them)")
            report = load_report(args.report) if args.pid is None else stats(args.pid)
            print(json.dumps(report.to_json(), indent=2) if args.json else report.format_table())
            return 0
    except ThreadguardError as exc:
        print(f"threadguard: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
