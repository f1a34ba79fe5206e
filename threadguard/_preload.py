"""Build the environment that starts a command with libthreadguard.so preloaded."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: `threadguard run` reads this module (see _cli.py)
if TYPE_CHECKING:
    from typing import Dict, Mapping, Optional

__all__ = ["preload_environment"]


def preload_environment(library: str, base: Optional[Mapping[str, str]] = None,
                        report: Optional[str] = None,
                        settings: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """A copy of base (default: os.environ) with library first in LD_PRELOAD.

    An existing LD_PRELOAD is kept after it, never replaced; the library is
    not added twice.  report, if given, sets THREADGUARD_REPORT; settings
    are THREADGUARD_* variables to set."""
    if any(ch in library for ch in ": \t"):
        raise ValueError(f"{library!r} contains ':' or a space, which LD_PRELOAD cannot hold; "
                         "install threadguard under a path without them")
    env = dict(os.environ if base is None else base)
    # The loader splits LD_PRELOAD on colons and spaces.
    existing = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    others = [p for p in existing if os.path.realpath(p) != os.path.realpath(library)]
    env["LD_PRELOAD"] = ":".join([library, *others])
    if report is not None:
        env["THREADGUARD_REPORT"] = report
    env.update(settings or {})
    return env
