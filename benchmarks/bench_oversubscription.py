"""The oversubscription fix: a pool of worker processes doing BLAS work.

Each worker of a default pool starts a full OpenBLAS team (one thread per
CPU), so 4 workers on a 2-core machine run 8 BLAS threads on 2 cores.
threadguard.limit("auto", workers=4) gives each worker its share instead.
Both pools (multiprocessing, spawn) run the same matmul tasks in one run,
alternating which goes first each round; pool start-up and the first import
are outside the timing. Prints throughput medians, spreads and the ratio
limited/default, and writes JSON.

    python benchmarks/bench_oversubscription.py [--rounds 9] [--workers 4]
        [--tasks 48] [--size 256] [--repeat 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Dict, List, Tuple

import threadguard
from benchstats import alternate, compare, machine, write_json

HERE = Path(__file__).resolve().parent
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "THREADGUARD_POOL_THREADS")


def blas_task(job: Tuple[int, int]) -> float:
    """One unit of work in a worker: `repeat` matmuls of size x size."""
    import numpy
    size, repeat = job
    a = numpy.random.default_rng(0).random((size, size))
    total = 0.0
    for _ in range(repeat):
        total += float((a @ a)[0, 0])
    return total


def blas_threads(_: int) -> int:
    from threadpoolctl import threadpool_info
    return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
               default=0)


def run_pool(workers: int, tasks: int, size: int, repeat: int, limited: bool
             ) -> Tuple[float, int]:
    """Tasks per second of a fresh spawn pool, and its BLAS threads per worker."""
    with ExitStack() as stack:
        if limited:
            stack.enter_context(threadguard.limit("auto", workers=workers))
        pool = stack.enter_context(mp.get_context("spawn").Pool(workers))
        # Warm-up: every worker imports numpy and starts its BLAS team.
        pool.map(blas_task, [(size, 1)] * workers, chunksize=1)
        per_worker = max(pool.map(blas_threads, range(workers)))
        start = time.perf_counter()
        pool.map(blas_task, [(size, repeat)] * tasks, chunksize=1)
        elapsed = time.perf_counter() - start
    return tasks / elapsed, per_worker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="rounds, alternating (default 9)")
    parser.add_argument("--workers", type=int, default=4, help="pool processes (default 4)")
    parser.add_argument("--tasks", type=int, default=48, help="tasks per timed map (default 48)")
    parser.add_argument("--size", type=int, default=256, help="matrix size (default 256)")
    parser.add_argument("--repeat", type=int, default=20, help="matmuls per task (default 20)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "oversubscription.json",
                        help="JSON output (default benchmarks/results/oversubscription.json)")
    args = parser.parse_args()
    if min(args.rounds, args.workers, args.tasks, args.size, args.repeat) < 1:
        parser.error("every number must be at least 1")
    # The default pool is the libraries' own default: no thread variables.
    for name in THREAD_VARIABLES:
        os.environ.pop(name, None)

    threads: Dict[str, List[int]] = {"default": [], "limited": []}

    def measure(name: str) -> float:
        rate, per_worker = run_pool(args.workers, args.tasks, args.size, args.repeat,
                                    limited=name == "limited")
        threads[name].append(per_worker)
        return rate

    rates = alternate(args.rounds, ("default", "limited"), measure,
                      f"{args.workers}-worker BLAS pool")
    result = compare(rates, "limited", "default", "tasks per second")
    figures = {
        "machine": machine(), "allocation": threadguard.allocation(),
        "workers": args.workers, "tasks": args.tasks, "size": args.size,
        "repeat": args.repeat, "rounds": args.rounds,
        "blas_threads_per_worker": {k: sorted(set(v)) for k, v in threads.items()},
        "throughput": result,
    }
    pr = result["paired_ratio"]
    assert isinstance(pr, dict)
    print(f"{'pool':10} {'BLAS threads/worker':>20} {'tasks/s median':>15} {'[min..max]':>18}")
    for name in ("default", "limited"):
        row = result[name]
        assert isinstance(row, dict)
        print(f"{name:10} {','.join(map(str, figures['blas_threads_per_worker'][name])):>20} "
              f"{row['median']:15.2f} [{row['min']:.2f}..{row['max']:.2f}]")
    print(f"throughput ratio limited/default: {result['ratio_of_medians']:.2f} "
          f"(paired per round: median {pr['median']:.2f} [{pr['min']:.2f}..{pr['max']:.2f}])")
    write_json(args.out, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
