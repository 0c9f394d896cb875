"""Standalone models for an `Arch`: a timm `VisionTransformer` with per-layer blocks."""

from __future__ import annotations

from functools import partial

import torch.nn as nn
from timm.layers import DropPath, Mlp
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block as TimmBlock
from timm.models.vision_transformer import VisionTransformer

from vitnas.space.arch import Arch


class Block(TimmBlock):
    """timm's pre-norm ViT block with its own head count, head dim and MLP width.

    timm's `Block` derives head dim from dim/heads and MLP width from a ratio; AutoFormer and
    slimmed models need both set freely. Submodule names and `forward` are timm's, so state
    dicts and tooling that expect a timm ViT keep working.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden: int, *,
                 qkv_bias: bool = True, drop_path: float = 0.0, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, norm_layer=nn.LayerNorm, act_layer=nn.GELU) -> None:
        nn.Module.__init__(self)
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, attn_head_dim=head_dim, qkv_bias=qkv_bias,
                              attn_drop=attn_drop, proj_drop=proj_drop)
        self.ls1 = nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=mlp_hidden, act_layer=act_layer, drop=proj_drop)
        self.ls2 = nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()


def _layer_block(arch: Arch, *, dim: int, depth: int, drop_path: float, norm_layer, act_layer,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, **_timm_kwargs) -> Block:
    # timm's VisionTransformer passes the layer index as `depth`.
    return Block(dim, arch.num_heads[depth], arch.head_dim[depth], arch.mlp_hidden[depth],
                 drop_path=drop_path, proj_drop=proj_drop, attn_drop=attn_drop,
                 norm_layer=norm_layer, act_layer=act_layer)


def build(arch: Arch, *, drop_path_rate: float = 0.0, drop_rate: float = 0.0) -> VisionTransformer:
    """The standalone model of `arch`, randomly initialised with timm's ViT init."""
    return VisionTransformer(
        img_size=arch.img_size, patch_size=arch.patch_size, in_chans=arch.in_chans,
        num_classes=arch.num_classes, embed_dim=arch.embed_dim, depth=arch.depth,
        num_heads=arch.num_heads[0], qkv_bias=True, class_token=True, global_pool="token",
        drop_rate=drop_rate, drop_path_rate=drop_path_rate,
        block_fn=partial(_layer_block, arch),
    )
