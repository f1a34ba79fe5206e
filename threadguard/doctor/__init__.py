"""`threadguard doctor`: which limit a job would hit here, or why a run failed.

Internal to the command (no public API).  One module per role:

- command.py    the node check and the command check: probes, runs, verdicts
- facts.py      the machine's limits, CPU allocation, variables and libraries
- diagnosis.py  from facts and failures to a verdict and the commands that fix it
- messages.py   the error messages threaded libraries print, and what they mean
- view.py       the verdict as text for a terminal
"""
