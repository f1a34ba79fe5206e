"""The standard workloads of `threadguard bench`.

Each workload's setup runs inside the configuration's own process (numpy and
torch are imported there, never in the parent) and returns one step to time
and the work one step does, in the workload's unit. Sizes are chosen so that
a step takes milliseconds, not seconds, at one thread on a laptop core;
--quick uses smaller problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

__all__ = ["GRID_WORKLOAD", "WORKLOADS", "Skip", "Workload", "loader_training"]

Step = Callable[[], None]


class Skip(Exception):
    """The workload cannot run here (no CUDA device, say); the message says why."""


@dataclass(frozen=True)
class Workload:
    """A named benchmark: what it does, its unit, the packages and device it
    needs, and setup(threads, quick, loader_workers) -> (step, work per step)."""

    name: str
    title: str
    unit: str
    needs: Tuple[str, ...]
    device: str  # "cpu" or "cuda"
    setup: Callable[[int, bool, int], Tuple[Step, float]]


def _numpy_matrix(n: int) -> Any:
    import numpy
    return numpy.random.default_rng(0).random((n, n))


def _matmul(threads: int, quick: bool, loader_workers: int) -> Tuple[Step, float]:
    n = 384 if quick else 1024
    a = _numpy_matrix(n)
    out = a.copy()

    def step() -> None:
        a.dot(a, out=out)
    return step, 2.0 * n ** 3 / 1e9


def _solve(threads: int, quick: bool, loader_workers: int) -> Tuple[Step, float]:
    import numpy
    n = 384 if quick else 1024
    a = _numpy_matrix(n) + n * numpy.eye(n)  # well conditioned
    b = _numpy_matrix(n)

    def step() -> None:
        numpy.linalg.solve(a, b)
    # LU (2/3 n^3) and two triangular solves for n right-hand sides (2 n^3).
    return step, (2.0 / 3.0 + 2.0) * n ** 3 / 1e9


def _torch(threads: int) -> Any:
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


def _elementwise(threads: int, quick: bool, loader_workers: int) -> Tuple[Step, float]:
    torch = _torch(threads)
    n = (4 if quick else 16) * 1024 * 1024  # float32: 16 or 64 MiB per array
    x = torch.rand(n)
    y = torch.rand(n)

    def step() -> None:
        torch.add(y, x, alpha=0.5, out=y)  # y += 0.5 x: reads x and y, writes y
    return step, 3.0 * 4 * n / 1e9


def _torch_matmul(threads: int, quick: bool, loader_workers: int) -> Tuple[Step, float]:
    torch = _torch(threads)
    n = 512 if quick else 1536
    a = torch.rand(n, n)
    out = torch.empty(n, n)

    def step() -> None:
        torch.mm(a, a, out=out)
    return step, 2.0 * n ** 3 / 1e9


def _mlp(torch: Any, width: int) -> Any:
    nn = torch.nn
    return nn.Sequential(nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def _mlp_train(threads: int, quick: bool, loader_workers: int) -> Tuple[Step, float]:
    torch = _torch(threads)
    batch, width = (64, 512) if quick else (256, 1024)
    model = _mlp(torch, width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(batch, 256)
    target = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), target).backward()
        optimizer.step()
    return step, float(batch)


def _cnn(torch: Any) -> Any:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(128, 10))


def _conv_infer(threads: int, quick: bool, loader_workers: int) -> Tuple[Step, float]:
    torch = _torch(threads)
    batch, side = (4, 64) if quick else (16, 96)
    model = _cnn(torch).eval()
    images = torch.rand(batch, 3, side, side)

    def step() -> None:
        with torch.inference_mode():
            model(images)
    return step, float(batch)


def _gpu_train(threads: int, quick: bool, loader_workers: int) -> Tuple[Step, float]:
    """A CNN training step on the GPU fed by a DataLoader whose samples are
    made and augmented on the CPU: the CPU side is what the threads
    (intra-op) and DataLoader workers change."""
    torch = _torch(threads)
    if not torch.cuda.is_available():
        raise Skip("no CUDA device: torch.cuda.is_available() is False")
    return loader_training(torch, torch.device("cuda"), quick, loader_workers)


def loader_training(torch: Any, device: Any, quick: bool, loader_workers: int
                    ) -> Tuple[Step, float]:
    """The step of gpu-train on any torch device (the tests use the CPU)."""
    batch, side = (32, 64) if quick else (128, 96)

    class Augmented(torch.utils.data.Dataset):  # type: ignore[misc]
        def __len__(self) -> int:
            return 1 << 30

        def __getitem__(self, index: int) -> Tuple[Any, int]:
            generator = torch.Generator().manual_seed(index)
            raw = torch.randint(0, 256, (3, side + 8, side + 8), dtype=torch.uint8,
                                generator=generator)
            top, left = (int(v) for v in torch.randint(0, 9, (2,), generator=generator))
            image = raw[:, top:top + side, left:left + side].float().div_(255)
            if index % 2:
                image = image.flip(2)
            return (image - 0.5) / 0.25, index % 10

    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(Augmented(), batch_size=batch, num_workers=loader_workers,
                                         pin_memory=cuda, persistent_workers=loader_workers > 0)
    batches = iter(loader)
    model = _cnn(torch).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        images, labels = next(batches)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()  # the step is done when the GPU is
    return step, float(batch)


WORKLOADS: Dict[str, Workload] = {w.name: w for w in (
    Workload("matmul", "numpy matmul (BLAS dgemm)", "GFLOP/s", ("numpy",), "cpu", _matmul),
    Workload("solve", "numpy.linalg.solve (LAPACK LU)", "GFLOP/s", ("numpy",), "cpu", _solve),
    Workload("elementwise", "torch y += a*x (memory-bound)", "GB/s", ("torch",), "cpu",
             _elementwise),
    Workload("torch-matmul", "torch matmul (float32)", "GFLOP/s", ("torch",), "cpu",
             _torch_matmul),
    Workload("mlp-train", "torch MLP training step", "samples/s", ("torch",), "cpu", _mlp_train),
    Workload("conv-infer", "torch CNN inference", "images/s", ("torch",), "cpu", _conv_infer),
    Workload("gpu-train", "torch CNN training on CUDA, CPU-side data loading", "samples/s",
             ("torch",), "cuda", _gpu_train),
)}

# The workload of the oversubscription grid (workers x threads per worker):
# a pool of worker processes doing BLAS work, the case the field reports hit.
GRID_WORKLOAD = "matmul"
