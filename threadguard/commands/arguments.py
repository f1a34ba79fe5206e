"""Argument types and helpers the commands share."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # not typing's: `threadguard run` imports this module (see _cli.py)
if TYPE_CHECKING:
    from typing import List, Sequence

__all__ = ["command_after_dashes", "pid", "seconds", "wrap"]


def wrap(text: str) -> str:
    """A paragraph for the raw help formatter, which keeps an epilog's
    layout but does not wrap."""
    import shutil
    import textwrap
    return textwrap.fill(text, width=min(100, shutil.get_terminal_size().columns - 2))


def pid(value: str) -> int:
    """A process id (argparse type)."""
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a process id (a whole number above 0)")
    return int(value)


def seconds(value: str) -> float:
    """A number of seconds above 0 (argparse type)."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number < 1e7:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds above 0")
    return number


def command_after_dashes(words: Sequence[str]) -> List[str]:
    """The command a REMAINDER argument holds, without the `--` before it."""
    cmd = list(words)
    return cmd[1:] if cmd and cmd[0] == "--" else cmd
