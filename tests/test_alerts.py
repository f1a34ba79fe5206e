"""The Prometheus alerting rules `threadguard site alerts` ships, tested
with Prometheus's own promtool on series `threadguard top --textfile` wrote
from real guarded processes.

The processes: one of a fresh unprivileged uid under RLIMIT_NPROC 40 and
one in a cgroup with pids.max 40, each of which starts threads until one
fails; torch with torch.set_num_threads() at four times the CPUs
(oversubscribed); numpy as threadguard sizes it, and numpy given
OPENBLAS_NUM_THREADS at four times the CPUs, which OpenBLAS caps at the CPUs
it sees (neither is); one that leaks Python threads.  Two
looks at the node: before (t=0) and after (from t=1m on, the last look
held, as the processes hold still).  The alerts each rule must fire are
worked out here from those figures, independently of the rules'
expressions, and promtool checks the rules agree, at t=0 (none) and at
t=7m (each rule at least once, for the processes built to trip it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from limits import NOBODY, nobody_prefix, skip_unless_nobody_works
from test_top import HERE, Child, clean_env, top

yaml = pytest.importorskip("yaml")
parser = pytest.importorskip("prometheus_client.parser")

TASK_LIMIT = 40
POOL_KINDS = ("openblas", "openmp", "mkl", "blis", "torch")
Series = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs "
                    "it as root)")
    return found


def shipped_rules(tmp_path: Path) -> Path:
    """The rules file as a site gets it: from `threadguard site alerts`."""
    out = subprocess.run([sys.executable, "-m", "threadguard", "site", "alerts"],
                         capture_output=True, text=True, env=clean_env(), cwd=HERE,
                         timeout=120, check=True).stdout
    path = tmp_path / "threadguard.rules.yml"
    path.write_text(out)
    return path


def look(tmp_path: Path, name: str) -> Series:
    """One `threadguard top --once --textfile` of the node, as root sees it."""
    out = tmp_path / f"{name}.prom"
    top("--once", "--textfile", str(out))
    series: Series = {}
    for family in parser.text_string_to_metric_families(out.read_text()):
        for sample in family.samples:
            series[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return series


def test_promtool_checks_the_shipped_rules(tmp_path):
    check = subprocess.run([promtool(), "check", "rules", str(shipped_rules(tmp_path))],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "SUCCESS: 5 rules found" in check.stdout, \
        check.stdout + check.stderr


def _mine(series: Series, pids: Set[str], cgroup: str) -> Series:
    """The series of the test's own processes, its uid and its cgroup (other
    guarded processes on the node are not the test's business)."""
    kept = {}
    for key, value in series.items():
        labels = dict(key[1])
        if "pid" in labels:
            if labels["pid"] in pids:
                kept[key] = value
        elif "cgroup" in labels:
            if labels["cgroup"] == cgroup:
                kept[key] = value
        elif labels.get("uid") == str(NOBODY):
            kept[key] = value
    return kept


def _values(name: str, series: Series) -> Dict[Tuple[Tuple[str, str], ...], float]:
    return {labels: value for (family, labels), value in series.items() if family == name}


def expected_alerts(before: Series, after: Series) -> Dict[str, List[Dict[str, str]]]:
    """Which alerts must fire at t=7m, by arithmetic on the two looks."""
    alerts: Dict[str, List[Dict[str, str]]] = {}
    tasks: Dict[Tuple[Tuple[str, str], ...], float] = {}
    for labels, value in _values("threadguard_user_tasks", after).items():
        who = tuple((k, v) for k, v in labels if k != "guarded")
        tasks[who] = tasks.get(who, 0) + value
    limits = _values("threadguard_user_rlimit_nproc", after)
    alerts["ThreadguardUserTasksNearLimit"] = [
        dict(who) for who, n in tasks.items() if who in limits and n >= 0.9 * limits[who]]
    maxima = _values("threadguard_cgroup_pids_max", after)
    alerts["ThreadguardCgroupPidsNearMax"] = [
        dict(labels) for labels, n in _values("threadguard_cgroup_pids_current", after).items()
        if n >= 0.9 * maxima[labels]]
    cpus = {dict(labels)["pid"]: n for labels, n in _values("threadguard_process_cpus",
                                                             after).items()}
    alerts["ThreadguardPoolOversubscribed"] = [
        dict(labels) for labels, n in _values("threadguard_threads_live", after).items()
        if dict(labels)["kind"] in POOL_KINDS and n + 1 > cpus[dict(labels)["pid"]]]
    failed_before = _values("threadguard_thread_creations_failed_total", before)
    alerts["ThreadguardThreadCreationsFailing"] = [
        dict(labels)
        for labels, n in _values("threadguard_thread_creations_failed_total", after).items()
        if n > failed_before.get(labels, 0)]
    alerts["ThreadguardThreadsLeaking"] = [
        dict(labels) for labels, n in _values("threadguard_threads_leaking", after).items()
        if n == 1]
    return alerts


