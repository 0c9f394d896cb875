"""Start a supernet from a pretrained timm ViT (DeiT, AugReg...) instead of from scratch.

The timm weights go into the top-left slices, so the arch equal to the timm model's shape starts
out *as* that model; the rest of the supernet keeps its fresh init.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

from vitnas.models.build import REL_POS_KEYS
from vitnas.safe_load import torch_load
from vitnas.supernet.extract import timm_views
from vitnas.supernet.model import Supernet

_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_BLOCK_KEYS = {
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
    "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
    "mlp.fc2.weight", "mlp.fc2.bias",
}
# A vitnas model with relative position has its tables too (a timm ViT does not: the supernet keeps its own).
_REL_POS_KEYS = set(REL_POS_KEYS)
_TOP_KEYS = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
             "norm.weight", "norm.bias", "head.weight", "head.bias"}
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.+)")


@dataclass(frozen=True)
class TimmInit:
    """What `init_from_timm` copied: the timm model's shape, and the timm keys it left out."""

    embed_dim: int
    depth: int
    num_heads: tuple[int, ...]
    mlp_hidden: tuple[int, ...]
    skipped: tuple[str, ...]


def _unwrap(sd: Mapping) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "model_ema"):
        if key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch_load(path)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return _unwrap(sd)


def _resolve(source) -> tuple[dict[str, torch.Tensor], int | None, str]:
    """(state dict, head dim when the source tells it, a name for messages)."""
    if isinstance(source, nn.Module):
        dims = {getattr(b.attn, "head_dim", None) for b in getattr(source, "blocks", [])}
        head_dim = dims.pop() if len(dims) == 1 else None
        return dict(source.state_dict()), head_dim, type(source).__name__
    if isinstance(source, Mapping):
        return _unwrap(source), None, "state dict"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_file():
            return _load_file(path), None, str(path)
        if isinstance(source, Path) or path.suffix in _FILE_SUFFIXES or "/" in str(source):
            raise ValueError(f"{source}: checkpoint file not found")
        import timm

        if not timm.is_model(source):
            raise ValueError(f"{source}: neither a checkpoint file nor a timm model name")
        try:
            model = timm.create_model(source, pretrained=True)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"{source}: could not get the pretrained timm weights (offline?) "
                             f"({type(e).__name__}: {first})") from None
        return _resolve(model)[0], getattr(model.blocks[0].attn, "head_dim", None), source
    raise TypeError(f"source: expected a path, a timm model name, a state dict or a timm model, "
                    f"got {type(source).__name__}")


