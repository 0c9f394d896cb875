"""Deterministic data order, evaluation, and divergence detection for training loops."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vitnas.errors import ConfigError, VitnasError


class LossNotFinite(VitnasError):
    """Training diverged (NaN/Inf loss); the last good checkpoint is kept."""


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int, key: str) -> int:
    """Full batches per epoch and process; a batch larger than a process's share is `key`'s error."""
    per_process = num_samples // world_size
    steps = per_process // batch_size
    if steps == 0:
        where = "per process " if world_size > 1 else ""
        raise ConfigError(f"{key}: {batch_size} is larger than the training split {where}({per_process} samples)")
    return steps


def reseed(*keys: object) -> int:
    """Seed python, numpy and torch from `keys` (e.g. seed, epoch, rank).

    Reseeding at every epoch start makes a resumed run replay exactly what an uninterrupted run
    does, without saving RNG states.
    """
    seed = random.Random(repr(keys)).getrandbits(32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def epoch_loader(dataset: Dataset, *, batch_size: int, seed: int, epoch: int, rank: int = 0,
                 world_size: int = 1, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """This rank's shard of a shuffled epoch; the order depends only on (seed, epoch) (and, for a
    streamed dataset, on `workers`). A dataset with a `stream_epoch` method may hand back its own
    epoch (an IterableDataset of this rank's share, in whole batches); else a seeded permutation
    is split between the ranks."""
    wg = torch.Generator().manual_seed(random.Random(repr(("workers", seed, epoch, rank))).getrandbits(63))
    stream = getattr(dataset, "stream_epoch", None)
    streamed = stream(seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                      batch_size=batch_size) if stream is not None else None
    if streamed is not None:
        return DataLoader(streamed, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                          generator=wg, persistent_workers=False)
    g = torch.Generator().manual_seed(random.Random(repr(("order", seed, epoch))).getrandbits(63))
    order = torch.randperm(len(dataset), generator=g)
    per_rank = len(order) // world_size  # equal shards keep ranks in lock step
    shard = order[rank * per_rank:(rank + 1) * per_rank].tolist()
    return DataLoader(Subset(dataset, shard), batch_size=batch_size, shuffle=False, drop_last=True,
                      num_workers=workers, pin_memory=pin_memory, generator=wg,
                      persistent_workers=False)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor],
             data: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
             autocast=None, num_classes: int | None = None) -> dict:
    """Top-1 accuracy (and mean CE loss) of `forward` over (images, labels) batches; with
    `num_classes`, also the confusion matrix (`confusion[true][predicted]` counts)."""
    correct = total = 0
    loss = 0.0
    confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.long)
    for x, y in data:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if autocast is not None:
            with autocast():
                logits = forward(x)
        else:
            logits = forward(x)
        logits = logits.float()
        loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.argmax(1)
        correct += (pred == y).sum().item()
        total += len(y)
        if num_classes:
            confusion += torch.bincount((y * num_classes + pred).cpu(), minlength=num_classes**2).view(
                num_classes, num_classes)
    out: dict = {"acc": correct / total, "loss": loss / total} if total else {"acc": float("nan"), "loss": float("nan")}
    if num_classes:
        out["confusion"] = confusion.tolist()
    return out


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss).all():
        raise LossNotFinite(f"{where}: loss is {loss.item()}")
