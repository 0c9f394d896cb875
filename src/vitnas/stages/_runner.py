"""The one stage runner: what every stage shares, written once (in the spirit of timm's
`train_one_epoch` / `validate` / `CheckpointSaver` loop).

- `EpochRunner`: a training stage's epochs: seeding, the epoch loader, divergence and replica
  checks, resume, a checkpoint per epoch, the per-epoch MLflow series, the epoch line with ETA and
  the seconds spent (those before a resume included). A stage supplies only what is its own: its
  trainer, its per-epoch evaluation and what it keeps beside the trainer's state.

One naming rule for the per-epoch series in every stage: `epoch_<name>` at step = epoch; the
summary (metrics.json) keeps the bare names, logged once at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitnas.progress import eta
from vitnas.stages import _checkpoint
from vitnas.train import DistInfo, LossNotFinite, epoch_loader, replicas_in_sync, reseed


def checked_epoch(trainer, loader, epoch: int, progress: bool, *, what: str, hint: str, dist,
                  model=None, ckpt_dir: Path | None = None) -> dict[str, float]:
    """`trainer.train_epoch(loader, epoch, progress)`. A non-finite loss becomes one line: `what`
    diverged where, what is kept (`ckpt_dir`: the stage checkpoints per epoch) and `hint`; ranks
    holding different weights afterwards stop the run (`model`: the replicated module, default
    `trainer.model`)."""
    try:
        stats = trainer.train_epoch(loader, epoch, progress)
    except LossNotFinite as e:
        kept = ""
        if ckpt_dir is not None:
            kept = f"; the last good checkpoint (epoch {epoch}) is kept in {ckpt_dir}" if epoch \
                else "; no checkpoint was written yet"
        raise LossNotFinite(f"{what} diverged at {e}{kept}. {hint}") from None
    if not replicas_in_sync(trainer.model if model is None else model, dist.world_size):
        raise RuntimeError(f"{what.split(':')[0]}: data-parallel replicas diverged (ranks hold different weights)")
    return stats


@dataclass
class EpochRunner:
    """A training stage's epoch loop. `trainer`: `train_epoch(loader, epoch, progress)`,
    `state_dict()`, `load_state_dict()`; `recipe`: the stage's section (`batch_size`, `seed`,
    `epochs`, optional `workers`). `save`: where a checkpoint goes (default: `ckpt_dir` with
    `fingerprint`; None with neither: no checkpoints); `seed_keys(epoch)`: the reseed keys after
    the seed (default `(epoch, rank)`)."""

    name: str  # "supernet": the epoch line's prefix and the divergence message's subject
    trainer: Any
    dataset: Any
    recipe: Any
    dist: DistInfo
    hint: str
    epochs: int | None = None
    model: Any = None
    ckpt_dir: Path | None = None
    fingerprint: str = ""
    save: Callable[[dict[str, Any]], None] | None = None
    series_prefix: str = ""
    seed_keys: Callable[[int], tuple] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    spent: float = 0.0  # seconds before a resume

    def __post_init__(self) -> None:
        self.epochs = self.recipe.epochs if self.epochs is None else self.epochs
        self.start = 0
        self._t0 = time.time()
        if self.save is None and self.ckpt_dir is not None:
            self.save = lambda state: _checkpoint.save(self.ckpt_dir, {"fingerprint": self.fingerprint, **state})

    def resume(self) -> dict[str, Any] | None:
        """The checkpoint in `ckpt_dir` made by this run (same fingerprint), restored; else None."""
        state = _checkpoint.resume(self.ckpt_dir, self.fingerprint, where=" after epoch {epoch}",
                                   verbose=self.dist.is_main)
        return self.restore(state)

    def restore(self, state: dict[str, Any] | None) -> dict[str, Any] | None:
        """Continue from a saved state (what `save` got); returns it so the stage takes its own parts."""
        if state is not None:
            self.trainer.load_state_dict(state["trainer"])
            self.history = list(state["history"])
            self.start = int(state.get("epoch", len(self.history)))
            self.spent = float(state.get("seconds", 0.0))
        return state

    @property
    def seconds(self) -> float:
        return self.spent + time.time() - self._t0

    def series(self, record: dict[str, Any]) -> dict[str, float]:
        return {f"{self.series_prefix}epoch_{k}": v for k, v in record.items() if k != "epoch"}

    def run(self, run_, *, progress: bool, evaluate: Callable[[int, dict[str, float]], dict[str, Any]] | None = None,
            describe: Callable[[dict[str, Any]], str] = lambda record: "",
            keep: Callable[[], dict[str, Any]] = dict,
            before: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Train the remaining epochs. `before(epoch)` runs first on every process. On the main
        process, after each: `evaluate(epoch, stats)` adds to the epoch's record, the record joins
        the history, the checkpoint is saved (with `keep()`'s parts), the series are logged and one
        line is printed (`describe(record)`)."""
        dist, r = self.dist, self.recipe
        for h in self.history:  # a resumed run's MLflow run still shows the whole curve
            run_.log_metrics(self.series(h), step=h["epoch"])
        self._t0, t_loop = time.time(), time.time()
        for epoch in range(self.start, self.epochs):
            if before is not None:
                before(epoch)
            reseed(r.seed, *(self.seed_keys(epoch) if self.seed_keys else (epoch, dist.rank)))
            loader = epoch_loader(self.dataset, batch_size=r.batch_size, seed=r.seed, epoch=epoch, rank=dist.rank,
                                  world_size=dist.world_size, workers=getattr(r, "workers", 0),
                                  pin_memory=dist.device.type == "cuda")
            stats = checked_epoch(self.trainer, loader, epoch, progress, what=f"{self.name}: training",
                                  dist=dist, model=self.model, ckpt_dir=self.ckpt_dir, hint=self.hint)
            if dist.is_main:
                record = {"epoch": epoch + 1, **stats, **(evaluate(epoch, stats) if evaluate else {})}
                self.history.append(record)
                if self.save is not None:
                    self.save({"epoch": epoch + 1, "history": self.history, "trainer": self.trainer.state_dict(),
                               "seconds": self.seconds, **keep()})
                run_.log_metrics(self.series(record), step=epoch + 1)
                done, todo = epoch + 1 - self.start, self.epochs - self.start
                print(f"{self.name} epoch {epoch + 1}/{self.epochs}  loss {stats['train_loss']:.4f}  "
                      f"{describe(record)}  {eta(done, todo, time.time() - t_loop)}", flush=True)
            dist.barrier()
        return self.history
