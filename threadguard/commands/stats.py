"""`threadguard stats`: a report file's table, or a running process's."""

from __future__ import annotations

import argparse
import json

from .._stats import load_report, stats
from .arguments import pid

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show the thread counters in a report file written at exit by a program run with "
        "--report PATH.json (or THREADGUARD_REPORT=PATH.json), or, with --pid, those of a "
        "guarded process running now (the same table its exit report would print, read from "
        "the counters it publishes).")
    parser.add_argument("report", metavar="REPORT.json", nargs="?", help="the report file")
    parser.add_argument("--pid", type=pid, help="a running guarded process instead of a file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if (args.report is None) == (args.pid is None):
        parser.error("give a report file or --pid PID (one of them)")
    report = load_report(args.report) if args.pid is None else stats(args.pid)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.format_table())
    return 0
