"""Exceptions raised by threadguard, each with a message that says what to do."""

from __future__ import annotations

__all__ = ["LibraryNotFoundError", "PublishedFileError", "ReportError", "ThreadguardError"]


class ThreadguardError(Exception):
    """Base class of every error threadguard raises."""


class LibraryNotFoundError(ThreadguardError):
    """libthreadguard.so is neither preloaded nor installed with the package."""


class ReportError(ThreadguardError):
    """A report file (THREADGUARD_REPORT=PATH.json) is missing or malformed."""


class PublishedFileError(ThreadguardError):
    """A running process's published counters (/dev/shm/threadguard-UID/) are
    missing, or their file is corrupt, truncated or of another version."""
