"""Standalone models for an `Arch`: a timm `VisionTransformer` with per-layer blocks."""

from __future__ import annotations

from functools import partial

import torch
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

    A token-pruned block (`tokens_out < tokens_in`, ViT-Slim) first keeps CLS and the patch
    tokens at `token_rows` (positions in its input sequence, a buffer saved with the weights):
    the others are gone, so they cost nothing and are no keys or values for anyone.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden: int, *,
                 qkv_bias: bool = True, drop_path: float = 0.0, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, norm_layer=nn.LayerNorm, act_layer=nn.GELU,
                 tokens_in: int | None = None, tokens_out: int | None = None) -> None:
        nn.Module.__init__(self)
        self.token_rows: torch.Tensor | None
        if tokens_out is not None and tokens_in is not None and tokens_out < tokens_in:
            # evenly spread until trained positions are loaded
            rows = torch.linspace(0, tokens_in - 1, tokens_out).round().long()
            self.register_buffer("token_rows", rows)
        else:
            self.token_rows = None
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, attn_head_dim=head_dim, qkv_bias=qkv_bias,
                              attn_drop=attn_drop, proj_drop=proj_drop)
        self.ls1 = nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=mlp_hidden, act_layer=act_layer, drop=proj_drop)
        self.ls2 = nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if self.token_rows is not None:
            x = torch.cat((x[:, :1], x[:, 1:].index_select(1, self.token_rows)), dim=1)
        return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)


def _layer_block(arch: Arch, *, dim: int, depth: int, drop_path: float, norm_layer, act_layer,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, **_timm_kwargs) -> Block:
    # timm's VisionTransformer passes the layer index as `depth`.
    i = depth
    tokens = {}
    if arch.keep_tokens is not None:
        tokens = {"tokens_in": arch.tokens_in(i - 1) - 1 if i else arch.num_patches,
                  "tokens_out": arch.keep_tokens[i]}
    return Block(dim, arch.num_heads[i], arch.head_dim[i], arch.mlp_hidden[i],
                 drop_path=drop_path, proj_drop=proj_drop, attn_drop=attn_drop,
                 norm_layer=norm_layer, act_layer=act_layer, **tokens)


def build(arch: Arch, *, drop_path_rate: float = 0.0, drop_rate: float = 0.0) -> VisionTransformer:
    """The standalone model of `arch`, randomly initialised with timm's ViT init."""
    return VisionTransformer(
        img_size=arch.img_size, patch_size=arch.patch_size, in_chans=arch.in_chans,
        num_classes=arch.num_classes, embed_dim=arch.embed_dim, depth=arch.depth,
        num_heads=arch.num_heads[0], qkv_bias=True, class_token=True, global_pool="token",
        drop_rate=drop_rate, drop_path_rate=drop_path_rate,
        block_fn=partial(_layer_block, arch),
    )
