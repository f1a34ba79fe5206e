"""The full-screen, refreshing view of `threadguard top` (curses)."""

from __future__ import annotations

import curses
import os
import time
from typing import Any, Callable, List

from .snapshot import Snapshot
from .view import SORTS, lines

__all__ = ["run"]

_KEYS = "q quit  s sort  / filter  Esc clear filter  space refresh"


def _draw(screen: Any, text: List[str], status: str) -> None:
    screen.erase()
    height, width = screen.getmaxyx()
    for row, line in enumerate(text[:max(height - 1, 0)]):
        attribute = curses.A_REVERSE if row == 0 or line.lstrip().startswith("PID ") else 0
        try:
            screen.addnstr(row, 0, line, width - 1, attribute)
        except curses.error:
            pass  # a line in the last cell of a tiny terminal
    try:
        screen.addnstr(height - 1, 0, status, width - 1, curses.A_BOLD)
    except curses.error:
        pass
    screen.refresh()


def _prompt(screen: Any, label: str) -> str:
    """A line of text typed at the bottom of the screen."""
    height, width = screen.getmaxyx()
    screen.move(height - 1, 0)
    screen.clrtoeol()
    screen.addnstr(height - 1, 0, label, width - 1, curses.A_BOLD)
    curses.echo()
    curses.curs_set(1)
    screen.timeout(-1)
    try:
        raw = screen.getstr(height - 1, min(len(label), width - 1), 200)
    finally:
        curses.noecho()
        curses.curs_set(0)
    text: str = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return text.strip()


def _loop(screen: Any, take: Callable[[], Snapshot], interval: float, sort: str,
          pattern: str) -> None:
    curses.curs_set(0)
    order = list(SORTS)
    snapshot = take()
    next_look = time.monotonic() + interval
    while True:
        _draw(screen, lines(snapshot, sort, pattern, interval), _KEYS)
        screen.timeout(max(int((next_look - time.monotonic()) * 1000), 0))
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return
        if key == ord("s"):
            sort = order[(order.index(sort) + 1) % len(order)]
            continue
        if key == ord("/"):
            pattern = _prompt(screen, "filter (pid, user or part of the command): ")
            continue
        if key == 27:  # Esc
            pattern = ""
            continue
        if key == curses.KEY_RESIZE:
            continue
        if key == -1 or key == ord(" ") or time.monotonic() >= next_look:
            snapshot = take()
            next_look = time.monotonic() + interval


def run(take: Callable[[], Snapshot], interval: float, sort: str, pattern: str) -> None:
    """Show the view until q (or Ctrl-C), looking again every interval seconds."""
    os.environ.setdefault("ESCDELAY", "25")  # Esc clears the filter now, not in a second
    try:
        curses.wrapper(_loop, take, interval, sort, pattern)
    except KeyboardInterrupt:
        pass
