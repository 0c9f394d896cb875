"""The AutoFormer weight-entangled supernet: one set of largest weights runs every arch of a space.

Every subnet uses the top-left slices of the shared weights (see `layers.py`); blocks beyond the
arch's depth are skipped. The math is timm's ViT (pre-norm, exact GELU, CLS token + learned
absolute position embedding, final norm, classifier) with the space's pooling (CLS token or mean of
the patch tokens), LayerNorm eps and, when `space.rel_pos`, AutoFormer's relative position in every
attention (per-layer tables of the space's head dim, shared by every head count). So
`vitnas.extract(supernet, arch)` gives a `vitnas.build(arch)` model with the same outputs.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import drop_path, trunc_normal_

from vitnas.files import output_mode
from vitnas.models.relpos import RelPosTables, rel_pos_attention
from vitnas.space.arch import Arch, ArchError
from vitnas.space.search_space import SearchSpace
from vitnas.supernet.file_format import FORMAT, SupernetFileError, read_torch_file
from vitnas.supernet.layers import (  # noqa: F401  (SuperMlp re-exported: it used to live here)
    SlicedLayerNorm,
    SlicedLinear,
    SlicedPatchEmbed,
    SlicedQKV,
    SuperMlp,
    prefixed,
    top_left,
)

QKV_BIAS_LAYOUTS = ("grouped", "prefix")
_PLAN_CACHE_SIZE = 4096


class SuperAttention(nn.Module):
    """Multi-head self-attention with a fixed head dim and a per-call head count; with `rel_pos`
    (grid side, clip) AutoFormer's relative position, its tables shared by every head count."""

    def __init__(self, dim_max: int, heads_max: int, head_dim: int, rel_pos: tuple[int, int] | None = None,
                 qkv_bias_layout: str = "grouped") -> None:
        super().__init__()
        self.head_dim = head_dim
        self.qkv = SlicedQKV(dim_max, heads_max, head_dim, bias_layout=qkv_bias_layout)
        self.proj = SlicedLinear(heads_max * head_dim, dim_max)
        self.grid = None if rel_pos is None else rel_pos[0]
        if rel_pos is not None:
            self.rel_pos_k = RelPosTables(head_dim, rel_pos[1])
            self.rel_pos_v = RelPosTables(head_dim, rel_pos[1])

    def views(self, heads: int, dim: int) -> dict[str, torch.Tensor]:
        q = heads * self.head_dim
        v = {**prefixed("qkv.", self.qkv.views(heads, dim)), **prefixed("proj.", self.proj.views(dim, q))}
        if self.grid is not None:  # the tables are shared by every head count: whole
            v.update({name: p for name, p in self.named_parameters() if name.startswith("rel_pos_")})
        return v

    def forward(self, x: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
        B, N, _ = x.shape
        q_dim = heads * self.head_dim
        qkv = self.qkv(x, heads, dim).reshape(B, N, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.grid is None:
            x = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as timm
        else:
            x = rel_pos_attention(q, k, v, self.rel_pos_k, self.rel_pos_v, scale=self.head_dim ** -0.5,
                                  grid=self.grid)
        return self.proj(x.transpose(1, 2).reshape(B, N, q_dim), dim, q_dim)


class SuperBlock(nn.Module):
    """timm's pre-norm ViT block over sliced weights (same submodule names as timm's Block).

    With `layer_scale` (NASViT's switchable layer scaling), each residual branch's output is
    multiplied by a learned per-channel scale chosen by the subnet's (depth, embed width): one row
    of `ls1` (attention) and `ls2` (MLP) per pair of `scale_keys`, all starting at `layer_scale`.
    A subnet's scales fold exactly into its attention projection and second MLP layer
    (`arch_views`), so the extracted model is a plain timm block."""

    def __init__(self, dim_max: int, heads_max: int, head_dim: int, hidden_max: int, *, eps: float = 1e-6,
                 rel_pos: tuple[int, int] | None = None, qkv_bias_layout: str = "grouped",
                 layer_scale: float | None = None, scale_keys: tuple[tuple[int, int], ...] = ()) -> None:
        super().__init__()
        self.norm1 = SlicedLayerNorm(dim_max, eps)
        self.attn = SuperAttention(dim_max, heads_max, head_dim, rel_pos, qkv_bias_layout)
        self.norm2 = SlicedLayerNorm(dim_max, eps)
        self.mlp = SuperMlp(dim_max, hidden_max)
        self.scale_index = {key: k for k, key in enumerate(scale_keys)} if layer_scale is not None else None
        if layer_scale is not None:
            self.ls1 = nn.Parameter(torch.full((len(scale_keys), dim_max), float(layer_scale)))
            self.ls2 = nn.Parameter(torch.full((len(scale_keys), dim_max), float(layer_scale)))

    def views(self, dim: int, heads: int, hidden: int) -> dict[str, torch.Tensor]:
        """What a subnet block uses, by timm's state-dict names (relative position: the static
        model's names)."""
        return {**prefixed("norm1.", self.norm1.views(dim)), **prefixed("attn.", self.attn.views(heads, dim)),
                **prefixed("norm2.", self.norm2.views(dim)), **prefixed("mlp.", self.mlp.views(hidden, dim))}

    def plan(self, arch: Arch, i: int) -> tuple[int, int, int | None]:
        """Layer `i` of `arch` as this block's `forward` takes it after the width: (heads, MLP hidden,
        the row of its layer scales or None)."""
        scale = None if self.scale_index is None else self.scale_index[(arch.depth, arch.embed_dim)]
        return arch.num_heads[i], arch.mlp_hidden[i], scale

    def arch_views(self, arch: Arch, i: int) -> dict[str, torch.Tensor]:
        """`views` of layer `i` of `arch`; with layer scales, the projection and the second MLP
        layer come scaled (copies, not views: the scale folded in)."""
        v = self.views(arch.embed_dim, arch.num_heads[i], arch.mlp_hidden[i])
        scale = self.plan(arch, i)[2]
        if scale is not None:
            d = arch.embed_dim
            for name, g in (("attn.proj.", self.ls1[scale, :d]), ("mlp.fc2.", self.ls2[scale, :d])):
                v[name + "weight"] = v[name + "weight"] * g[:, None]
                v[name + "bias"] = v[name + "bias"] * g
        return v

    def forward(self, x: torch.Tensor, dim: int, heads: int, hidden: int, scale: int | None,
                drop: float) -> torch.Tensor:
        a = self.attn(self.norm1(x, dim), heads, dim)
        if scale is not None:
            a = a * self.ls1[scale, :dim]
        x = x + (drop_path(a, drop, True) if drop > 0.0 and self.training else a)
        m = self.mlp(self.norm2(x, dim), hidden, dim)
        if scale is not None:
            m = m * self.ls2[scale, :dim]
        return x + (drop_path(m, drop, True) if drop > 0.0 and self.training else m)


def arch_mismatch(space: SearchSpace, arch: Arch) -> str | None:
    """Why `arch` is not in `space` (the first reason), or None when it is: `space.mismatch(arch)`,
    kept under this name for scripts that import it from `vitnas.supernet`."""
    return space.mismatch(arch)


class Supernet(nn.Module):
    """All archs of `space` in one module; `supernet(x, arch)` runs one of them.

    Sized by `space.largest()`: max embed, max depth, max heads (head dim fixed by the space) and
    MLP hidden `int(max_embed * max_ratio)`. A GLiT space gets `GlitSuperBlock`s, each sized for
    the splits its block may take (max heads = units - fewest local units, max head dim, max local
    units x max expansion, largest kernel); see `vitnas.supernet.glit`. Its BatchNorm statistics
    must be recalibrated per subnet before evaluation (`vitnas.supernet.recalibrate_bn`).

    Drop path: block `i` of an arch of depth `L` drops with `drop_path_rate * i / (L - 1)`, timm's
    linear rule over the *arch's* depth, so a subnet trains with the same per-block rates as
    `vitnas.build(arch, drop_path_rate=...)` (AutoFormer spreads the rate over the max depth;
    then a shallow subnet would never see the top rate). Only active in training mode.

    `forward(x)` without an arch runs the one given to `set_arch` (the largest until then), so
    tools that call `model(x)` work.

    `qkv_bias_layout="prefix"` is the compatibility layout of AutoFormer's released checkpoints
    (`from_autoformer`): a subnet with `h` heads takes the first `3 * h * head_dim` entries of the
    flat [q; k; v] bias, as AutoFormer's code does, although its weight rows are q, k and v's first
    `h` heads ("grouped", vitnas's own, where bias and weight rows always agree).
    """

    def __init__(self, space: SearchSpace, drop_path_rate: float = 0.0, *, qkv_bias_layout: str = "grouped",
                 layer_scale: float | None = None) -> None:
        super().__init__()
        if not isinstance(space, SearchSpace):
            raise TypeError(f"space: expected a vitnas.SearchSpace, got {type(space).__name__}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate: must be in [0, 1), got {drop_path_rate}")
        if qkv_bias_layout not in QKV_BIAS_LAYOUTS:
            raise ValueError(f"qkv_bias_layout: expected one of {', '.join(QKV_BIAS_LAYOUTS)}, got {qkv_bias_layout!r}")
        if qkv_bias_layout != "grouped" and space.family.refusal("qkv_prefix"):
            raise ValueError(f"qkv_bias_layout: {space.family.refusal('qkv_prefix')}")
        if layer_scale is not None and (space.family.refusal("layer_scale") or not layer_scale > 0):
            raise ValueError(f"layer_scale: {space.family.refusal('layer_scale') or f'must be > 0, got {layer_scale}'}")
        self.space = space
        self.layer_scale = layer_scale
        self.qkv_bias_layout = qkv_bias_layout
        self.drop_path_rate = float(drop_path_rate)
        largest = space.largest()
        self.embed_dim = max(space.embed_dim)
        self.depth = max(space.depth)
        self.mlp_hidden = int(self.embed_dim * max(space.mlp_ratio))
        self.num_classes = space.num_classes

        self.patch_embed = SlicedPatchEmbed(space.in_chans, self.embed_dim, space.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, largest.num_tokens, self.embed_dim))
        # the blocks are the space's family's; families whose heads follow from other genes (GLiT)
        # have no single head count / head dim: their blocks size themselves
        self.num_heads, self.head_dim = space.family.super_heads(space)
        self.blocks = nn.ModuleList(
            space.family.super_block(space, i, dim=self.embed_dim, hidden=self.mlp_hidden,
                                     qkv_bias_layout=qkv_bias_layout, layer_scale=layer_scale)
            for i in range(self.depth))
        self.norm = SlicedLayerNorm(self.embed_dim, space.norm_eps)
        self.head = SlicedLinear(self.embed_dim, self.num_classes)
        # As timm's VisionTransformer.init_weights; the layers init themselves.
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

        self.meta: dict[str, Any] = {}  # what `save` was given, filled by `load`
        self._plans: dict[Arch, tuple] = {}
        self._arch = largest
        self._plan = self._make_plan(largest)

    # ---- archs ------------------------------------------------------------------------------
    def _make_plan(self, arch: Arch) -> tuple:
        """The per-layer slice sizes of `arch`, validated once and cached (the hot path only reads)."""
        if not isinstance(arch, Arch):
            raise TypeError(f"arch: expected a vitnas.Arch, got {type(arch).__name__}")
        plan = self._plans.get(arch)
        if plan is not None:
            return plan
        why = self.space.mismatch(arch)
        if why is None and (arch.embed_dim > self.embed_dim or arch.depth > self.depth
                            or max(arch.num_heads) > self.num_heads
                            or max(arch.mlp_hidden) > self.mlp_hidden):
            why = "it is larger than the supernet's weights"
        if why is not None:
            raise ArchError(f"arch is not in the supernet's search space ({self.space.name}): {why}")
        # per block: the arguments of its forward after the width, as the block itself says
        layers = tuple(self.blocks[i].plan(arch, i) for i in range(arch.depth))
        plan = (arch.embed_dim, arch.depth, layers)
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[arch] = plan
        return plan

    def check_arch(self, arch: Arch) -> None:
        """Raise `ArchError` (a ValueError) saying why, when this supernet cannot run `arch`."""
        self._make_plan(arch)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Kept out of weight decay by timm's optimizer factory, as in timm's ViT (and the layer
        scales, as CaiT's)."""
        scales = {f"blocks.{i}.{n}" for i in range(self.depth) for n in ("ls1", "ls2")} if self.layer_scale else set()
        return {"pos_embed", "cls_token"} | scales

    def set_arch(self, arch: Arch | Mapping[str, Any]) -> None:
        """Make `forward(x)` run `arch` (validated here, so a bad arch fails at once)."""
        arch = Arch.from_dict(arch) if isinstance(arch, Mapping) else arch
        self._plan = self._make_plan(arch)
        self._arch = arch

    @property
    def arch(self) -> Arch:
        """The arch `forward(x)` runs without an explicit one."""
        return self._arch

    def outer_views(self, dim: int) -> dict[str, torch.Tensor]:
        """What every subnet of width `dim` uses outside the blocks, by timm's state-dict names."""
        return {**self._token_views(dim), **prefixed("patch_embed.proj.", self.patch_embed.views(dim)),
                **prefixed("norm.", self.norm.views(dim)), **prefixed("head.", self.head.views(self.num_classes, dim))}

    def _token_views(self, dim: int) -> dict[str, torch.Tensor]:
        return {"cls_token": top_left(self.cls_token, 1, 1, dim),
                "pos_embed": top_left(self.pos_embed, 1, self.pos_embed.shape[1], dim)}

    # ---- forward ----------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        """Final-norm token features [B, tokens, embed_dim] of `arch`."""
        dim, depth, layers = self._plan if arch is None else self._make_plan(arch)
        if x.shape[-2:] != (self.space.img_size, self.space.img_size):
            raise ValueError(f"input: expected {self.space.img_size}x{self.space.img_size} images, "
                             f"got shape {tuple(x.shape)}")
        x = self.patch_embed(x, dim)
        tokens = self._token_views(dim)
        x = torch.cat((tokens["cls_token"].expand(x.shape[0], -1, -1), x), dim=1)
        x = x + tokens["pos_embed"]
        rate = self.drop_path_rate / (depth - 1) if depth > 1 else 0.0
        for i, layer in enumerate(layers):
            x = self.blocks[i](x, dim, *layer, rate * i)
        return self.norm(x, dim)

    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        """Class logits of `arch` (or of the arch given to `set_arch`)."""
        x = self.forward_features(x, arch)
        dim = x.shape[-1]
        pooled = x[:, 1:].mean(dim=1) if self.space.global_pool == "avg" else x[:, 0]
        return self.head(pooled, self.num_classes, dim)

    # ---- files ------------------------------------------------------------------------------
    def save(self, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
        """Write weights + search space (+ `meta`, plain JSON-like values) atomically to `path`."""
        path = Path(path)
        meta = dict(meta or {})
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise ValueError(f"meta: must hold plain JSON values (str, number, list, dict): {e}") from None
        payload = {
            "format": FORMAT,
            "space": self.space.to_dict(),
            "qkv_bias_layout": self.qkv_bias_layout,
            "layer_scale": self.layer_scale,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "meta": meta,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, output_mode())  # mkstemp makes 0600; every output has one mode
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def from_autoformer(cls, path: str | Path, space: SearchSpace, *, map_location: str | torch.device = "cpu",
                        adapt_shape: bool = False) -> Supernet:
        """A supernet trained by AutoFormer's code (its released `.pth` files), mapped onto `space`;
        see `vitnas.supernet.autoformer`."""
        from vitnas.supernet.autoformer import from_autoformer

        return from_autoformer(path, space, make=cls, map_location=map_location, adapt_shape=adapt_shape)

    @classmethod
    def load(cls, path: str | Path, *, map_location: str | torch.device = "cpu",
             drop_path_rate: float = 0.0) -> Supernet:
        """Read a file written by `save`; the caller's `meta` comes back as `supernet.meta`."""
        path = Path(path)
        if not path.is_file():
            raise SupernetFileError(f"{path}: supernet file not found")
        payload = read_torch_file(path, map_location)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise SupernetFileError(f"{path}: not a vitnas supernet file (format {found!r}, "
                                    f"expected {FORMAT!r})")
        try:
            space = SearchSpace.from_dict(payload["space"])
            state = payload["state_dict"]
            meta = dict(payload.get("meta") or {})
            layout = payload.get("qkv_bias_layout", "grouped")
            if layout not in QKV_BIAS_LAYOUTS:
                raise ValueError(f"qkv_bias_layout {layout!r}")
            scale = payload.get("layer_scale")
            if scale is not None and not isinstance(scale, (int, float)):
                raise ValueError(f"layer_scale {scale!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise SupernetFileError(f"{path}: malformed supernet file ({type(e).__name__}: {e})") from None
        try:
            net = cls(space, drop_path_rate=drop_path_rate, qkv_bias_layout=layout, layer_scale=scale)
        except ValueError as e:
            raise SupernetFileError(f"{path}: malformed supernet file ({e})") from None
        try:
            net.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [""])[-1].strip()[:200]
            raise SupernetFileError(f"{path}: weights do not fit the stored search space ({first})") \
                from None
        net.meta = meta
        return net.to(map_location)
