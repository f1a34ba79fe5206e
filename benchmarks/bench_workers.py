"""A worker pool under plain `threadguard run`: the share with no code change.

A user's script (benchmarks/pool_job.py: a Pool of 4 numpy workers, numpy
imported at the top, the platform's start method, no thread settings) is run
three ways, alternating which goes first each round:

  bare     python pool_job.py: every worker starts a BLAS team for the
           whole allocation
  guarded  threadguard run -- python pool_job.py: the preload alone, no
           option, no code change
  tuned    OMP/OPENBLAS/MKL/BLIS_NUM_THREADS=1 python pool_job.py: the
           folklore, set by hand before every import

Each run reports the throughput of its timed map (pool start-up and each
worker's first matmul are outside it) and its workers' BLAS threads.
Prints medians, spreads and the ratios guarded/bare and guarded/tuned,
writes JSON, and exits 1 when a target is missed: guarded at least
--target-bare times bare (default 2) and at least --target-tuned times
tuned (default 0.9, within 10%).

    python benchmarks/bench_workers.py [--rounds 9] [--workers 4] [--tasks 48]
        [--size 256] [--repeat 20] [--method fork|spawn|forkserver] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from benchstats import alternate, compare, machine, summary, write_json

HERE = Path(__file__).resolve().parent
JOB = HERE / "pool_job.py"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS")
WAYS = ("bare", "guarded", "tuned")


def clean_environment() -> Dict[str, str]:
    """The caller's environment without thread settings or a preload."""
    return {k: v for k, v in os.environ.items()
            if k not in THREAD_VARIABLES and not k.startswith("THREADGUARD_")
            and k != "LD_PRELOAD"}


def run_job(way: str, job_args: List[str]) -> Dict[str, object]:
    env = clean_environment()
    cmd = [sys.executable, str(JOB), *job_args]
    if way == "guarded":
        cmd = [sys.executable, "-m", "threadguard", "run", "--", *cmd]
    elif way == "tuned":
        env.update({name: "1" for name in THREAD_VARIABLES})
    # Run from the results' folder, not the checkout: `python -m threadguard`
    # there would import the unbuilt tree.
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800,
                          cwd=HERE / "results")
    if proc.returncode != 0:
        raise SystemExit(f"bench_workers: {way} run failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="rounds (default 9)")
    parser.add_argument("--workers", type=int, default=4, help="pool processes (default 4)")
    parser.add_argument("--tasks", type=int, default=48, help="tasks per timed map (default 48)")
    parser.add_argument("--size", type=int, default=256, help="matrix size (default 256)")
    parser.add_argument("--repeat", type=int, default=20, help="matmuls per task (default 20)")
    parser.add_argument("--method", choices=("fork", "spawn", "forkserver"), default=None,
                        help="the pool's start method (default: the platform's)")
    parser.add_argument("--target-bare", type=float, default=2.0,
                        help="guarded/bare must be at least this (default 2)")
    parser.add_argument("--target-tuned", type=float, default=0.9,
                        help="guarded/tuned must be at least this (default 0.9)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "workers.json",
                        help="JSON output (default benchmarks/results/workers.json)")
    args = parser.parse_args()
    if min(args.rounds, args.workers, args.tasks, args.size, args.repeat) < 1:
        parser.error("every number must be at least 1")
    job_args = ["--workers", str(args.workers), "--tasks", str(args.tasks),
                "--size", str(args.size), "--repeat", str(args.repeat)]
    if args.method:
        job_args += ["--method", args.method]
    (HERE / "results").mkdir(exist_ok=True)

    threads: Dict[str, List[int]] = {way: [] for way in WAYS}

    def measure(way: str) -> float:
        result = run_job(way, job_args)
        threads[way] += [int(t) for t in result["blas_threads"]]  # type: ignore[union-attr]
        return float(result["tasks_per_second"])  # type: ignore[arg-type]

    rates = alternate(args.rounds, WAYS, measure, f"{args.workers}-worker BLAS pool")
    figures = {
        "machine": machine(), "cpus": len(os.sched_getaffinity(0)), "workers": args.workers,
        "tasks": args.tasks, "size": args.size, "repeat": args.repeat, "rounds": args.rounds,
        "method": args.method or "platform default",
        "blas_threads_per_worker": {way: sorted(set(v)) for way, v in threads.items()},
        "tasks_per_second": {way: summary(rates[way]) for way in WAYS},
        "guarded_vs": {other: compare(rates, "guarded", other, "tasks per second")
                       for other in ("bare", "tuned")},
        "targets": {"bare": args.target_bare, "tuned": args.target_tuned},
    }
    print(f"{'run':8} {'BLAS threads/worker':>20} {'tasks/s median':>15} {'[min..max]':>18}")
    for way in WAYS:
        row = figures["tasks_per_second"][way]
        print(f"{way:8} {','.join(map(str, figures['blas_threads_per_worker'][way])):>20} "
              f"{row['median']:15.2f} [{row['min']:.2f}..{row['max']:.2f}]")
    missed = []
    for other, result in figures["guarded_vs"].items():
        pr = result["paired_ratio"]
        ratio = result["ratio_of_medians"]
        target = figures["targets"][other]
        print(f"throughput ratio guarded/{other}: {ratio:.2f} (paired per round: median "
              f"{pr['median']:.2f} [{pr['min']:.2f}..{pr['max']:.2f}]; target at least "
              f"{target:g})")
        if ratio < target:
            missed.append(f"guarded/{other} {ratio:.2f} < {target:g}")
    figures["missed"] = missed
    write_json(args.out, figures)
    if missed:
        print(f"missed: {'; '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
