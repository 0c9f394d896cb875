"""One architecture as a value: enough to build the model with no other input.

An `Arch` is immutable and hashable so search code can deduplicate candidates, and it round-trips
through plain JSON (`arch.json`) so every stage, and users' scripts, can hand one to the next.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitnas.errors import ArchError
from vitnas.files import read_json
from vitnas.numbers import plain

_PLAIN_KEYS = {
    "embed_dim", "depth", "num_heads", "mlp_ratio", "mlp_hidden", "head_dim",
    "patch_size", "img_size", "in_chans", "num_classes", "keep_tokens",
} | {"global_pool", "rel_pos", "rel_pos_clip", "norm_eps"}
# How the network around the searched widths is built (same for every arch of a space). timm's ViT
# defaults; AutoFormer / TF-TAS use avg pooling, relative position (clip 14) and LayerNorm eps 1e-5.
MODEL_DEFAULTS = {"global_pool": "token", "rel_pos": False, "rel_pos_clip": 14, "norm_eps": 1e-6}
GLOBAL_POOLS = ("token", "avg")
# GLiT global-local blocks (Chen et al., ICCV 2021); absent from plain ViT archs.
GLIT_KEYS = ("units", "local_units", "qkv_ratio", "kernel_size", "local_expansion")


def _per_layer(name: str, value: Any, depth: int, kind: type, zero_ok: bool = False) -> tuple:
    """Accept a scalar (same for every layer) or a per-layer list of exactly `depth` entries."""
    if isinstance(value, (list, tuple)):
        if len(value) != depth:
            raise ArchError(f"{name}: has {len(value)} entries, expected depth={depth}")
        items = tuple(value)
    else:
        items = (value,) * depth
    out = []
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ArchError(f"{name}[{i}]: expected a finite number, got {v!r}")
        if kind is int:
            if float(v) != int(v):
                raise ArchError(f"{name}[{i}]: expected an integer, got {v!r}")
            v = int(v)
        else:
            v = float(v)
        if v < 0 or (v == 0 and not zero_ok):
            raise ArchError(f"{name}[{i}]: must be {'>= 0' if zero_ok else '> 0'}, got {v!r}")
        out.append(v)
    return tuple(out)


def _check_keep_tokens(keep: tuple, depth: int, num_patches: int) -> None:
    counts = _per_layer("keep_tokens", list(keep), depth, int)
    for i, k in enumerate(counts):
        if k > num_patches:
            raise ArchError(f"keep_tokens[{i}]: {k} is more than the {num_patches} patch tokens")
        if i and k > counts[i - 1]:
            raise ArchError(f"keep_tokens[{i}]: {k} > keep_tokens[{i - 1}]={counts[i - 1]} (tokens removed "
                            "by a block cannot come back)")


# Upper bounds of the shape fields, far above any published ViT, so that a typo or a planted file
# is refused before any loop or allocation runs over it (memory is checked separately: space.memory).
LIMITS = {"embed_dim": 65536, "depth": 1024, "patch_size": 1024, "img_size": 8192, "in_chans": 64,
          "num_classes": 1_000_000, "num_heads": 4096, "mlp_hidden": 1 << 20, "head_dim": 8192,
          "rel_pos_clip": 1024}


def check_model_fields(global_pool: Any, rel_pos: Any, rel_pos_clip: Any, norm_eps: Any, *,
                       glit: bool = False) -> dict[str, Any]:
    """Check the model-variant fields shared by `Arch` and `SearchSpace` (see `MODEL_DEFAULTS`) and
    return their canonical values: eps a float, and the default clip without relative position (no
    tables: the clip means nothing, and equal models must compare equal)."""
    if global_pool not in GLOBAL_POOLS:
        raise ArchError(f"global_pool: expected one of {', '.join(GLOBAL_POOLS)}, got {global_pool!r}")
    if not isinstance(rel_pos, bool):
        raise ArchError(f"rel_pos: expected true or false, got {rel_pos!r}")
    clip = _positive_int("rel_pos_clip", rel_pos_clip)
    if clip > LIMITS["rel_pos_clip"]:
        raise ArchError(f"rel_pos_clip: {clip:,} is above vitnas's limit of {LIMITS['rel_pos_clip']:,}")
    if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not math.isfinite(norm_eps) \
            or not 0 < norm_eps < 1:
        raise ArchError(f"norm_eps: expected a number in (0, 1), got {norm_eps!r}")
    if rel_pos and glit:
        raise ArchError("rel_pos: relative position is AutoFormer's; GLiT blocks do not have it")
    return {"rel_pos_clip": clip if rel_pos else MODEL_DEFAULTS["rel_pos_clip"], "norm_eps": float(norm_eps)}


def model_summary(fields: Mapping[str, Any]) -> str:
    """", pool=avg, rel_pos=14, eps=1e-05" for the non-default model fields (empty for timm's ViT)."""
    out = ""
    if fields["global_pool"] != MODEL_DEFAULTS["global_pool"]:
        out += f", pool={fields['global_pool']}"
    if fields["rel_pos"]:
        out += f", rel_pos={fields['rel_pos_clip']}"
    if fields["norm_eps"] != MODEL_DEFAULTS["norm_eps"]:
        out += f", eps={fields['norm_eps']:g}"
    return out


def _positive_int(name: str, value: Any) -> int:
    """A positive integer within `LIMITS[name]` (checked here, before anything grows with it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or float(value) != int(value):
        raise ArchError(f"{name}: expected an integer, got {value!r}")
    if int(value) <= 0:
        raise ArchError(f"{name}: must be > 0, got {value!r}")
    if name in LIMITS and int(value) > LIMITS[name]:
        raise ArchError(f"{name}: {int(value):,} is above vitnas's limit of {LIMITS[name]:,}")
    return int(value)


@dataclass(frozen=True)
class Arch:
    """A ViT with per-layer heads, head dim and MLP width (AutoFormer / ViT-Slim style).

    `mlp_ratio` is kept when the architecture was described by ratios (search spaces are); the
    hidden width is always `int(embed_dim * ratio)`, as in timm and AutoFormer. Slimmed models
    give `mlp_hidden` directly and have no ratio.
    """

    embed_dim: int
    depth: int
    num_heads: tuple[int, ...]
    mlp_hidden: tuple[int, ...]
    head_dim: tuple[int, ...]
    patch_size: int = 16
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    mlp_ratio: tuple[float, ...] | None = field(default=None)
    # Slimmed models only: patch tokens (CLS excluded) that enter each block; non-increasing.
    keep_tokens: tuple[int, ...] | None = field(default=None)
    # GLiT global-local blocks only (None for plain ViT archs). A block's channels are `units` units
    # of `embed_dim / units` channels: `local_units[i]` go to convolution (local) units, the other
    # `num_heads[i]` are attention heads of head dim `qkv_ratio[i] * unit width`. Settings of a
    # branch a block does not have are stored as 0, so equal models have equal keys.
    units: int | None = field(default=None)
    local_units: tuple[int, ...] | None = field(default=None)
    qkv_ratio: tuple[float, ...] | None = field(default=None)
    kernel_size: tuple[int, ...] | None = field(default=None)
    local_expansion: tuple[float, ...] | None = field(default=None)
    # The network around the widths (MODEL_DEFAULTS): pooling into the classifier ("token": the CLS
    # token, "avg": mean of the patch tokens after the final norm, CLS excluded, as AutoFormer's
    # `--gp`), AutoFormer's 2-D relative position in every attention (tables clipped at
    # `rel_pos_clip`), and the LayerNorm eps.
    global_pool: str = "token"
    rel_pos: bool = False
    rel_pos_clip: int = 14
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "patch_size", "img_size", "in_chans", "num_classes"):
            _positive_int(name, getattr(self, name))
            if getattr(self, name) > LIMITS[name]:
                raise ArchError(f"{name}: {getattr(self, name):,} is above vitnas's limit of {LIMITS[name]:,}")
        glit = self.units is not None
        for name in ("num_heads", "mlp_hidden", "head_dim"):
            values = _per_layer(name, list(getattr(self, name)), self.depth, int,
                                zero_ok=glit and name != "mlp_hidden")
            if max(values) > LIMITS[name]:
                raise ArchError(f"{name}: {max(values):,} is above vitnas's limit of {LIMITS[name]:,}")
        if self.mlp_ratio is not None:
            _per_layer("mlp_ratio", list(self.mlp_ratio), self.depth, float)
        if self.img_size % self.patch_size:
            raise ArchError(
                f"img_size: {self.img_size} is not divisible by patch_size={self.patch_size}")
        if self.keep_tokens is not None:
            if glit:
                raise ArchError("keep_tokens: token pruning does not combine with GLiT local units (the local "
                                "convolution runs over the whole token sequence)")
            _check_keep_tokens(tuple(self.keep_tokens), self.depth, self.num_patches)
        for k, v in check_model_fields(self.global_pool, self.rel_pos, self.rel_pos_clip, self.norm_eps,
                                       glit=glit).items():
            object.__setattr__(self, k, v)
        if self.rel_pos and self.keep_tokens is not None:
            raise ArchError("keep_tokens: token pruning does not combine with relative position (rel_pos) yet; "
                            "slim without tokens")
        if glit:
            _check_glit(self)
        else:
            for name in GLIT_KEYS[1:]:
                if getattr(self, name) is not None:
                    raise ArchError(f"units: required with {name} (GLiT blocks)")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int | Sequence[int] | None = None,
        mlp_ratio: float | Sequence[float] | None = None,
        mlp_hidden: int | Sequence[int] | None = None,
        head_dim: int | Sequence[int] | None = None,
        patch_size: int = 16,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        keep_tokens: int | Sequence[int] | None = None,
        units: int | None = None,
        local_units: int | Sequence[int] | None = None,
        qkv_ratio: float | Sequence[float] | None = None,
        kernel_size: int | Sequence[int] | None = None,
        local_expansion: float | Sequence[float] | None = None,
        global_pool: str = "token",
        rel_pos: bool = False,
        rel_pos_clip: int = 14,
        norm_eps: float = 1e-6,
    ) -> Arch:
        """Build an Arch from scalars or per-layer lists, checking every field.

        GLiT archs give `units` and per-layer `local_units`, `qkv_ratio`, `kernel_size` and
        `local_expansion`; their `num_heads` and `head_dim` follow from those (given ones must agree),
        and settings of a branch a block does not have are dropped (stored as 0).
        """
        embed_dim = _positive_int("embed_dim", embed_dim)
        depth = _positive_int("depth", depth)
        glit: dict[str, Any] = {}
        if units is not None:
            glit = _glit_fields(embed_dim, depth, units, local_units, qkv_ratio, kernel_size, local_expansion,
                                num_heads, head_dim)
            heads, hdim = glit.pop("num_heads"), glit.pop("head_dim")
        else:
            for name, v in (("local_units", local_units), ("qkv_ratio", qkv_ratio), ("kernel_size", kernel_size),
                            ("local_expansion", local_expansion)):
                if v is not None:
                    raise ArchError(f"units: required with {name} (GLiT blocks)")
            if num_heads is None:
                raise ArchError("num_heads: missing")
            heads = _per_layer("num_heads", num_heads, depth, int)
            hdim = _per_layer("head_dim", 64 if head_dim is None else head_dim, depth, int)
        ratios = None
        if mlp_ratio is not None and mlp_hidden is not None:
            ratios = _per_layer("mlp_ratio", mlp_ratio, depth, float)
            hidden = _per_layer("mlp_hidden", mlp_hidden, depth, int)
            if hidden != tuple(int(embed_dim * r) for r in ratios):
                raise ArchError("mlp_hidden: disagrees with mlp_ratio * embed_dim; give only one")
        elif mlp_ratio is not None:
            ratios = _per_layer("mlp_ratio", mlp_ratio, depth, float)
            hidden = tuple(int(embed_dim * r) for r in ratios)
        elif mlp_hidden is not None:
            hidden = _per_layer("mlp_hidden", mlp_hidden, depth, int)
        else:
            raise ArchError("mlp_ratio: missing (give mlp_ratio or mlp_hidden)")
        tokens = None if keep_tokens is None else _per_layer("keep_tokens", keep_tokens, depth, int)
        return cls(embed_dim=embed_dim, depth=depth, num_heads=heads, mlp_hidden=hidden,
                   head_dim=hdim, patch_size=patch_size, img_size=img_size, in_chans=in_chans,
                   num_classes=num_classes, mlp_ratio=ratios, keep_tokens=tokens, global_pool=global_pool,
                   rel_pos=rel_pos, rel_pos_clip=rel_pos_clip, norm_eps=norm_eps, **glit)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Arch:
        if not isinstance(d, Mapping):
            raise ArchError(f"arch: expected a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - _PLAIN_KEYS - set(GLIT_KEYS))
        if unknown:
            raise ArchError(f"{unknown[0]}: unknown architecture key")
        for key in ("embed_dim", "depth") if "units" in d else ("embed_dim", "depth", "num_heads"):
            if key not in d:
                raise ArchError(f"{key}: missing")
        return cls.create(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"embed_dim": self.embed_dim, "depth": self.depth,
                             "num_heads": list(self.num_heads)}
        if self.mlp_ratio is not None:
            d["mlp_ratio"] = list(self.mlp_ratio)
        else:
            d["mlp_hidden"] = list(self.mlp_hidden)
        d["head_dim"] = self.head_dim[0] if len(set(self.head_dim)) == 1 else list(self.head_dim)
        d.update(patch_size=self.patch_size, img_size=self.img_size, in_chans=self.in_chans,
                 num_classes=self.num_classes)
        if self.keep_tokens is not None:
            d["keep_tokens"] = list(self.keep_tokens)
        d.update(self.model_fields())
        if self.units is not None:
            d.update(units=self.units, local_units=list(self.local_units), qkv_ratio=list(self.qkv_ratio),
                     kernel_size=list(self.kernel_size), local_expansion=list(self.local_expansion))
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> Arch:
        path = Path(path)
        d = read_json(path, ArchError, "architecture file")
        try:
            arch = cls.from_dict(d)
            from vitnas.space.memory import check_fits

            check_fits(arch, "this arch")
            return arch
        except ArchError as e:
            raise ArchError(f"{path}: {e}") from None

    def replace(self, **changes: Any) -> Arch:
        """A copy with some fields changed (input size, classes...), re-validated."""
        d = self.to_dict()
        if self.keep_tokens is not None and "keep_tokens" not in changes and (
                {"img_size", "patch_size"} & set(changes)):
            raise ArchError("keep_tokens: this arch removes tokens at fixed positions of its input grid; "
                            "pass keep_tokens=None to change the input size")
        if self.units is not None:  # derived from the GLiT fields, which may change
            for k in ("num_heads", "head_dim"):
                if k not in changes:
                    d.pop(k)
        if "mlp_hidden" in changes:
            d.pop("mlp_ratio", None)
        if "embed_dim" in changes and "mlp_ratio" not in d and "mlp_hidden" not in changes:
            raise ArchError("embed_dim: cannot change the width of an arch given by mlp_hidden")
        d.update(changes)
        if d.get("keep_tokens") is None:
            d.pop("keep_tokens", None)
        return Arch.from_dict(d)

    # ---- derived ------------------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1  # + CLS

    def tokens_in(self, layer: int) -> int:
        """Tokens (CLS included) that block `layer` works on."""
        return (self.num_patches if self.keep_tokens is None else self.keep_tokens[layer]) + 1

    @property
    def qkv_dim(self) -> tuple[int, ...]:
        """Per-layer width of each of q, k and v (heads x head dim)."""
        return tuple(h * d for h, d in zip(self.num_heads, self.head_dim, strict=True))

    @property
    def is_glit(self) -> bool:
        """Whether the blocks are GLiT global-local blocks (`units` set)."""
        return self.units is not None

    @property
    def unit_dim(self) -> int:
        """Channels of one GLiT unit (the embed width for a plain ViT, whose heads see every channel)."""
        return self.embed_dim // self.units if self.units is not None else self.embed_dim

    def attn_dim(self, layer: int) -> int:
        """Channels block `layer`'s attention reads and writes (all of them in a plain ViT)."""
        return self.num_heads[layer] * self.unit_dim if self.units is not None else self.embed_dim

    def local_dim(self, layer: int) -> int:
        """Channels of block `layer`'s local (convolution) units; 0 without any."""
        return self.local_units[layer] * self.unit_dim if self.units is not None else 0

    def local_hidden(self, layer: int) -> int:
        """Width of block `layer`'s local branch after the GLU (expansion x its channels)."""
        return int(self.local_expansion[layer] * self.local_dim(layer)) if self.units is not None else 0

    def model_fields(self) -> dict[str, Any]:
        """global_pool, rel_pos (+ rel_pos_clip with it) and norm_eps, as `to_dict` writes them."""
        d: dict[str, Any] = {"global_pool": self.global_pool, "rel_pos": self.rel_pos}
        if self.rel_pos:
            d["rel_pos_clip"] = self.rel_pos_clip
        d["norm_eps"] = self.norm_eps
        return d

    def key(self) -> str:
        """A canonical string, equal for equal architectures (dedupe, caching, file names)."""
        fields = [self.embed_dim, self.depth, self.num_heads, self.mlp_hidden, self.head_dim,
                  self.patch_size, self.img_size, self.in_chans, self.num_classes, self.keep_tokens]
        if self.units is not None:
            fields += [self.units, self.local_units, self.qkv_ratio, self.kernel_size, self.local_expansion]
        variant = {k: v for k, v in self.model_fields().items() if MODEL_DEFAULTS[k] != v}
        if variant:  # keys of timm-default archs stay what they were before these fields existed
            fields.append(variant)
        return json.dumps(fields)

    def __str__(self) -> str:
        ratios = self.mlp_ratio or tuple(round(m / self.embed_dim, 2) for m in self.mlp_hidden)
        if self.units is not None:
            return (f"Arch(GLiT embed={self.embed_dim}, depth={self.depth}, local={list(self.local_units)}/"
                    f"{self.units}, e_v={plain(self.qkv_ratio)}, k={list(self.kernel_size)}, "
                    f"e_c={plain(self.local_expansion)}, mlp={plain(ratios)}{model_summary(self.model_fields())})")
        return (f"Arch(embed={self.embed_dim}, depth={self.depth}, heads={list(self.num_heads)}, "
                f"mlp={list(ratios)}, head_dim={self.to_dict()['head_dim']}"
                + (f", tokens={list(self.keep_tokens)}" if self.keep_tokens is not None else "")
                + model_summary(self.model_fields()) + ")")

    @staticmethod
    def published(name: str, **overrides: Any) -> Arch:
        """A published architecture (`vitnas.space.published`), e.g. ``Arch.published("autoformer-t")``.

        Keyword overrides (``img_size=32, num_classes=10``) adapt it to another dataset.
        """
        from vitnas.space.published import PUBLISHED

        try:
            d = dict(PUBLISHED[name])
        except KeyError:
            known = ", ".join(sorted(PUBLISHED))
            raise ArchError(f"{name}: unknown published arch; known: {known}") from None
        d.update(overrides)
        return Arch.from_dict(d)


def _glit_fields(embed_dim: int, depth: int, units: Any, local_units: Any, qkv_ratio: Any, kernel_size: Any,
                 local_expansion: Any, num_heads: Any, head_dim: Any) -> dict[str, Any]:
    """The canonical GLiT per-layer fields (plus the num_heads / head_dim they imply)."""
    units = _positive_int("units", units)
    if embed_dim % units:
        raise ArchError(f"embed_dim: {embed_dim} is not divisible by units={units}")
    w = embed_dim // units
    if local_units is None:
        raise ArchError("local_units: missing (GLiT archs give the local units of every block)")
    local = _per_layer("local_units", local_units, depth, int, zero_ok=True)
    for i, n in enumerate(local):
        if n > units:
            raise ArchError(f"local_units[{i}]: {n} is not in 0..units={units}")
    heads = tuple(units - n for n in local)
    if num_heads is not None and _per_layer("num_heads", num_heads, depth, int, zero_ok=True) != heads:
        raise ArchError(f"num_heads: disagrees with units - local_units = {list(heads)}")
    if qkv_ratio is None and head_dim is not None:  # e.g. an arch.json written with head dims only
        qkv_ratio = [d / w for d in _per_layer("head_dim", head_dim, depth, int, zero_ok=True)]
    need = {"qkv_ratio": any(heads), "kernel_size": any(local), "local_expansion": any(local)}
    given = {"qkv_ratio": qkv_ratio, "kernel_size": kernel_size, "local_expansion": local_expansion}
    for name, value in given.items():
        if value is None:
            if need[name]:
                raise ArchError(f"{name}: missing (a block of this arch needs it)")
            given[name] = 0
    ev = _per_layer("qkv_ratio", given["qkv_ratio"], depth, float, zero_ok=True)
    ks = _per_layer("kernel_size", given["kernel_size"], depth, int, zero_ok=True)
    ec = _per_layer("local_expansion", given["local_expansion"], depth, float, zero_ok=True)
    ev = tuple(e if g else 0.0 for e, g in zip(ev, heads, strict=True))
    ks = tuple(k if n else 0 for k, n in zip(ks, local, strict=True))
    ec = tuple(e if n else 0.0 for e, n in zip(ec, local, strict=True))
    hdim = tuple(int(round(e * w)) for e in ev)
    if head_dim is not None:
        want = _per_layer("head_dim", head_dim, depth, int, zero_ok=True)
        for i, (g, a, b) in enumerate(zip(heads, hdim, want, strict=True)):
            if g and a != b:
                raise ArchError(f"head_dim[{i}]: {b} disagrees with qkv_ratio * unit width = {a}")
    return {"units": units, "local_units": local, "qkv_ratio": ev, "kernel_size": ks, "local_expansion": ec,
            "num_heads": heads, "head_dim": hdim}


def _check_glit(arch: Arch) -> None:
    """Every GLiT field present, per layer, and consistent with num_heads / head_dim."""
    units = _positive_int("units", arch.units)
    if arch.embed_dim % units:
        raise ArchError(f"embed_dim: {arch.embed_dim} is not divisible by units={units}")
    w = arch.embed_dim // units
    for name in GLIT_KEYS[1:]:
        if getattr(arch, name) is None:
            raise ArchError(f"{name}: missing (GLiT archs give it for every block)")
    local = _per_layer("local_units", list(arch.local_units), arch.depth, int, zero_ok=True)
    ev = _per_layer("qkv_ratio", list(arch.qkv_ratio), arch.depth, float, zero_ok=True)
    ks = _per_layer("kernel_size", list(arch.kernel_size), arch.depth, int, zero_ok=True)
    ec = _per_layer("local_expansion", list(arch.local_expansion), arch.depth, float, zero_ok=True)
    for i, n in enumerate(local):
        g = units - n
        if not 0 <= n <= units:
            raise ArchError(f"local_units[{i}]: {n} is not in 0..units={units}")
        if arch.num_heads[i] != g:
            raise ArchError(f"num_heads[{i}]: {arch.num_heads[i]} != units - local_units = {g}")
        if g:
            if ev[i] <= 0 or abs(ev[i] * w - round(ev[i] * w)) > 1e-9:
                raise ArchError(f"qkv_ratio[{i}]: {ev[i]} x unit width {w} must be a positive whole head dim")
            if arch.head_dim[i] != round(ev[i] * w):
                raise ArchError(f"head_dim[{i}]: {arch.head_dim[i]} != qkv_ratio * unit width = {round(ev[i] * w)}")
        elif ev[i] or arch.head_dim[i]:
            raise ArchError(f"qkv_ratio[{i}]: block {i} has no attention heads; store 0 (Arch.create does)")
        if n:
            if ks[i] <= 0 or ks[i] % 2 == 0:
                raise ArchError(f"kernel_size[{i}]: {ks[i]} must be odd and > 0 ('same' padding over the tokens)")
            if ec[i] <= 0 or int(ec[i] * n * w) < 1:
                raise ArchError(f"local_expansion[{i}]: {ec[i]} gives no channels")
        elif ks[i] or ec[i]:
            raise ArchError(f"kernel_size[{i}]: block {i} has no local units; store 0 (Arch.create does)")
