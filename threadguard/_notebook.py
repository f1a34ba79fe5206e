"""The IPython extension: ``%load_ext threadguard`` in a notebook or IPython.

- ``%threadguard``: this kernel's threads by creating library, its pools and
  their sizes, the CPU allocation and the task headroom, as a table.
- ``%%threadguard`` on a cell: runs it, then shows what it started: threads
  by library, pools resized, thread creations that failed.
- After every cell, one short warning (on stderr) when a pool is larger than
  the CPUs the kernel may use, or when the threads left under a task limit
  run low; said again only when it changes.

IPython calls load_ipython_extension and unload_ipython_extension, which
threadguard/__init__.py hands to load and unload here.  The magics are
registered with register_magic_function rather than IPython's decorators,
which leave the functions untyped.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import _html
from ._info import PoolInfo, info
from ._policy import Allocation, allocation, headroom, rules
from ._stats import Stats, stats
from ._wording import count

__all__ = ["View", "cell_view", "concerns", "kernel_view", "load", "unload"]

USAGE = ("%threadguard shows this kernel's threads, pools and limits; %%threadguard on the "
         "first line of a cell shows what the cell started")

# Below this share of a limit left free (or the reserve, whichever is more),
# the headroom is reported as running low.
LOW_SHARE = 10


@dataclass(frozen=True)
class View:
    """Something to show in a cell's output: HTML where the front end
    renders it (Jupyter), the text elsewhere (a terminal IPython)."""

    html: str
    text: str

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Look:
    """The kernel at one moment: counters, pools, CPUs, headroom."""

    stats: Stats
    pools: Tuple[PoolInfo, ...]
    cpus: Allocation
    headroom: Dict[str, Any]


def look() -> Look:
    found = info()
    counters = found.threads if found.threads is not None else stats()
    # the report stats() reads carries the headroom measured with it
    figures = dict(counters.headroom_now) or headroom()
    return Look(stats=counters, pools=found.pools, cpus=allocation(figures), headroom=figures)


def _file(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _headroom_line(figures: Dict[str, Any]) -> str:
    free, limit = figures.get("free"), figures.get("limit")
    if not isinstance(free, int) or limit in (None, "none"):
        return "threads free: no limit measured"
    at_least = "at least " if figures.get("free_at_least") else ""
    return f"threads free: {at_least}{free} under {limit}"


def kernel_view() -> View:
    """This kernel's threads by library, pools and limits (%threadguard)."""
    now = look()
    s = now.stats
    lines = [f"pid {s.pid}, mode {s.mode or 'off'}, {s.tasks} tasks",
             f"CPUs: {int(now.cpus)} ({now.cpus.source})", _headroom_line(now.headroom)]
    pools = _html.table(("library", "API", "threads", "file"),
                        [(p.library, p.api, p.size, _file(p.path)) for p in now.pools],
                        "pools loaded")
    parts = [_html.libraries_html(s), pools]
    if s.pools:
        parts.append(_html.decisions_html(s.pools, "pool sizes threadguard decided"))
    text = [f"threadguard: {line}" for line in lines]
    text += [f"  pool {p.library:9} {p.api:8} {p.size!s:>4} threads  {_file(p.path)}"
             for p in now.pools]
    if s.table:
        text.append(s.format_table())
    return View(_html.page("threadguard: this kernel", lines, *parts), "\n".join(text))


