"""`threadguard top`: every guarded process on this node, live."""

from __future__ import annotations

import argparse

from ..top.command import add_arguments as add_top_arguments
from ..top.command import main
from .arguments import seconds, wrap

__all__ = ["add_arguments", "run"]

_DESCRIPTION = (
    "Show every guarded process of this user on this node (root: of every user), refreshed "
    "like top: its threads live and at peak by the library that created them, its pool sizes "
    "and where they came from, its failed creations, and each user's tasks against "
    "RLIMIT_NPROC and each cgroup's pids.max, with the tasks of unguarded processes shown as "
    "such. Guarded processes (started by `threadguard run` or that `import threadguard`) "
    "publish their counters in /dev/shm/threadguard-UID/ (THREADGUARD_PUBLISH=0 turns that "
    "off); reading them needs no root and never stops or slows them. Keys: q quits, s cycles "
    "the sort, / sets a filter, Esc clears it.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = wrap(_DESCRIPTION)
    add_top_arguments(parser, seconds)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    return main(args)
