"""A job's processes, as a user writes them, for tests/test_workers.py.

    python workers_child.py pool METHOD numpy|none [RELEASE_FILE]
    python workers_child.py executor METHOD
    python workers_child.py dataloader
    python workers_child.py rank
    python workers_child.py ends METHOD
    python workers_child.py fanout plain|shell

Each worker (or rank) prints one JSON line, read from inside it after a
matmul: its BLAS and OpenMP pool sizes (threadpoolctl), its live threads,
and, when threadguard's library is preloaded, its CPU allocation's source,
who it shares the parent's CPUs with, and the memory its published file
takes.  No threadguard call sizes anything: the preload alone does, or
nothing (the default).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

WORKERS = 4


def preloaded() -> bool:
    return "libthreadguard" in os.environ.get("LD_PRELOAD", "")


def _published_file() -> dict:
    files = glob.glob(f"/dev/shm/threadguard-{os.getuid()}/{os.getpid()}.*.live")
    if not files:
        return {}
    st = os.stat(files[0])
    return {"published_size": st.st_size, "published_bytes": st.st_blocks * 512}


def report(index: object = None) -> dict:
    """This process's pools and threads, after a matmul."""
    import numpy
    from threadpoolctl import threadpool_info
    a = numpy.random.default_rng(0).random((256, 256))
    float((a @ a)[0, 0])
    pools = {}
    for entry in threadpool_info():
        pools[entry["internal_api"]] = max(pools.get(entry["internal_api"], 0),
                                           int(entry["num_threads"]))
    info = {"pid": os.getpid(), "ppid": os.getppid(), "index": index, "pools": pools,
            "tasks": len(os.listdir("/proc/self/task"))}
    if preloaded():
        import threadguard
        cpus = threadguard.allocation()
        info.update(cpus=int(cpus), source=cpus.source,
                    sharing=None if cpus.sharing is None else {
                        "parent": cpus.sharing.parent, "processes": cpus.sharing.processes,
                        "pids": list(cpus.sharing.pids)},
                    decisions=[[p.variable, p.value, p.cpus_from]
                               for p in threadguard.stats().pools],
                    **_published_file())
    return info


_barrier = None
_release = None


def _start_worker(barrier, release):
    global _barrier, _release
    _barrier, _release = barrier, release


def pool_task(index: int) -> dict:
    # Every worker holds a task at once: four tasks, four workers.
    _barrier.wait(timeout=300)
    info = report(index)
    if _release:
        deadline = time.monotonic() + 300
        while not os.path.exists(_release) and time.monotonic() < deadline:
            time.sleep(0.05)
    return info


def run_pool(method: str, release: str) -> None:
    import multiprocessing as mp
    ctx = mp.get_context(method)
    pool = ctx.Pool(WORKERS, initializer=_start_worker, initargs=(ctx.Barrier(WORKERS), release))
    for info in pool.map(pool_task, range(WORKERS), chunksize=1):
        print(json.dumps(info), flush=True)
    pool.close()
    pool.join()


def run_executor(method: str) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    ctx = mp.get_context(method)
    with ProcessPoolExecutor(WORKERS, mp_context=ctx, initializer=_start_worker,
                             initargs=(ctx.Barrier(WORKERS), None)) as executor:
        for info in executor.map(pool_task, range(WORKERS)):
            print(json.dumps(info), flush=True)


class MatmulDataset:
    """A dataset whose items are computed with numpy (each worker's BLAS)."""

    def __len__(self) -> int:
        return WORKERS

    def __getitem__(self, index: int) -> dict:
        import torch
        info = report(index)
        info["pools"]["torch"] = torch.get_num_threads()
        return info


def first(batch: list) -> dict:
    return batch[0]


def run_dataloader() -> None:
    from torch.utils.data import DataLoader
    loader = DataLoader(MatmulDataset(), batch_size=1, num_workers=WORKERS, collate_fn=first)
    for info in loader:
        print(json.dumps(info), flush=True)


def quick(_: int = 0) -> int:
    return os.getpid()


def run_ends(method: str) -> None:
    """A Pool ended with close() and join(), then two Process children."""
    import multiprocessing as mp
    ctx = mp.get_context(method)
    pool = ctx.Pool(WORKERS, initializer=_start_worker, initargs=(ctx.Barrier(WORKERS), None))
    workers = sorted({info["pid"] for info in pool.map(pool_task, range(WORKERS), chunksize=1)})
    pool.close()
    pool.join()
    children = [ctx.Process(target=quick) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    print(json.dumps({"main": os.getpid(), "workers": workers,
                      "children": [child.pid for child in children]}), flush=True)


def run_fanout(how: str) -> None:
    """Four scripts started side by side with subprocess, directly or each
    through a shell, their output passed on."""
    import subprocess
    cmd = [sys.executable, os.path.abspath(__file__), "rank"]
    if how == "shell":
        import shlex
        procs = [subprocess.Popen(f"{shlex.join(cmd)}; true", shell=True) for _ in range(WORKERS)]
    else:
        procs = [subprocess.Popen(cmd) for _ in range(WORKERS)]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("a script failed")


def main() -> None:
    mode = sys.argv[1]
    if mode == "pool":
        if sys.argv[3] == "numpy":
            import numpy  # noqa: F401  (imported in the parent before the pool)
        run_pool(sys.argv[2], sys.argv[4] if len(sys.argv) > 4 else "")
    elif mode == "executor":
        import numpy  # noqa: F401,F811
        run_executor(sys.argv[2])
    elif mode == "dataloader":
        import numpy  # noqa: F401,F811  (the dataset's library, loaded in the parent)
        run_dataloader()
    elif mode == "rank":
        print(json.dumps(report(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK",
                                               os.environ.get("MPI_LOCALRANKID")))), flush=True)
    elif mode == "ends":
        run_ends(sys.argv[2])
    elif mode == "fanout":
        run_fanout(sys.argv[2])
    else:
        raise SystemExit(f"workers_child.py: unknown mode {mode!r}")


if __name__ == "__main__":
    main()
