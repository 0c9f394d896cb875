"""Standalone models for an `Arch`: a timm `VisionTransformer` with per-layer blocks.

Plain archs get `Block` (timm's block with free heads, head dim and MLP width); GLiT archs get
`GlitBlock`, the same block whose attention covers only its attention units' channels, beside a
`LocalUnits` branch on the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block as TimmBlock
from timm.models.vision_transformer import VisionTransformer

from vitnas.models import hub
from vitnas.models.relpos import RelPosTables, rel_pos_attention
from vitnas.models.token_predictor import TokenPredictor
from vitnas.space.arch import Arch

# A relative-position block's table weights, relative to the block (the same in every layer).
REL_POS_KEYS = tuple(f"attn.rel_pos_{k}.table_{a}" for k in "kv" for a in "vh")


class RelPosAttention(Attention):
    """timm's Attention plus AutoFormer's 2-D relative position (`rel_pos_k`, `rel_pos_v`; see
    `vitnas.models.relpos`). Its token count is fixed: CLS + the `grid` x `grid` patches."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, *, grid: int, clip: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__(dim, num_heads=num_heads, attn_head_dim=head_dim, qkv_bias=qkv_bias,
                         attn_drop=attn_drop, proj_drop=proj_drop)
        self.grid = grid
        self.rel_pos_k = RelPosTables(head_dim, clip)
        self.rel_pos_v = RelPosTables(head_dim, clip)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if is_causal:
            raise ValueError("relative position attention is not causal")
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = rel_pos_attention(q, k, v, self.rel_pos_k, self.rel_pos_v, scale=self.scale, grid=self.grid,
                              attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim)))


def _init_residuals(block: nn.Module, dim: int, mlp_hidden: int, drop_path: float, proj_drop: float,
                    norm_layer, act_layer) -> None:
    """timm's residual plumbing around the token mixer (layer scale off) and its MLP branch."""
    block.ls1 = nn.Identity()
    block.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
    block.norm2 = norm_layer(dim)
    block.mlp = Mlp(dim, hidden_features=mlp_hidden, act_layer=act_layer, drop=proj_drop)
    block.ls2 = nn.Identity()
    block.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()


