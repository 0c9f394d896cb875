"""Helpers the tests import (fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# The smallest params that run every stage (one epoch, a 12-arch space, a population of 4):
# for the tests that run the whole pipeline or each of its stages.
TINY = {
    "tracking": {"enabled": False},
    "space": {"embed_dim": [16, 32], "depth": [1, 2], "num_heads": [1, 2], "mlp_ratio": [2.0], "head_dim": 8},
    "supernet": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128, "val_random_subnets": 1},
    "proxy": {"num_candidates": 3, "proxies": ["dss", "params"], "batch_size": 8},
    "search": {"population": 4, "parents": 2, "mutations": 2, "crossovers": 2, "generations": 1},
    "slim": {"epochs": 1, "batch_size": 128},
    "retrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128},
    "transfer": {"targets": {"digits-cifar": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128,
                                              "max_train_images": 64, "max_eval_images": 64}}},
}

VITNAS = str(Path(sys.executable).parent / "vitnas")  # the installed console script, as a user's shell runs it


def vitnas_process(*args, cwd: str | Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`vitnas ARGS` in a fresh process: what a user's shell sees (startup, warnings, exit code).
    For most checks the in-process `cli` fixture is faster."""
    return subprocess.run([VITNAS, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)
