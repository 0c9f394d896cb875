"""Per-epoch training checkpoints: written atomically, resumed only when they match the run.

A checkpoint holds only tensors and plain containers, numbers and strings, and is read with
`torch.load(weights_only=True)`: a planted or foreign `checkpoint.pt` can fail to load, never run code.
"""

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
from vitnas.safe_load import torch_load
from vitnas.stages._io import MARKER, STAGE_FILES, check_output, mark

CHECKPOINT = "checkpoint.pt"
KIND = "checkpoints"
assert CHECKPOINT in STAGE_FILES[KIND]


def fingerprint(*parts: Any) -> str:
    """A short hash of everything that must match for a checkpoint to be resumed."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim(directory: Path, *, force: bool = False, inputs=()) -> Path:
    """Check that checkpoints may be written to `directory` (vitnas's own, or new); writes nothing."""
    return check_output(directory, KIND, force=force, inputs=inputs)


def resume(directory: Path, fp: str, *, where: str = "", verbose: bool = True) -> dict[str, Any] | None:
    """The checkpoint in `directory` when it was made by this same run (`fp`), else None; says
    which, in one line (the one resume rule of every checkpointing stage, as timm's CheckpointSaver)."""
    state = load(directory)
    path = directory / CHECKPOINT
    if state is not None and state.get("fingerprint") == fp:
        if verbose:
            print(f"resuming from {path}{where.format(**state) if where else ''}", flush=True)
        return state
    if state is not None and verbose:
        print(f"warning: {path} was made with other params, inputs or data; starting over", flush=True)
    return None


def save(directory: Path, state: Mapping[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / MARKER).exists():
        mark(directory, KIND)
    path = directory / CHECKPOINT
    tmp = directory / f".{CHECKPOINT}.tmp-{uuid.uuid4().hex[:8]}"
    torch.save(dict(state), tmp)
    os.replace(tmp, path)
    return path


def load(directory: Path) -> dict[str, Any] | None:
    """The checkpoint in `directory`, or None when there is none. Never unpickles objects."""
    path = directory / CHECKPOINT
    if not path.exists():
        return None
    try:
        state = torch_load(path)
    except Exception as e:  # truncated, foreign, or a pickle that asks for anything but tensors
        raise ArtifactError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to start over") \
            from None
    if not isinstance(state, dict):
        raise ArtifactError(f"{path}: not a vitnas checkpoint; delete it to start over")
    return state
