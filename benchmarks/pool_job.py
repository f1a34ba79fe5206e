"""A user's job: a multiprocessing Pool of numpy workers, written as users
write it (numpy imported at the top, the platform's start method, no thread
settings).  benchmarks/bench_workers.py runs it bare, under `threadguard
run`, and hand-tuned.

    python pool_job.py [--workers 4] [--tasks 48] [--size 256] [--repeat 20]
        [--method fork|spawn|forkserver]

Prints one JSON line: tasks per second of the timed map (the pool's start
and the first matmul in each worker are outside it) and the BLAS threads of
each worker.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from typing import Tuple

import numpy


def blas_task(job: Tuple[int, int]) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--method", choices=("fork", "spawn", "forkserver"),
                        default=mp.get_start_method())
    args = parser.parse_args()
    with mp.get_context(args.method).Pool(args.workers) as pool:
        pool.map(blas_task, [(args.size, 1)] * args.workers, chunksize=1)  # warm-up
        threads = sorted(pool.map(blas_threads, range(args.workers), chunksize=1))
        start = time.perf_counter()
        pool.map(blas_task, [(args.size, args.repeat)] * args.tasks, chunksize=1)
        elapsed = time.perf_counter() - start
    print(json.dumps({"tasks_per_second": args.tasks / elapsed, "blas_threads": threads}))


if __name__ == "__main__":
    main()
