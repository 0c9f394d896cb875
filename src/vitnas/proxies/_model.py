"""One candidate to score, whichever way it is given: a standalone ViT, or a `Supernet` plus an arch.

Proxies only need three things from a candidate: its forward, the weight matrices it *uses*
(qkv, proj, fc1, fc2 of every block, and the classifier) as (parameter, slice) pairs, and the
MLP modules to hook. Through the supernet a used weight is the top-left slice of the shared
parameter, so `torch.autograd.grad` w.r.t. the parameter gives a full-size gradient whose slice
is exactly the standalone subnet's gradient (the rest is zero). Nothing is copied or re-sliced
under `no_grad` (the TF-TAS public code's bug: its qkv weights never got a gradient).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from vitnas.errors import VitnasError
from vitnas.families import family
from vitnas.space.arch import Arch, ArchError
from vitnas.supernet.model import Supernet


class ProxyError(VitnasError, ValueError):
    """A proxy asked for something it cannot score (unknown name, missing data, set-level proxy)."""


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass(frozen=True)
class UsedWeight:
    """A weight matrix a candidate uses: `view(param)` is the matrix, `view(grad)` its gradient.

    `key` names the slice (kind, rows, cols) so values depending only on the weights (their
    nuclear norms) can be cached per parameter.
    """

    param: nn.Parameter
    view: Callable[[torch.Tensor], torch.Tensor]
    key: tuple

    def matrix(self) -> torch.Tensor:
        return self.view(self.param.detach())


@dataclass(frozen=True)
class Layer:
    qkv: UsedWeight
    proj: UsedWeight
    fc1: UsedWeight
    fc2: UsedWeight
    fc1_module: nn.Module  # its output is the GELU pre-activation [B, N, hidden]
    fc2_module: nn.Module  # its input is the GELU output [B, N, hidden]


class Candidate:
    """A candidate architecture as the proxies see it (see the module docstring)."""

    def __init__(self, model: nn.Module, arch: Arch | None = None) -> None:
        self.model = model
        fams = [a.family for a in (arch, getattr(model, "space", None)) if a is not None and hasattr(a, "family")]
        fams += [family(b.block_family) for b in getattr(model, "blocks", ()) if hasattr(b, "block_family")]
        why = next((f.refusal("proxies") for f in fams if f.refusal("proxies")), None)
        if why:
            raise ProxyError(f"model: {why}")
        if isinstance(model, Supernet):
            if arch is None:
                raise ProxyError("arch: required to score a candidate through a vitnas.Supernet")
            model.check_arch(arch)
            self.is_supernet = True
            self.arch = arch
            self._init_supernet(model, arch)
        else:
            self.is_supernet = False
            self.arch = arch  # optional: read off the model when params/flops need it
            self._init_standalone(model)

    # ---- construction ---------------------------------------------------------------------
    def _init_supernet(self, net: Supernet, arch: Arch) -> None:
        d, hd = arch.embed_dim, net.head_dim
        layers = []
        for i in range(arch.depth):
            blk, q, m = net.blocks[i], arch.num_heads[i] * hd, arch.mlp_hidden[i]
            layers.append(Layer(
                qkv=UsedWeight(blk.attn.qkv.weight, lambda t, q=q: t[:, :q, :d].reshape(3 * q, d), ("qkv", q, d)),
                proj=UsedWeight(blk.attn.proj.weight, lambda t, q=q: t[:d, :q], ("proj", d, q)),
                fc1=UsedWeight(blk.mlp.fc1.weight, lambda t, m=m: t[:m, :d], ("fc1", m, d)),
                fc2=UsedWeight(blk.mlp.fc2.weight, lambda t, m=m: t[:d, :m], ("fc2", d, m)),
                fc1_module=blk.mlp.fc1, fc2_module=blk.mlp.fc2))
        self.layers = tuple(layers)
        self.head = UsedWeight(net.head.weight, lambda t: t[:, :d], ("head", net.num_classes, d))
        s = net.space
        self.input_shape = (s.in_chans, s.img_size, s.img_size)
        self.forward = lambda x: net(x, arch)

    def _init_standalone(self, model: nn.Module) -> None:
        blocks = getattr(model, "blocks", None)
        if blocks is None or not len(blocks):
            raise ProxyError(f"model: expected a timm VisionTransformer (vitnas.build) or a vitnas.Supernet, "
                             f"got {type(model).__name__}")
        layers = []
        for i, blk in enumerate(blocks):
            try:
                attn, mlp = blk.attn, blk.mlp
                mods = (attn.qkv, attn.proj, mlp.fc1, mlp.fc2)
            except AttributeError:
                raise ProxyError(f"model: block {i} has no attn.qkv/attn.proj/mlp.fc1/mlp.fc2 linears") from None
            if not all(isinstance(m, nn.Linear) for m in mods):
                raise ProxyError(f"model: block {i}: attn.qkv/proj and mlp.fc1/fc2 must be nn.Linear")
            layers.append(Layer(*(UsedWeight(m.weight, _identity, (n, *m.weight.shape))
                                  for n, m in zip(("qkv", "proj", "fc1", "fc2"), mods, strict=True)),
                                fc1_module=mlp.fc1, fc2_module=mlp.fc2))
        self.layers = tuple(layers)
        head = getattr(model, "head", None)
        self.head = UsedWeight(head.weight, _identity, ("head", *head.weight.shape)) \
            if isinstance(head, nn.Linear) else None
        pe = getattr(model, "patch_embed", None)
        proj = getattr(pe, "proj", None)
        img = getattr(pe, "img_size", None)
        if not isinstance(proj, nn.Conv2d) or img is None:
            raise ProxyError("model: expected a timm patch embedding (patch_embed.proj conv, patch_embed.img_size)")
        self.input_shape = (proj.in_channels, *img)
        self.forward = model

    # ---- what the proxies use ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.layers[0].qkv.param.device

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].qkv.param.dtype

    def block_weights(self) -> list[UsedWeight]:
        """qkv, proj, fc1, fc2 of every block, block by block."""
        return [w for layer in self.layers for w in (layer.qkv, layer.proj, layer.fc1, layer.fc2)]

    def linear_weights(self) -> list[UsedWeight]:
        """Every linear weight the candidate uses: the block linears and the classifier."""
        return self.block_weights() + ([self.head] if self.head is not None else [])

    def ones(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.ones(1, *self.input_shape, device=self.device, dtype=dtype or self.dtype)

    def get_arch(self) -> Arch:
        """The candidate's Arch (given, or read off a vitnas/timm ViT) for params/FLOPs."""
        if self.arch is None:
            self.arch = _arch_of(self.model)
        return self.arch