def init_from_timm(supernet: Supernet, source, *, head_dim: int | None = None) -> TimmInit:
    """Copy a pretrained timm ViT into the supernet's top-left slices.

    `source`: a local .pth/.pt/.safetensors file, a state dict, a timm `VisionTransformer`, or a
    timm model name (downloaded with `pretrained=True`, so only when online). A state dict does
    not record the head dim; it is taken as `head_dim`, else the space's. The position embedding
    is resampled when the grid differs; the classifier is skipped when the class count differs.
    """
    why = supernet.space.family.refusal("timm_weights")
    if why:
        raise ValueError(f"supernet.pretrained: the {supernet.space.name} space cannot start from timm ViT weights: "
                         f"{why}")
    space = supernet.space
    sd, found_hd, name = _resolve(source)
    hd = head_dim or found_hd or space.head_dim
    if hd != space.head_dim:
        raise ValueError(f"{name}: head dim {hd} differs from the supernet's {space.head_dim}")

    blocks: dict[int, set[str]] = {}
    for key in sd:
        m = _BLOCK_RE.fullmatch(key)
        if m and m.group(2) in _BLOCK_KEYS:
            blocks.setdefault(int(m.group(1)), set()).add(m.group(2))
        elif m and m.group(2) in _REL_POS_KEYS and space.rel_pos:
            continue
        elif key not in _TOP_KEYS:
            raise ValueError(f"{name}: unsupported timm ViT weight {key!r} (only plain timm ViTs "
                             "with a class token and absolute position embedding are supported)")
    missing = sorted(_TOP_KEYS - {"head.weight", "head.bias"} - set(sd))
    depth = len(blocks)
    if sorted(blocks) != list(range(depth)):
        raise ValueError(f"{name}: block indices are not 0..{depth - 1}: {sorted(blocks)}")
    missing += [f"blocks.{i}.{k}" for i, ks in blocks.items()
                for k in sorted(_BLOCK_KEYS - ks - {"attn.qkv.bias"})]
    if missing or depth == 0:
        raise ValueError(f"{name}: not a timm ViT state dict (missing {(missing or ['blocks'])[0]!r})")

    pw = sd["patch_embed.proj.weight"]
    embed, in_chans, patch = pw.shape[0], pw.shape[1], pw.shape[-1]
    if (in_chans, patch) != (space.in_chans, space.patch_size) or pw.shape[-2] != patch:
        raise ValueError(f"{name}: patch embedding takes {in_chans} channels, patch {tuple(pw.shape[-2:])}; "
                         f"the supernet takes {space.in_chans}, patch {space.patch_size}")
    heads, hidden = [], []
    for i in range(depth):
        rows = sd[f"blocks.{i}.attn.qkv.weight"].shape[0]
        if rows % (3 * hd):
            raise ValueError(f"{name}: blocks.{i} qkv width {rows // 3} is not a multiple of head dim {hd}")
        heads.append(rows // (3 * hd))
        hidden.append(sd[f"blocks.{i}.mlp.fc1.weight"].shape[0])
    too_big = [(what, got, cap) for what, got, cap in (
        ("embed_dim", embed, supernet.embed_dim), ("depth", depth, supernet.depth),
        ("num_heads", max(heads), supernet.num_heads), ("mlp hidden", max(hidden), supernet.mlp_hidden))
        if got > cap]
    if too_big:
        what, got, cap = too_big[0]
        raise ValueError(f"{name}: timm model is wider than the supernet ({what} {got} > {cap})")

    sd = dict(sd)
    grid = space.img_size // space.patch_size
    pos = sd["pos_embed"]
    if pos.shape[1] != grid * grid + 1:
        old = math.isqrt(pos.shape[1] - 1)
        if old * old != pos.shape[1] - 1:
            raise ValueError(f"{name}: pos_embed has {pos.shape[1]} tokens, not 1 + a square grid")
        sd["pos_embed"] = resample_abs_pos_embed(pos.float(), new_size=[grid, grid], old_size=[old, old],
                                                 num_prefix_tokens=1)
    skipped = []
    if "head.weight" not in sd or sd["head.weight"].shape[0] != space.num_classes:
        skipped += [k for k in ("head.weight", "head.bias") if k in sd]
        sd.pop("head.weight", None)
        sd.pop("head.bias", None)
    views = timm_views(supernet, embed, heads, hidden)
    with torch.no_grad():
        for key, view in views.items():
            if key in ("head.weight", "head.bias") and key not in sd:
                continue
            t = sd.get(key)
            if t is None and key.split(".", 2)[-1] in _REL_POS_KEYS:
                continue  # a timm ViT has no relative position: the supernet's tables stay as they are
            if t is None:  # a ViT built with qkv_bias=False: zero bias is the same model
                view.zero_()
                continue
            shape = tuple(view.shape)
            if "attn.qkv." in key and view.dim() >= 2:  # timm keeps q, k and v rows in one flat dim
                shape = (shape[0] * shape[1], *shape[2:])
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: {key} has shape {tuple(t.shape)}, expected {shape} "
                                 "from the model's other weights")
            view.copy_(t.reshape(view.shape))
    return TimmInit(embed, depth, tuple(heads), tuple(hidden), tuple(skipped))