def _render(template: str, labels: Dict[str, str]) -> str:
    """Prometheus's template expansion, for the only form the rules use."""
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)


def _input_series(before: Series, after: Series) -> List[Dict[str, str]]:
    def selector(name: str, labels: Tuple[Tuple[str, str], ...]) -> str:
        inner = ",".join(f'{k}={json.dumps(v)}' for k, v in labels)
        return f"{name}{{{inner}}}"

    def number(value: float) -> str:
        return str(int(value)) if value == int(value) else repr(value)

    rows = []
    for key in sorted(set(before) | set(after)):
        first = number(before[key]) if key in before else "_"
        then = number(after[key]) if key in after else "_"
        # the first look at t=0, the second from 1m on, held for 15 minutes
        rows.append({"series": selector(*key), "values": f"{first} {then}x15"})
    return rows


@pytest.mark.slow
def test_every_rule_fires_on_real_processes_and_only_on_those(tmp_path, pids_cgroup):
    tool = promtool()
    skip_unless_nobody_works()
    pids_cgroup.write("pids.max", TASK_LIMIT)
    cpus = os.cpu_count() or 2
    children: List[Child] = []
    try:
        limited = Child("plain", threads=0, prefix=nobody_prefix(TASK_LIMIT))
        grouped = Child("plain", threads=0, prefix=pids_cgroup.prefix())
        oversubscribed = Child("torch", threads=0)
        sized = Child("numpy", threads=0)
        capped = Child("numpy", threads=0, env=clean_env(OPENBLAS_NUM_THREADS=str(4 * cpus)))
        leaking = Child("plain", threads=0)
        children += [limited, grouped, oversubscribed, sized, capped, leaking]
        for child in children:
            child.read()
        cgroup = "/" + pids_cgroup.path.name
        pids = {str(child.pid) for child in children}
        before = _mine(look(tmp_path, "before"), pids, cgroup)
        assert oversubscribed.send(f"torch-threads {4 * cpus}")["torch_threads"] == 4 * cpus
        assert limited.send(f"try {2 * TASK_LIMIT}")["started"] < TASK_LIMIT
        assert grouped.send(f"try {2 * TASK_LIMIT}")["started"] < TASK_LIMIT
        leaking.send("grow 12")
        after = _mine(look(tmp_path, "after"), pids, cgroup)
    finally:
        for child in children:
            child.stop()

    expected = expected_alerts(before, after)

    # What the processes were built for is among them, and nothing else of theirs.
    def pids_of(name: str) -> Set[str]:
        return {labels["pid"] for labels in expected[name]}

    assert [a["uid"] for a in expected["ThreadguardUserTasksNearLimit"]] == [str(NOBODY)]
    assert [a["cgroup"] for a in expected["ThreadguardCgroupPidsNearMax"]] == [cgroup]
    assert pids_of("ThreadguardPoolOversubscribed") == {str(oversubscribed.pid)}
    # the capped numpy asked for more than its CPUs: a decision above them, no pool above them
    asked = _values("threadguard_pool_threads", after)
    assert any(dict(k)["pid"] == str(capped.pid) and v == 4 * cpus for k, v in asked.items())
    assert pids_of("ThreadguardThreadCreationsFailing") == {str(limited.pid), str(grouped.pid)}
    assert pids_of("ThreadguardThreadsLeaking") == {str(leaking.pid)}

    rules_path = shipped_rules(tmp_path)
    rules = {rule["alert"]: rule for rule in yaml.safe_load(rules_path.read_text())["groups"][0]
             ["rules"]}
    assert set(rules) == set(expected)  # every rule is tested

    def alert_list(name: str) -> List[Dict[str, Dict[str, str]]]:
        out = []
        for labels in expected[name]:
            full = {**labels, **rules[name].get("labels", {})}
            out.append({"exp_labels": full,
                        "exp_annotations": {k: _render(v, full)
                                            for k, v in rules[name]["annotations"].items()}})
        return out

    tests = {
        "rule_files": [str(rules_path)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": _input_series(before, after),
            "alert_rule_test": [
                *({"eval_time": "0m", "alertname": name, "exp_alerts": []} for name in rules),
                *({"eval_time": "7m", "alertname": name, "exp_alerts": alert_list(name)}
                  for name in rules),
            ],
        }],
    }
    test_file = tmp_path / "threadguard.rules.test.json"  # YAML reads JSON
    test_file.write_text(json.dumps(tests, indent=1))
    result = subprocess.run([tool, "test", "rules", str(test_file)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, \
        result.stdout + result.stderr + f"\n(test file: {test_file})"
