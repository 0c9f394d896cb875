"""Seeded, stratified train/val/test splits.

Validation is always carved from train: search and slimming select on it, and the test split is
kept for final reporting only.
"""

from __future__ import annotations

import numpy as np

from vitnas.errors import ConfigError


def _carve(idx: np.ndarray, labels: np.ndarray, fraction: float | int, seed: int,
           key: str) -> tuple[np.ndarray, np.ndarray]:
    """Split `idx` into (rest, carved) with `fraction` carved (an int: that many), stratified by label
    when possible."""
    from sklearn.model_selection import train_test_split  # slow import, only needed here

    strat = labels[idx]
    counts = np.bincount(strat)
    n_carved = fraction if isinstance(fraction, int) else int(round(fraction * len(idx)))
    if not 0 < n_carved < len(idx):
        raise ConfigError(f"{key}: {fraction} {'images' if isinstance(fraction, int) else 'of them'} from "
                          f"{len(idx)} images to split leaves a split empty (each needs at least one image)")
    classes = len(counts[counts > 0])
    ok = counts[counts > 0].min() >= 2 and min(n_carved, len(idx) - n_carved) >= classes
    rest, carved = train_test_split(idx, test_size=fraction, random_state=seed,
                                    stratify=strat if ok else None)
    return np.sort(rest), np.sort(carved)


def split_indices(labels: np.ndarray, *, val_fraction: float | int, test_fraction: float | int | None,
                  seed: int, max_train_images: int | None = None) -> dict[str, np.ndarray]:
    """Indices into `labels` for train/val/test; `test_fraction=None` means no test carved here. A
    fraction is of the images left; an int is that many images.

    `max_train_images` keeps at most that many train images (a seeded, stratified subset) after val and
    test are carved, so val and test are the same whatever the limit."""
    idx = np.arange(len(labels))
    out: dict[str, np.ndarray] = {}
    if test_fraction is not None:
        idx, out["test"] = _carve(idx, labels, test_fraction, seed, "data.test_fraction")
    out["train"], out["val"] = _carve(idx, labels, val_fraction, seed + 1, "data.val_fraction")
    if max_train_images is not None and max_train_images < len(out["train"]):
        _, out["train"] = _carve(out["train"], labels, int(max_train_images), seed + 2, "data.max_train_images")
    return out
