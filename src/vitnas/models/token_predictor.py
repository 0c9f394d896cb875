"""DynamicViT's token predictor (its `PredictorLG`), the module a per-image token-pruned block owns.

It lives with the models because a built model holds it (`Arch.token_predictors`); how it is
trained is `vitnas.slim.dynamic`'s."""

from __future__ import annotations

import torch
import torch.nn as nn


class TokenPredictor(nn.Module):
    """LN -> Linear -> GELU; half the channels per token, half a policy-weighted mean over the kept
    tokens; an MLP down to (keep, drop) log-probabilities per token."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
                                      nn.Linear(dim // 4, 2), nn.LogSoftmax(dim=-1))

    def forward(self, x: torch.Tensor, policy: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N, dim] patch tokens (and [B, N, 1] kept-token policy; None: all kept) -> [B, N, 2]."""
        x = self.in_conv(x)
        B, N, C = x.shape
        local, glob = x[..., :C // 2], x[..., C // 2:]
        if policy is None:
            glob = glob.mean(1, keepdim=True)
        else:  # the public code divides by the kept count alone: 0 once every token of an image is dropped
            glob = (glob * policy).sum(1, keepdim=True) / policy.sum(1, keepdim=True).clamp_min(1e-6)
        return self.out_conv(torch.cat([local, glob.expand(B, N, C - C // 2)], dim=-1))

    def keep(self, x: torch.Tensor, count: int) -> torch.Tensor:
        """Each image's `count` most likely kept tokens [B, count], in their original order."""
        return self(x)[..., 0].topk(count, dim=1).indices.sort(dim=1).values
