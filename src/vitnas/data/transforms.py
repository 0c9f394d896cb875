"""Image transforms: timm's training pipeline, and a deterministic eval resize."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from timm.data import create_transform


def train_transform(img_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float],
                    augment: Mapping[str, Any]):
    """timm's training transform (random resized crop, flips, jitter, RandAugment, erasing)."""
    a = dict(augment)
    jitter = a.get("color_jitter", 0.0) or None  # timm adds a no-op ColorJitter for 0
    return create_transform(
        input_size=(in_chans, img_size, img_size), is_training=True,
        scale=tuple(a.get("scale", (0.08, 1.0))), ratio=tuple(a.get("ratio", (0.75, 4 / 3))),
        hflip=a.get("hflip", 0.5), color_jitter=jitter, auto_augment=a.get("auto_augment"),
        interpolation=a.get("interpolation", "bilinear"), re_prob=a.get("re_prob", 0.0),
        mean=tuple(mean), std=tuple(std),
    )


def eval_transform(img_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float],
                   interpolation: str = "bilinear"):
    """Resize to the model's input and normalise (no crop margin: crop_pct 1)."""
    if interpolation == "random":
        interpolation = "bilinear"
    return create_transform(input_size=(in_chans, img_size, img_size), is_training=False,
                            crop_pct=1.0, interpolation=interpolation, mean=tuple(mean), std=tuple(std))
