"""A guarded process for the `threadguard top` tests, driven over stdin.

    python top_child.py KIND THREADS      KIND: plain, numpy or torch

It loads KIND's library (numpy's OpenBLAS or torch start their pools),
starts THREADS plain threads that wait, then prints one line with its own
stats() (MARK + JSON) and waits for commands, one per line, each answered
with the same line once its own counters show the change:

    add N    start N more waiting threads
    grow N   start N more waiting threads, one at a time, 30 ms apart (a leak)
    try N    start up to N more waiting threads, stopping at the first that
             cannot start (a task limit), and say how many did
    torch-threads N   torch.set_num_threads(N) and a matrix product (KIND torch)
    stop N   let N of them end
    fork     fork a child that starts 1 thread and waits (answers with its pid)
    exit
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

MARK = "TOP-CHILD "


def own_counts():
    import threadguard
    s = threadguard.stats()
    return {"pid": os.getpid(), "mode": s.mode,
            "total": {"created": s.total.created, "live": s.total.live, "peak": s.total.peak},
            "libraries": {lib.name: [lib.created, lib.live, lib.peak] for lib in s.libraries}}


def report(extra=None):
    counts = own_counts()
    counts.update(extra or {})
    print(MARK + json.dumps(counts), flush=True)


def settle(expected_live):
    """Wait until this process's own counters show expected_live (a thread
    is counted as ended a moment after join returns)."""
    import threadguard
    for _ in range(2000):
        if threadguard.stats().total.live == expected_live:
            return
        time.sleep(0.005)


def main():
    kind, count = sys.argv[1], int(sys.argv[2])
    import threadguard  # noqa: F401  (import mode where not preloaded)
    if kind == "numpy":
        import numpy
        a = numpy.ones((400, 400))
        a @ a
    elif kind == "torch":
        import torch
        torch.ones(300, 300) @ torch.ones(300, 300)
    waiting = []

    def start(n):
        for _ in range(n):
            stop = threading.Event()
            t = threading.Thread(target=stop.wait)
            t.start()
            waiting.append((t, stop))

    base = threadguard.stats().total.live
    start(count)
    settle(base + count)
    report()
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "add":
            start(int(words[1]))
        elif words[0] == "grow":
            for _ in range(int(words[1])):
                start(1)
                time.sleep(0.03)
        elif words[0] == "try":
            started = 0
            for _ in range(int(words[1])):
                try:
                    start(1)
                except RuntimeError:  # "can't start new thread"
                    break
                started += 1
            settle(base + len(waiting))
            report({"started": started})
            continue
        elif words[0] == "torch-threads":
            import torch
            torch.set_num_threads(int(words[1]))
            torch.ones(300, 300) @ torch.ones(300, 300)
            time.sleep(0.2)  # the pool's threads are counted as they start
            report({"torch_threads": torch.get_num_threads()})
            continue
        elif words[0] == "stop":
            for _ in range(int(words[1])):
                t, stop = waiting.pop()
                stop.set()
                t.join()
        elif words[0] == "fork":
            pid = os.fork()
            if pid == 0:
                start(1)
                time.sleep(600)
                os._exit(0)
            time.sleep(0.5)
            report({"child": pid})
            continue
        elif words[0] == "exit":
            break
        settle(base + len(waiting))
        report()
    for t, stop in waiting:
        stop.set()
        t.join()


if __name__ == "__main__":
    main()
