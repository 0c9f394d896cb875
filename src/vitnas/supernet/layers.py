"""Weight-entangled layers: each holds its largest weights, a subnet uses the top-left slice.

Slicing happens inside `forward` on views of the real parameters, so gradients land in the
shared weights, nothing is re-assigned, and the modules deep-copy and trace like plain ones.
A view with a row stride is handed to BLAS as is (it takes a leading dimension), so slicing a
weight costs no copy.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_


def top_left(w: torch.Tensor, *sizes: int) -> torch.Tensor:
    """`w[:sizes[0], :sizes[1], ...]`, leaving out the no-op slices.

    A full-size slice still costs a zero-filled gradient buffer and a copy in backward; archs
    at the max width are common (the largest, and every layer at max heads or embed).
    """
    for dim, n in enumerate(sizes):
        if n != w.shape[dim]:
            w = w.narrow(dim, 0, n)
    return w


def prefixed(prefix: str, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A submodule's views under its name in the parent (`prefixed("fc1.", ...)`)."""
    return {prefix + k: v for k, v in views.items()}


class SlicedLinear(nn.Module):
    """`nn.Linear(in_max, out_max)` whose subnet uses `weight[:out, :in]`, `bias[:out]`."""

    def __init__(self, in_max: int, out_max: int, bias: bool = True) -> None:
        super().__init__()
        self.in_max, self.out_max = in_max, out_max
        self.weight = nn.Parameter(torch.empty(out_max, in_max))
        self.bias = nn.Parameter(torch.empty(out_max)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # timm's ViT init (init_weights_vit_timm), so extracted subnets look timm-initialised.
        trunc_normal_(self.weight, std=0.02)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def views(self, out_dim: int, in_dim: int) -> dict[str, torch.Tensor]:
        """The slice a subnet uses, by state-dict name (views: writing into them writes the supernet)."""
        v = {"weight": top_left(self.weight, out_dim, in_dim)}
        if self.bias is not None:
            v["bias"] = top_left(self.bias, out_dim)
        return v

    def forward(self, x: torch.Tensor, out_dim: int, in_dim: int) -> torch.Tensor:
        v = self.views(out_dim, in_dim)
        return F.linear(x, v["weight"], v.get("bias"))

    def extra_repr(self) -> str:
        return f"in_max={self.in_max}, out_max={self.out_max}, bias={self.bias is not None}"


class SlicedLayerNorm(nn.Module):
    """LayerNorm over the first `d` channels; eps 1e-6 as timm's ViT."""

    def __init__(self, dim_max: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim_max, self.eps = dim_max, eps
        self.weight = nn.Parameter(torch.ones(dim_max))
        self.bias = nn.Parameter(torch.zeros(dim_max))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def views(self, dim: int) -> dict[str, torch.Tensor]:
        return {"weight": top_left(self.weight, dim), "bias": top_left(self.bias, dim)}

    def forward(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        v = self.views(dim)
        return F.layer_norm(x, (dim,), v["weight"], v["bias"], self.eps)

    def extra_repr(self) -> str:
        return f"dim_max={self.dim_max}, eps={self.eps}"


class SlicedQKV(nn.Module):
    """The q/k/v projection with a fixed head dim and a variable head count (AutoFormer change_qkv).

    Stored as `weight[3, heads_max * head_dim, dim_max]` and `bias[3, heads_max * head_dim]`, so the
    slice for `h` heads is `[:, :h*head_dim, :d]` on both: q, k and v each take their first `h`
    heads, weight rows and bias entries always agree. (AutoFormer slices the bias as a plain
    prefix of the flat [q;k;v] vector while the weight rows are interleaved, so every subnet
    smaller than the largest adds k's bias to q, and so on.) `bias_layout="prefix"` reproduces
    that, for checkpoints trained by AutoFormer's code: the subnet's bias is
    `bias.flatten()[:3 * h * head_dim]`.
    """

    def __init__(self, dim_max: int, heads_max: int, head_dim: int, bias_layout: str = "grouped") -> None:
        super().__init__()
        self.dim_max, self.heads_max, self.head_dim = dim_max, heads_max, head_dim
        self.bias_layout = bias_layout
        self.weight = nn.Parameter(torch.empty(3, heads_max * head_dim, dim_max))
        self.bias = nn.Parameter(torch.empty(3, heads_max * head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        trunc_normal_(self.weight, std=0.02)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, heads: int, in_dim: int) -> torch.Tensor:
        """Returns [..., 3 * heads * head_dim] laid out [q heads..., k heads..., v heads...] like timm.

        One GEMM on the [3*q, d] weight: a view when all heads are used, otherwise a small copy
        of the weight. Measured on CPU (tiny space, 224 px) as fast as three GEMMs on views, and
        it keeps the kernel count of the static model.
        """
        v = self.views(heads, in_dim)
        q = heads * self.head_dim
        return F.linear(x, v["weight"].reshape(3 * q, in_dim), v["bias"].reshape(3 * q))

    def views(self, heads: int, in_dim: int) -> dict[str, torch.Tensor]:
        """The weight `[3, heads * head_dim, in_dim]` and bias (`bias_view`) a subnet uses."""
        return {"weight": top_left(self.weight, 3, heads * self.head_dim, in_dim), "bias": self.bias_view(heads)}

    def sliced_bias(self, heads: int) -> torch.Tensor:
        """The flat `[3 * heads * head_dim]` bias a subnet with `heads` heads adds (q, k, v)."""
        return self.bias_view(heads).reshape(3 * heads * self.head_dim)

    def bias_view(self, heads: int) -> torch.Tensor:
        """The part of `bias` a subnet with `heads` heads uses, as a view: `[3, heads * head_dim]`
        ("grouped"), or the flat prefix `[3 * heads * head_dim]` ("prefix")."""
        q = heads * self.head_dim
        if self.bias_layout == "prefix":
            return self.bias.view(-1)[:3 * q]
        return top_left(self.bias, 3, q)

    def extra_repr(self) -> str:
        extra = "" if self.bias_layout == "grouped" else f", bias_layout={self.bias_layout}"
        return f"dim_max={self.dim_max}, heads_max={self.heads_max}, head_dim={self.head_dim}{extra}"


class SlicedPatchEmbed(nn.Module):
    """Patchify conv (kernel = stride = patch) whose subnet uses the first `d` output channels."""

    def __init__(self, in_chans: int, dim_max: int, patch_size: int) -> None:
        super().__init__()
        self.in_chans, self.dim_max, self.patch_size = in_chans, dim_max, patch_size
        self.weight = nn.Parameter(torch.empty(dim_max, in_chans, patch_size, patch_size))
        self.bias = nn.Parameter(torch.empty(dim_max))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's default, which is what timm's ViT init leaves on its patch embedding;
        # fan_in (in_chans * patch**2) does not depend on the sliced width.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.in_chans * self.patch_size**2)
        nn.init.uniform_(self.bias, -bound, bound)

    def views(self, dim: int) -> dict[str, torch.Tensor]:
        return {"weight": top_left(self.weight, dim), "bias": top_left(self.bias, dim)}

    def forward(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        v = self.views(dim)
        x = F.conv2d(x, v["weight"], v["bias"], stride=self.patch_size)
        return x.flatten(2).transpose(1, 2)  # [B, N, d], as timm's PatchEmbed

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, dim_max={self.dim_max}, patch_size={self.patch_size}"


class SuperMlp(nn.Module):
    """timm's Mlp (fc1, exact GELU, fc2) over sliced weights."""

    def __init__(self, dim_max: int, hidden_max: int) -> None:
        super().__init__()
        self.fc1 = SlicedLinear(dim_max, hidden_max)
        self.fc2 = SlicedLinear(hidden_max, dim_max)

    def views(self, hidden: int, dim: int) -> dict[str, torch.Tensor]:
        return {**prefixed("fc1.", self.fc1.views(hidden, dim)), **prefixed("fc2.", self.fc2.views(dim, hidden))}

    def forward(self, x: torch.Tensor, hidden: int, dim: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x, hidden, dim)), dim, hidden)
