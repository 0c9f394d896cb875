"""The one way vitnas reads a torch file a user or a remote could supply.

`torch.load(weights_only=True)` never runs code from the file, but a crafted file can still hold a
view whose shape claims far more elements than its storage has (a stride-0 expand of one float as
1e8 x 1e4): slicing or copying it later allocates the claim. Every tensor is checked against its
storage right after loading, so such a file is refused as unreadable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_MAX_DEPTH = 32


def check_storage(obj: Any, depth: int = 0) -> None:
    """Raise `ValueError` when a tensor in `obj` (nested dicts, lists, tuples) claims more bytes
    than its storage holds."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"containers nested deeper than {_MAX_DEPTH}")
    if isinstance(obj, torch.Tensor):
        need = obj.numel() * obj.element_size()
        have = obj.untyped_storage().nbytes() - obj.storage_offset() * obj.element_size()
        if need > have:
            raise ValueError(f"a tensor of shape {list(obj.shape)} claims {need:,} bytes, its storage holds "
                             f"{max(have, 0):,}: a crafted view")
    elif isinstance(obj, dict):
        for v in obj.values():
            check_storage(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            check_storage(v, depth + 1)


def torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` with every tensor checked against its storage."""
    obj = torch.load(path, map_location=map_location, weights_only=True)
    check_storage(obj)
    return obj
