"""Jupyter: the kernel `threadguard kernel install` writes, started by
jupyter_client from the installed kernelspec, and the IPython extension in a
notebook executed by nbclient.

The kernel runs on a node shown as 64 CPUs (the fakecpus shim) in a cgroup
whose pids.max leaves room for fewer threads than that: guarded, the first
cell's `import numpy` gets an OpenBLAS pool that fits; the stock ipykernel
kernel, started the same way beside it, fails to start the pool.  Every
command runs from tests/ or a temporary directory, never the checkout's
root, where `python -m threadguard` would import the unbuilt source tree."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from test_top import HERE, clean_env

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

TASK_LIMIT = 48
CPUS = 64
KERNEL = "threadguard-test"
BARE = "bare-test"


def install_kernels(prefix: Path) -> Path:
    """The guarded kernel as a user installs it, and ipykernel's own."""
    done = subprocess.run([sys.executable, "-m", "threadguard", "kernel", "install", "--prefix",
                           str(prefix), "--name", KERNEL], capture_output=True, text=True,
                          env=clean_env(), cwd=HERE, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"installed the kernel 'Python 3 (threadguard)' ({KERNEL})" in done.stdout
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix),
                    "--name", BARE], capture_output=True, text=True, env=clean_env(), cwd=HERE,
                   timeout=300, check=True)
    return prefix / "share" / "jupyter" / "kernels"


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_kernels(tmp_path_factory.mktemp("jupyter"))


class Kernel:
    """A kernel started by jupyter_client from a kernelspec, optionally with
    a command prefix (a cgroup) in front of the kernelspec's argv."""

    def __init__(self, kernels: Path, name: str, env: Dict[str, str], cwd: Path,
                 prefix: List[str] = ()):
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager

        class Prefixed(KernelManager):  # type: ignore[misc]
            def format_kernel_cmd(self, extra_arguments: Optional[List[str]] = None):
                return [*prefix, *super().format_kernel_cmd(extra_arguments)]

        self.manager = Prefixed(kernel_name=name,
                                kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
        self.argv = self.manager.kernel_spec.argv
        # What the kernel process writes to its own stderr (fd 2, where ipykernel
        # does not capture it into the cell's output).
        self.log = cwd / f"{name}.stderr"
        self._log = open(self.log, "w")
        self.manager.start_kernel(env=env, cwd=str(cwd), stderr=self._log)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=300)

    def run(self, code: str) -> Tuple[str, str, Optional[str]]:
        """stdout, stderr and the error's name (None when the cell succeeded)."""
        streams = {"stdout": [], "stderr": []}
        error: List[str] = []

        def hook(message: Dict) -> None:
            content = message["content"]
            if message["msg_type"] == "stream":
                streams[content["name"]].append(content["text"])
            elif message["msg_type"] == "error":
                error.append(content["ename"])

        reply = self.client.execute_interactive(code, output_hook=hook, timeout=300)
        status = reply["content"]["status"]
        return ("".join(streams["stdout"]), "".join(streams["stderr"]),
                (error or [status])[0] if status != "ok" else None)

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)
        self._log.close()


def kernel_env(fakecpus: str) -> Dict[str, str]:
    return clean_env(LD_PRELOAD=fakecpus, THREADGUARD_TEST_CPUS=str(CPUS))


FIRST_CELL = """\
import os, threadpoolctl
tasks_before = len(os.listdir("/proc/self/task"))
import numpy
print("CPUS", os.cpu_count(), "TASKS", tasks_before)
print("OPENBLAS", [p["num_threads"] for p in threadpoolctl.threadpool_info()
                   if p["internal_api"] == "openblas"][0])
"""