def _arch_of(model: nn.Module) -> Arch:
    try:
        pe = model.patch_embed
        rel = getattr(model.blocks[0].attn, "rel_pos_k", None)
        return Arch.create(
            embed_dim=model.embed_dim, depth=len(model.blocks),
            num_heads=[b.attn.num_heads for b in model.blocks],
            head_dim=[b.attn.head_dim for b in model.blocks],
            mlp_hidden=[b.mlp.fc1.out_features for b in model.blocks],
            patch_size=pe.patch_size[0], img_size=pe.img_size[0], in_chans=pe.proj.in_channels,
            num_classes=model.num_classes, global_pool=getattr(model, "global_pool", "token"),
            rel_pos=rel is not None, rel_pos_clip=rel.clip if rel is not None else 14,
            norm_eps=getattr(model.norm, "eps", 1e-6))
    except (AttributeError, TypeError, IndexError, ArchError) as e:
        raise ProxyError(f"arch: cannot read the architecture off {type(model).__name__} ({e}); "
                         "pass arch=...") from None


@contextlib.contextmanager
def scoring(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Eval mode (no dropout / drop path), grad enabled, `params` requiring grad; all restored after.

    `.grad` is never touched: proxies take gradients with `torch.autograd.grad`, so nothing
    accumulates between candidates and scores do not depend on what was scored before.
    """
    was_training = model.training
    frozen = [p for p in params if not p.requires_grad]
    if was_training:  # train()/eval() walk every submodule: skip when already in eval mode
        model.eval()
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)
        if was_training:
            model.train()


def unique_params(weights: Sequence[UsedWeight]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for w in weights:
        seen.setdefault(id(w.param), w.param)
    return list(seen.values())
