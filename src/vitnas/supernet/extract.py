"""Standalone subnets out of a supernet: `vitnas.build(arch)` carrying the inherited weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer

from vitnas.models.build import REL_POS_KEYS, build
from vitnas.space.arch import Arch
from vitnas.supernet.glit import recalibrate_bn
from vitnas.supernet.model import Supernet


def timm_views(supernet: Supernet, embed_dim: int, num_heads: Sequence[int],
               mlp_hidden: Sequence[int]) -> dict[str, torch.Tensor]:
    """timm ViT state-dict key -> the view of the supernet weight that subnet uses.

    The one place the two layouts meet: reading (extract) reshapes a view to the timm shape,
    writing (pretrained init) copies a timm tensor, reshaped to the view's shape, into it. Only
    the qkv entries differ in shape: ours is [3, heads*head_dim, d], timm's the same rows flat.
    Plain ViT supernets only (GLiT: `glit_views`); init from timm therefore rejects GLiT too.
    """
    if supernet.space.is_glit:
        raise ValueError("supernet: a GLiT supernet has no plain timm ViT layout (its blocks have local units); "
                         "starting it from timm ViT weights is not supported")
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
            p + "attn.qkv.bias": blk.attn.qkv.bias_view(heads),
            p + "attn.proj.weight": blk.attn.proj.weight[:d, :q],
            p + "attn.proj.bias": blk.attn.proj.bias[:d],
            p + "norm2.weight": blk.norm2.weight[:d],
            p + "norm2.bias": blk.norm2.bias[:d],
            p + "mlp.fc1.weight": blk.mlp.fc1.weight[:hidden, :d],
            p + "mlp.fc1.bias": blk.mlp.fc1.bias[:hidden],
            p + "mlp.fc2.weight": blk.mlp.fc2.weight[:d, :hidden],
            p + "mlp.fc2.bias": blk.mlp.fc2.bias[:d],
        })
        if supernet.space.rel_pos:  # the same parameter names as the static RelPosAttention's
            v.update({p + k: blk.get_parameter(k) for k in REL_POS_KEYS})
    v.update({
        "norm.weight": supernet.norm.weight[:d],
        "norm.bias": supernet.norm.bias[:d],
        "head.weight": supernet.head.weight[:, :d],
        "head.bias": supernet.head.bias,
    })
    return v


def glit_views(supernet: Supernet, arch: Arch) -> dict[str, torch.Tensor]:
    """State-dict key of `vitnas.build(arch)` (GLiT blocks) -> the supernet view it takes, BatchNorm
    running statistics included (see `vitnas.supernet.glit` for how the slices are chosen)."""
    d = arch.embed_dim
    v: dict[str, torch.Tensor] = {
        "cls_token": supernet.cls_token[:, :, :d],
        "pos_embed": supernet.pos_embed[:, :, :d],
        "patch_embed.proj.weight": supernet.patch_embed.weight[:d],
        "patch_embed.proj.bias": supernet.patch_embed.bias[:d],
        "norm.weight": supernet.norm.weight[:d],
        "norm.bias": supernet.norm.bias[:d],
        "head.weight": supernet.head.weight[:, :d],
        "head.bias": supernet.head.bias,
    }
    for i in range(arch.depth):
        blk, p = supernet.blocks[i], f"blocks.{i}."
        m, a, g, hd = arch.mlp_hidden[i], arch.attn_dim(i), arch.num_heads[i], arch.head_dim[i]
        for name in ("norm1", "norm2"):
            v[p + name + ".weight"] = getattr(blk, name).weight[:d]
            v[p + name + ".bias"] = getattr(blk, name).bias[:d]
        v.update({
            p + "mlp.fc1.weight": blk.mlp.fc1.weight[:m, :d], p + "mlp.fc1.bias": blk.mlp.fc1.bias[:m],
            p + "mlp.fc2.weight": blk.mlp.fc2.weight[:d, :m], p + "mlp.fc2.bias": blk.mlp.fc2.bias[:d],
        })
        if g:
            at = blk.attn
            v.update({
                p + "attn.qkv.weight": at.qkv.weight[:, :g, :hd, :a], p + "attn.qkv.bias": at.qkv.bias[:, :g, :hd],
                p + "attn.proj.weight": at.proj.weight[:a, :g, :hd], p + "attn.proj.bias": at.proj.bias[:a],
            })
        if arch.local_units[i]:
            lo, c, e, k = blk.local, arch.local_dim(i), arch.local_hidden(i), arch.kernel_size[i]
            c0, k0 = lo.dim_max - c, (lo.kernel_max - k) // 2
            v.update({
                p + "local.pw1.weight": lo.pw1.weight[:, :e, c0:], p + "local.pw1.bias": lo.pw1.bias[:, :e],
                p + "local.dw.weight": lo.dw.weight[:e, :, k0:k0 + k], p + "local.dw.bias": lo.dw.bias[:e],
                p + "local.bn.weight": lo.bn.weight[:e], p + "local.bn.bias": lo.bn.bias[:e],
                p + "local.bn.running_mean": lo.bn.running_mean[:e], p + "local.bn.running_var": lo.bn.running_var[:e],
                p + "local.bn.num_batches_tracked": lo.bn.num_batches_tracked,
                p + "local.pw2.weight": lo.pw2.weight[c0:, :e], p + "local.pw2.bias": lo.pw2.bias[c0:],
            })
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
    if arch.is_glit:
        views = glit_views(supernet, arch)
    else:
        views = timm_views(supernet, arch.embed_dim, arch.num_heads, arch.mlp_hidden)
    target = model.state_dict()
    if set(target) != set(views):  # build() and the mapping drifted apart: a bug, not user error
        raise RuntimeError(f"extract: key mismatch with build(arch): {sorted(set(target) ^ set(views))[:5]}")
    with torch.no_grad():
        model.load_state_dict({k: views[k].reshape(t.shape) for k, t in target.items()}, strict=True)
    return model.train(supernet.training)
