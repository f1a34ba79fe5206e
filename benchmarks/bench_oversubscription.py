"""Choosing threads for a pool of worker processes doing BLAS work.

Each worker of a default pool starts a full OpenBLAS team (one thread per
CPU), so 4 workers on a 2-core machine run 8 BLAS threads on 2 cores. Four
ways to size the workers' pools, each a fresh spawn pool running the same
matmul tasks:

  default  the libraries' own default: no thread variables
  ones     the folklore: OMP/OPENBLAS/MKL_NUM_THREADS=1 in every worker
  auto     the pool made inside threadguard.limit("auto", workers=K), with
           no node profile (the policy alone; --with-profile keeps the one
           threadguard bench wrote)
  best     the fastest threads per worker found by a sweep of 1..allocation
           (--sweep-rounds rounds each) before the main rounds

The main rounds measure all four in one run, rotating which goes first;
pool start-up and the first import are outside the timing. Prints
throughput medians, spreads and the ratios auto/default, auto/ones and
auto/best, and writes JSON.

    python benchmarks/bench_oversubscription.py [--rounds 9] [--workers 4]
        [--tasks 48] [--size 256] [--repeat 20] [--sweep-rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import threadguard
from benchstats import alternate, compare, machine, summary, write_json
from pool_job import blas_task, blas_threads

HERE = Path(__file__).resolve().parent
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "THREADGUARD_POOL_THREADS")
POLICIES = ("default", "ones", "auto", "best")


def run_pool(workers: int, tasks: int, size: int, repeat: int, policy: str,
             per_worker: Optional[int] = None) -> Tuple[float, int]:
    """Tasks per second of a fresh spawn pool sized by policy ("default",
    "auto", or per_worker threads set in the workers' environment), and its
    BLAS threads per worker."""
    with ExitStack() as stack:
        saved = dict(os.environ)
        stack.callback(lambda: (os.environ.clear(), os.environ.update(saved)))
        if policy == "auto":
            stack.enter_context(threadguard.limit("auto", workers=workers))
        elif per_worker is not None:
            for name in THREAD_VARIABLES[:4]:
                os.environ[name] = str(per_worker)
        pool = stack.enter_context(mp.get_context("spawn").Pool(workers))
        # Warm-up: every worker imports numpy and starts its BLAS team.
        pool.map(blas_task, [(size, 1)] * workers, chunksize=1)
        threads = max(pool.map(blas_threads, range(workers)))
        start = time.perf_counter()
        pool.map(blas_task, [(size, repeat)] * tasks, chunksize=1)
        elapsed = time.perf_counter() - start
    return tasks / elapsed, threads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="main rounds (default 9)")
    parser.add_argument("--workers", type=int, default=4, help="pool processes (default 4)")
    parser.add_argument("--tasks", type=int, default=48, help="tasks per timed map (default 48)")
    parser.add_argument("--size", type=int, default=256, help="matrix size (default 256)")
    parser.add_argument("--repeat", type=int, default=20, help="matmuls per task (default 20)")
    parser.add_argument("--sweep-rounds", type=int, default=3,
                        help="rounds per thread count in the sweep for 'best' (default 3)")
    parser.add_argument("--with-profile", action="store_true",
                        help="let 'auto' use the node profile of threadguard bench, if any")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "oversubscription.json",
                        help="JSON output (default benchmarks/results/oversubscription.json)")
    args = parser.parse_args()
    if min(args.rounds, args.workers, args.tasks, args.size, args.repeat,
           args.sweep_rounds) < 1:
        parser.error("every number must be at least 1")
    # The default pool is the libraries' own default: no thread variables.
    for name in THREAD_VARIABLES:
        os.environ.pop(name, None)
    if not args.with_profile:
        os.environ["THREADGUARD_PROFILE_DIR"] = tempfile.mkdtemp(prefix="no-profile-")
    cpus = threadguard.allocation()

    # The sweep: every thread count per worker from 1 to the allocation.
    sweep_rates = alternate(args.sweep_rounds, [str(t) for t in range(1, cpus + 1)],
                            lambda t: run_pool(args.workers, args.tasks, args.size,
                                               args.repeat, "fixed", int(t))[0],
                            "sweep of threads per worker")
    sweep = {int(t): summary(v) for t, v in sweep_rates.items()}
    best_threads = max(sweep, key=lambda t: sweep[t]["median"])

    threads: Dict[str, List[int]] = {name: [] for name in POLICIES}
    fixed = {"ones": 1, "best": best_threads}

    def measure(name: str) -> float:
        rate, per_worker = run_pool(args.workers, args.tasks, args.size, args.repeat,
                                    name, fixed.get(name))
        threads[name].append(per_worker)
        return rate

    rates = alternate(args.rounds, POLICIES, measure, f"{args.workers}-worker BLAS pool")
    figures = {
        "machine": machine(), "allocation": cpus, "workers": args.workers,
        "tasks": args.tasks, "size": args.size, "repeat": args.repeat, "rounds": args.rounds,
        "profile_used": args.with_profile,
        "sweep": {"rounds": args.sweep_rounds, "tasks_per_second": sweep,
                  "best_threads_per_worker": best_threads},
        "blas_threads_per_worker": {k: sorted(set(v)) for k, v in threads.items()},
        "tasks_per_second": {name: summary(rates[name]) for name in POLICIES},
        "auto_vs": {other: compare(rates, "auto", other, "tasks per second")
                    for other in ("default", "ones", "best")},
    }
    print(f"{'pool':8} {'BLAS threads/worker':>20} {'tasks/s median':>15} {'[min..max]':>18}")
    for name in POLICIES:
        row = figures["tasks_per_second"][name]
        print(f"{name:8} {','.join(map(str, figures['blas_threads_per_worker'][name])):>20} "
              f"{row['median']:15.2f} [{row['min']:.2f}..{row['max']:.2f}]")
    for other, result in figures["auto_vs"].items():
        pr = result["paired_ratio"]
        print(f"throughput ratio auto/{other}: {result['ratio_of_medians']:.2f} "
              f"(paired per round: median {pr['median']:.2f} [{pr['min']:.2f}..{pr['max']:.2f}])")
    print(f"sweep best: {best_threads} thread(s) per worker "
          f"({statistics.median(sweep_rates[str(best_threads)]):.2f} tasks/s in the sweep)")
    write_json(args.out, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
