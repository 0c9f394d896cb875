"""The supernet file format: its tag, its error, and the one safe way to read a torch file.

Apart from the model (`model.py`) so that the AutoFormer importer, which reads checkpoints the same
way, does not import the model that imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vitnas.safe_load import torch_load

FORMAT = "vitnas-supernet/1"


def is_supernet_file(path: str | Path, max_pickle: int = 64 * 2**20) -> bool:
    """Whether `path` is a supernet file vitnas wrote: a torch archive whose pickle (read as bytes,
    never unpickled) holds the format string."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            pickles = [i for i in z.infolist() if i.filename.endswith("/data.pkl")]
            if len(pickles) != 1 or pickles[0].file_size > max_pickle:
                return False
            return FORMAT.encode() in z.read(pickles[0])
    except (OSError, zipfile.BadZipFile):
        return False


class SupernetFileError(ValueError):
    """A supernet file that is missing, unreadable or not a vitnas supernet."""


def read_torch_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only, any failure one line."""
    try:
        return torch_load(path, map_location)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise SupernetFileError(f"{path}: not a readable torch file ({type(e).__name__}: {first})") from None


