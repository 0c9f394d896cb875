"""timm's `validate.py` for a vitnas model: top-1, top-5, loss and throughput on one split."""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device) -> dict[str, float]:
    """Accuracy (top-1, top-k with k = min(5, classes)), mean cross-entropy and images per second
    (forward passes only, after one warm-up batch) over `batches`."""
    model = model.eval().to(device)
    correct1 = correct5 = total = 0
    loss = seconds = 0.0
    warm = False
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        if not warm:  # first-call allocation and kernel selection are not throughput
            model(x[:1])
            warm = True
        _sync(device)
        t0 = time.perf_counter()
        logits = model(x).float()
        _sync(device)
        seconds += time.perf_counter() - t0
        loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
        total += len(y)
    if not total:
        nan = float("nan")
        return {"top1": nan, "top5": nan, "loss": nan, "images": 0, "images_per_s": nan}
    return {"top1": correct1 / total, "top5": correct5 / total, "loss": loss / total, "images": total,
            "images_per_s": total / seconds if seconds else float("inf")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
