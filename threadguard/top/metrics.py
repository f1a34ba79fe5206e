"""A snapshot in the Prometheus text exposition format (version 0.0.4), for
node_exporter's textfile collector or a scrape of a loopback port.

What goes out is what a site can collect safely: a process is labelled by
its program's name and pid, never its arguments (a command line carries
tokens and paths, and each distinct one would be a new series) unless
command_label is asked for, and the series are bounded: at most
max_processes processes (those with the most live threads), at most
SITES_PER_PROCESS Python start sites each (the rest summed as one)."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from .._stats import Growth, PythonSite
from .snapshot import Process, Snapshot

__all__ = ["ALERT_RULES", "CONTENT_TYPE", "MAX_PROCESSES", "OTHER_SITES", "SITES_PER_PROCESS",
           "is_loopback", "render", "serve", "write_textfile"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Prometheus alerting rules over these families, shipped beside this module
# (`threadguard site alerts` prints them; docs/alerts.md explains them).
ALERT_RULES = Path(__file__).with_name("alerts.yml")

# A node runs a few dozen guarded processes; a fork bomb of them must not
# become a cardinality bomb in the central Prometheus.
MAX_PROCESSES = 100
# Python start sites are code locations (bounded by the code), but a process
# may have many: the ones with the most live threads are named.
SITES_PER_PROCESS = 10
OTHER_SITES = "(other sites)"
PROGRAM_CHARS = 64

Sample = Tuple[Dict[str, str], float]

# name -> (type, help)
_FAMILIES = {
    "threadguard_processes": ("gauge", "Guarded processes running, by user."),
    "threadguard_process_tasks": ("gauge", "Tasks (threads) of a guarded process."),
    "threadguard_process_cpus": ("gauge", "CPU allocation of a guarded process (as its pools "
                                          "were last sized against)."),
    "threadguard_threads_live": ("gauge", "Threads live now, by process and creating library."),
    "threadguard_threads_peak": ("gauge", "Highest live threads seen, by process and library."),
    "threadguard_threads_created_total": ("counter",
                                          "Threads created, by process and creating library."),
    "threadguard_thread_creations_failed_total": ("counter",
                                                  "pthread_create calls that failed."),
    "threadguard_thread_creations_denied_total": ("counter",
                                                  "Creations threadguard refused (budget)."),
    "threadguard_threads_growth_steps": ("gauge", "Rises of a library's live threads to a new "
                                                  "high, told apart by a quiet gap."),
    "threadguard_threads_leaking": ("gauge", "1 while a library's live threads grow as a leak "
                                             "does (threadguard's leak rule), else 0."),
    "threadguard_python_site_threads_live": ("gauge", "Python threads live now, by the code "
                                                      "that started them."),
    "threadguard_python_site_threads_created_total": ("counter", "Python threads created, by "
                                                                 "the code that started them."),
    "threadguard_python_site_threads_leaking": ("gauge", "1 while a start site's live threads "
                                                         "grow as a leak does, else 0."),
    "threadguard_pool_threads": ("gauge", "Pool size a library got, and where it came from."),
    "threadguard_user_tasks": ("gauge", "Tasks of a user (what RLIMIT_NPROC counts), in "
                                        "guarded processes or not."),
    "threadguard_user_rlimit_nproc": ("gauge", "Soft RLIMIT_NPROC of a user's guarded "
                                               "processes (the lowest)."),
    "threadguard_cgroup_pids_current": ("gauge", "pids.current of a cgroup bounding guarded "
                                                 "processes."),
    "threadguard_cgroup_pids_max": ("gauge", "pids.max of a cgroup bounding guarded processes."),
    "threadguard_rejected_files": ("gauge", "Published files refused as corrupt, truncated or "
                                            "of another version."),
    "threadguard_processes_left_out": ("gauge", "Guarded processes not exported one by one "
                                                "(beyond --max-processes); their users' totals "
                                                "still count them."),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _process_labels(p: Process, command_label: bool) -> Dict[str, str]:
    labels = {"pid": str(p.pid), "user": p.user,
              "program": os.path.basename(p.stats.program)[:PROGRAM_CHARS] or "?"}
    if command_label:
        labels["command"] = p.command[:200]
    return labels


def _process_cpus(p: Process) -> Optional[int]:
    """The CPUs the process may use: as its last pool decision saw them
    (the allocation changes when a parent's workers come and go), else as
    measured at its start; None when neither says."""
    if p.stats.pools:
        return p.stats.pools[-1].cpus
    cpus = p.stats.headroom_at_start.get("cpus")
    return cpus if isinstance(cpus, int) and cpus > 0 else None


def _sites(p: Process) -> List[PythonSite]:
    """The process's start sites, at most SITES_PER_PROCESS: those with the
    most live threads, then the rest added up as OTHER_SITES."""
    ranked = sorted(p.stats.python_sites, key=lambda s: (-s.live, -s.created, s.where))
    if len(ranked) <= SITES_PER_PROCESS:
        return ranked
    kept, rest = ranked[:SITES_PER_PROCESS - 1], ranked[SITES_PER_PROCESS - 1:]
    other = PythonSite(where=OTHER_SITES, created=sum(s.created for s in rest),
                       live=sum(s.live for s in rest), peak=sum(s.peak for s in rest),
                       failed=sum(s.failed for s in rest),
                       growth=Growth(leaking=any(s.growth.leaking for s in rest)))
    return [*kept, other]


def _samples(snapshot: Snapshot, command_label: bool,
             max_processes: int) -> Dict[str, List[Sample]]:
    out: Dict[str, List[Sample]] = {name: [] for name in _FAMILIES}
    for user in snapshot.users:
        who = {"user": user.name, "uid": str(user.uid)}
        out["threadguard_processes"].append((who, user.processes))
        out["threadguard_user_tasks"].append(({**who, "guarded": "yes"}, user.guarded_tasks))
        out["threadguard_user_tasks"].append(({**who, "guarded": "no"}, user.unguarded_tasks))
        if user.rlimit_nproc is not None:
            out["threadguard_user_rlimit_nproc"].append((who, user.rlimit_nproc))
    busiest = sorted(snapshot.processes, key=lambda p: (-p.stats.total.live, p.pid))
    exported = busiest[:max_processes]
    out["threadguard_processes_left_out"].append(({}, len(busiest) - len(exported)))
    for p in exported:
        process = _process_labels(p, command_label)
        out["threadguard_process_tasks"].append((process, p.tasks))
        cpus = _process_cpus(p)
        if cpus is not None:
            out["threadguard_process_cpus"].append((process, cpus))
        for lib in p.stats.libraries:
            labels = {**process, "library": lib.name, "kind": lib.kind}
            out["threadguard_threads_live"].append((labels, lib.live))
            out["threadguard_threads_peak"].append((labels, lib.peak))
            out["threadguard_threads_created_total"].append((labels, lib.created))
            out["threadguard_thread_creations_failed_total"].append((labels, lib.failed))
            out["threadguard_thread_creations_denied_total"].append((labels, lib.denied))
            out["threadguard_threads_growth_steps"].append((labels, lib.growth.steps))
            out["threadguard_threads_leaking"].append((labels, int(lib.growth.leaking)))
        for site in _sites(p):
            labels = {**process, "site": site.where}
            out["threadguard_python_site_threads_live"].append((labels, site.live))
            out["threadguard_python_site_threads_created_total"].append((labels, site.created))
            out["threadguard_python_site_threads_leaking"].append((labels,
                                                                   int(site.growth.leaking)))
        for pool in p.stats.pools:
            labels = {**process, "library": pool.library, "variable": pool.variable,
                      "source": pool.source}
            out["threadguard_pool_threads"].append((labels, pool.value))
    for group in snapshot.cgroups:
        if group.pids_current is not None:
            out["threadguard_cgroup_pids_current"].append(({"cgroup": group.path},
                                                           group.pids_current))
        out["threadguard_cgroup_pids_max"].append(({"cgroup": group.path}, group.pids_max))
    out["threadguard_rejected_files"].append(({}, len(snapshot.rejected)))
    return out


def _line(name: str, labels: Dict[str, str], value: float) -> str:
    inner = ",".join(f'{key}="{_escape(text)}"' for key, text in labels.items())
    number = repr(float(value)) if isinstance(value, float) else str(int(value))
    return f"{name}{{{inner}}} {number}" if inner else f"{name} {number}"


def render(snapshot: Snapshot, *, command_label: bool = False,
           max_processes: int = MAX_PROCESSES) -> str:
    """The snapshot as Prometheus text: one family per figure, each with its
    HELP and TYPE lines (families without samples are left out).  Processes
    are labelled pid, user and program; command_label adds the full command
    line as "command" (every argument becomes readable to whoever queries
    the metrics).  At most max_processes processes, the busiest, are
    exported one by one."""
    lines: List[str] = []
    for name, samples in _samples(snapshot, command_label, max_processes).items():
        if not samples:
            continue
        kind, text = _FAMILIES[name]
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(_line(name, labels, value) for labels, value in _deduplicated(samples))
    return "\n".join(lines) + "\n"


def _deduplicated(samples: Iterable[Sample]) -> Iterable[Sample]:
    """One sample per label set (two rows of one library name in a process,
    loaded twice from different paths, are added up)."""
    merged: Dict[Tuple[Tuple[str, str], ...], Sample] = {}
    for labels, value in samples:
        key = tuple(sorted(labels.items()))
        if key in merged:
            merged[key] = (labels, merged[key][1] + value)
        else:
            merged[key] = (labels, value)
    return merged.values()


def write_textfile(path: Path, text: str) -> None:
    """Replace path with text at once (node_exporter may read at any moment)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def is_loopback(host: str) -> bool:
    """True when every address host names is a loopback one (127.0.0.0/8,
    ::1), so what is served there stays on this machine."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
                               for info in infos)


def serve(host: str, port: int, produce: Callable[[], str],
          ready: Callable[[Tuple[str, int]], None]) -> None:
    """Serve produce() at /metrics on host:port until interrupted; ready is
    called with the bound address (port 0 picks a free one)."""
    lock = threading.Lock()

    def produce_one_at_a_time() -> str:
        with lock:  # scrapes that overlap read the node once each, in turn
            return produce()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics is served")
                return
            body = produce_one_at_a_time().encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not news

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = Server((host, port), Handler)
    server.daemon_threads = True
    bound_host, bound_port = server.server_address[:2]
    ready((str(bound_host), int(bound_port)))
    try:
        server.serve_forever()
    finally:
        server.server_close()