def cell_view(before: Look, after: Look) -> View:
    """What one cell started: threads by library, pools resized, failures."""
    earlier = {(lib.name, lib.path): lib for lib in before.stats.libraries}
    started: List[Sequence[object]] = []
    threads = 0
    for lib in after.stats.libraries:
        old = earlier.get((lib.name, lib.path))
        created = lib.created - (old.created if old else 0)
        failed = lib.failed - (old.failed if old else 0)
        if created or failed or (old is not None and old.live != lib.live):
            threads += created
            started.append((lib.name, lib.kind, created, old.live if old else 0, lib.live,
                            failed))
    sizes = {(p.library, p.path): p.size for p in before.pools}
    resized = [(p.library, p.api, sizes.get((p.library, p.path)), p.size, _file(p.path))
               for p in after.pools if sizes.get((p.library, p.path), -1) != p.size]
    failures = after.stats.failures[len(before.stats.failures):]
    missing = after.stats.failures_total - before.stats.failures_total - len(failures)  # past 64
    failed_total = after.stats.failures_total - before.stats.failures_total
    lines = [f"this cell started {count(threads, 'thread')} and resized "
             f"{count(len(resized), 'pool')}; {count(failed_total, 'creation')} failed"]
    parts = [_html.table(("library", "kind", "started", "live before", "live after",
                          "failed"), started, "threads by creating library")]
    if resized:
        parts.append(_html.table(("library", "API", "before", "after", "file"), resized,
                                 "pools resized"))
    fail_rows: List[Sequence[object]] = [(f.library, f.thread, f.error, f.cause, f.site or "")
                                         for f in failures]
    if missing > 0:
        fail_rows.append((f"... and {missing} more", "", "", "", ""))
    if fail_rows:
        parts.append(_html.table(("library", "thread", "error", "limit", "Python site"),
                                 fail_rows, "failed creations"))
    text = [f"threadguard: {lines[0]}"]
    text += [f"  {row[0]} ({row[1]}): {row[2]} started, live {row[3]} -> {row[4]}, "
             f"{row[5]} failed" for row in started]
    text += [f"  pool {row[0]} ({row[1]}): {row[2]} -> {row[3]} threads" for row in resized]
    text += [f"  failed: {row[0]} thread {row[1]}: {row[2]} ({row[3]})" for row in fail_rows]
    return View(_html.page("threadguard: this cell", lines, *parts), "\n".join(text))


def _limit_total(figures: Dict[str, Any]) -> Optional[int]:
    """The size of the limit that sets the headroom, where known."""
    names = rules()
    key = {names.nproc: "rlimit_nproc_soft", names.pids: "pids_max",
           names.kernel: "threads_max", names.budget: "max_threads"}.get(
        str(figures.get("limit")))
    total = figures.get(key) if key else None
    return total if isinstance(total, int) and total > 0 else None


def concerns(now: Look) -> List[str]:
    """Warnings about the kernel now: pools larger than the CPU allocation,
    and few threads left under the limit that sets the headroom."""
    found = [f"{p.library} ({_file(p.path)}) runs {count(p.size, 'thread')} on "
             f"{count(int(now.cpus), 'CPU')} ({now.cpus.source}): oversubscribed, its threads "
             f"take turns; threadguard.limit(\"auto\") sizes every pool to the CPUs"
             for p in now.pools if isinstance(p.size, int) and p.size > int(now.cpus)]
    free = now.headroom.get("free")
    if isinstance(free, int) and not now.headroom.get("free_at_least"):
        total = _limit_total(now.headroom)
        low = max(rules().reserve, (total or 0) // LOW_SHARE)
        if free <= low:
            of = f" of {total}" if total else ""
            found.append(f"only {count(free, 'more thread')} can start under "
                         f"{now.headroom.get('limit')}{of}: the next pool or thread may fail; "
                         f"%threadguard shows who holds them")
    return found


class _Extension:
    """The state one IPython shell's extension keeps."""

    def __init__(self, shell: Any):
        self.shell = shell
        self.said: Tuple[str, ...] = ()

    def magic(self, line: str, cell: Optional[str] = None) -> Optional[View]:
        if line.strip():
            print(f"%threadguard takes no arguments: {USAGE}", file=sys.stderr)
            return None
        if cell is None:
            return kernel_view()
        before = look()
        self.shell.run_cell(cell, store_history=False)
        return cell_view(before, look())

    def after_cell(self, result: Any = None) -> None:
        try:
            found = tuple(concerns(look()))
        except Exception as exc:  # a notebook must never break because of threadguard
            found = (f"could not look at this kernel's threads: {exc}",)
        if found and found != self.said:
            for text in found:
                print(f"threadguard: {text}", file=sys.stderr, flush=True)
        self.said = found


_loaded: Dict[int, _Extension] = {}


def load(shell: Any) -> None:
    """Register %threadguard / %%threadguard and the after-cell warning."""
    if id(shell) in _loaded:
        return
    extension = _Extension(shell)
    _loaded[id(shell)] = extension
    shell.register_magic_function(extension.magic, magic_kind="line_cell",
                                  magic_name="threadguard")
    shell.events.register("post_run_cell", extension.after_cell)


def unload(shell: Any) -> None:
    """Stop the after-cell warning (IPython keeps magics once registered)."""
    extension = _loaded.pop(id(shell), None)
    if extension is not None:
        shell.events.unregister("post_run_cell", extension.after_cell)
