"""The embedded transfer targets, made from real handwritten digits so the demo runs offline.

- `digits-cifar`: 32x32 RGB images in CIFAR-10's own python on-disk format, so torchvision's
  (and vitnas's) CIFAR reader loads them unchanged. Each image is one digit, upscaled, placed at a
  random offset, coloured on a coloured noisy background with enough luminance contrast.
- `digits-coco`: COCO instances format: canvases (default 64x64) holding 1-4 non-overlapping
  digits at random scales and positions, one box per digit (the tight box of its ink).

Train parts come only from the digits the data stage put in train+val, test/val parts only from
its test split, so no test digit is ever trained on. Everything is deterministic given the seed.
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = 5
DIGIT_NAMES = [str(i) for i in range(10)]
COCO_SPLITS = ("train", "val")


class _Py2Str(str):
    """A str pickled as Python 2 did (STRING opcode), like the keys of the real CIFAR files.

    Real CIFAR batches were written by Python 2: unpickled with `encoding="bytes"` (as vitnas's
    restricted reader, `vitnas.data.cifar`, does) their keys are b'data', with `encoding="latin1"`
    'data'. Python 3 cannot write that opcode by itself, so a small pickler subclass does. This
    module only writes pickles; nothing here reads one.
    """


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: it has a dispatch table to extend
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2str(self, obj: _Py2Str) -> None:
        raw = obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2str


def _py2(obj):
    if isinstance(obj, str):
        return _Py2Str(obj)
    if isinstance(obj, dict):
        return {_py2(k): _py2(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_py2(v) for v in obj]
    return obj


def write_cifar_pickle(obj: dict, path: Path) -> None:
    """One CIFAR batch/meta file: a protocol-2 pickle with Python 2 string keys and values."""
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(_py2(obj))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _contrasting(rng: np.random.Generator, bg: np.ndarray, min_contrast: float = 90.0) -> np.ndarray:
    """A random colour whose luminance differs from `bg`'s by `min_contrast` (also in grayscale)."""
    while True:
        fg = rng.uniform(0, 255, 3)
        if abs(_luma(bg) - _luma(fg)) >= min_contrast:
            return fg


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(background, foreground) RGB: dark-on-light or light-on-dark, never low contrast."""
    while True:
        bg = rng.uniform(0, 255, 3)
        if not 100 < _luma(bg) < 155:  # a mid-grey background leaves too few contrasting colours
            return bg, _contrasting(rng, bg)


def _glyph(digit: np.ndarray, w: int, h: int) -> np.ndarray:
    """A digit's ink as alpha in [0, 1], resized to w x h (bilinear, like a real upscaled scan)."""
    im = Image.fromarray(np.ascontiguousarray(digit.reshape(digit.shape[0], digit.shape[1])))
    return np.asarray(im.resize((w, h), Image.BILINEAR), dtype=np.float64) / 255.0


def _background(rng: np.random.Generator, h: int, w: int, bg: np.ndarray) -> np.ndarray:
    """A flat colour with a gentle linear gradient and pixel noise."""
    gy, gx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    tilt = rng.uniform(-20, 20, (2, 3))
    img = bg + gy[..., None] * tilt[0] + gx[..., None] * tilt[1]
    return img + rng.normal(0, 6, (h, w, 3))


def _composite(img: np.ndarray, alpha: np.ndarray, fg: np.ndarray, y: int, x: int) -> None:
    h, w = alpha.shape
    a = alpha[..., None]
    img[y:y + h, x:x + w] = img[y:y + h, x:x + w] * (1 - a) + fg * a


