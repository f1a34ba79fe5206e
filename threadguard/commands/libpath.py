"""`threadguard libpath`: the path of the packaged libthreadguard.so."""

from __future__ import annotations

import argparse
import os

from .. import _native
from .._errors import ThreadguardError

__all__ = ["add_arguments", "packaged_library", "run"]


def packaged_library() -> str:
    """The packaged libthreadguard.so; ThreadguardError when it is missing."""
    path = _native._library_file()  # a str: pathlib would cost `run` a few ms
    if not os.path.isfile(path):
        raise ThreadguardError(f"{path} is missing: reinstall threadguard")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Print the path of the packaged libthreadguard.so, for LD_PRELOAD."


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(packaged_library())
    return 0
