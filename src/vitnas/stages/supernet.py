"""Supernet stage: train the AutoFormer weight-entangled supernet on the prepared data.

Checkpoints every epoch (resumable to the same result as an uninterrupted run), validates the
smallest, largest and K random subnets every epoch, stops on a NaN/Inf loss keeping the last good
checkpoint, and runs data-parallel under torchrun (the same subnet on every rank).

With `supernet.hierarchical: true` (GLiT's `search.strategy: hierarchical`) this is the level-1
supernet: over the split of every block into attention heads and local units, low-level genes at their middle choices
(`SearchSpace.level1`). GLiT subnets' BatchNorm statistics are recalibrated before validation.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vitnas.config import Params
from vitnas.data import PreparedData
from vitnas.errors import ArtifactError
from vitnas.space import SearchSpace, count_flops, count_params
from vitnas.stages import _checkpoint
from vitnas.stages._inputs import calibration_images, check_data, eval_batches, reading_fingerprint, train_dataset
from vitnas.stages._io import atomic_dir, claim_output, flat_metrics, write_json
from vitnas.stages._runner import EpochRunner
from vitnas.stages._tracked import open_run
from vitnas.supernet import Supernet, init_from_timm
from vitnas.supernet.trainer import describe_subnets, subnet_record, trainer_from_config, validation_archs
from vitnas.train import init_distributed, reseed, steps_per_epoch

log = logging.getLogger("vitnas.supernet")


def supernet_space(params: Params, data: PreparedData) -> SearchSpace:
    """The space this stage's supernet covers: the configured one sized for the data, or its
    level-1 (split-only) space for the hierarchical GLiT search."""
    space = params.search_space(num_classes=data.num_classes, in_chans=data.in_chans)
    return space.level1() if params.supernet.hierarchical else space


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted(k for k in history[0] if k.startswith("val_acc_")):
        style = "-" if key in ("val_acc_smallest", "val_acc_largest") else ":"
        ax1.plot(epochs, [h[key] for h in history], style, label=key.removeprefix("val_acc_"))
    ax1.set(xlabel="epoch", ylabel="val top-1", title="subnets on the val split")
    ax1.legend(fontsize=8)
    ax2.plot(epochs, [h["train_loss"] for h in history])
    ax2.set(xlabel="epoch", ylabel="train loss", title="training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(params: Params, data_dir: str | Path, out: str | Path, *, checkpoint_dir: str | Path | None = None,
        resume: bool = False, device: str = "auto", track: bool | None = None,
        progress: bool = True, force: bool = False) -> dict[str, float]:
    """Train the supernet; writes `out/supernet.pt`, `metrics.json`, `curves.png`. `force`: replace
    `out` even when vitnas did not write it (a directory only)."""
    out = Path(out)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + "-checkpoints")
    inputs = [data_dir, params.supernet.pretrained]
    with claim_output(out, "supernet", force=force, inputs=inputs):
        _checkpoint.claim(ckpt_dir, force=force, inputs=inputs + [out])
        return _run(params, data_dir, out, ckpt_dir, resume=resume, device=device, track=track, progress=progress)


def _run(params: Params, data_dir: str | Path, out: Path, ckpt_dir: Path, *, resume: bool, device: str,
         track: bool | None, progress: bool) -> dict[str, float]:
    cfg = params.supernet
    dist = init_distributed(device)
    data = PreparedData(data_dir)
    check_data(params, data)
    space = supernet_space(params, data)
    train_ds = train_dataset(data, params)
    steps = steps_per_epoch(len(train_ds), cfg.batch_size, dist.world_size, "supernet.batch_size")

    reseed(cfg.seed, "init")
    supernet = Supernet(space, drop_path_rate=cfg.drop_path, layer_scale=cfg.layer_scale)
    if cfg.pretrained:
        try:
            init_from_timm(supernet, cfg.pretrained)
        except ValueError as e:  # a missing, unreadable or ill-fitting weights file
            raise ArtifactError(f"supernet.pretrained: {e}") from None
    trainer = trainer_from_config(supernet, cfg, dist, steps)
    val_archs = validation_archs(space, cfg.val_random_subnets, cfg.seed)
    val_data = eval_batches(data, "val", max(cfg.batch_size, 256), cfg.workers) if dist.is_main else None
    calib = calibration_images(data, cfg.bn_calib_images, cfg.seed) if space.family.batchnorm and dist.is_main else None

    fp = _checkpoint.fingerprint(cfg.model_dump(exclude={"workers"}), space.to_dict(), data.meta,
                                 reading_fingerprint(params), dist.world_size)
    loop = EpochRunner("supernet", trainer, train_ds, cfg, dist, ckpt_dir=ckpt_dir, fingerprint=fp,
                       hint="Lower supernet.lr or enable supernet.ema_decay/warmup")
    if resume:
        loop.resume()
    with open_run("supernet", params, track, main=dist.is_main, inputs={"data": data_dir},
                  system_metrics=True) as run_:
        history = loop.run(run_, progress=progress, describe=describe_subnets,
                           evaluate=lambda epoch, stats: subnet_record(trainer.validate(val_data, val_archs, calib)))
        metrics: dict[str, float] = {}
        if dist.is_main:
            metrics = _finish(params, space, data, trainer, history, loop.seconds, out)
            run_.log_metrics(metrics)
            run_.log_artifact(out / "supernet.pt")
            run_.log_artifact(out / "curves.png")
        dist.barrier()
    return metrics


def _finish(params: Params, space: SearchSpace, data: PreparedData, trainer, history: list[dict], seconds: float,
            out: Path) -> dict[str, float]:
    """The summary metrics and the stage's outputs, written at once."""
    cfg = params.supernet
    metrics = flat_metrics({
        "epochs": cfg.epochs,
        **{k: v for k, v in history[-1].items() if k.startswith("val_acc_") or k == "train_loss"},
        "params_smallest": count_params(space.smallest()),
        "params_largest": count_params(space.largest()),
        "flops_smallest": count_flops(space.smallest()),
        "flops_largest": count_flops(space.largest()),
        "train_seconds": round(seconds, 2),
    })
    with atomic_dir(out, "supernet") as tmp:
        meta = {"epochs": cfg.epochs, "history": history, "dataset": data.name,
                "sampling": cfg.sampling, "ema": cfg.ema_decay is not None}
        if cfg.hierarchical:
            meta["level"] = 1
        trainer.eval_model.save(tmp / "supernet.pt", meta=meta)
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "history.json", history)
        plot_curves(history, tmp / "curves.png")
    return metrics
