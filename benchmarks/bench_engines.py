"""A Dask worker pool doing BLAS work: the default against threadguard's
plugin, throughput ratio measured in one run.

A LocalCluster of W worker processes x 1 thread on the node; each task
multiplies matrices (numpy dgemm).  The default is what distributed does:
the Nanny starts each worker with OMP/MKL/OPENBLAS_NUM_THREADS=1, whatever
the node has to spare.  With threadguard.integrations.dask.ThreadguardPlugin
each worker gets allocation // W threads.  Both clusters stay up for the
whole run and take turns each round (the order rotating), so both see the
same machine; the figures are medians with quartiles over the rounds.

    python benchmarks/bench_engines.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchstats import alternate, compare, machine, summary, write_json  # noqa: E402

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "THREADGUARD_POOL_THREADS")


def matmuls(size: int, repeat: int) -> float:
    """One task: `repeat` dgemms of size x size; returns a checksum."""
    import numpy
    a = numpy.random.default_rng(0).standard_normal((size, size))
    total = 0.0
    for _ in range(repeat):
        total += float((a @ a)[0, 0])
    return total


def blas_threads() -> int:
    import threadpoolctl
    return max((i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"), default=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes per cluster (default 1)")
    parser.add_argument("--tasks", type=int, default=8, help="tasks per round (default 8)")
    parser.add_argument("--size", type=int, default=768, help="matrix size (default 768)")
    parser.add_argument("--repeat", type=int, default=4, help="matmuls per task (default 4)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "engines.json",
                        help="JSON output (default benchmarks/results/engines.json)")
    args = parser.parse_args()
    if min(args.rounds, args.workers, args.tasks, args.size, args.repeat) < 1:
        parser.error("every number must be at least 1")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        parser.error("needs dask distributed: pip install 'dask[distributed]'")
    import threadguard
    from threadguard.integrations.dask import ThreadguardPlugin
    for name in THREAD_VARIABLES:
        os.environ.pop(name, None)

    clients: Dict[str, Any] = {}
    clusters: List[Any] = []
    try:
        for name in ("default", "threadguard"):
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                   processes=True, dashboard_address=None)
            clusters.append(cluster)
            client = Client(cluster)
            client.wait_for_workers(args.workers)
            if name == "threadguard":
                client.register_plugin(ThreadguardPlugin())
            clients[name] = client
        threads = {name: sorted(set(c.run(blas_threads).values()))
                   for name, c in clients.items()}
        print(f"BLAS threads per worker: {threads}", file=sys.stderr)

        def measure(name: str) -> float:
            client = clients[name]
            start = time.perf_counter()
            futures = client.map(matmuls, [args.size] * args.tasks, [args.repeat] * args.tasks,
                                 pure=False)
            client.gather(futures)
            return args.tasks / (time.perf_counter() - start)

        measure("default"), measure("threadguard")  # warm up: imports, first pools
        rates = alternate(args.rounds, ["default", "threadguard"], measure,
                          f"Dask, {args.workers} worker(s) x 1 thread")
    finally:
        for client in clients.values():
            client.close()
        for cluster in clusters:
            cluster.close()

    ratio = compare(rates, "threadguard", "default", "tasks per second")
    figures = {
        "machine": machine(), "allocation": int(threadguard.allocation()),
        "engine": "dask LocalCluster", "workers": args.workers, "threads_per_worker": 1,
        "tasks": args.tasks, "size": args.size, "repeat": args.repeat, "rounds": args.rounds,
        "blas_threads_per_worker": threads,
        "tasks_per_second": {name: summary(v) for name, v in rates.items()},
        "threadguard_vs_default": ratio,
    }
    for name in ("default", "threadguard"):
        s = figures["tasks_per_second"][name]
        print(f"{name:12} BLAS threads {threads[name]}  {s['median']:.2f} tasks/s "
              f"(quartiles {s['q1']:.2f}-{s['q3']:.2f}, n={s['n']})")
    paired = ratio["paired_ratio"]
    print(f"throughput ratio threadguard/default: {ratio['ratio_of_medians']:.2f} "
          f"(paired per round: median {paired['median']:.2f}, "
          f"range {paired['min']:.2f}-{paired['max']:.2f})")
    write_json(args.out, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
