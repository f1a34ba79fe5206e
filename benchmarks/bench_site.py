"""What loading threadguard into everything costs the programs that start no
thread pool: a shell script of 100 short commands (coreutils, sed, a
shell, all but the shell exec'ed), bare, with libthreadguard.so preloaded
(what /etc/ld.so.preload, the modulefile or the Slurm TaskProlog do), and
preloaded but left alone (THREADGUARD_DISABLE=1: the cost of loading the
library and deciding to stay out).

Each process of the script initialises threadguard: it reads its limits,
publishes its counters for `threadguard top` and takes them away at exit.
The three are run in one go, rotating which goes first each round. Prints
medians, spreads and the ratios; writes the figures as JSON. No target is
enforced: the figure is what a site pays, and docs/site.md quotes it.

    python benchmarks/bench_site.py [--rounds 21] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

from benchstats import alternate, compare, machine, summary, write_json

HERE = Path(__file__).resolve().parent
SCRIPT = """\
for i in 1 2 3 4 5 6 7 8 9 10; do
  /bin/true; ls / > /dev/null; cat /etc/hostname > /dev/null; date +%s > /dev/null
  printf 'b\\na\\n' | sort > /dev/null; echo x | sed s/x/y/ > /dev/null
  sh -c : ; expr 1 + 1 > /dev/null; basename /a/b > /dev/null
done
"""


def library() -> str:
    """The installed package's library (run as a script, sys.path starts
    with benchmarks/, so a source tree's unbuilt package is not found)."""
    import threadguard
    return threadguard.libpath()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21, help="rounds (default 21)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "site.json",
                        help="JSON output (default benchmarks/results/site.json)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    lib = library()
    base = {k: v for k, v in os.environ.items()
            if k != "LD_PRELOAD" and not k.startswith("THREADGUARD_")}
    envs: Dict[str, Dict[str, str]] = {
        "bare": base,
        "preloaded": {**base, "LD_PRELOAD": lib},
        "preloaded, left alone": {**base, "LD_PRELOAD": lib, "THREADGUARD_DISABLE": "1"},
    }
    with tempfile.TemporaryDirectory() as work:
        script = Path(work) / "commands.sh"
        script.write_text(SCRIPT)
        for name, env in envs.items():  # each works, silently, before anything is timed
            done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
            if done.returncode != 0 or done.stderr:
                sys.exit(f"bench_site: the script failed or printed under '{name}' "
                         f"(exit {done.returncode}): {done.stderr.strip()[-300:]}")

        def measure(name: str) -> float:
            start = time.perf_counter()
            subprocess.run(["sh", str(script)], env=envs[name], check=True)
            return (time.perf_counter() - start) * 1e3

        results = alternate(args.rounds, tuple(envs), measure, "site-wide")
    preloaded = compare(results, "preloaded", "bare", "ms per script")
    alone = compare(results, "preloaded, left alone", "bare", "ms per script")
    processes = 1 + 10 * 11  # the shell, and each command (sh -c adds one more)
    figures = {
        "machine": machine(), "rounds": args.rounds, "script": SCRIPT,
        "processes_per_script": processes,
        "preloaded": preloaded, "left_alone": alone,
        "extra_ms_per_process": (summary(results["preloaded"])["median"]
                                 - summary(results["bare"])["median"]) / processes,
    }
    print(f"{'configuration':24} {'median ms':>10} {'q1':>8} {'q3':>8}")
    for name in envs:
        s = summary(results[name])
        print(f"{name:24} {s['median']:10.1f} {s['q1']:8.1f} {s['q3']:8.1f}")
    for label, row in (("preloaded / bare", preloaded), ("left alone / bare", alone)):
        paired = row["paired_ratio"]
        print(f"{label}: {row['ratio_of_medians']:.3f} (paired median {paired['median']:.3f}, "
              f"{paired['min']:.3f}..{paired['max']:.3f})")
    print(f"about {figures['extra_ms_per_process'] * 1000:.0f} us more per process "
          f"({processes} processes per script)")
    write_json(args.out, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
