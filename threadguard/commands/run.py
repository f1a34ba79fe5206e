"""`threadguard run`: run a command with libthreadguard.so preloaded.

On the start-up path of every job it guards: it imports nothing it does
not use (typing, json, pathlib, the bench and doctor packages)."""

from __future__ import annotations

import argparse
import os
import sys

from .._preload import preload_environment
from .._settings import OPTIONS, Option, check_setting
from .arguments import command_after_dashes
from .libpath import packaged_library

TYPE_CHECKING = False  # not typing's (see the module's docstring)
if TYPE_CHECKING:
    from typing import Callable, Dict

__all__ = ["add_arguments", "run"]

# Settings that are on/off switches: `threadguard run --debug`, not `--debug 1`.
_FLAGS = ("THREADGUARD_DEBUG", "THREADGUARD_OBSERVE")


def _escaped(help_text: str) -> str:
    """help_text as argparse's help formatting (printf-style) prints it."""
    return help_text.replace("%", "%%")


def _setting_value(option: Option) -> Callable[[str], str]:
    """An argparse type that the native library's parser checks."""
    def check(value: str) -> str:
        try:
            check_setting(option.variable, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).split("; using the default")[0]) from None
        return value
    check.__name__ = option.flag  # argparse names the option in its message
    return check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run CMD with libthreadguard.so first in LD_PRELOAD (an existing LD_PRELOAD is kept "
        "after it). With no options, every thread pool (OpenBLAS, OpenMP, MKL, BLIS, numexpr, "
        "torch) is sized before it starts to at most the CPU allocation and at most the threads "
        "the task limits, cgroup and address space leave; explicit *_NUM_THREADS settings are "
        "kept when they fit. Each option sets the THREADGUARD_* variable named in its help. The "
        "command replaces this process, so its exit status and signals are its own.")
    for option in OPTIONS:
        if option.variable in _FLAGS:
            parser.add_argument(f"--{option.flag}", action="store_true",
                                help=f"{_escaped(option.help)}; sets {option.variable}=1")
            continue
        parser.add_argument(f"--{option.flag}", type=_setting_value(option),
                            metavar=option.metavar,
                            help=f"{_escaped(option.help)}; sets {option.variable}")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                        help="the command to run, after --")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    cmd = command_after_dashes(args.cmd)
    if not cmd:
        parser.error("give the command after --, like: threadguard run -- python train.py")
    settings: Dict[str, str] = {}
    for option in OPTIONS:
        value = getattr(args, option.flag.replace("-", "_"))
        if option.variable in _FLAGS:
            value = "1" if value else None
        if value is not None:
            settings[option.variable] = value
    env = preload_environment(packaged_library(), settings=settings)
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
