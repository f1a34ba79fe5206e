"""`threadguard bench`: what fewer threads cost on this node, and its profile.

Internal to the command (no public API; `limit("auto")` reads the profile
through threadguard._profile).  One module per role:

- command.py    from the options to the files: plan, run, recommend, write
- runner.py     each configuration in a fresh guarded process, with progress
- child.py      the measuring process (`python -m threadguard.bench.child`)
- workloads.py  the standard workloads (numpy, torch, a CUDA training step)
- results.py    medians, spreads, the recommendation and the node profile
- view.py       the table, the progress line and the PNG
"""
