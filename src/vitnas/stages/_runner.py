"""What every training stage's epoch loop shares (the first piece of the one stage runner): an
epoch trained with one rule for divergence and for data-parallel replicas that drift apart."""

from __future__ import annotations

from pathlib import Path

from vitnas.train import LossNotFinite, replicas_in_sync


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