@pytest.mark.slow
def test_the_installed_kernel_sizes_numpy_to_the_headroom_and_the_stock_one_fails(
        kernels, fakecpus, pids_cgroup, tmp_path):
    spec = json.loads((kernels / KERNEL / "kernel.json").read_text())
    assert spec["argv"][-4:] == ["-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert spec["argv"][1:3] == ["run", "--"] or spec["argv"][1:5] == ["-m", "threadguard",
                                                                        "run", "--"]
    pids_cgroup.write("pids.max", TASK_LIMIT)
    results = {}
    for name in (BARE, KERNEL):
        kernel = Kernel(kernels, name, kernel_env(fakecpus), tmp_path, pids_cgroup.prefix())
        try:
            out, err, error = kernel.run(FIRST_CELL)
            results[name] = (out, err + "\n" + kernel.log.read_text(), error)
            if name == KERNEL:
                pools = kernel.run(
                    "import threadguard\n"
                    "for p in threadguard.stats().pools:\n"
                    "    print('POOL', p.variable, p.value, p.source, repr(p.limit), p.free)\n"
                    "print('MODE', threadguard.mode())\n")
                torch = kernel.run(
                    "import torch\n"
                    "print('TORCH', torch.get_num_threads())\n"
                    "print('TASKS', len(os.listdir('/proc/self/task')))\n")
                # the extension's after-cell warning: few tasks left under pids.max
                near = kernel.run("%load_ext threadguard")[1] + kernel.run("x = 1")[1]
        finally:
            kernel.stop()

    out, err, error = results[BARE]
    # Bare: OpenBLAS asks for 63 workers and the cgroup has room for fewer; it
    # says so and raises SIGINT, which ipykernel turns into KeyboardInterrupt.
    assert error is not None, out
    assert "pthread_create failed" in err and f"of {CPUS}" in err, err[-2000:]

    out, err, error = results[KERNEL]
    assert error is None, err
    cpus, tasks = map(int, re.search(r"CPUS (\d+) TASKS (\d+)", out).groups())
    openblas = int(re.search(r"OPENBLAS (\d+)", out).group(1))
    assert cpus == CPUS
    assert "pthread_create failed" not in err
    # the pool (OPENBLAS_NUM_THREADS counts the calling thread) fits the tasks left
    assert 2 <= openblas <= TASK_LIMIT - tasks, (openblas, tasks)
    assert openblas < CPUS
    lines = pools[0]
    assert "MODE preload" in lines
    decision = re.search(r"POOL OPENBLAS_NUM_THREADS (\d+) threadguard '([^']+)' (\d+)", lines)
    assert decision, lines
    # sized by threadguard to the free tasks under the cgroup's pids.max, not the 64 CPUs
    assert int(decision.group(1)) == openblas and decision.group(2) == "cgroup pids.max"
    assert openblas <= int(decision.group(3))
    torch_threads = int(re.search(r"TORCH (\d+)", torch[0]).group(1))
    torch_tasks = int(re.search(r"TASKS (\d+)", torch[0]).group(1))
    assert torch[2] is None, torch[1]
    assert 1 <= torch_threads < CPUS and torch_tasks <= TASK_LIMIT
    said = [line for line in near.splitlines() if line.startswith("threadguard: ")]
    assert len(said) == 1, near  # once, not after every cell
    assert re.match(rf"threadguard: only \d+ more threads? can start under cgroup pids.max "
                    rf"of {TASK_LIMIT}", said[0]), said


def notebook_cells(oversubscribe: int) -> List[str]:
    return [
        "%load_ext threadguard",
        "import numpy\nnumpy.ones((300, 300)) @ numpy.ones((300, 300))\nprint('numpy ready')",
        "%threadguard",
        "%%threadguard\nimport threading\nrelease = threading.Event()\n"
        "started = [threading.Thread(target=release.wait) for _ in range(3)]\n"
        "for t in started:\n    t.start()",
        f"import threadpoolctl\nthreadpoolctl.threadpool_limits({oversubscribe})\n"
        f"print('resized')",
        "import threadguard\nthreadguard.stats()",
        "threadguard.allocation()",
        "release.set()\nfor t in started:\n    t.join()",
    ]


def outputs(cell: Dict) -> Tuple[str, str, str, str]:
    """A cell's stdout, stderr, text/html and text/plain."""
    out, err, html, plain = [], [], [], []
    for output in cell["outputs"]:
        if output["output_type"] == "stream":
            (out if output["name"] == "stdout" else err).append(output["text"])
        elif output["output_type"] in ("display_data", "execute_result"):
            html.append(output["data"].get("text/html", ""))
            plain.append(output["data"].get("text/plain", ""))
        elif output["output_type"] == "error":
            err.append("\n".join(output["traceback"]))
    return "".join(out), "".join(err), "".join(html), "".join(plain)


@pytest.mark.slow
def test_an_executed_notebook_shows_the_magics_and_warns_after_an_oversubscribing_cell(
        kernels, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    cpus = len(os.sched_getaffinity(0))
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in notebook_cells(4 * cpus)]
    path = tmp_path / "threads.ipynb"
    nbformat.write(notebook, str(path))
    manager = KernelManager(kernel_name=KERNEL,
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    client = nbclient.NotebookClient(notebook, km=manager, timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=clean_env())
    nbformat.write(notebook, str(path))  # kept beside the test's output for a look
    cells = [outputs(cell) for cell in notebook.cells]

    load, numpy_cell, table, magic, resize, stats, allocation, _ = cells
    assert load[1] == "" and numpy_cell[0] == "numpy ready\n"
    assert "threadguard:" not in numpy_cell[1]  # a pool sized by threadguard: no warning
    # %threadguard: this kernel's threads by library, its pools and limits
    assert "threads by creating library" in table[2] and "pools loaded" in table[2]
    assert "openblas" in table[2] and f"CPUs: {cpus} (" in table[2]
    assert "threadguard: CPUs:" in table[3]
    # %%threadguard: what the cell started
    assert "this cell started 3 threads" in magic[2], magic
    assert re.search(r"<td[^>]*>libpython[^<]*</td><td[^>]*>python</td>"
                     r"<td[^>]*>3</td>", magic[2]), magic[2]
    assert "this cell started 3 threads" in magic[3]
    # the oversubscribing cell gets one warning line, naming the pool and the CPUs
    assert resize[0] == "resized\n"
    warning = [line for line in resize[1].splitlines() if line.startswith("threadguard: ")]
    assert len(warning) == 1, resize[1]
    assert f"runs {4 * cpus} threads on {cpus} CPU" in warning[0] and "oversubscribed" in \
        warning[0]
    # rich display of stats() and allocation()
    assert "threads by creating library" in stats[2] and "<table" in stats[2]
    assert "CPU allocation" in allocation[2] and f"{cpus} CPUs" in allocation[2]
    assert allocation[3].startswith(f"Allocation({cpus}, source=")  # text where no HTML
