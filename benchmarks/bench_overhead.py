"""What the preload costs: create+join of many threads, omp_set_num_threads in a
loop, Python start-up, and Python's Thread.start + join (counted by start site
under the preload).

Both are measured with and without LD_PRELOAD=libthreadguard.so in one run,
alternating the order each round, because timings on shared machines drift by
tens of percent between runs.  Prints medians, spreads and the guarded/bare
ratios (targets: create+join at most 1.05; omp_set_num_threads(2) before each
parallel region at most 1.1; start-up within noise) and writes the figures as
JSON.  The setter's own cost per call (a few nanoseconds bare, a few tens
guarded: threadguard looks up its caller's runtime and the last grant) is
reported beside it, without a target: no interposer can match a bare store.
Python's Thread.start + join is reported without a target too: it is what
naming each Python thread's start site costs (a frame walk and two calls into
the library), next to what starting the thread costs.

    python benchmarks/bench_overhead.py [--rounds 15] [--threads 20000] [--calls 100000]
                                        [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import threadguard
from benchstats import alternate, compare, machine, write_json

HERE = Path(__file__).resolve().parent
CREATE_JOIN_TARGET = 1.05
SETTER_TARGET = 1.1


def build_create_join(workdir: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("bench_overhead: needs a C compiler (cc) to build create_join.c")
    exe = workdir / "create_join"
    subprocess.run([compiler, "-O2", "-o", str(exe), str(HERE / "create_join.c"), "-lpthread",
                    "-ldl"], check=True)
    return exe


def build_omp_setter(workdir: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    exe = workdir / "omp_setter"
    built = subprocess.run([str(compiler), "-O2", "-fopenmp", "-o", str(exe),
                            str(HERE / "omp_setter.c"), "-ldl"], capture_output=True, text=True)
    if built.returncode != 0:
        sys.exit(f"bench_overhead: cannot build omp_setter.c with -fopenmp (libgomp and its "
                 f"header are needed):\n{built.stderr}")
    return exe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="paired rounds (default 15)")
    parser.add_argument("--threads", type=int, default=20000,
                        help="threads created and joined per create+join run (default 20000)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "overhead.json",
                        help="JSON output (default benchmarks/results/overhead.json)")
    parser.add_argument("--calls", type=int, default=100000,
                        help="omp_set_num_threads calls (and parallel regions) per run "
                             "(default 100000)")
    args = parser.parse_args()
    if args.rounds < 2 or args.threads < 2 or args.calls < 2:
        parser.error("--rounds, --threads and --calls must be at least 2")

    library = threadguard.libpath()
    bare_env = {k: v for k, v in os.environ.items()
                if k not in ("LD_PRELOAD", "THREADGUARD_REPORT")}
    guarded_env = dict(bare_env, LD_PRELOAD=library)

    with tempfile.TemporaryDirectory() as tmp:
        exe = build_create_join(Path(tmp))

        def create_join(name: str) -> float:
            guarded = name == "guarded"
            out = subprocess.run([str(exe), str(args.threads)], check=True, capture_output=True,
                                 text=True, env=guarded_env if guarded else bare_env).stdout
            ns, interposing = out.split()
            if int(interposing) != int(guarded):  # the guarded run must really be guarded
                sys.exit(f"bench_overhead: interposing={interposing} in a guarded={guarded} run")
            return float(ns)

        def python_start(name: str) -> float:
            guarded = name == "guarded"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True,
                           env=guarded_env if guarded else bare_env)
            return (time.perf_counter() - start) * 1e3

        python_threads = ("import sys, threading, time\n"
                          "n = int(sys.argv[1])\n"
                          "t0 = time.perf_counter_ns()\n"
                          "for _ in range(n):\n"
                          "    t = threading.Thread(target=len, args=((),)); t.start(); t.join()\n"
                          "print((time.perf_counter_ns() - t0) / n)\n")

        def python_thread(name: str) -> float:
            guarded = name == "guarded"
            out = subprocess.run([sys.executable, "-c", python_threads,
                                  str(max(2, args.threads // 10))], check=True,
                                 capture_output=True, text=True,
                                 env=guarded_env if guarded else bare_env).stdout
            return float(out)

        setter = build_omp_setter(Path(tmp))

        def omp_loop(mode: str):
            def run(name: str) -> float:
                guarded = name == "guarded"
                out = subprocess.run([str(setter), mode, str(args.calls)], check=True,
                                     capture_output=True, text=True,
                                     env=guarded_env if guarded else bare_env).stdout
                ns, interposing = out.split()
                if int(interposing) != int(guarded):
                    sys.exit(f"bench_overhead: interposing={interposing} in a "
                             f"guarded={guarded} run")
                return float(ns)
            return run

        configurations = ("bare", "guarded")
        create = alternate(args.rounds, configurations, create_join, "create+join")
        region = alternate(args.rounds, configurations, omp_loop("region"),
                           "omp_set_num_threads + parallel region")
        call = alternate(args.rounds, configurations, omp_loop("call"),
                         "omp_set_num_threads alone")
        startup = alternate(args.rounds, configurations, python_start, "python -c pass")
        py_threads = alternate(args.rounds, configurations, python_thread,
                               "Python Thread.start + join")

    figures = {
        "machine": machine(),
        "library": library, "rounds": args.rounds, "threads": args.threads,
        "create_join": compare(create, "guarded", "bare", "ns per create+join"),
        "python_startup": compare(startup, "guarded", "bare", "ms per python -c pass"),
        "python_thread_start_join": compare(py_threads, "guarded", "bare",
                                            "ns per Python Thread.start + join"),
        "omp_set_num_threads_loop": compare(region, "guarded", "bare",
                                            "ns per omp_set_num_threads(2) + parallel region"),
        "omp_set_num_threads_call": compare(call, "guarded", "bare",
                                            "ns per omp_set_num_threads(2) call alone"),
        "create_join_target": CREATE_JOIN_TARGET,
        "omp_set_num_threads_target": SETTER_TARGET,
        "calls": args.calls,
    }
    cj, st = figures["create_join"], figures["python_startup"]
    loop = figures["omp_set_num_threads_loop"]
    print(f"{'measure':28} {'bare median':>12} {'guarded median':>15} {'ratio':>7} "
          f"{'paired ratio [min..max]':>26}")
    for name, row in (("create+join (ns)", cj), ("setter + region (ns)", loop),
                      ("setter alone (ns)", figures["omp_set_num_threads_call"]),
                      ("python -c pass (ms)", st),
                      ("Thread.start + join (ns)", figures["python_thread_start_join"])):
        pr = row["paired_ratio"]
        print(f"{name:28} {row['bare']['median']:12.1f} {row['guarded']['median']:15.1f} "
              f"{row['ratio_of_medians']:7.3f} {pr['median']:10.3f} "
              f"[{pr['min']:.3f}..{pr['max']:.3f}]")
    setter_verdict = "meets" if loop["ratio_of_medians"] <= SETTER_TARGET else "MISSES"
    figures["omp_set_num_threads_loop"]["meets_target"] = setter_verdict == "meets"
    verdict = "meets" if cj["ratio_of_medians"] <= CREATE_JOIN_TARGET else "MISSES"
    noise = st["bare"]["q1"] <= st["guarded"]["median"] <= st["bare"]["q3"]
    figures["python_startup"]["within_noise"] = noise
    figures["create_join"]["meets_target"] = verdict == "meets"
    print(f"create+join ratio {cj['ratio_of_medians']:.3f} {verdict} the target "
          f"<= {CREATE_JOIN_TARGET}")
    print(f"omp_set_num_threads loop ratio {loop['ratio_of_medians']:.3f} {setter_verdict} the "
          f"target <= {SETTER_TARGET}")
    print(f"python start-up: guarded median {st['guarded']['median']:.1f} ms is "
          f"{'within' if noise else 'OUTSIDE'} the bare runs' interquartile range "
          f"{st['bare']['q1']:.1f}..{st['bare']['q3']:.1f} ms")
    write_json(args.out, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
