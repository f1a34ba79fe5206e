"""`threadguard kernel install`: a Jupyter kernelspec whose kernel starts
under `threadguard run`, so its pools are sized before the first cell
imports numpy or torch (a variable set in a cell comes too late for a
library already loaded, and the kernel's launcher is not the user's)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import tempfile
from typing import Any, Dict, List, Tuple

from .. import __version__
from .._errors import ThreadguardError
from .site import add_settings_argument

__all__ = ["add_arguments", "install", "kernel_argv", "run"]

_DESCRIPTION = (
    "Install a Jupyter kernel (a kernelspec) that runs this Python under threadguard: every "
    "pool the notebook loads (OpenBLAS, OpenMP, MKL, torch) is sized to the kernel's CPUs and "
    "task headroom before it starts, and threads are counted by library from the start. "
    "Pick it in JupyterLab's launcher or Kernel > Change Kernel; `%load_ext threadguard` in a "
    "cell adds the %threadguard magics. `jupyter kernelspec remove NAME` removes it.")


def kernel_argv(python: str) -> List[str]:
    """The kernel's command line: ipykernel under `threadguard run`.  The
    console script where this environment has one: `python -m` would put the
    notebook's directory first on sys.path, where a folder named threadguard
    (a source checkout) would be imported instead."""
    script = os.path.join(sysconfig.get_path("scripts"), "threadguard")
    runner = [script] if os.access(script, os.X_OK) else [python, "-m", "threadguard"]
    return [*runner, "run", "--", python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def install(name: str, display_name: str, *, user: bool, prefix: str | None,
            settings: List[Tuple[str, str]]) -> str:
    """Write the kernelspec where Jupyter looks (jupyter_client decides:
    --user, a prefix, or the system-wide directory) and return its directory."""
    try:
        from ipykernel.kernelspec import write_kernel_spec
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        raise ThreadguardError(
            f"ipykernel is not installed in {sys.executable}, which the kernel runs: "
            f"`{sys.executable} -m pip install ipykernel`, then install the kernel again"
            ) from None
    overrides: Dict[str, Any] = {
        "argv": kernel_argv(sys.executable),
        "display_name": display_name,
        "env": dict(settings),
        "metadata": {"debugger": True, "threadguard": __version__},
    }
    source = tempfile.mkdtemp(prefix="threadguard-kernel-")
    try:
        write_kernel_spec(os.path.join(source, name), overrides=overrides)
        try:
            found: str = KernelSpecManager().install_kernel_spec(
                os.path.join(source, name), kernel_name=name, user=user, prefix=prefix)
        except PermissionError as exc:
            raise ThreadguardError(
                f"cannot write the kernelspec to {exc.filename or 'the system directory'}: "
                f"permission denied; use --user (yours alone), --sys-prefix (this "
                f"environment) or --prefix DIR") from None
        return found
    finally:
        shutil.rmtree(source, ignore_errors=True)


def _name(value: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789._-")
    if not value or not set(value.lower()) <= allowed:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a kernel name: letters, digits, '.', '_' and '-' only (Jupyter's "
            f"rule)")
    return value.lower()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = _DESCRIPTION
    parser.add_argument("action", choices=("install",), help="what to do (install the kernel)")
    parser.add_argument("--name", type=_name, default="threadguard",
                        help="the kernelspec's name (default threadguard; python3 replaces the "
                             "default Python kernel where it is installed)")
    parser.add_argument("--display-name", default="Python 3 (threadguard)",
                        help="the name JupyterLab shows (default: %(default)s)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true",
                       help="install for this user only (~/.local/share/jupyter/kernels)")
    where.add_argument("--sys-prefix", action="store_true",
                       help=f"install into this environment ({sys.prefix})")
    where.add_argument("--prefix", metavar="DIR",
                       help="install under DIR/share/jupyter/kernels (for a JupyterHub "
                            "image or a shared environment)")
    add_settings_argument(parser, "for the kernel, such as "
                                  "THREADGUARD_REPORT=/tmp/kernel-%%p.json (repeat for more)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    prefix = sys.prefix if args.sys_prefix else args.prefix
    where = install(args.name, args.display_name, user=args.user, prefix=prefix,
                    settings=args.settings)
    print(f"installed the kernel {args.display_name!r} ({args.name}) in {where}")
    print(f"  it runs: {' '.join(kernel_argv(sys.executable))}")
    return 0
