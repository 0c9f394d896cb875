"""COCO-format detection data (instances json + image folder) and COCO box evaluation.

The json is read and indexed by pycocotools' own `COCO` class (after checking its structure, so
a malformed file fails with its name instead of a KeyError deep in pycocotools), images by PIL.
Scores come from pycocotools' `COCOeval`, the reference implementation of COCO mAP.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vitnas.errors import ArtifactError
from vitnas.files import read_json

# COCOeval.stats, in order (AP over IoU .5:.95 unless named; S/M/L by area; AR at 1/10/100 dets)
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _quiet():
    """pycocotools prints progress on stdout; stages keep stdout for their own lines."""
    return contextlib.redirect_stdout(io.StringIO())


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _check_instances(doc: Any, where: Path) -> None:
    if not isinstance(doc, dict):
        raise ArtifactError(f"{where}: not a COCO instances file (expected a JSON object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise ArtifactError(f"{where}: not a COCO instances file (no '{key}' list)")
    for i, c in enumerate(doc["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise ArtifactError(f"{where}: categories[{i}] needs an integer 'id' and a 'name'")
    if not doc["categories"]:
        raise ArtifactError(f"{where}: no categories")
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise ArtifactError(f"{where}: images[{i}] needs an integer 'id' and a 'file_name'")
    image_ids = {im["id"] for im in doc["images"]}
    cat_ids = {c["id"] for c in doc["categories"]}
    for i, a in enumerate(doc["annotations"]):
        ok = isinstance(a, dict) and isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4 and all(
            _is_number(v) for v in a["bbox"])
        if not ok:
            raise ArtifactError(f"{where}: annotations[{i}] needs a 'bbox' of 4 numbers [x, y, w, h]")
        if a.get("image_id") not in image_ids:
            raise ArtifactError(f"{where}: annotations[{i}] refers to unknown image_id {a.get('image_id')!r}")
        if a.get("category_id") not in cat_ids:
            raise ArtifactError(f"{where}: annotations[{i}] has unknown category_id {a.get('category_id')!r}")


def load_coco(ann_file: str | Path):
    """pycocotools `COCO` of an instances json; missing `id`/`area`/`iscrowd` of annotations are
    filled (COCOeval needs them), anything else malformed is an `ArtifactError` naming the file."""
    from pycocotools.coco import COCO

    ann_file = Path(ann_file)
    doc = read_json(ann_file, ArtifactError, "COCO annotation file", missing="not found (COCO instances json)")
    _check_instances(doc, ann_file)
    for i, a in enumerate(doc["annotations"]):
        a.setdefault("id", i + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
    coco = COCO()
    coco.dataset = doc
    with _quiet():
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """(image tensor [C, H, W] in [0, 1], target) pairs of a COCO instances file, as torchvision
    detectors take them: target = {boxes: float [N, 4] xyxy, labels: int64 [N] in 1..K, image_id}.

    Labels are the categories sorted by id, mapped to 1..K (0 is the detectors' background);
    `category_ids[label - 1]` maps back. Crowd regions and empty boxes are not training targets
    (COCOeval treats crowds as ignore regions on its own). `in_chans` 1 reads images as grayscale;
    `grey` with 3 channels gives the grayscale image in every channel (a model trained on grey images).
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path, *, in_chans: int = 3, grey: bool = False) -> None:
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.ann_file, self.image_dir, self.in_chans = Path(ann_file), Path(image_dir), in_chans
        self.grey = grey and in_chans == 3
        if not self.image_dir.is_dir():
            raise ArtifactError(f"{self.image_dir}: image folder not found (beside {self.ann_file})")
        self.coco = load_coco(self.ann_file)
        self.category_ids = sorted(self.coco.getCatIds())
        self.category_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        self._label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.image_ids = sorted(self.coco.getImgIds())

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.coco.imgs[self.image_ids[i]]["file_name"]

    def check_files(self) -> None:
        """Every listed image file exists (decoding errors still surface when read)."""
        for i in range(len(self)):
            path = self.image_path(i)
            if not path.is_file():
                raise ArtifactError(f"{path}: image not found (listed in {self.ann_file})")

    def image(self, i: int) -> Image.Image:
        path = self.image_path(i)
        try:
            with Image.open(path) as im:
                if self.in_chans == 1:
                    return im.convert("L")
                return im.convert("L").convert("RGB") if self.grey else im.convert("RGB")
        except FileNotFoundError:
            raise ArtifactError(f"{path}: image not found (listed in {self.ann_file})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ArtifactError(f"{path}: corrupt image ({type(e).__name__})") from None

    def target(self, i: int) -> dict[str, torch.Tensor]:
        image_id = self.image_ids[i]
        boxes, labels = [], []
        for a in self.coco.imgToAnns.get(image_id, []):
            x, y, w, h = a["bbox"]
            if a.get("iscrowd", 0) or w <= 1e-3 or h <= 1e-3:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self._label[a["category_id"]])
        return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64), "image_id": torch.tensor(image_id)}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a = np.asarray(self.image(i), dtype=np.float32) / 255.0
        x = torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())
        return x, self.target(i)

    def channel_stats(self, limit: int = 256) -> tuple[list[float], list[float]]:
        """Per-channel mean/std over (up to `limit`, evenly spaced) images: the detector's
        normalisation for this dataset."""
        idx = np.unique(np.linspace(0, len(self) - 1, min(limit, len(self))).round().astype(int))
        s = np.zeros(self.in_chans)
        s2 = np.zeros(self.in_chans)
        n = 0
        for i in idx:
            a = np.asarray(self.image(int(i)), dtype=np.float64).reshape(-1, self.in_chans) / 255.0
            s += a.sum(0)
            s2 += (a * a).sum(0)
            n += len(a)
        mean = s / max(n, 1)
        std = np.sqrt(np.maximum(s2 / max(n, 1) - mean ** 2, 0)) + 1e-6
        return [float(v) for v in mean], [float(v) for v in std]

    def to_coco_results(self, image_id: int, boxes: torch.Tensor, scores: torch.Tensor,
                        labels: torch.Tensor) -> list[dict[str, Any]]:
        """A detector's output for one image (xyxy, 1..K labels) as COCO result dicts."""
        out = []
        for (x0, y0, x1, y1), s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            out.append({"image_id": int(image_id), "category_id": self.category_ids[int(lab) - 1],
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(s)})
        return out


def collate(batch):
    """Detection batches are lists: images differ in size and box counts."""
    return tuple(zip(*batch, strict=True))


def evaluate_coco(coco_gt, detections: Sequence[dict[str, Any]], *,
                  image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """COCO box metrics of `detections` (COCO result dicts: image_id, category_id, bbox xywh,
    score) against `coco_gt` (a pycocotools `COCO`, or an instances json path), by `COCOeval`.

    `image_ids`: the images evaluated (default all). No detections scores 0 everywhere (COCOeval
    itself cannot load an empty result list); a statistic with nothing to average (e.g. APl when
    no large object exists) is -1, as in pycocotools.
    """
    from pycocotools.cocoeval import COCOeval

    if not hasattr(coco_gt, "loadRes"):
        coco_gt = load_coco(coco_gt)
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(int(i) for i in image_ids)
    if not any(coco_gt.imgToAnns.get(i) for i in ids):
        raise ArtifactError("COCO evaluation: the evaluated images have no ground-truth boxes")
    keep = set(ids)
    dets = [copy.copy(d) for d in detections if int(d["image_id"]) in keep]
    if not dets:
        return {k: 0.0 for k in STAT_NAMES}
    with _quiet():
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(STAT_NAMES, ev.stats, strict=True)}
