"""Transfer stage: fine-tune the retrained model on every target of `transfer.targets`.

- classification targets (`cifar10`, `cifar100`, `digits-cifar`): CIFAR python format, new head,
  fine-tuned whole, top-1 on the target's test split (`vitnas.transfer.classification`);
- detection targets (`coco`, `digits-coco`): COCO instances json + images, the ViT as a ViTDet
  backbone of torchvision's Faster R-CNN / RetinaNet, fine-tuned whole, COCOeval box AP on the
  val split (`vitnas.transfer.detection`).

Every target starts from the retrained weights (targets do not chain). The digits-* targets are
part of the data stage's output (`data/transfer/<name>/`); the others are read from their `root`.
Outputs: `metrics.json` (flat: `<target>.top1` / `<target>.AP`, `.AP50`, `.AP75`, `.AR100`, and
`<target>.seconds`) and `detections.png` (val images of the first detection target with ground
truth and detections; a placeholder when there is none, so the outputs never change shape).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from vitnas.config import Params, TransferTarget
from vitnas.errors import ArtifactError
from vitnas.models.model_dir import load_model
from vitnas.stages._io import atomic_dir, claim_output, flat_metrics, write_json
from vitnas.stages._tracked import open_run
from vitnas.train.distributed import resolve_device
from vitnas.transfer.classification import CifarData, fine_tune, read_cifar, source_is_grey
from vitnas.transfer.coco import CocoDetection
from vitnas.transfer.detection import build_detector, evaluate_detector, train_detector

DETECTION_METRICS = ("AP", "AP50", "AP75", "AR100")
DEFAULT_DETECTION_SIZE = 512  # detector input short side for datasets of mixed image sizes (coco)


def target_root(target: TransferTarget, data_dir: str | Path) -> Path:
    """Where a target's files are: the data stage's output for digits-*, else `root`."""
    if target.name.startswith("digits-"):
        root = Path(data_dir) / "transfer" / target.name
        if not root.is_dir():
            raise ArtifactError(f"{root}: not found (the data stage writes it when transfer.targets lists "
                                f"'{target.name}'; re-run `vitnas data` with these params)")
        return root
    root = Path(target.root or "")
    if not root.is_dir():
        raise ArtifactError(f"{root}: transfer dataset directory for '{target.name}' not found")
    return root


def coco_layout(root: Path) -> dict[str, tuple[Path, Path]]:
    """{split: (instances json, image folder)}: `annotations/instances_{train,val}.json` with
    `train/`, `val/` (digits-coco), or COCO 2017's `instances_train2017.json` with `train2017/`."""
    for suffix in ("", "2017"):
        if (root / "annotations" / f"instances_train{suffix}.json").is_file():
            return {s: (root / "annotations" / f"instances_{s}{suffix}.json", root / f"{s}{suffix}")
                    for s in ("train", "val")}
    raise ArtifactError(f"{root / 'annotations' / 'instances_train.json'}: not found (a COCO target needs "
                        "annotations/instances_{train,val}.json with train/ and val/ image folders, "
                        "or the *2017 names)")


def detection_sizes(target: TransferTarget, data: CocoDetection) -> tuple[int, int]:
    """(min_size, max_size) of the detector's resize: the configured ones, else the images' own
    size when all are the same square (digits-coco canvases: no rescaling), else 512 / 853."""
    if target.min_size is not None:
        return target.min_size, target.max_size or target.min_size
    sizes = {(im.get("width"), im.get("height")) for im in data.coco.imgs.values()}
    if len(sizes) == 1 and (w := next(iter(sizes)))[0] == w[1] and isinstance(w[0], int):
        return w[0], target.max_size or w[0]
    return DEFAULT_DETECTION_SIZE, target.max_size or DEFAULT_DETECTION_SIZE * 1333 // 800


