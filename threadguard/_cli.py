"""The threadguard command: one list of commands, one module each
(threadguard.commands), and the one place errors become exit statuses."""

from __future__ import annotations

import argparse
import os
import sys

from ._errors import ThreadguardError

# `threadguard run` imports nothing it does not use (typing, json, pathlib,
# the bench and doctor packages): it is on the start-up path of every job
# it guards.  mypy reads any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Sequence, Tuple

__all__ = ["COMMANDS", "main"]

# Every command: its name (its module in threadguard.commands) and its
# line in the top-level help.  A module is imported only when named.
COMMANDS: Tuple[Tuple[str, str], ...] = (
    ("run", "run a command with libthreadguard.so preloaded"),
    ("libpath", "print the path of libthreadguard.so, for LD_PRELOAD"),
    ("doctor", "explain this node's thread limits, or why a command failed"),
    ("bench", "measure what fewer threads cost here and save a node profile"),
    ("top", "every guarded process on this node: threads by library, pools, limits, live"),
    ("stats", "show a report written with THREADGUARD_REPORT=PATH.json, or a running "
              "process's"),
    ("kernel", "install a Jupyter kernel that runs under threadguard"),
    ("site", "print a modulefile, Slurm TaskProlog or ld.so.preload line that guards every "
             "job on a node, or Prometheus alert rules"),
)

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
  threadguard kernel install --user           a Jupyter kernel sized before numpy loads
"""



def _command_in(argv: Sequence[str]) -> Optional[str]:
    """The subcommand argv names (its first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def _parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The command line's parser.  Only the command argv names gets its
    options (its module imported); the others are listed with their help."""
    wanted = _command_in(argv)
    parser = argparse.ArgumentParser(
        prog="threadguard",
        description="Count, size and budget the threads of numpy, SciPy and PyTorch programs.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"threadguard {_package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_line in COMMANDS:
        sub = commands.add_parser(name, help=help_line)
        if name == wanted:
            # (__import__, not importlib: `threadguard run` has not loaded it)
            __import__(f"threadguard.commands.{name}")
            module = sys.modules[f"threadguard.commands.{name}"]
            module.add_arguments(sub)
            # a usage error shows the command's usage, not the top level's
            sub.set_defaults(module=module, subparser=sub)
    return parser


def _package_version() -> str:
    from . import __version__
    return __version__


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
        args = parser.parse_args(argv)
        if args.command is not None:
            status: int = args.module.run(args, args.subparser)
            return status
    except ThreadguardError as exc:
        print(f"threadguard: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
