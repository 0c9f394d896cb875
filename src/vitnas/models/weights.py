"""A weights file checked against an architecture before any module is built.

An `arch.json` or `config.json` can describe any size (a 0.8 G-parameter block, 1024 blocks); a
weights file can claim any tensor. Building the model first and comparing later can take minutes
and gigabytes. Here the safetensors header (shapes, dtypes, byte ranges: readable without loading a
tensor) is compared with the exact state-dict shapes of the arch, taken from the model built on
PyTorch's `meta` device (no memory, no init), so a mismatch is refused first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from vitnas.errors import ArtifactError
from vitnas.space.arch import Arch

MAX_HEADER = 100 * 2**20  # safetensors' own limit
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} of a `.safetensors` file, every entry's byte range checked against its
    shape and dtype and the file's size; `ArtifactError` naming the file when anything is off."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n < 2 or n > min(MAX_HEADER, size - 8):
                raise ValueError(f"header length {n} in a file of {size} bytes")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable weights (not a safetensors file: {type(e).__name__}: "
                            f"{str(e)[:120]})") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: unreadable weights (not a safetensors file: the header is not a JSON object)")
    data_bytes = size - 8 - n
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = dtype in DTYPE_BYTES and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in (*shape, start, end))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ArtifactError(f"{path}: unreadable weights (malformed safetensors entry {name!r})")
        if end - start != math.prod(shape) * DTYPE_BYTES[dtype] or end > data_bytes:
            raise ArtifactError(f"{path}: tensor {name!r} claims shape {list(shape)} ({dtype}) but its bytes "
                                f"are {start}..{end} of {data_bytes}")
        out[name] = (dtype, shape)
    return out


def expected_state(arch: Arch) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """{name: (dtype, shape)} of `vitnas.build(arch)`'s state dict, built on the meta device."""
    from vitnas.models.build import build

    with torch.device("meta"):
        model = build(arch)
    return {k: (v.dtype, tuple(v.shape)) for k, v in model.state_dict().items()}


def check_state_fits(arch: Arch, found: Mapping[str, tuple[str | torch.dtype, tuple[int, ...]]],
                     where: str | Path) -> None:
    """Raise `ArtifactError` ("<where>: weights do not fit the architecture (...)") unless `found`
    (name -> (dtype, shape)) has exactly the arch's tensors, each of its shape, floats where it has
    floats."""
    want = expected_state(arch)
    missing = sorted(set(want) - set(found))
    extra = sorted(set(found) - set(want))
    if missing or extra:
        what = (f"missing {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                if missing else f"unexpected {extra[0]!r}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
        raise ArtifactError(f"{where}: weights do not fit the architecture ({what}; the file has {len(found)} "
                            f"tensors, the arch {len(want)})")
    for name, (dtype, shape) in want.items():
        fdtype, fshape = found[name]
        if tuple(fshape) != shape:
            raise ArtifactError(f"{where}: weights do not fit the architecture ({name!r} is {list(fshape)} in the "
                                f"file, {list(shape)} in the arch)")
        is_float = fdtype in FLOAT_DTYPES if isinstance(fdtype, str) else fdtype.is_floating_point
        if is_float != dtype.is_floating_point:
            raise ArtifactError(f"{where}: weights do not fit the architecture ({name!r} is {fdtype} in the file, "
                                f"{dtype} in the arch)")


def check_safetensors_fit(arch: Arch, path: str | Path) -> None:
    """The header of `path` against `arch`, before anything is built or loaded."""
    check_state_fits(arch, safetensors_header(path), path)
