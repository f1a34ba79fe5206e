"""Integrations with the engines that start workers: each sizes every
worker's pools to the CPUs the engine gave it, in a few lines.

- ray.py     Ray: @sized on a task or actor, runtime_env() to preload
- dask.py    Dask distributed: ThreadguardPlugin, a worker plugin
- joblib.py  joblib/loky: parallel_config(n_jobs)

torchrun and Slurm need no code: `threadguard run -- torchrun ...` and
`srun ... threadguard run -- python ...` (the README has the lines).
Each module imports its engine, so import the one you use.
"""

__all__: "list[str]" = []
