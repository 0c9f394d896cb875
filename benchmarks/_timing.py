"""Wall-clock timing shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this
module is importable as `_timing`)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock measures it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds `fn()` takes, device work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def train_step(model, params, x, y, device: torch.device, arch=None) -> float:
    """Seconds for one forward + cross-entropy backward, grads cleared (set to None) first as in
    training; `arch` is passed to a supernet's forward."""
    for p in params:
        p.grad = None

    def step() -> None:
        out = model(x) if arch is None else model(x, arch)
        F.cross_entropy(out, y).backward()

    return timed(step, device)