def cifar_image(digit: np.ndarray, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One digit as a size x size RGB uint8 image: scaled to 70-100% of the side (CIFAR's objects
    fill most of the frame), shifted, coloured."""
    side = int(rng.integers(int(0.7 * size), size + 1))
    w = max(4, min(size, int(round(side * rng.uniform(0.85, 1.05)))))
    bg, fg = _colours(rng)
    img = _background(rng, size, size, bg)
    alpha = _glyph(digit, w, side)
    _composite(img, alpha, fg, int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - w + 1)))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_digits_cifar(out: str | Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                       *, seed: int = 0) -> dict[str, int]:
    """Write `out/cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta).

    `train`/`test`: (uint8 digit images [N, h, w(, 1)], int labels [N]). Returns the counts.
    """
    folder = Path(out) / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    counts = {}
    for part, (images, labels) in (("train", train), ("test", test)):
        imgs = np.stack([cifar_image(d, rng) for d in images]) if len(images) else np.zeros((0, 32, 32, 3), np.uint8)
        # CIFAR rows are channel-major: 1024 red, then 1024 green, then 1024 blue values, row by row.
        rows = imgs.transpose(0, 3, 1, 2).reshape(len(imgs), 3 * 32 * 32)
        labels = [int(v) for v in labels]
        names = [f"digit_{v}_s_{i:06d}.png" for i, v in enumerate(labels)]
        chunks = np.array_split(np.arange(len(rows)), CIFAR_TRAIN_BATCHES) if part == "train" else [
            np.arange(len(rows))]
        for b, idx in enumerate(chunks):
            fname, label = ((f"data_batch_{b + 1}", f"training batch {b + 1} of {CIFAR_TRAIN_BATCHES}")
                            if part == "train" else ("test_batch", "testing batch 1 of 1"))
            write_cifar_pickle({"batch_label": label, "labels": [labels[i] for i in idx], "data": rows[idx],
                                "filenames": [names[i] for i in idx]}, folder / fname)
        counts[part] = len(rows)
    write_cifar_pickle({"num_cases_per_batch": int(np.ceil(counts["train"] / CIFAR_TRAIN_BATCHES)),
                        "label_names": list(DIGIT_NAMES), "num_vis": 3 * 32 * 32}, folder / "batches.meta")
    return counts


def _free(box: tuple[int, int, int, int], placed: Sequence[tuple[int, int, int, int]], gap: int = 1) -> bool:
    x, y, w, h = box
    return all(x + w + gap <= px or px + pw + gap <= x or y + h + gap <= py or py + ph + gap <= y
               for px, py, pw, ph in placed)


def coco_canvas(digits: Sequence[np.ndarray], rng: np.random.Generator, size: int = 64
                ) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """Paste digits on one canvas without overlap: (RGB uint8 image, [(index, xywh ink box)]).

    A digit that finds no free spot after some tries is shrunk; if it still does not fit it is
    left out (its index is missing from the result) for the caller to place elsewhere.
    """
    bg, fg = _colours(rng)
    img = _background(rng, size, size, bg)
    placed: list[tuple[int, int, int, int]] = []
    boxes: list[tuple[int, list[float]]] = []
    lo, hi = max(8, int(0.2 * size)), int(0.44 * size)
    for k, digit in enumerate(digits):
        side = int(rng.integers(lo, hi + 1))
        for _ in range(3):
            w = max(4, int(round(side * rng.uniform(0.8, 1.1))))
            spot = None
            for _ in range(40):
                x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - side + 1))
                if _free((x, y, w, side), placed):
                    spot = (x, y)
                    break
            if spot is not None:
                break
            side = max(lo, int(side * 0.75))
        if spot is None:
            continue
        x, y = spot
        alpha = _glyph(digit, w, side)
        ink = np.argwhere(alpha > 0.25)
        if len(ink) == 0:
            continue
        (y0, x0), (y1, x1) = ink.min(0), ink.max(0) + 1
        _composite(img, alpha, fg if rng.random() < 0.8 else _contrasting(rng, bg), y, x)
        placed.append((x, y, w, side))
        boxes.append((k, [float(x + x0), float(y + y0), float(x1 - x0), float(y1 - y0)]))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), boxes


def write_digits_coco(out: str | Path, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                      *, canvas_size: int = 64, max_digits: int = 4, train_repeats: int = 2,
                      seed: int = 0) -> dict[str, int]:
    """Write `out/annotations/instances_{train,val}.json` and `out/{train,val}/*.png`.

    Every train digit is pasted `train_repeats` times (at other scales and places), every val
    digit once. Category ids are 1..10 (COCO ids start at 1), named "0".."9". Returns counts.
    """
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, (images, labels), repeats in (("train", train, train_repeats), ("val", val, 1)):
        rng = np.random.default_rng([seed, 2, COCO_SPLITS.index(split)])
        (out / split).mkdir(exist_ok=True)
        queue = list(np.concatenate([rng.permutation(len(labels)) for _ in range(repeats)])) if len(labels) else []
        coco_images, annotations = [], []
        while queue:
            k = int(rng.integers(1, max_digits + 1))
            chosen, queue = queue[:k], queue[k:]
            canvas, boxes = coco_canvas([images[i] for i in chosen], rng, canvas_size)
            done = {j for j, _ in boxes}
            queue.extend(i for j, i in enumerate(chosen) if j not in done and len(chosen) > 1)
            image_id = len(coco_images) + 1
            name = f"{image_id:06d}.png"
            Image.fromarray(canvas).save(out / split / name, compress_level=1)
            coco_images.append({"id": image_id, "file_name": name, "width": canvas_size, "height": canvas_size})
            for j, (x, y, w, h) in boxes:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": int(labels[chosen[j]]) + 1,
                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                })
        doc = {
            "info": {"description": f"vitnas digits-coco ({split}): real handwritten digits (scikit-learn) "
                                    f"pasted on {canvas_size}x{canvas_size} canvases", "version": "1"},
            "licenses": [],
            "images": coco_images,
            "annotations": annotations,
            "categories": [{"id": d + 1, "name": n, "supercategory": "digit"} for d, n in enumerate(DIGIT_NAMES)],
        }
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc) + "\n")
        counts[f"{split}_images"], counts[f"{split}_boxes"] = len(coco_images), len(annotations)
    return counts