class Block(TimmBlock):
    """timm's pre-norm ViT block with its own head count, head dim and MLP width.

    timm's `Block` derives head dim from dim/heads and MLP width from a ratio; AutoFormer and
    slimmed models need both set freely. Submodule names and `forward` are timm's, so state
    dicts and tooling that expect a timm ViT keep working.

    A token-pruned block (`tokens_out < tokens_in`, ViT-Slim) first keeps CLS and the patch
    tokens at `token_rows` (positions in its input sequence, a buffer saved with the weights):
    the others are gone, so they cost nothing and are no keys or values for anyone. With
    `predictor` (DynamicViT) a `TokenPredictor` picks each image's `tokens_out` tokens instead.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden: int, *,
                 qkv_bias: bool = True, drop_path: float = 0.0, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, norm_layer=nn.LayerNorm, act_layer=nn.GELU,
                 tokens_in: int | None = None, tokens_out: int | None = None,
                 rel_pos: tuple[int, int] | None = None, predictor: bool = False) -> None:
        nn.Module.__init__(self)
        self.token_rows: torch.Tensor | None
        self.predictor: TokenPredictor | None = None
        self.tokens_out = tokens_out
        if predictor and tokens_out is not None and tokens_in is not None and tokens_out < tokens_in:
            self.predictor = TokenPredictor(dim)
            self.token_rows = None
        elif tokens_out is not None and tokens_in is not None and tokens_out < tokens_in:
            # evenly spread until trained positions are loaded
            rows = torch.linspace(0, tokens_in - 1, tokens_out).round().long()
            self.register_buffer("token_rows", rows)
        else:
            self.token_rows = None
        self.norm1 = norm_layer(dim)
        if rel_pos is not None:  # (patch grid side, clip distance)
            self.attn = RelPosAttention(dim, num_heads, head_dim, grid=rel_pos[0], clip=rel_pos[1],
                                        qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        else:
            self.attn = Attention(dim, num_heads=num_heads, attn_head_dim=head_dim, qkv_bias=qkv_bias,
                                  attn_drop=attn_drop, proj_drop=proj_drop)
        _init_residuals(self, dim, mlp_hidden, drop_path, proj_drop, norm_layer, act_layer)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if self.token_rows is not None:
            x = torch.cat((x[:, :1], x[:, 1:].index_select(1, self.token_rows)), dim=1)
        elif self.predictor is not None:
            keep = self.predictor.keep(x[:, 1:], self.tokens_out)
            x = torch.cat((x[:, :1], x[:, 1:].gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))), dim=1)
        return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)


class LocalUnits(nn.Module):
    """GLiT's local units, a Conformer convolution module over the token sequence.

    `[B, N, dim]` -> pointwise to both GLU halves (`2 * hidden`: value, then gate) -> GLU ->
    depthwise conv of odd `kernel_size` along the tokens in raster order (CLS first, zero "same"
    padding) -> BatchNorm -> Swish -> pointwise back to `dim`. The pointwise convs are `nn.Linear`
    on the token axis (a 1x1 conv is a per-token linear), so no transposes are needed around them.
    """

    def __init__(self, dim: int, hidden: int, kernel_size: int) -> None:
        super().__init__()
        self.pw1 = nn.Linear(dim, 2 * hidden)
        self.dw = nn.Conv1d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.pw2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.glu(self.pw1(x), dim=-1).transpose(1, 2)  # [B, hidden, N]
        x = F.silu(self.bn(self.dw(x)))
        return self.pw2(x.transpose(1, 2))


class GlitBlock(Block):
    """A GLiT global-local block in timm's block layout (`norm1`, `attn`, `norm2`, `mlp`, ...).

    The first `attn_dim` channels of `norm1(x)` feed `num_heads` attention heads (`attn`, timm's
    Attention with its own projection back to `attn_dim`, or None without heads); the remaining
    channels feed `local` (`LocalUnits`, or None without local units). Their outputs are
    concatenated in that order and added to `x`; the MLP is timm's.
    """

    def __init__(self, dim: int, attn_dim: int, num_heads: int, head_dim: int, local_hidden: int,
                 kernel_size: int, mlp_hidden: int, *, qkv_bias: bool = True, drop_path: float = 0.0,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, norm_layer=nn.LayerNorm,
                 act_layer=nn.GELU) -> None:
        nn.Module.__init__(self)
        self.token_rows = None
        self.attn_dim = attn_dim
        self.norm1 = norm_layer(dim)
        self.attn = Attention(attn_dim, num_heads=num_heads, attn_head_dim=head_dim, qkv_bias=qkv_bias,
                              attn_drop=attn_drop, proj_drop=proj_drop) if num_heads else None
        self.local = LocalUnits(dim - attn_dim, local_hidden, kernel_size) if attn_dim < dim else None
        _init_residuals(self, dim, mlp_hidden, drop_path, proj_drop, norm_layer, act_layer)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        y = self.norm1(x)
        if self.local is None:
            y = self.attn(y, attn_mask=attn_mask, is_causal=is_causal)
        elif self.attn is None:
            y = self.local(y)
        else:
            a = self.attn_dim
            y = torch.cat((self.attn(y[..., :a], attn_mask=attn_mask, is_causal=is_causal),
                           self.local(y[..., a:])), dim=-1)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _layer_block(arch: Arch, *, dim: int, depth: int, drop_path: float, norm_layer, act_layer,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, **_timm_kwargs) -> Block:
    # timm's VisionTransformer passes the layer index as `depth`; the block is the arch's family's.
    block = arch.family.block(arch, depth, drop_path=drop_path, proj_drop=proj_drop, attn_drop=attn_drop,
                              norm_layer=norm_layer, act_layer=act_layer)
    block.block_family = arch.family.name  # what tools that get only the model (the proxies) check
    return block


def build(arch: Arch, *, drop_path_rate: float = 0.0, drop_rate: float = 0.0,
          dataset: Mapping[str, Any] | None = None) -> VisionTransformer:
    """The standalone model of `arch`, randomly initialised with timm's ViT init (GLiT's depthwise
    convs and BatchNorm keep torch's default init; relative-position tables AutoFormer's).

    The model carries timm's `pretrained_cfg` (`vitnas.models.hub.pretrained_cfg`): its input size
    and channels, bilinear resize with no crop margin, and `dataset`'s mean/std and class names
    (a `dataset.json` mapping) when given.

    `arch.global_pool="avg"` is timm's `global_pool="avg", fc_norm=False`: the final norm over every
    token, then the mean of the patch tokens (AutoFormer's `--gp`)."""
    model = VisionTransformer(
        img_size=arch.img_size, patch_size=arch.patch_size, in_chans=arch.in_chans,
        num_classes=arch.num_classes, embed_dim=arch.embed_dim, depth=arch.depth,
        num_heads=max(1, arch.num_heads[0]), qkv_bias=True, class_token=True, global_pool=arch.global_pool,
        fc_norm=False, norm_layer=partial(nn.LayerNorm, eps=arch.norm_eps),
        drop_rate=drop_rate, drop_path_rate=drop_path_rate,
        block_fn=partial(_layer_block, arch),
    )
    hub.attach(model, hub.pretrained_cfg(arch, dataset))
    return model
