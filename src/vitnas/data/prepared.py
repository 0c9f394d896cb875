"""The data stage's artifact: prepared splits plus `dataset.json`, and their readers.

Array datasets are stored as uint8 images per split (`train.npz`, ...); image folders as file
lists relative to the recorded root. Every later stage reads data only through `PreparedData`.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vitnas.data.sources import RawDataset, RawPart
from vitnas.data.transforms import eval_transform, train_transform
from vitnas.errors import ArtifactError
from vitnas.space.arch import LIMITS

SPLITS = ("train", "val", "test")
FORMAT = "vitnas-data/1"


def _take(part: RawPart, idx: np.ndarray) -> RawPart:
    return RawPart(labels=part.labels[idx],
                   images=None if part.images is None else part.images[idx],
                   paths=None if part.paths is None else part.paths[idx])


def _channel_stats(images: np.ndarray | None, in_chans: int) -> tuple[list[float], list[float]]:
    if images is None:  # image folders: ImageNet statistics, as timm models expect
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
    x = images.reshape(-1, in_chans).astype(np.float64) / 255.0
    return [round(float(v), 6) for v in x.mean(0)], [round(float(v), 6) for v in x.std(0) + 1e-6]


def write_prepared(raw: RawDataset, splits: Mapping[str, np.ndarray], out: Path, *, img_size: int,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the split files and `dataset.json` into `out` (an empty directory)."""
    parts: dict[str, RawPart] = {}
    for name in SPLITS:
        if name == "test" and "test" not in splits:
            parts[name] = raw.test  # the dataset's official test set
        else:
            parts[name] = _take(raw.train, splits[name])
    for name, part in parts.items():
        arrays = {"labels": part.labels}
        if part.images is not None:
            arrays["images"] = part.images
        else:
            arrays["paths"] = part.paths
        np.savez(out / f"{name}.npz", **arrays)
    mean, std = _channel_stats(parts["train"].images, raw.in_chans)
    meta = {
        "format": FORMAT,
        "name": raw.name,
        "num_classes": len(raw.classes),
        "classes": raw.classes,
        "img_size": img_size,
        "in_chans": raw.in_chans,
        "storage": "arrays" if raw.train.images is not None else "files",
        "root": raw.root,
        "mean": mean,
        "std": std,
        "splits": {name: len(parts[name]) for name in SPLITS},
        **dict(extra or {}),
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class SplitDataset(Dataset):
    """One split as (image tensor, label), with the given transform."""

    def __init__(self, part: RawPart, root: str | None, in_chans: int, transform) -> None:
        self.part, self.root, self.in_chans, self.transform = part, root, in_chans, transform

    def __len__(self) -> int:
        return len(self.part)

    def image(self, i: int) -> Image.Image:
        if self.part.images is not None:
            a = self.part.images[i]
            return Image.fromarray(a[..., 0], mode="L") if self.in_chans == 1 else Image.fromarray(a)
        with Image.open(Path(self.root) / str(self.part.paths[i])) as im:
            return im.convert("L" if self.in_chans == 1 else "RGB")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.image(i)), int(self.part.labels[i])


