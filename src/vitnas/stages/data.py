"""Data stage: load the configured dataset, split it (seeded), write the prepared artifact."""

from __future__ import annotations

import sys
from pathlib import Path

from vitnas.config import Params
from vitnas.data import RawDataset, load_source, split_indices, write_prepared
from vitnas.stages._io import atomic_dir, claim_output, flat_metrics, write_json
from vitnas.stages._tracked import open_run


def _digits_parts(params: Params, raw: RawDataset, splits: dict) -> tuple[tuple, tuple]:
    """((images, labels) of train+val, (images, labels) of test) of the real digits, split as this
    stage splits them, so the digits-* transfer targets never train on a test digit."""
    import numpy as np

    if raw.name != "digits":  # another main dataset: split the digits with the same settings
        cfg = params.data
        raw = load_source("digits")  # the test fraction as set (a count may not fit 1,797 digits)
        test = cfg.test_fraction if isinstance(cfg.test_fraction, float) else 0.2
        splits = split_indices(raw.train.labels, val_fraction=0.1, test_fraction=test, seed=cfg.seed)
    train = np.sort(np.concatenate([splits["train"], splits["val"]]))
    images, labels = raw.train.images, raw.train.labels
    return (images[train], labels[train]), (images[splits["test"]], labels[splits["test"]])


def write_transfer_targets(params: Params, raw: RawDataset, splits: dict, out: Path) -> dict[str, int]:
    """Write the digits-* targets listed in `transfer.targets` under `out/transfer/<name>/`, and
    `out/transfer/targets.json` (their counts; `{}` when none, so the folder always exists).
    Returns the counts as metrics (`transfer_digits_coco_val_boxes`, ...)."""
    wanted = {t.name: t for t in params.transfer.targets.values() if t.name.startswith("digits-")}
    (out / "transfer").mkdir()
    written: dict[str, dict[str, int]] = {}
    if wanted:
        from vitnas.transfer.targets import write_digits_cifar, write_digits_coco

        train, test = _digits_parts(params, raw, splits)
        if "digits-cifar" in wanted:
            c = write_digits_cifar(out / "transfer" / "digits-cifar", train, test, seed=params.data.seed)
            written["digits-cifar"] = {f"{k}_images": v for k, v in c.items()}
        if "digits-coco" in wanted:
            written["digits-coco"] = write_digits_coco(out / "transfer" / "digits-coco", train, test,
                                                       canvas_size=wanted["digits-coco"].canvas_size,
                                                       seed=params.data.seed)
    write_json(out / "transfer" / "targets.json", written)
    return {f"transfer_{name.replace('-', '_')}_{k}": v for name, c in written.items() for k, v in c.items()}


def run(params: Params, out: str | Path, *, track: bool | None = None, force: bool = False) -> dict[str, float]:
    """Write `out/` = {train,val,test}.npz + dataset.json + metrics.json (+ `transfer/<name>/` for
    the digits-* transfer targets listed in params); returns the metrics. `force`: replace `out`
    even when vitnas did not write it (a directory only)."""
    from vitnas.data import store

    root = params.data.root
    local = not (store.is_s3(root) or params.data.dvc_repo)
    with claim_output(out, "data", force=force, inputs=[root if local else None]):
        return _run(params, out, track=track)


def dataset_root(params: Params) -> str | None:
    """data.root as the readers take it: a local path, an s3:// URI, or a DVC root."""
    cfg = params.data
    if not cfg.dvc_repo:
        return cfg.root
    from vitnas.stages._dvc_source import dvc_root

    return dvc_root(cfg.dvc_repo, cfg.dvc_rev, cfg.root)


def shard_options(params: Params):
    """The data stage's sharding (None: arrays or file lists). An image folder in S3 is always
    sharded (into the output unless `data.shards` names an s3:// prefix): later stages and pods
    then need no access to the bucket it came from."""
    from vitnas.data import store
    from vitnas.data.prepared import ShardOptions
    from vitnas.data.shards import LOCAL_DIR

    cfg = params.data
    remote = store.is_s3(cfg.root) or cfg.dvc_repo is not None  # later stages could not read the files
    where = cfg.shards or ("out" if cfg.dataset == "imagefolder" and remote else None)
    if where is None:
        return None
    return ShardOptions(location=LOCAL_DIR if where == "out" else where, store_size=cfg.store_size,
                        shard_size=cfg.shard_size, skip_bad=cfg.skip_bad_images, seed=cfg.seed)


def _run(params: Params, out: str | Path, *, track: bool | None) -> dict[str, float]:
    cfg = params.data
    raw = load_source(cfg.dataset, dataset_root(params), cfg.download)
    if cfg.in_chans is not None:  # image files are read as greyscale or RGB
        raw.in_chans = cfg.in_chans
    splits = split_indices(raw.train.labels, val_fraction=cfg.val_fraction,
                           test_fraction=cfg.test_fraction if raw.test is None else None, seed=cfg.seed,
                           max_train_images=cfg.max_train_images)
    with open_run("data", params, track) as run_:
        with atomic_dir(out, "data") as tmp:
            meta = write_prepared(raw, splits, tmp, img_size=cfg.img_size, shards=shard_options(params),
                                  mean=cfg.mean, std=cfg.std,
                                  extra={"seed": cfg.seed, "val_fraction": cfg.val_fraction,
                                         "test_source": "official" if raw.test is not None else "carved"})
            metrics = flat_metrics({
                "num_classes": meta["num_classes"],
                **{f"{s}_count": n for s, n in meta["splits"].items()},
                **({"skipped_bad_images": meta["skipped_bad_images"]} if "skipped_bad_images" in meta else {}),
                "duplicates_across_splits": meta["duplicates_across_splits"],
                **write_transfer_targets(params, raw, splits, tmp),
            })
            write_json(tmp / "metrics.json", metrics)
        run_.log_metrics(metrics)
        run_.log_artifact(Path(out) / "dataset.json")
    for note in data_warnings(meta):
        print(f"warning: {note}", file=sys.stderr, flush=True)
    return metrics


def data_warnings(meta: dict) -> list[str]:
    """What a user should know about the prepared splits: a val split too small to tell candidates
    apart, images shared between splits."""
    notes = []
    val = meta["splits"]["val"]
    if 0 < val < 1000:
        notes.append(f"the val split has {val:,} images: one image is {100 / val:.2g} points of accuracy, so "
                     "search and slimming cannot tell apart candidates closer than that (raise data.val_fraction)")
    if meta.get("duplicates_across_splits"):
        notes.append(f"{meta['duplicates_across_splits']:,} val/test images are byte-identical to an image of an "
                     f"earlier split (e.g. {meta.get('duplicate_example')}): their accuracy is partly memorised")
    return notes
