"""`threadguard site`: the files a site installs to guard every job without
`threadguard run` in it: an Lmod modulefile, a Slurm TaskProlog, and the
line for /etc/ld.so.preload (docs/site.md says which to choose); and the
Prometheus alerting rules over `threadguard top`'s metrics."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import List, Tuple

from .._settings import OPTIONS, SITE_VARIABLES, check_setting
from ..top.metrics import ALERT_RULES
from .libpath import packaged_library

__all__ = ["add_arguments", "add_settings_argument", "modulefile", "run", "setting",
           "taskprolog"]

_OPT_OUT = "THREADGUARD_DISABLE=1"


def modulefile(library: str, settings: List[Tuple[str, str]]) -> str:
    """An Lmod modulefile (Lua) that puts library first in LD_PRELOAD."""
    lines = [
        "-- threadguard, made by `threadguard site modulefile`.",
        "-- `module load threadguard` guards every later command of the shell: each thread",
        "-- pool (OpenBLAS, OpenMP, MKL, BLIS, torch) is sized to the CPUs and task limits",
        "-- the process has.  `module unload threadguard` ends it.",
        "help([[",
        "Sizes the thread pools of every later command to the CPUs and task limits it has,",
        "and counts threads by the library that created them (THREADGUARD_REPORT=stderr shows",
        f"them at exit).  One command opts out with {_OPT_OUT}.",
        "]])",
        'whatis("Name: threadguard")',
        'whatis("Description: size every thread pool to the job\'s CPUs and limits")',
        f"prepend_path(\"LD_PRELOAD\", {_lua_string(library)})",
    ]
    lines += [f"setenv({_lua_string(name)}, {_lua_string(value)})" for name, value in settings]
    return "\n".join(lines) + "\n"


def taskprolog(library: str, settings: List[Tuple[str, str]]) -> str:
    """A Slurm TaskProlog (sh) that preloads library into every task."""
    quoted = shlex.quote(library)
    lines = [
        "#!/bin/sh",
        "# threadguard, made by `threadguard site taskprolog`: slurm.conf's TaskProlog=.",
        "# slurmstepd runs it as the user, with the task's environment, before each task of",
        "# every job step, and sets the variables it prints: every step is guarded with no",
        "# `threadguard run` in the job script.",
        f"# A job opts out with {_OPT_OUT} in its environment",
        f"# (sbatch --export=ALL,{_OPT_OUT}, or `export {_OPT_OUT}` before srun).",
        'case "${THREADGUARD_DISABLE:-}" in 1|on|yes|true) exit 0 ;; esac',
        f"library={quoted}",
        '[ -r "$library" ] || exit 0  # not installed on this node: run the task as it is',
        'case ":${LD_PRELOAD:-}:" in *":$library:"*) exit 0 ;; esac',
        'echo "export LD_PRELOAD=$library${LD_PRELOAD:+:$LD_PRELOAD}"',
    ]
    lines += [f"echo {shlex.quote(f'export {name}={value}')}" for name, value in settings]
    return "\n".join(lines) + "\n"


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def setting(text: str) -> Tuple[str, str]:
    """A --set VARIABLE=VALUE argument, checked by the library's own parser (argparse type)."""
    name, sep, value = text.partition("=")
    known = {option.variable for option in OPTIONS} | set(SITE_VARIABLES)
    if not sep or name not in known:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not VARIABLE=VALUE for a THREADGUARD_* setting; known: "
            f"{', '.join(sorted(known))}")
    try:
        check_setting(name, value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name, value


def add_settings_argument(parser: argparse.ArgumentParser, which: str) -> None:
    """--set VARIABLE=VALUE (repeated) into args.settings; which: the rest
    of its help after "a THREADGUARD_* setting"."""
    parser.add_argument("--set", metavar="VARIABLE=VALUE", type=setting, action="append",
                        default=[], dest="settings", help=f"a THREADGUARD_* setting {which}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print a file that guards every job on a node without `threadguard run`: 'modulefile' "
        "(Lmod: save it as threadguard.lua in a modulepath; `module load threadguard`), "
        "'taskprolog' (Slurm: save it, make it executable, set TaskProlog= to it in "
        "slurm.conf), or 'preload' (the line for /etc/ld.so.preload, which loads the library "
        "into every dynamically linked program on the node). Programs that start no thread "
        "pool see nothing; setuid programs and those named in THREADGUARD_SKIP are left "
        f"alone; a job or command opts out with {_OPT_OUT}. 'alerts' prints Prometheus "
        f"alerting rules over the metrics of `threadguard top --textfile` or --listen (save "
        f"it in a rule_files directory of Prometheus).")
    parser.add_argument("kind", choices=("modulefile", "taskprolog", "preload", "alerts"),
                        help="which file to print")
    parser.add_argument("--library", metavar="PATH",
                        help="the libthreadguard.so the file names (default: this installation's; "
                             "give the path where the nodes have it)")
    add_settings_argument(parser, "for every guarded process, such as THREADGUARD_OUTPUT=syslog "
                                  "or THREADGUARD_REPORT=/scratch/tg/%%p.json (modulefile and "
                                  "taskprolog; repeat for more)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.kind == "alerts":
        if args.settings or args.library:
            parser.error("--set and --library do not apply to alerts: the rules read the "
                         "metrics, whatever the processes' settings")
        sys.stdout.write(ALERT_RULES.read_text(encoding="utf-8"))
        return 0
    library = args.library or packaged_library()
    if not os.path.isabs(library):
        parser.error(f"--library {library}: give an absolute path (the loader needs one)")
    if args.kind == "preload":
        if args.settings:
            parser.error("--set does not apply to preload: /etc/ld.so.preload carries no "
                         "environment (use the library's defaults there)")
        print(library)
        return 0
    make = modulefile if args.kind == "modulefile" else taskprolog
    sys.stdout.write(make(library, args.settings))
    return 0
