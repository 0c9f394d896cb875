"""Per-epoch training checkpoints: written atomically, resumed only when they match the run."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vitnas.errors import ArtifactError

CHECKPOINT = "checkpoint.pt"


def fingerprint(*parts: Any) -> str:
    """A short hash of everything that must match for a checkpoint to be resumed."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save(directory: Path, state: Mapping[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT
    tmp = directory / f".{CHECKPOINT}.tmp-{uuid.uuid4().hex[:8]}"
    torch.save(dict(state), tmp)
    os.replace(tmp, path)
    return path


def load(directory: Path) -> dict[str, Any] | None:
    """The checkpoint in `directory`, or None when there is none."""
    path = directory / CHECKPOINT
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise ArtifactError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to start over") \
            from None
