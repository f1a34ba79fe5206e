"""Ray: every task and actor sized to the CPUs Ray assigned it.

Ray sets OMP_NUM_THREADS from num_cpus only when it starts a worker, and
reuses workers: a task with num_cpus=4 can run where a num_cpus=1 task ran
before, with a pool of 1.  @sized re-sizes at the start of every call.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, TypeVar, cast

import ray

from .._limiting import Limit, limit
from .._native import packaged_path

__all__ = ["runtime_env", "share", "sized"]

T = TypeVar("T")


def share() -> int:
    """The CPUs Ray assigned to the running task or actor (its num_cpus,
    at least 1); raises RuntimeError outside a task or actor."""
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        raise RuntimeError("threadguard.integrations.ray.share() runs inside a Ray task or "
                           "actor; in the driver use threadguard.limit()")
    cpus = context.get_assigned_resources().get("CPU", 1.0)  # type: ignore[no-untyped-call]
    return max(1, int(cpus))


def _fit() -> Limit:
    return limit(share())


def sized(target: T) -> T:
    """Decorate a function before @ray.remote (each call is sized to its
    task's share) or a class (its actor is sized when created)::

        @ray.remote(num_cpus=2)
        @threadguard.integrations.ray.sized
        def work(x): ...
    """
    if isinstance(target, type):
        # The class's own __init__ is replaced on purpose (mypy warns of subclasses).
        init = cast(Callable[..., None], target.__init__)  # type: ignore[misc]

        # Not functools.wraps: Ray unwraps __wrapped__ to inspect methods,
        # and object.__init__ (a class without its own) cannot be inspected.
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            _fit()
            init(self, *args, **kwargs)

        __init__.__qualname__ = f"{target.__qualname__}.__init__"
        __init__.__doc__ = init.__doc__
        target.__init__ = __init__  # type: ignore[misc]
        return target
    func = cast(Callable[..., Any], target)

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        _fit()
        return func(*args, **kwargs)

    return cast(T, call)


def runtime_env(**extra: Any) -> Dict[str, Any]:
    """A runtime_env that starts every worker with libthreadguard.so
    preloaded (pools sized before they start, threads counted by library):
    ray.init(runtime_env=threadguard.integrations.ray.runtime_env()).
    `extra` is merged in; its env_vars keep theirs."""
    env: Dict[str, Any] = dict(extra)
    variables = dict(env.get("env_vars") or {})
    preload = [str(packaged_path()), *[p for p in variables.get("LD_PRELOAD", "").split(":") if p]]
    variables["LD_PRELOAD"] = ":".join(preload)
    env["env_vars"] = variables
    return env
