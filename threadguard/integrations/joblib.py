"""joblib with the loky backend: workers sized by the guard's share."""

from __future__ import annotations

from typing import Any

import joblib  # type: ignore[import-untyped]

from .._policy import Threads, per_process_threads

__all__ = ["parallel_config"]


def parallel_config(n_jobs: int, threads: Threads = "auto", **options: Any) -> Any:
    """joblib.parallel_config for `n_jobs` loky workers whose pools each get
    their share of `threads` ("auto": this process's CPU allocation, read
    the way threadguard reads it, within the task headroom and budget)::

        with threadguard.integrations.joblib.parallel_config(4):
            Parallel()(delayed(work)(x) for x in items)

    loky's own default, cpu_count() // n_jobs, sees the affinity and cgroup
    quota but not a scheduler's variables or the task limits.  Other
    options pass through to joblib.parallel_config."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs must be a whole number of worker processes (1 or more); got "
                         f"{n_jobs!r}")
    share = per_process_threads(threads, workers=n_jobs)
    return joblib.parallel_config(backend="loky", n_jobs=n_jobs, inner_max_num_threads=share,
                                  **options)
