"""`threadguard top`: choose the output (screen, text, JSON, Prometheus) and
run it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Tuple

from . import metrics
from .snapshot import Snapshot, take
from .view import SORTS, lines

__all__ = ["add_arguments", "listen_address", "main"]


def listen_address(value: str) -> Tuple[str, int]:
    """'PORT', 'HOST:PORT' or '[IPV6]:PORT' (argparse type)."""
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not PORT, HOST:PORT or [IPV6]:PORT (port 0 to 65535)")
    return host or "127.0.0.1", number


def textfile_path(value: str) -> Path:
    if not value.endswith(".prom"):
        raise argparse.ArgumentTypeError(
            f"{value!r} does not end in .prom; node_exporter's textfile collector reads only "
            f"*.prom files")
    return Path(value)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of processes, 1 or "
                                         f"more")
    return number


def add_arguments(parser: argparse.ArgumentParser, seconds: "argparse._ActionType") -> None:
    parser.add_argument("--once", action="store_true",
                        help="print one snapshot as text and exit (the default when stdout is "
                             "not a terminal)")
    parser.add_argument("--json", action="store_true",
                        help="print one snapshot as JSON and exit, for scripts")
    parser.add_argument("--interval", type=seconds, default=2.0, metavar="S",
                        help="seconds between looks (default 2)")
    parser.add_argument("--sort", choices=sorted(SORTS), default="threads",
                        help="order of the processes (default threads: most live threads "
                             "first); key s cycles through them")
    parser.add_argument("--filter", default="", metavar="TEXT",
                        help="show only processes whose pid, user or command contains TEXT; "
                             "key / sets it, Esc clears it")
    parser.add_argument("--mine", action="store_true",
                        help="as root, show only root's processes (root sees every user's)")
    parser.add_argument("--textfile", type=textfile_path, metavar="PATH.prom",
                        help="write the figures in the Prometheus text format to PATH.prom "
                             "every --interval seconds (replaced at once each time), for "
                             "node_exporter's textfile collector; with --once, write it once")
    parser.add_argument("--listen", type=listen_address, metavar="[HOST:]PORT",
                        help="serve the same figures at http://HOST:PORT/metrics (HOST "
                             "defaults to 127.0.0.1, the loopback; any other address gets a "
                             "warning) until interrupted")
    parser.add_argument("--command-label", action="store_true",
                        help="with --textfile or --listen, label each process with its full "
                             "command line too (command=...). Off by default: every argument "
                             "of every guarded command (tokens, paths) becomes readable to "
                             "whoever queries Prometheus, and each command line is a new "
                             "series. Processes are labelled pid, user and program")
    parser.add_argument("--max-processes", type=_positive, default=metrics.MAX_PROCESSES,
                        metavar="N",
                        help=f"with --textfile or --listen, export at most N processes one by "
                             f"one, those with the most live threads (default "
                             f"{metrics.MAX_PROCESSES}); threadguard_processes_left_out "
                             f"counts the rest, and the user totals include them")


def _look(mine: bool) -> Snapshot:
    return take(False if mine else None)


def _report_rejected(snapshot: Snapshot) -> None:
    for line in snapshot.rejected:
        print(f"threadguard top: {line}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    if args.listen is not None:
        host, port = args.listen

        def announce(address: Tuple[str, int]) -> None:
            shown = f"[{address[0]}]" if ":" in address[0] else address[0]
            print(f"threadguard top: serving http://{shown}:{address[1]}/metrics; "
                  f"Ctrl-C stops", file=sys.stderr, flush=True)
            if not metrics.is_loopback(host):
                print(f"threadguard top: warning: {host or 'every address'} is not a loopback "
                      f"address: anyone who can reach port {address[1]} reads which users run "
                      f"what here; listen on 127.0.0.1 behind a firewall or a proxy that "
                      f"authenticates, or use --textfile", file=sys.stderr, flush=True)

        def produce() -> str:
            return metrics.render(_look(args.mine), command_label=args.command_label,
                                  max_processes=args.max_processes)

        try:
            metrics.serve(host, port, produce, announce)
        except KeyboardInterrupt:
            pass
        return 0
    if args.textfile is not None:
        return _textfile(args.textfile, args)
    if args.json:
        snapshot = _look(args.mine)
        _report_rejected(snapshot)
        print(json.dumps(snapshot.to_json(), indent=2))
        return 0
    if args.once or not (sys.stdout.isatty() and sys.stdin.isatty()):
        snapshot = _look(args.mine)
        _report_rejected(snapshot)
        print("\n".join(line for line in lines(snapshot, args.sort, args.filter)
                        if not line.startswith("rejected: ")))
        return 0
    from .screen import run
    run(lambda: _look(args.mine), args.interval, args.sort, args.filter)
    return 0


def _textfile(path: Path, args: argparse.Namespace) -> int:
    interval, once = args.interval, args.once
    if not path.parent.is_dir():
        print(f"threadguard top: --textfile {path}: no directory {path.parent}; give a path in "
              f"node_exporter's --collector.textfile.directory", file=sys.stderr)
        return 2
    if not once:
        print(f"threadguard top: writing {path} every {interval:g}s; Ctrl-C stops",
              file=sys.stderr, flush=True)
    try:
        while True:
            snapshot = _look(args.mine)
            metrics.write_textfile(path, metrics.render(snapshot, command_label=args.command_label,
                                                        max_processes=args.max_processes))
            if once:
                _report_rejected(snapshot)
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
