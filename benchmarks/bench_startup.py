"""What threadguard costs a process at start: `import threadguard` against
`import threadpoolctl`, and `threadguard run -- true` against `python -c pass`.

Every spawn worker that imports threadguard, and every job started with
`threadguard run`, pays these.  Each measure is a fresh process, timed from
spawn to exit; the four commands are run in one go, rotating which goes
first each round, because timings on shared machines drift between runs.
Prints medians, spreads and the two ratios with their targets
(import threadguard at most 1.3x import threadpoolctl; threadguard run -- true
at most 3x python -c pass), writes the figures as JSON, and exits 1 when a
ratio misses its target.

    python benchmarks/bench_startup.py [--rounds 31] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from benchstats import alternate, compare, machine, summary, write_json

HERE = Path(__file__).resolve().parent
IMPORT_TARGET = 1.3
RUN_TARGET = 3.0


def threadguard_command() -> List[str]:
    """The console script installed beside this interpreter (what users run)."""
    beside = Path(sys.executable).with_name("threadguard")
    found = str(beside) if beside.is_file() else shutil.which("threadguard")
    if found is None:
        sys.exit("bench_startup: no `threadguard` command beside this Python or on PATH; "
                 "install the package (pip install .) into this environment")
    return [found]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=31, help="rounds (default 31)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "startup.json",
                        help="JSON output (default benchmarks/results/startup.json)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")

    # Outside any guard, and not from a source tree: `import threadguard`
    # must find the installed package, as a user's job would.
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "PYTHONPATH") and not k.startswith("THREADGUARD_")}
    commands: Dict[str, List[str]] = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import threadpoolctl": [sys.executable, "-c", "import threadpoolctl"],
        "import threadguard": [sys.executable, "-c", "import threadguard"],
        "threadguard run -- true": [*threadguard_command(), "run", "--", "true"],
    }
    cwd = Path(os.path.expanduser("~")) if Path(os.path.expanduser("~")).is_dir() else Path("/")
    for name, command in commands.items():  # each works before anything is timed
        done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
        if done.returncode != 0 or done.stderr:
            sys.exit(f"bench_startup: `{' '.join(command)}` failed or warned "
                     f"(exit {done.returncode}): {done.stderr.strip()}")

    def measure(name: str) -> float:
        start = time.perf_counter()
        subprocess.run(commands[name], env=env, cwd=cwd, check=True)
        return (time.perf_counter() - start) * 1e3

    results = alternate(args.rounds, tuple(commands), measure, "start-up")
    imports = compare(results, "import threadguard", "import threadpoolctl", "ms per process")
    run = compare(results, "threadguard run -- true", "python -c pass", "ms per process")
    figures = {
        "machine": machine(), "rounds": args.rounds, "commands": commands,
        "import": imports, "run": run,
        "import_target": IMPORT_TARGET, "run_target": RUN_TARGET,
        "import_meets_target": imports["ratio_of_medians"] <= IMPORT_TARGET,
        "run_meets_target": run["ratio_of_medians"] <= RUN_TARGET,
    }
    print(f"{'command':28} {'median ms':>10} {'q1':>7} {'q3':>7}")
    for name in commands:
        s = summary(results[name])
        print(f"{name:28} {s['median']:10.1f} {s['q1']:7.1f} {s['q3']:7.1f}")
    for label, row, target in (
            ("import threadguard / import threadpoolctl", imports, IMPORT_TARGET),
            ("threadguard run -- true / python -c pass", run, RUN_TARGET)):
        paired = row["paired_ratio"]
        verdict = "meets" if row["ratio_of_medians"] <= target else "MISSES"
        print(f"{label}: {row['ratio_of_medians']:.2f} (paired {paired['min']:.2f}.."
              f"{paired['max']:.2f}); target {target}: {verdict}")
    write_json(args.out, figures)
    return 0 if figures["import_meets_target"] and figures["run_meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
