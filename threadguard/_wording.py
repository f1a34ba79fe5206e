"""Counts in messages: "1 thread", "2 threads"."""

from __future__ import annotations

from typing import Optional

__all__ = ["count"]


def count(n: object, noun: str, plural: Optional[str] = None) -> str:
    """n and the noun, singular for exactly one: count(1, "thread") is
    "1 thread", count(3, "task") "3 tasks"; "unknown tasks" for None (a
    figure a report could not read)."""
    many = plural or noun + "s"
    if n is None:
        return f"unknown {many}"
    return f"{n} {noun if n == 1 and not isinstance(n, bool) else many}"
