"""A one-node Slurm on this machine, for the tests: Debian's slurmctld and
slurmd with TaskPlugin=task/affinity (each task bound to its CPUs, as on a
cluster), authenticated by a private munged.  Everything lives in one
directory (configuration, key, sockets, state, logs) and listens on free
loopback ports, so it does not disturb a Slurm or munge the machine runs.
Root only: slurmd starts jobs as their users.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

DAEMONS = ("munged", "slurmctld", "slurmd")
PROGRAMS = ("srun", "sbatch", "sinfo", "squeue", "scancel")


def why_not() -> Optional[str]:
    """Why a local Slurm cannot start here (None when it can)."""
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs"
    missing = [p for p in (*DAEMONS, *PROGRAMS) if _which(p) is None]
    if missing:
        return (f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge; "
                ".ci/run installs them)")
    return None


def _which(program: str) -> Optional[str]:
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlurmCluster:
    """slurmctld + slurmd (+ munged) for one node named `tgnode` with this
    machine's CPUs; env() is the environment srun and sbatch need."""

    def __init__(self, root: Path, extra_conf: str = ""):
        self.root = root
        self.cpus = len(os.sched_getaffinity(0))
        self.conf = root / "slurm.conf"
        self.extra_conf = extra_conf  # more slurm.conf lines (a TaskProlog=)

    def env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        env.update(extra or {})
        return env

    def start(self, timeout: float = 90.0) -> None:
        r = self.root
        for d in ("state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        subprocess.run([_which("munged"), f"--socket={r / 'munge.sock'}", f"--key-file={key}",
                        f"--pid-file={r / 'munged.pid'}", f"--log-file={r / 'log/munged.log'}",
                        f"--seed-file={r / 'munge.seed'}", "--force"],
                       check=True, capture_output=True, text=True)
        ctld_port, slurmd_port = _free_port(), _free_port()
        self.conf.write_text(f"""\
ClusterName=threadguard
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={r / 'munge.sock'}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log/slurmctld.log'}
SlurmdLogFile={r / 'log/slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
NodeName=tgnode NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs={self.cpus}
PartitionName=tg Nodes=tgnode Default=YES MaxTime=INFINITE State=UP
""" + self.extra_conf)
        subprocess.run([_which("slurmctld"), "-f", str(self.conf)], check=True,
                       capture_output=True, text=True, env=self.env())
        subprocess.run([_which("slurmd"), "-f", str(self.conf), "-N", "tgnode"], check=True,
                       capture_output=True, text=True, env=self.env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run([_which("sinfo"), "-h", "-o", "%T"], capture_output=True,
                                   text=True, env=self.env()).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the local Slurm node did not come up (state {state!r}):\n"
                           + self.logs())

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n" + p.read_text(errors="replace")[-3000:]
                         for p in sorted((self.root / "log").glob("*.log")))

    def srun(self, args: List[str], timeout: float = 300,
             env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        # Run from the cluster's directory: from a source checkout, `python -m
        # threadguard` would import the unbuilt tree instead of the installed one.
        return subprocess.run([_which("srun"), *args], capture_output=True, text=True,
                              env=self.env(env), timeout=timeout, cwd=self.root)

    def sbatch(self, args: List[str]) -> str:
        proc = subprocess.run([_which("sbatch"), "--parsable", *args], capture_output=True,
                              text=True, env=self.env(), check=True, cwd=self.root)
        return proc.stdout.strip().split(";")[0]

    def wait_idle(self, job: str, timeout: float = 300) -> None:
        """Until no task of the job is queued or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = subprocess.run([_which("squeue"), "-h", "-j", job], capture_output=True,
                                  text=True, env=self.env()).stdout.strip()
            if not left:
                return
            time.sleep(0.5)
        raise TimeoutError(f"job {job} still queued or running after {timeout:.0f} s")

    def stop(self) -> None:
        subprocess.run([_which("scancel"), "--full", "-u", "root"], capture_output=True,
                       env=self.env())
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.root / f"{name}.pid"
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
