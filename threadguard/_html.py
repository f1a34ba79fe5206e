"""HTML tables for notebooks: how a Stats, an Allocation and the IPython
extension's views look in Jupyter (their _repr_html_), with the same
figures as the text forms.

Nothing here reads the process: callers pass what to show, so that the
report types can use it without an import cycle."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence

if TYPE_CHECKING:
    from ._policy import Allocation
    from ._stats import PoolSize, Stats

__all__ = ["allocation_html", "decisions_html", "libraries_html", "page", "stats_html", "table"]

_STYLE = ("border-collapse:collapse;font-family:monospace;font-size:90%;margin:0.3em 0")
_CELL = "padding:0.1em 0.6em;text-align:{align};border-bottom:1px solid #ddd"


def _cell(value: object, header: bool = False) -> str:
    tag = "th" if header else "td"
    align = "right" if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else "left"
    text = "" if value is None else html.escape(str(value))
    return f'<{tag} style="{_CELL.format(align=align)}">{text}</{tag}>'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]],
          caption: Optional[str] = None) -> str:
    """One HTML table: a header row, then the rows (numbers right-aligned)."""
    out = [f'<table style="{_STYLE}">']
    if caption:
        out.append(f'<caption style="text-align:left;font-weight:bold">'
                   f'{html.escape(caption)}</caption>')
    out.append("<tr>" + "".join(_cell(h, header=True) for h in headers) + "</tr>")
    out.extend("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    out.append("</table>")
    return "".join(out)


def page(title: str, lines: Sequence[str], *parts: str) -> str:
    """A titled block: a bold title, lines of text, then tables."""
    head = f"<div><b>{html.escape(title)}</b>"
    text = "".join(f"<div>{html.escape(line)}</div>" for line in lines)
    return head + text + "".join(parts) + "</div>"


def libraries_html(stats: "Stats") -> str:
    """Threads by creating library, with the total."""
    rows: List[Sequence[object]] = [
        (lib.name, lib.kind, lib.live, lib.peak, lib.created, lib.failed, lib.denied,
         "LEAKING" if lib.growth.leaking else "")
        for lib in sorted(stats.libraries, key=lambda lib: (-lib.live, lib.name))]
    t = stats.total
    rows.append(("total", "", t.live, t.peak, t.created, t.failed, t.denied, ""))
    return table(("library", "kind", "live", "peak", "created", "failed", "denied", ""), rows,
                 "threads by creating library")


def decisions_html(pools: Sequence["PoolSize"], caption: str = "pool sizes decided") -> str:
    """Pool-size decisions: library, variable, value and where it came from."""
    rows = [(pool.library, pool.variable, pool.value, pool.source,
             pool.lowered_by or "", f"{pool.cpus} ({pool.cpus_from})" if pool.cpus_from
             else pool.cpus)
            for pool in pools]
    return table(("library", "variable", "threads", "source", "lowered by", "CPUs"), rows,
                 caption)


def stats_html(stats: "Stats") -> str:
    """A Stats as threadguard's exit table shows it, in HTML."""
    lines = [f"pid {stats.pid} ({stats.program}), mode {stats.mode or '?'}"]
    if stats.tasks is not None:
        lines.append(f"tasks: {stats.tasks}")
    if stats.failures_total:
        lines += [f"failed creations: {stats.failures_total}"] + [
            f"  {f.library} thread {f.thread}: {f.error} ({f.cause})" for f in stats.failures[:5]]
    parts = [libraries_html(stats)]
    if stats.pools:
        parts.append(decisions_html(stats.pools))
    return page("threadguard: threads by creating library", lines, *parts)


def allocation_html(cpus: "Allocation") -> str:
    """An Allocation: the CPUs, the figure that decided, every figure seen."""
    lines = [f"{int(cpus)} CPUs, from {cpus.source}"]
    if cpus.sharing is not None:
        lines.append(str(cpus.sharing))
    return page("threadguard: CPU allocation", lines,
                table(("figure", "CPUs"), cpus.sources, "figures seen"))
