"""A snapshot in the Prometheus text exposition format (version 0.0.4), for
node_exporter's textfile collector or a scrape of a loopback port."""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Tuple

from .snapshot import Snapshot

__all__ = ["CONTENT_TYPE", "render", "serve", "write_textfile"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = Tuple[Dict[str, str], float]

# name -> (type, help)
_FAMILIES = {
    "threadguard_processes": ("gauge", "Guarded processes running, by user."),
    "threadguard_process_tasks": ("gauge", "Tasks (threads) of a guarded process."),
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
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _samples(snapshot: Snapshot) -> Dict[str, List[Sample]]:
    out: Dict[str, List[Sample]] = {name: [] for name in _FAMILIES}
    for user in snapshot.users:
        who = {"user": user.name, "uid": str(user.uid)}
        out["threadguard_processes"].append((who, user.processes))
        out["threadguard_user_tasks"].append(({**who, "guarded": "yes"}, user.guarded_tasks))
        out["threadguard_user_tasks"].append(({**who, "guarded": "no"}, user.unguarded_tasks))
        if user.rlimit_nproc is not None:
            out["threadguard_user_rlimit_nproc"].append((who, user.rlimit_nproc))
    for p in snapshot.processes:
        process = {"pid": str(p.pid), "user": p.user, "command": p.command[:200]}
        out["threadguard_process_tasks"].append((process, p.tasks))
        for lib in p.stats.libraries:
            labels = {**process, "library": lib.name, "kind": lib.kind}
            out["threadguard_threads_live"].append((labels, lib.live))
            out["threadguard_threads_peak"].append((labels, lib.peak))
            out["threadguard_threads_created_total"].append((labels, lib.created))
            out["threadguard_thread_creations_failed_total"].append((labels, lib.failed))
            out["threadguard_thread_creations_denied_total"].append((labels, lib.denied))
            out["threadguard_threads_growth_steps"].append((labels, lib.growth.steps))
            out["threadguard_threads_leaking"].append((labels, int(lib.growth.leaking)))
        for site in p.stats.python_sites:
            labels = {**process, "site": site.where}
            out["threadguard_python_site_threads_live"].append((labels, site.live))
            out["threadguard_python_site_threads_created_total"].append((labels, site.created))
            out["threadguard_python_site_threads_leaking"].append((labels,
                                                                   int(site.growth.leaking)))
        for pool in p.stats.pools:
            labels = {"pid": str(p.pid), "user": p.user, "library": pool.library,
                      "variable": pool.variable, "source": pool.source}
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


def render(snapshot: Snapshot) -> str:
    """The snapshot as Prometheus text: one family per figure, each with its
    HELP and TYPE lines (families without samples are left out)."""
    lines: List[str] = []
    for name, samples in _samples(snapshot).items():
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

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    bound_host, bound_port = server.server_address[:2]
    ready((str(bound_host), int(bound_port)))
    try:
        server.serve_forever()
    finally:
        server.server_close()
