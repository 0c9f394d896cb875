"""Weight-entangled GLiT global-local blocks, and BatchNorm recalibration per subnet.

A GLiT block splits its LayerNorm output: the first `G * w` channels feed `G` attention heads, the
last `L * w` channels feed the local units (a Conformer convolution module), and the two outputs
are concatenated (`w` = unit width). Sharing, as AutoFormer's top-left slices wherever it applies:

- attention: q/k/v stored per head, `[3, heads, head_dim, channels]`, so `G` heads of head dim
  `hd` use `[:, :G, :hd, :G*w]`: every head keeps its own rows whatever the head dim, and q, k, v
  and their biases always slice the same heads (AutoFormer's qkv-bias defect cannot happen).
- local units: channel-aligned with the residual stream. Their input columns and output rows are
  the *last* `L * w` of the stored `L_max * w`, i.e. the channels they read and write, so a
  channel meets the same local weights whichever split puts it in the local branch. The expanded
  width (e_c x channels) takes a prefix, on both GLU halves (stored `[2, hidden, channels]`:
  value rows and gate rows are sliced together, not as a prefix of the concatenated 2x output).
  Kernels share the largest one: a `k` kernel is its centre `k` taps.
- BatchNorm: sliced affine and running statistics. Running statistics mix every subnet trained,
  so before a subnet is evaluated they are recalibrated for it (`recalibrate_bn`): reset, then a
  few batches forwarded with only the BatchNorm layers in training mode, averaged cumulatively.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import drop_path, trunc_normal_

from vitnas.supernet.layers import SlicedLayerNorm, SuperMlp, prefixed, top_left


def _narrow_end(w: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """The last `n` entries of `w` along `dim` (a view)."""
    return w if n == w.shape[dim] else w.narrow(dim, w.shape[dim] - n, n)


class HeadQKV(nn.Module):
    """q/k/v projection stored per head: `weight[3, heads_max, head_dim_max, dim_max]`."""

    def __init__(self, dim_max: int, heads_max: int, head_dim_max: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(3, heads_max, head_dim_max, dim_max))
        self.bias = nn.Parameter(torch.empty(3, heads_max, head_dim_max))
        trunc_normal_(self.weight, std=0.02)  # timm's ViT init of a Linear
        nn.init.zeros_(self.bias)

    def views(self, heads: int, head_dim: int, dim: int) -> dict[str, torch.Tensor]:
        return {"weight": top_left(self.weight, 3, heads, head_dim, dim),
                "bias": top_left(self.bias, 3, heads, head_dim)}

    def forward(self, x: torch.Tensor, heads: int, head_dim: int, dim: int) -> torch.Tensor:
        """[..., 3 * heads * head_dim] laid out like timm's qkv (q heads, k heads, v heads)."""
        out = 3 * heads * head_dim
        v = self.views(heads, head_dim, dim)
        return F.linear(x, v["weight"].reshape(out, dim), v["bias"].reshape(out))


class HeadProj(nn.Module):
    """Output projection stored per head: `weight[dim_max, heads_max, head_dim_max]`."""

    def __init__(self, dim_max: int, heads_max: int, head_dim_max: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim_max, heads_max, head_dim_max))
        self.bias = nn.Parameter(torch.zeros(dim_max))
        trunc_normal_(self.weight, std=0.02)

    def views(self, heads: int, head_dim: int, dim: int) -> dict[str, torch.Tensor]:
        return {"weight": top_left(self.weight, dim, heads, head_dim), "bias": top_left(self.bias, dim)}

    def forward(self, x: torch.Tensor, heads: int, head_dim: int, dim: int) -> torch.Tensor:
        v = self.views(heads, head_dim, dim)
        return F.linear(x, v["weight"].reshape(dim, heads * head_dim), v["bias"])


