"""Data stage: load the configured dataset, split it (seeded), write the prepared artifact."""

from __future__ import annotations

from pathlib import Path

from vitnas import tracking
from vitnas.config import Params
from vitnas.data import load_source, split_indices, write_prepared
from vitnas.stages._io import atomic_dir, flat_metrics, write_json


def run(params: Params, out: str | Path, *, track: bool | None = None) -> dict[str, float]:
    """Write `out/` = {train,val,test}.npz + dataset.json + metrics.json; returns the metrics."""
    cfg = params.data
    raw = load_source(cfg.dataset, cfg.root, cfg.download)
    splits = split_indices(raw.train.labels, val_fraction=cfg.val_fraction,
                           test_fraction=cfg.test_fraction if raw.test is None else None, seed=cfg.seed)
    enabled = params.tracking.enabled if track is None else track
    with tracking.stage_run("data", params=params.section_params("data"),
                            experiment=params.tracking.experiment, enabled=enabled) as run_:
        with atomic_dir(out) as tmp:
            meta = write_prepared(raw, splits, tmp, img_size=cfg.img_size,
                                  extra={"seed": cfg.seed, "val_fraction": cfg.val_fraction,
                                         "test_source": "official" if raw.test is not None else "carved"})
            metrics = flat_metrics({
                "num_classes": meta["num_classes"],
                **{f"{s}_count": n for s, n in meta["splits"].items()},
            })
            write_json(tmp / "metrics.json", metrics)
        run_.log_metrics(metrics)
        run_.log_artifact(Path(out) / "dataset.json")
    return metrics
