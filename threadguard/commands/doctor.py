"""`threadguard doctor`: this node's thread limits, or why a command failed."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..doctor.command import check_command, check_node
from ..doctor.view import render
from .arguments import command_after_dashes, seconds, wrap

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = wrap(
        "Without a command: print this user's and cgroup's task limits, address space, memory "
        "and CPU allocation, the thread variables and threaded libraries, then predict which "
        "limit 'import numpy', 'import torch' and a torch training step would hit first (each "
        "is run once with one thread per pool to measure it) and print the commands that avoid "
        "it. With -- CMD: run CMD with the guard counting but changing nothing, and explain "
        "which library's thread failed, with which error, against which limit. Needs no root "
        "and changes nothing. Exit status: 0 when nothing is in the way, 1 when a limit was hit "
        "or would be, 2 on a usage error.")
    parser.epilog = ("examples:\n  threadguard doctor\n  threadguard doctor --json\n"
                     "  threadguard doctor -- python -c 'import numpy'\n"
                     "  threadguard doctor --timeout 600 -- python train.py")
    parser.add_argument("--json", action="store_true",
                        help="print the figures and the verdict as JSON on stdout (CMD's own "
                             "output then goes to stderr)")
    parser.add_argument("--no-color", action="store_true",
                        help="no colour, even on a terminal (also: NO_COLOR=1)")
    parser.add_argument("--timeout", type=seconds, metavar="SECONDS",
                        help="stop CMD after this long and report a hang (default: wait), and "
                             "give up on a workload probe (default: 120)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                        help="the command to run and explain, after --")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    cmd = command_after_dashes(args.cmd)
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