class GlitSuperAttention(nn.Module):
    """Attention on the first `G * w` channels with `G` heads of a per-call head dim."""

    def __init__(self, dim_max: int, heads_max: int, head_dim_max: int) -> None:
        super().__init__()
        self.qkv = HeadQKV(dim_max, heads_max, head_dim_max)
        self.proj = HeadProj(dim_max, heads_max, head_dim_max)

    def views(self, heads: int, head_dim: int, dim: int) -> dict[str, torch.Tensor]:
        return {**prefixed("qkv.", self.qkv.views(heads, head_dim, dim)),
                **prefixed("proj.", self.proj.views(heads, head_dim, dim))}

    def forward(self, x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
        B, N, dim = x.shape
        qkv = self.qkv(x, heads, head_dim, dim).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as timm and GLiT
        return self.proj(x.transpose(1, 2).reshape(B, N, heads * head_dim), heads, head_dim, dim)


class SlicedBatchNorm1d(nn.Module):
    """BatchNorm1d over the first `n` channels (affine and running statistics sliced).

    `momentum=None` averages cumulatively, as torch's BatchNorm; `recalibrate_bn` uses that.
    """

    def __init__(self, dim_max: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.dim_max, self.eps, self.momentum = dim_max, eps, momentum
        self.weight = nn.Parameter(torch.ones(dim_max))
        self.bias = nn.Parameter(torch.zeros(dim_max))
        self.register_buffer("running_mean", torch.zeros(dim_max))
        self.register_buffer("running_var", torch.ones(dim_max))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def views(self, n: int) -> dict[str, torch.Tensor]:
        """Affine and running statistics of the first `n` channels (contiguous prefixes: views
        batch_norm updates in place), and the shared batch count."""
        return {"weight": top_left(self.weight, n), "bias": top_left(self.bias, n),
                "running_mean": top_left(self.running_mean, n), "running_var": top_left(self.running_var, n),
                "num_batches_tracked": self.num_batches_tracked}

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        factor = 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        v = self.views(n)
        return F.batch_norm(x, v["running_mean"], v["running_var"], v["weight"], v["bias"], self.training, factor,
                            self.eps)

    def extra_repr(self) -> str:
        return f"dim_max={self.dim_max}, eps={self.eps}, momentum={self.momentum}"


class SuperLocalUnits(nn.Module):
    """GLiT local units over sliced weights (see the module docstring for the slicing)."""

    def __init__(self, dim_max: int, hidden_max: int, kernel_max: int) -> None:
        super().__init__()
        self.dim_max, self.hidden_max, self.kernel_max = dim_max, hidden_max, kernel_max
        self.pw1 = nn.Module()
        self.pw1.weight = nn.Parameter(torch.empty(2, hidden_max, dim_max))  # [value; gate] rows
        self.pw1.bias = nn.Parameter(torch.zeros(2, hidden_max))
        self.dw = nn.Module()
        self.dw.weight = nn.Parameter(torch.empty(hidden_max, 1, kernel_max))
        self.dw.bias = nn.Parameter(torch.empty(hidden_max))
        self.bn = SlicedBatchNorm1d(hidden_max)
        self.pw2 = nn.Module()
        self.pw2.weight = nn.Parameter(torch.empty(dim_max, hidden_max))
        self.pw2.bias = nn.Parameter(torch.zeros(dim_max))
        trunc_normal_(self.pw1.weight, std=0.02)  # the pointwise convs are linears: timm's init
        trunc_normal_(self.pw2.weight, std=0.02)
        nn.init.kaiming_uniform_(self.dw.weight, a=math.sqrt(5))  # nn.Conv1d's default
        nn.init.uniform_(self.dw.bias, -1 / math.sqrt(kernel_max), 1 / math.sqrt(kernel_max))

    def views(self, dim: int, hidden: int, kernel: int) -> dict[str, torch.Tensor]:
        """The slices a subnet's local units use (the last `dim` channels, the first `hidden`, the
        centred `kernel` taps: see the module docstring), by state-dict name."""
        wd = top_left(self.dw.weight, hidden)
        if kernel != self.kernel_max:
            wd = wd.narrow(2, (self.kernel_max - kernel) // 2, kernel)
        return {"pw1.weight": _narrow_end(top_left(self.pw1.weight, 2, hidden), 2, dim),
                "pw1.bias": top_left(self.pw1.bias, 2, hidden),
                "dw.weight": wd, "dw.bias": top_left(self.dw.bias, hidden),
                **prefixed("bn.", self.bn.views(hidden)),
                "pw2.weight": _narrow_end(top_left(self.pw2.weight, self.dim_max, hidden), 0, dim),
                "pw2.bias": _narrow_end(self.pw2.bias, 0, dim)}

    def forward(self, x: torch.Tensor, hidden: int, kernel: int) -> torch.Tensor:
        B, N, dim = x.shape
        v = self.views(dim, hidden, kernel)
        h = F.glu(F.linear(x, v["pw1.weight"].reshape(2 * hidden, dim), v["pw1.bias"].reshape(2 * hidden)), dim=-1)
        h = F.conv1d(h.transpose(1, 2), v["dw.weight"], v["dw.bias"], padding=kernel // 2, groups=hidden)
        h = F.silu(self.bn(h, hidden)).transpose(1, 2)
        return F.linear(h, v["pw2.weight"], v["pw2.bias"])


class GlitSuperBlock(nn.Module):
    """A GLiT block over sliced weights (timm's block names; `attn` / `local` None when the space
    never gives this block heads / local units)."""

    def __init__(self, dim_max: int, heads_max: int, head_dim_max: int, unit_max: int, local_max: int,
                 local_hidden_max: int, kernel_max: int, hidden_max: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = SlicedLayerNorm(dim_max, eps)
        self.attn = GlitSuperAttention(heads_max * unit_max, heads_max, head_dim_max) if heads_max else None
        self.local = SuperLocalUnits(local_max * unit_max, local_hidden_max, kernel_max) if local_max else None
        self.norm2 = SlicedLayerNorm(dim_max, eps)
        self.mlp = SuperMlp(dim_max, hidden_max)

    def views(self, dim: int, hidden: int, attn_dim: int, heads: int, head_dim: int, local_dim: int,
              local_hidden: int, kernel: int) -> dict[str, torch.Tensor]:
        """What a subnet block uses, by the static GLiT block's state-dict names."""
        v = {**prefixed("norm1.", self.norm1.views(dim)), **prefixed("norm2.", self.norm2.views(dim)),
             **prefixed("mlp.", self.mlp.views(hidden, dim))}
        if heads:
            v.update(prefixed("attn.", self.attn.views(heads, head_dim, attn_dim)))
        if local_dim:
            v.update(prefixed("local.", self.local.views(local_dim, local_hidden, kernel)))
        return v

    @staticmethod
    def plan(arch, i: int) -> tuple[int, int, int, int, int, int]:
        """Layer `i` of `arch` as this block's `forward` takes it after the width."""
        return (arch.mlp_hidden[i], arch.attn_dim(i), arch.num_heads[i], arch.head_dim[i],
                arch.family.local_widths(arch, i)[1], arch.kernel_size[i])

    def arch_views(self, arch, i: int) -> dict[str, torch.Tensor]:
        """`views` of layer `i` of `arch`, BatchNorm running statistics included."""
        return self.views(arch.embed_dim, arch.mlp_hidden[i], arch.attn_dim(i), arch.num_heads[i], arch.head_dim[i],
                          *arch.family.local_widths(arch, i), arch.kernel_size[i])

    def forward(self, x: torch.Tensor, dim: int, hidden: int, attn_dim: int, heads: int, head_dim: int,
                local_hidden: int, kernel: int, drop: float) -> torch.Tensor:
        y = self.norm1(x, dim)
        if not heads:
            y = self.local(y, local_hidden, kernel)
        elif attn_dim == dim:
            y = self.attn(y, heads, head_dim)
        else:
            y = torch.cat((self.attn(y[..., :attn_dim], heads, head_dim),
                           self.local(y[..., attn_dim:], local_hidden, kernel)), dim=-1)
        if drop > 0.0 and self.training:
            x = x + drop_path(y, drop, True)
            return x + drop_path(self.mlp(self.norm2(x, dim), hidden, dim), drop, True)
        x = x + y
        return x + self.mlp(self.norm2(x, dim), hidden, dim)


def batchnorms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of `model` (torch's and the supernet's sliced ones)."""
    return [m for m in model.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, SlicedBatchNorm1d))]


def _image_batches(images, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        for i in range(0, len(images), batch_size):
            yield images[i:i + batch_size]
        return
    for item in images:
        yield item[0] if isinstance(item, (tuple, list)) else item


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images, arch=None, *, batch_size: int = 128) -> int:
    """Re-estimate every BatchNorm's running statistics for one subnet; returns how many BatchNorm
    layers there were (0: nothing to do, e.g. a plain ViT).

    `images`: a tensor (split into `batch_size` batches), or an iterable of image batches or
    (images, labels) pairs. `model` is a `Supernet` (then `arch` is the subnet) or a standalone
    model. Statistics are reset, then the batches are forwarded with only BatchNorm in training
    mode (no drop path or dropout) and averaged cumulatively (momentum None). Every mode and
    momentum is restored afterwards. Given the same batches, a supernet and the subnet extracted
    from it get the same statistics.
    """
    bns = batchnorms(model)
    if not bns:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [bn.momentum for bn in bns]
    ref = next(model.parameters())
    forward = model if arch is None else (lambda x: model(x, arch))
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        seen = 0
        for x in _image_batches(images, batch_size):
            forward(x.to(device=ref.device, dtype=ref.dtype, non_blocking=True))
            seen += 1
        if not seen:
            raise ValueError("images: no calibration batch to recalibrate BatchNorm with")
    finally:
        for bn, mom in zip(bns, momenta, strict=True):
            bn.momentum = mom
        for m, mode in modes:
            m.training = mode
    return len(bns)
