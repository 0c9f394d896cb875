"""Standalone subnets out of a supernet: `vitnas.build(arch)` carrying the inherited weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer

from vitnas.models.build import build
from vitnas.space.arch import Arch
from vitnas.supernet.glit import recalibrate_bn
from vitnas.supernet.layers import prefixed
from vitnas.supernet.model import Supernet


def timm_views(supernet: Supernet, embed_dim: int, num_heads: Sequence[int],
               mlp_hidden: Sequence[int]) -> dict[str, torch.Tensor]:
    """timm ViT state-dict key -> the view of the supernet weight that subnet uses: each sliced
    module's own `views` (the slices its forward uses), under timm's names.

    Reading (extract) reshapes a view to the timm shape; writing (pretrained init) copies a timm
    tensor, reshaped to the view's shape, into it. Only the qkv entries differ in shape: ours is
    [3, heads*head_dim, d], timm's the same rows flat. ViT family only (`init_from_timm` refuses
    the others, `BlockFamily.refusal("timm_weights")`); `arch_views` maps any family's blocks.
    """
    v = supernet.outer_views(embed_dim)
    for i, (heads, hidden) in enumerate(zip(num_heads, mlp_hidden, strict=True)):
        v.update(prefixed(f"blocks.{i}.", supernet.blocks[i].views(embed_dim, heads, hidden)))
    return v


def arch_views(supernet: Supernet, arch: Arch) -> dict[str, torch.Tensor]:
    """State-dict key of `vitnas.build(arch)` -> the supernet view it takes: each block's own
    `arch_views` (GLiT: BatchNorm running statistics included, see `vitnas.supernet.glit`)."""
    v = supernet.outer_views(arch.embed_dim)
    for i in range(arch.depth):
        v.update(prefixed(f"blocks.{i}.", supernet.blocks[i].arch_views(arch, i)))
    return v


def extract(supernet: Supernet, arch: Arch, *, drop_path_rate: float = 0.0, calibrate=None) -> VisionTransformer:
    """`vitnas.build(arch)` with the supernet's weights for `arch`, copied (no shared storage).

    On the supernet's device and dtype and in its train/eval mode; in eval mode its outputs
    equal `supernet(x, arch)`.

    GLiT archs: BatchNorm running statistics are copied from the supernet's sliced ones, so the
    model equals the supernet *with its current statistics*. Those are only right for `arch` after
    `recalibrate_bn(supernet, images, arch)`; `calibrate=images` does that first (it changes the
    supernet's statistics; calibrating the extracted model with the same batches gives the same).
    """
    supernet.check_arch(arch)  # same validation and message as forward
    if calibrate is not None:
        recalibrate_bn(supernet, calibrate, arch)
    model = build(arch, drop_path_rate=drop_path_rate)
    ref = supernet.pos_embed
    model.to(device=ref.device, dtype=ref.dtype)
    views = arch_views(supernet, arch)
    target = model.state_dict()
    if set(target) != set(views):  # build() and the mapping drifted apart: a bug, not user error
        raise RuntimeError(f"extract: key mismatch with build(arch): {sorted(set(target) ^ set(views))[:5]}")
    with torch.no_grad():
        model.load_state_dict({k: views[k].reshape(t.shape) for k, t in target.items()}, strict=True)
    return model.train(supernet.training)