def subset(n: int, limit: int | None) -> np.ndarray:
    """Indices of an evenly spaced subset of `limit` out of `n` (all when `limit` is None)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def plot_detections(data: CocoDetection, detections: list[dict], path: Path, *, n: int = 8,
                    min_score: float = 0.5) -> None:
    """A few val images with ground truth (green, dashed) and detections >= min_score (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = min(n, len(data))
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.7 * rows), squeeze=False)
    names = dict(zip(data.category_ids, data.category_names, strict=True))
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        image_id = data.image_ids[k]
        ax.imshow(data.image(k), cmap="gray" if data.in_chans == 1 else None)
        for a in data.coco.imgToAnns.get(image_id, []):
            x, y, w, h = a["bbox"]
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec="lime", ls="--", lw=1))
        for d in detections:
            if d["image_id"] == image_id and d["score"] >= min_score:
                x, y, w, h = d["bbox"]
                ax.add_patch(Rectangle((x, y), w, h, fill=False, ec="red", lw=1.2))
                ax.text(x, y - 1, f"{names[d['category_id']]} {d['score']:.2f}", color="red", fontsize=7)
    fig.suptitle("ground truth (green, dashed) and detections (red, score >= 0.5)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_placeholder(path: Path, text: str) -> None:
    """`detections.png` is always written (a stable output for DVC), even with no detection target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(4, 1))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def open_classification(target: TransferTarget, root: Path) -> CifarData:
    """The target's CIFAR-format data (subsets applied); fails on a missing or malformed copy."""
    data = read_cifar(root, "cifar100" if target.name == "cifar100" else "cifar10")
    tr, te = subset(len(data.train_labels), target.max_train_images), subset(len(data.test_labels),
                                                                           target.max_eval_images)
    data.train_images, data.train_labels = data.train_images[tr], data.train_labels[tr]
    data.test_images, data.test_labels = data.test_images[te], data.test_labels[te]
    return data


def grey_input(target: TransferTarget, model) -> bool:
    """Whether a 3-channel `model` sees the target's images as grey repeated (`colour`, `auto`: when
    it was trained on grey images)."""
    return target.colour == "grey" or (target.colour == "auto" and source_is_grey(model))


def open_detection(target: TransferTarget, root: Path, in_chans: int,
                   grey: bool = False) -> tuple[CocoDetection, CocoDetection]:
    """(train, val) COCO datasets (subsets applied), their json checked and every listed image
    present, so a broken copy fails before any training."""
    layout = coco_layout(root)
    train = CocoDetection(*layout["train"], in_chans=in_chans, grey=grey)
    val = CocoDetection(*layout["val"], in_chans=in_chans, grey=grey)
    if train.category_ids != val.category_ids:
        raise ArtifactError(f"{layout['val'][0]}: categories differ from {layout['train'][0]}")
    train.image_ids = [train.image_ids[i] for i in subset(len(train), target.max_train_images)]
    val.image_ids = [val.image_ids[i] for i in subset(len(val), target.max_eval_images)]
    if not any(val.coco.imgToAnns.get(i) for i in val.image_ids):
        raise ArtifactError(f"{layout['val'][0]}: no annotations to evaluate against")
    train.check_files()
    val.check_files()
    return train, val


def _classification(target: TransferTarget, data: CifarData, model_dir: Path, device: torch.device, progress: bool,
                    log) -> dict[str, float]:
    keep_tokens = target.img_size is None  # a token-pruned model keeps its tokens at its own input size
    model, arch = load_model(model_dir, map_location=device, all_tokens=not keep_tokens)
    if target.img_size is not None and target.img_size % arch.patch_size:
        raise ArtifactError(f"transfer target '{target.name}': img_size {target.img_size} is not a multiple of "
                            f"the model's patch size {arch.patch_size} ({model_dir / 'arch.json'})")

    def on_epoch(epoch: int, stats: dict) -> None:
        log({f"{target.name}.train_loss": stats["train_loss"]}, epoch + 1)
        if progress:
            print(f"transfer {target.name} epoch {epoch + 1}/{target.epochs}  loss {stats['train_loss']:.4f}",
                  flush=True)

    r = fine_tune(model, data, epochs=target.epochs, batch_size=target.batch_size, lr=target.lr,
                  min_lr=target.min_lr, weight_decay=target.weight_decay, warmup_epochs=target.warmup_epochs,
                  label_smoothing=target.label_smoothing, hflip=0.0 if target.name == "digits-cifar" else 0.5,
                  img_size=target.img_size, seed=target.seed, device=device, progress=progress, on_epoch=on_epoch,
                  grey=grey_input(target, model))
    return {"top1": r["top1"], "test_loss": r["test_loss"], "train_images": len(data.train_labels),
            "test_images": len(data.test_labels)}


def _detection(target: TransferTarget, data: tuple[CocoDetection, CocoDetection], model_dir: Path,
               device: torch.device, progress: bool, log, figure: Path | None) -> dict[str, float]:
    train, val = data
    model, _ = load_model(model_dir, map_location=device, all_tokens=True)
    min_size, max_size = detection_sizes(target, train)
    mean, std = train.channel_stats()
    torch.manual_seed(target.seed)
    try:
        detector = build_detector(model, train.num_classes, detector=target.detector, min_size=min_size,
                                  max_size=max_size, image_mean=mean, image_std=std, fpn_channels=target.fpn_channels)
    except ValueError as e:
        raise ArtifactError(f"transfer target '{target.name}': {e} ({model_dir / 'arch.json'})") from None

    def on_epoch(epoch: int, stats: dict) -> None:
        log({f"{target.name}.train_loss": stats["loss"]}, epoch + 1)
        if progress:
            print(f"transfer {target.name} epoch {epoch + 1}/{target.epochs}  loss {stats['loss']:.4f}  "
                  f"({stats['seconds']:.0f}s)", flush=True)

    history = train_detector(detector, train, epochs=target.epochs, batch_size=target.batch_size, lr=target.lr,
                             weight_decay=target.weight_decay, warmup_epochs=target.warmup_epochs,
                             min_lr=target.min_lr, seed=target.seed, device=device, progress=progress,
                             on_epoch=on_epoch)
    stats, dets = evaluate_detector(detector, val, batch_size=max(target.batch_size, 16), device=device)
    if figure is not None:
        plot_detections(val, dets, figure)
    return {**{k: stats[k] for k in DETECTION_METRICS}, "train_loss": history[-1]["loss"],
            "train_images": len(train), "val_images": len(val), "input_size": min_size}


def run(params: Params, data_dir: str | Path, model_dir: str | Path, out: str | Path, *, device: str = "auto",
        track: bool | None = None, progress: bool = True, force: bool = False) -> dict[str, float]:
    """Fine-tune `model_dir` (arch.json + model.safetensors) on each transfer target; writes
    `out/metrics.json` (+ `detections.png`). Returns the metrics. `force`: replace `out` even when
    vitnas did not write it (a directory only)."""
    inputs = [data_dir, model_dir, *(t.root for t in params.transfer.targets.values())]
    with claim_output(out, "transfer", force=force, inputs=inputs):
        return _run(params, data_dir, model_dir, out, device=device, track=track, progress=progress)


def _run(params: Params, data_dir: str | Path, model_dir: str | Path, out: str | Path, *, device: str,
         track: bool | None, progress: bool) -> dict[str, float]:
    targets = list(params.transfer.targets.values())
    model_dir, out = Path(model_dir), Path(out)
    dev = resolve_device(device)
    source, arch = load_model(model_dir)  # fail on a missing/corrupt model before any dataset work
    # every target's data opened and checked before any training starts
    data = {t.name: open_classification(t, target_root(t, data_dir)) if t.task == "classification" else
            open_detection(t, target_root(t, data_dir), arch.in_chans, grey_input(t, source)) for t in targets}
    if not targets:
        print("transfer: no targets in params.yaml transfer.targets; nothing to evaluate", flush=True)
    metrics: dict[str, float] = {"targets": len(targets)}
    with open_run("transfer", params, track, inputs={"data": data_dir, "model": model_dir},
                  system_metrics=True) as run_:
        with atomic_dir(out, "transfer") as tmp:
            figure = tmp / "detections.png"
            for t in targets:
                t0 = time.time()
                if progress:
                    seen = "" if arch.in_chans == 1 else "; images grey in 3 channels (the model was trained on grey " \
                        "images)" if grey_input(t, source) else "; images in colour"
                    print(f"transfer {t.name}: {t.task} from {target_root(t, data_dir)}{seen}", flush=True)
                if t.task == "classification":
                    m = _classification(t, data[t.name], model_dir, dev, progress, run_.log_metrics)
                else:
                    m = _detection(t, data[t.name], model_dir, dev, progress, run_.log_metrics,
                                   None if figure.exists() else figure)
                m["seconds"] = round(time.time() - t0, 2)
                m = {f"{t.name}.{k}": v for k, v in m.items()}
                run_.log_metrics(m)
                metrics.update(m)
                if progress:
                    print(f"transfer {t.name}: " + ", ".join(f"{k.split('.', 1)[1]}={v:.4g}" for k, v in m.items()),
                          flush=True)
            if not figure.exists():
                plot_placeholder(figure, "no detection target in transfer.targets")
            metrics = flat_metrics(metrics)
            write_json(tmp / "metrics.json", metrics)
        run_.log_artifact(out / "metrics.json")
        run_.log_artifact(out / "detections.png")
    return metrics
