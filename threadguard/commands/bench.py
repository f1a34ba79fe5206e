"""`threadguard bench`: what fewer threads cost here, and a node profile."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

from .._policy import rules
from ..bench.command import BenchOptions, bench
from ..bench.workloads import GRID_WORKLOAD, WORKLOADS
from .arguments import wrap

__all__ = ["add_arguments", "run"]


def _counts(value: str) -> List[int]:
    largest = rules().max_pool_threads
    counts = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= largest:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a list of counts from 1 to {largest}, like 1,2,4")
        counts.append(int(part))
    return sorted(set(counts))


def _names(value: str) -> List[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{value!r} names no workload of {', '.join(WORKLOADS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    listing = "\n".join(f"  {w.name:14} {w.title} ({w.unit}; {w.device})"
                        for w in WORKLOADS.values())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = wrap(
        "Run standard workloads at several thread counts, each configuration in a fresh "
        "process under the guard (pool sizes are fixed when a library loads), warmed up, then "
        "timed in windows until they agree within a few percent or the time budget is spent. "
        "Prints a table with the median throughput, its spread, peak RSS, VmSize and the live "
        "threads by library, and recommends for each workload the fewest threads within 5% of "
        "the best, with what 1 and 2 threads cost. The oversubscription grid runs "
        f"{GRID_WORKLOAD} in k worker processes at once, for each k of --workers. Writes "
        "DIR/bench-HOST-NCPUcpu.json and .png, and the node profile that limit(\"auto\") reads "
        "(threadguard.profile_path(); directory $THREADGUARD_PROFILE_DIR, default "
        "~/.cache/threadguard/profiles). Exit status: 0, 1 when a configuration failed, 2 on a "
        "usage error.")
    parser.epilog = (
        f"workloads:\n{listing}\n\n"
        + wrap("The CUDA workload varies the CPU side of a GPU training step: --threads are "
               "torch's intra-op threads, --workers its DataLoader workers (0 is always run). "
               "Without a CUDA device it is skipped with one line.") + "\n\n"
        "examples:\n  threadguard bench --quick\n"
        "  threadguard bench --workloads matmul,mlp-train --threads 1,2,4,8,16\n"
        "  threadguard bench --device cuda --workers 2,4,8\n"
        "  THREADGUARD_PROFILE_DIR=/shared/profiles srun --ntasks-per-node=1 "
        "threadguard bench --out /shared/bench")
    parser.add_argument("--quick", action="store_true",
                        help="smaller problems, shorter timing, threads 1, 2 and the "
                             "allocation, workers 1 and 4 (about a minute on 2 cores)")
    parser.add_argument("--workloads", type=_names, metavar="NAME,...",
                        help="workloads to run (default: all; listed below)")
    parser.add_argument("--threads", type=_counts, metavar="N,...",
                        help="threads per process (default: powers of two up to the CPU "
                             "allocation, and the allocation)")
    parser.add_argument("--workers", type=_counts, metavar="K,...",
                        help=f"worker processes of the oversubscription grid ({GRID_WORKLOAD}), "
                             "and DataLoader workers of the CUDA workload (default: 1,2,4; "
                             "quick: 1,4)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="run the CPU workloads, the CUDA one, or all (default)")
    parser.add_argument("--out", type=Path, default=Path("threadguard-bench"), metavar="DIR",
                        help="where the JSON and PNG go (default: ./threadguard-bench)")
    parser.add_argument("--no-profile", action="store_true",
                        help="do not write the node profile")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    options = BenchOptions(quick=args.quick, workloads=args.workloads, threads=args.threads,
                           workers=args.workers, device=args.device, out=args.out,
                           profile=not args.no_profile)
    try:
        return bench(options)
    except ValueError as exc:
        print(f"threadguard bench: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise  # not a file: no process or memory for a measurement (main says so)
        print(f"threadguard bench: cannot write {exc.filename}: {exc.strerror}",
              file=sys.stderr)
        return 2