def _check_meta(meta: dict, meta_file: Path) -> None:
    """Types and ranges of dataset.json, before any array is read or any model sized from it."""
    def bad(key: str, want: str) -> ArtifactError:
        return ArtifactError(f"{meta_file}: '{key}' must be {want}, got {meta.get(key)!r}"[:300])

    def is_int(v: Any, lo: int, hi: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    for key in ("num_classes", "img_size", "in_chans", "mean", "std", "splits"):
        if key not in meta:
            raise ArtifactError(f"{meta_file}: missing key '{key}'")
    if not is_int(meta["num_classes"], 1, LIMITS["num_classes"]):
        raise bad("num_classes", f"an integer in 1..{LIMITS['num_classes']:,}")
    if not is_int(meta["img_size"], 1, LIMITS["img_size"]):
        raise bad("img_size", f"an integer in 1..{LIMITS['img_size']}")
    if not is_int(meta["in_chans"], 1, LIMITS["in_chans"]):
        raise bad("in_chans", f"an integer in 1..{LIMITS['in_chans']}")
    for key in ("mean", "std"):
        v = meta[key]
        if not (isinstance(v, list) and len(v) == meta["in_chans"]
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            raise bad(key, f"a list of {meta['in_chans']} finite numbers")
    if any(x <= 0 for x in meta["std"]):
        raise bad("std", "positive")
    splits = meta["splits"]
    if not (isinstance(splits, dict) and all(is_int(splits.get(k), 0, 2**40) for k in SPLITS)):
        raise bad("splits", "{train, val, test} counts (non-negative integers)")
    if "name" in meta and not isinstance(meta["name"], str):
        raise bad("name", "a string")
    if meta.get("root") is not None and not isinstance(meta["root"], str):
        raise bad("root", "a path string or null")


class PreparedData:
    """Reader of a data stage output directory; fails with the file name when it is unusable."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_file = self.path / "dataset.json"
        try:
            self.meta = json.loads(meta_file.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{meta_file}: not found (run `vitnas data` first)") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ArtifactError(f"{meta_file}: corrupt (not JSON)") from None
        except OSError as e:
            raise ArtifactError(f"{meta_file}: cannot read ({e.strerror or type(e).__name__})") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            raise ArtifactError(f"{meta_file}: not a vitnas dataset description (format != {FORMAT})")
        _check_meta(self.meta, meta_file)
        self._parts: dict[str, RawPart] = {}
        self._eval_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    num_classes = property(lambda self: int(self.meta["num_classes"]))
    img_size = property(lambda self: int(self.meta["img_size"]))
    in_chans = property(lambda self: int(self.meta["in_chans"]))
    name = property(lambda self: str(self.meta["name"]))

    def part(self, split: str) -> RawPart:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self._parts:
            f = self.path / f"{split}.npz"
            try:
                with np.load(f, allow_pickle=False) as z:
                    part = RawPart(labels=z["labels"], images=z["images"] if "images" in z else None,
                                   paths=z["paths"] if "paths" in z else None)
            except FileNotFoundError:
                raise ArtifactError(f"{f}: not found (re-run `vitnas data`)") from None
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
                raise ArtifactError(f"{f}: corrupt split file ({type(e).__name__})") from None
            if len(part) != self.meta["splits"].get(split):
                raise ArtifactError(f"{f}: holds {len(part)} samples, dataset.json says "
                                    f"{self.meta['splits'].get(split)}")
            self._check_part(part, f)
            self._parts[split] = part
        return self._parts[split]

    def _check_part(self, part: RawPart, f: Path) -> None:
        """Labels in range, images of the recorded shape, file paths inside the recorded root."""
        labels = part.labels
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ArtifactError(f"{f}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ArtifactError(f"{f}: labels outside 0..{self.num_classes - 1} (found {labels.min()}..{labels.max()}; "
                                "num_classes from dataset.json)")
        if part.images is not None:
            im = part.images
            if im.dtype != np.uint8 or im.ndim != 4 or im.shape[0] != len(labels) or im.shape[3] != self.in_chans:
                raise ArtifactError(f"{f}: images must be uint8 [N, H, W, {self.in_chans}], got {im.dtype} "
                                    f"{list(im.shape)}")
        elif part.paths is not None:
            if self.meta.get("root") is None or part.paths.dtype.kind != "U" or len(part.paths) != len(labels):
                raise ArtifactError(f"{f}: file lists need string paths and dataset.json 'root'")
            suspects = part.paths[np.char.startswith(part.paths, "/") | (np.char.find(part.paths, "..") >= 0)]
            for p in suspects:  # vectorised pre-filter: a million paths check in well under a second
                rel = Path(str(p))
                if rel.is_absolute() or ".." in rel.parts:
                    raise ArtifactError(f"{f}: path {str(p)!r} leaves the dataset root (absolute or '..')")
        else:
            raise ArtifactError(f"{f}: holds neither images nor paths")

    def dataset(self, split: str, *, train: bool = False, augment: Mapping[str, Any] | None = None,
                img_size: int | None = None) -> SplitDataset:
        """A torch Dataset; `train=True` applies timm's training augmentation."""
        size = img_size or self.img_size
        mean, std = self.meta["mean"], self.meta["std"]
        aug = dict(augment or {})
        tf = train_transform(size, self.in_chans, mean, std, aug) if train else \
            eval_transform(size, self.in_chans, mean, std, aug.get("interpolation", "bilinear"))
        return SplitDataset(self.part(split), self.meta.get("root"), self.in_chans, tf)

    def eval_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split, eval-transformed, as (images, labels) tensors: for fast repeated eval
        of many subnets on small splits. Cached per split."""
        if split not in self._eval_cache:
            ds = self.dataset(split)
            xs = torch.stack([ds[i][0] for i in range(len(ds))]) if len(ds) else \
                torch.empty(0, self.in_chans, self.img_size, self.img_size)
            self._eval_cache[split] = (xs, torch.as_tensor(ds.part.labels, dtype=torch.long))
        return self._eval_cache[split]
