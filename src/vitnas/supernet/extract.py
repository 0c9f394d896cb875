"""Standalone subnets out of a supernet: `vitnas.build(arch)` carrying the inherited weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer

from vitnas.space.arch import Arch
from vitnas.space.build import build
from vitnas.supernet.model import Supernet


def timm_views(supernet: Supernet, embed_dim: int, num_heads: Sequence[int],
               mlp_hidden: Sequence[int]) -> dict[str, torch.Tensor]:
    """timm ViT state-dict key -> the view of the supernet weight that subnet uses.

    The one place the two layouts meet: reading (extract) reshapes a view to the timm shape,
    writing (pretrained init) copies a timm tensor, reshaped to the view's shape, into it. Only
    the qkv entries differ in shape: ours is [3, heads*head_dim, d], timm's the same rows flat.
    """
    d, hd = embed_dim, supernet.head_dim
    v: dict[str, torch.Tensor] = {
        "cls_token": supernet.cls_token[:, :, :d],
        "pos_embed": supernet.pos_embed[:, :, :d],
        "patch_embed.proj.weight": supernet.patch_embed.weight[:d],
        "patch_embed.proj.bias": supernet.patch_embed.bias[:d],
    }
    for i, (heads, hidden) in enumerate(zip(num_heads, mlp_hidden, strict=True)):
        blk, p, q = supernet.blocks[i], f"blocks.{i}.", heads * hd
        v.update({
            p + "norm1.weight": blk.norm1.weight[:d],
            p + "norm1.bias": blk.norm1.bias[:d],
            p + "attn.qkv.weight": blk.attn.qkv.weight[:, :q, :d],
            p + "attn.qkv.bias": blk.attn.qkv.bias[:, :q],
            p + "attn.proj.weight": blk.attn.proj.weight[:d, :q],
            p + "attn.proj.bias": blk.attn.proj.bias[:d],
            p + "norm2.weight": blk.norm2.weight[:d],
            p + "norm2.bias": blk.norm2.bias[:d],
            p + "mlp.fc1.weight": blk.mlp.fc1.weight[:hidden, :d],
            p + "mlp.fc1.bias": blk.mlp.fc1.bias[:hidden],
            p + "mlp.fc2.weight": blk.mlp.fc2.weight[:d, :hidden],
            p + "mlp.fc2.bias": blk.mlp.fc2.bias[:d],
        })
    v.update({
        "norm.weight": supernet.norm.weight[:d],
        "norm.bias": supernet.norm.bias[:d],
        "head.weight": supernet.head.weight[:, :d],
        "head.bias": supernet.head.bias,
    })
    return v


def extract(supernet: Supernet, arch: Arch, *, drop_path_rate: float = 0.0) -> VisionTransformer:
    """`vitnas.build(arch)` with the supernet's weights for `arch`, copied (no shared storage).

    On the supernet's device and dtype and in its train/eval mode; in eval mode its outputs
    equal `supernet(x, arch)`.
    """
    supernet.check_arch(arch)  # same validation and message as forward
    model = build(arch, drop_path_rate=drop_path_rate)
    ref = supernet.pos_embed
    model.to(device=ref.device, dtype=ref.dtype)
    views = timm_views(supernet, arch.embed_dim, arch.num_heads, arch.mlp_hidden)
    target = model.state_dict()
    if set(target) != set(views):  # build() and the mapping drifted apart: a bug, not user error
        raise RuntimeError(f"extract: key mismatch with build(arch): {sorted(set(target) ^ set(views))[:5]}")
    with torch.no_grad():
        model.load_state_dict({k: views[k].reshape(t.shape) for k, t in target.items()}, strict=True)
    return model.train(supernet.training)
