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
    """'PORT' or 'HOST:PORT' (argparse type)."""
    host, _, port = value.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not PORT or HOST:PORT (port 0 to 65535)")
    return host or "127.0.0.1", number


def textfile_path(value: str) -> Path:
    if not value.endswith(".prom"):
        raise argparse.ArgumentTypeError(
            f"{value!r} does not end in .prom; node_exporter's textfile collector reads only "
            f"*.prom files")
    return Path(value)


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
                             "defaults to 127.0.0.1, the loopback) until interrupted")


def _look(mine: bool) -> Snapshot:
    return take(False if mine else None)


def _report_rejected(snapshot: Snapshot) -> None:
    for line in snapshot.rejected:
        print(f"threadguard top: {line}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    if args.listen is not None:
        host, port = args.listen

        def announce(address: Tuple[str, int]) -> None:
            print(f"threadguard top: serving http://{address[0]}:{address[1]}/metrics; "
                  f"Ctrl-C stops", file=sys.stderr, flush=True)

        try:
            metrics.serve(host, port, lambda: metrics.render(_look(args.mine)), announce)
        except KeyboardInterrupt:
            pass
        return 0
    if args.textfile is not None:
        return _textfile(args.textfile, args.interval, args.once, args.mine)
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


def _textfile(path: Path, interval: float, once: bool, mine: bool) -> int:
    if not path.parent.is_dir():
        print(f"threadguard top: --textfile {path}: no directory {path.parent}; give a path in "
              f"node_exporter's --collector.textfile.directory", file=sys.stderr)
        return 2
    if not once:
        print(f"threadguard top: writing {path} every {interval:g}s; Ctrl-C stops",
              file=sys.stderr, flush=True)
    try:
        while True:
            snapshot = _look(mine)
            metrics.write_textfile(path, metrics.render(snapshot))
            if once:
                _report_rejected(snapshot)
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
