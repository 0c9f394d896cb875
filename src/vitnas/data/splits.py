"""Seeded, stratified train/val/test splits.

Validation is always carved from train: search and slimming select on it, and the test split is
kept for final reporting only.
"""

from __future__ import annotations

import numpy as np


def _carve(idx: np.ndarray, labels: np.ndarray, fraction: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split `idx` into (rest, carved) with `fraction` carved (an int: that many), stratified by label
    when possible."""
    from sklearn.model_selection import train_test_split  # slow import, only needed here

    strat = labels[idx]
    counts = np.bincount(strat)
    n_carved = fraction if isinstance(fraction, int) else int(round(fraction * len(idx)))
    classes = len(counts[counts > 0])
    ok = counts[counts > 0].min() >= 2 and min(n_carved, len(idx) - n_carved) >= classes
    rest, carved = train_test_split(idx, test_size=fraction, random_state=seed,
                                    stratify=strat if ok else None)
    return np.sort(rest), np.sort(carved)


def split_indices(labels: np.ndarray, *, val_fraction: float, test_fraction: float | None,
                  seed: int, max_train_images: int | None = None) -> dict[str, np.ndarray]:
    """Indices into `labels` for train/val/test; `test_fraction=None` means no test carved here.

    `max_train_images` keeps at most that many train images (a seeded, stratified subset) after val and
    test are carved, so val and test are the same whatever the limit."""
    idx = np.arange(len(labels))
    out: dict[str, np.ndarray] = {}
    if test_fraction is not None:
        idx, out["test"] = _carve(idx, labels, test_fraction, seed)
    out["train"], out["val"] = _carve(idx, labels, val_fraction, seed + 1)
    if max_train_images is not None and max_train_images < len(out["train"]):
        _, out["train"] = _carve(out["train"], labels, int(max_train_images), seed + 2)
    return out
