"""Import a supernet trained by AutoFormer's own code (microsoft/Cream AutoFormer, the released
supernet-tiny/small/base checkpoints), so it can be searched, slimmed and retrained with vitnas.

The file is read with `torch.load(weights_only=True)` (tensors and plain containers only). Its keys
map onto vitnas's supernet as follows (AutoFormer -> vitnas):

- `patch_embed_super.proj.*` -> `patch_embed.*`; `cls_token`, `pos_embed`, `norm.*`, `head.*` as they are;
- `blocks.i.attn_layer_norm.*` / `ffn_layer_norm.*` -> `blocks.i.norm1.*` / `norm2.*`;
- `blocks.i.fc1.*` / `fc2.*` -> `blocks.i.mlp.fc1.*` / `mlp.fc2.*`;
- `blocks.i.attn.qkv.weight`: AutoFormer's rows are interleaved (row `3j + t` is channel j of q, k or
  v for t = 0, 1, 2) -> vitnas's `[3, heads * head_dim, embed]`;
- `blocks.i.attn.qkv.bias`: AutoFormer slices it as a plain prefix of the flat vector (a subnet
  with h heads adds entries `[0, 3 * h * head_dim)`), which mixes q, k and v biases whenever a layer
  has fewer than the supernet's heads. To give every subnet AutoFormer's function, the bias is
  kept flat and the supernet is built with `qkv_bias_layout="prefix"`, a compatibility layout
  recorded in the saved file (supernets vitnas trains keep q, k and v biases aligned);
- `blocks.i.attn.rel_pos_embed_{k,v}.embeddings_table_{v,h}` -> `blocks.i.attn.rel_pos_{k,v}.table_{v,h}`.

AutoFormer's supernet may be wider than its space's largest choice (embed 256 for the tiny space
whose largest embed is 240, 640 for base): every subnet only reads top-left slices, so the extra
rows and columns are dropped. The space must describe the model the checkpoint was trained as
(AutoFormer's scripts: avg pooling, relative position clipped at 14, LayerNorm eps 1e-5, head dim
64: the `autoformer-*` presets).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vitnas.space.search_space import SearchSpace
from vitnas.supernet.file_format import FORMAT, SupernetFileError, read_torch_file

if TYPE_CHECKING:  # the model imports this module (Supernet.from_autoformer) and passes itself in
    from vitnas.supernet.model import Supernet

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_BLOCK_KEYS = {
    "attn_layer_norm.weight": "norm1.weight", "attn_layer_norm.bias": "norm1.bias",
    "ffn_layer_norm.weight": "norm2.weight", "ffn_layer_norm.bias": "norm2.bias",
    "attn.proj.weight": "attn.proj.weight", "attn.proj.bias": "attn.proj.bias",
    "fc1.weight": "mlp.fc1.weight", "fc1.bias": "mlp.fc1.bias", "fc2.weight": "mlp.fc2.weight",
    "fc2.bias": "mlp.fc2.bias", "attn.qkv.weight": "attn.qkv.weight", "attn.qkv.bias": "attn.qkv.bias",
}
_REL_KEYS = {f"attn.rel_pos_embed_{k}.embeddings_table_{a}": f"attn.rel_pos_{k}.table_{a}"
             for k in "kv" for a in "vh"}
_TOP_KEYS = {"patch_embed_super.proj.weight": "patch_embed.weight", "patch_embed_super.proj.bias": "patch_embed.bias",
             "cls_token": "cls_token", "pos_embed": "pos_embed", "norm.weight": "norm.weight",
             "norm.bias": "norm.bias", "head.weight": "head.weight", "head.bias": "head.bias"}


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SupernetFileError(f"{path}: AutoFormer checkpoint not found")
    from vitnas.space.memory import LIMIT_ENV, gib, memory_limit

    size, limit = path.stat().st_size, memory_limit()
    if size > limit:  # reading it takes at least its size (the released supernets are 0.1-0.6 GB)
        raise SupernetFileError(f"{path}: a {gib(size)} file, more than the {gib(limit)} of memory here "
                                f"(set {LIMIT_ENV} to change the limit)")
    ckpt = read_torch_file(path)
    if isinstance(ckpt, Mapping) and ckpt.get("format") == FORMAT:
        raise SupernetFileError(f"{path}: not an AutoFormer supernet: it is a vitnas supernet file already "
                                "(give it to `vitnas search --supernet` as it is)")
    sd = ckpt.get("model", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SupernetFileError(f"{path}: not an AutoFormer supernet (expected a state dict, or one under 'model')")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def autoformer_state(sd: Mapping[str, torch.Tensor], net: Supernet,
                     name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """vitnas state dict of `net` (built with `qkv_bias_layout="prefix"`) from AutoFormer's `sd`."""
    space = net.space
    target = net.state_dict()
    missing = [k for k in _TOP_KEYS if k not in sd]
    if missing:
        raise SupernetFileError(f"{name}: not an AutoFormer supernet (no {missing[0]!r}"
                                + ("; it looks like a vitnas or timm model" if "patch_embed.proj.weight" in sd else "")
                                + ")")
    depth = 1 + max((int(m.group(1)) for k in sd if (m := _BLOCK.fullmatch(k))), default=-1)
    has_rel = any(k.endswith("embeddings_table_v") for k in sd)
    if has_rel != space.rel_pos:
        raise SupernetFileError(f"{name}: the checkpoint {'has' if has_rel else 'has no'} relative-position tables "
                                f"but the space's rel_pos is {str(space.rel_pos).lower()}")
    if depth < net.depth:
        raise SupernetFileError(f"{name}: {depth} blocks, the space needs {net.depth}")
    if sd["pos_embed"].shape[1] != target["pos_embed"].shape[1]:
        raise SupernetFileError(f"{name}: pos_embed has {sd['pos_embed'].shape[1]} tokens, the space's "
                                f"{space.img_size}px/{space.patch_size} input has {target['pos_embed'].shape[1]}")
    if sd["head.weight"].shape[0] != space.num_classes:
        raise SupernetFileError(f"{name}: {sd['head.weight'].shape[0]} classes, the space has {space.num_classes}")
    if sd["patch_embed_super.proj.weight"].shape[1:] != target["patch_embed.weight"].shape[1:]:
        raise SupernetFileError(f"{name}: patch embedding {tuple(sd['patch_embed_super.proj.weight'].shape[1:])}, "
                                f"the space needs {tuple(target['patch_embed.weight'].shape[1:])}")
    out: dict[str, torch.Tensor] = {}
    keys = {**_BLOCK_KEYS, **(_REL_KEYS if space.rel_pos else {})}

    def put(dst: str, src: str, t: torch.Tensor) -> None:
        want = target[dst].shape
        if t.dim() != len(want) or any(h < w for h, w in zip(t.shape, want, strict=True)):
            raise SupernetFileError(f"{name}: {src} has shape {tuple(t.shape)}, smaller than the space needs "
                                    f"{tuple(want)} (another space or another checkpoint?)")
        out[dst] = t[tuple(slice(0, n) for n in want)].float()

    for src, dst in _TOP_KEYS.items():
        put(dst, src, sd[src])
    for i in range(net.depth):
        p = f"blocks.{i}."
        for src, dst in keys.items():
            if p + src not in sd:
                raise SupernetFileError(f"{name}: missing {p + src!r} (not an AutoFormer supernet with change_qkv)")
            t = sd[p + src]
            if src == "attn.qkv.weight":  # rows 3j + t -> [t, j]
                if t.shape[0] % 3:
                    raise SupernetFileError(f"{name}: {p + src} has {t.shape[0]} rows, not 3 x the qk width")
                t = t.reshape(t.shape[0] // 3, 3, t.shape[1]).transpose(0, 1)
            elif src == "attn.qkv.bias":  # kept flat, sliced as a prefix ("prefix" layout)
                n = target[p + dst].numel()
                if t.numel() < n:
                    raise SupernetFileError(f"{name}: {p + src} has {t.numel()} entries, the space needs {n}")
                out[p + dst] = t[:n].float().reshape(target[p + dst].shape)
                continue
            elif "rel_pos" in dst and t.shape[0] != target[p + dst].shape[0]:
                raise SupernetFileError(f"{name}: {p + src} has {t.shape[0]} rows (clip {(t.shape[0] - 2) // 2}), "
                                        f"the space's rel_pos_clip {space.rel_pos_clip} needs "
                                        f"{target[p + dst].shape[0]}")
            put(p + dst, p + src, t)
    return out


def checkpoint_space(sd: Mapping[str, torch.Tensor], space: SearchSpace, name: str = "checkpoint") -> SearchSpace:
    """`space` with the input and output shape the checkpoint was trained for (patch size, channels and
    image size from its patch and position embeddings, classes from its head)."""
    try:
        pw, pos, head = sd["patch_embed_super.proj.weight"], sd["pos_embed"], sd["head.weight"]
    except KeyError as e:
        raise SupernetFileError(f"{name}: not an AutoFormer supernet (no {e.args[0]!r})") from None
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    if pw.dim() != 4 or pw.shape[-1] != pw.shape[-2] or grid * grid != pos.shape[1] - 1 or head.dim() != 2:
        raise SupernetFileError(f"{name}: patch embedding {tuple(pw.shape)} / pos_embed {tuple(pos.shape)} "
                                "are not a square ViT's")
    return replace(space, patch_size=int(pw.shape[-1]), img_size=grid * int(pw.shape[-1]), in_chans=int(pw.shape[1]),
                   num_classes=int(head.shape[0]))


def from_autoformer(path: str | Path, space: SearchSpace, *, make: Callable[..., Supernet],
                    map_location: str | torch.device = "cpu", adapt_shape: bool = False) -> Supernet:
    """The vitnas supernet of `space` (built by `make`: the `Supernet` class) carrying an AutoFormer
    checkpoint's weights (see the module doc); every subnet computes what AutoFormer's code computes
    for it. `adapt_shape`: take the input size, channels, patch and classes from the checkpoint
    instead of requiring the space's."""
    path = Path(path)
    sd = _read(path)
    if adapt_shape:
        space = checkpoint_space(sd, space, str(path))
    net = make(space, qkv_bias_layout="prefix")
    state = autoformer_state(sd, net, str(path))
    net.load_state_dict(state, strict=True)
    net.meta = {"imported_from": "autoformer", "checkpoint": path.name}
    return net.to(map_location)
