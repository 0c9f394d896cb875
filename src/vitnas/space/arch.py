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
from vitnas.families import FAMILIES, family, family_name, family_of
from vitnas.files import read_json

_PLAIN_KEYS = {
    "embed_dim", "depth", "num_heads", "mlp_ratio", "mlp_hidden", "head_dim",
    "patch_size", "img_size", "in_chans", "num_classes", "keep_tokens", "token_predictors",
} | {"global_pool", "rel_pos", "rel_pos_clip", "norm_eps"}
# How the network around the searched widths is built (same for every arch of a space). timm's ViT
# defaults; AutoFormer / TF-TAS use avg pooling, relative position (clip 14) and LayerNorm eps 1e-5.
MODEL_DEFAULTS = {"global_pool": "token", "rel_pos": False, "rel_pos_clip": 14, "norm_eps": 1e-6}
GLOBAL_POOLS = ("token", "avg")


def per_layer(name: str, value: Any, depth: int, kind: type, zero_ok: bool = False) -> tuple:
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
    counts = per_layer("keep_tokens", list(keep), depth, int)
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
                       block_family=None) -> dict[str, Any]:
    """Check the model-variant fields shared by `Arch` and `SearchSpace` (see `MODEL_DEFAULTS`) and
    return their canonical values: eps a float, and the default clip without relative position (no
    tables: the clip means nothing, and equal models must compare equal)."""
    if global_pool not in GLOBAL_POOLS:
        raise ArchError(f"global_pool: expected one of {', '.join(GLOBAL_POOLS)}, got {global_pool!r}")
    if not isinstance(rel_pos, bool):
        raise ArchError(f"rel_pos: expected true or false, got {rel_pos!r}")
    clip = positive_int("rel_pos_clip", rel_pos_clip)
    if clip > LIMITS["rel_pos_clip"]:
        raise ArchError(f"rel_pos_clip: {clip:,} is above vitnas's limit of {LIMITS['rel_pos_clip']:,}")
    if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not math.isfinite(norm_eps) \
            or not 0 < norm_eps < 1:
        raise ArchError(f"norm_eps: expected a number in (0, 1), got {norm_eps!r}")
    why = block_family.refusal("rel_pos") if block_family is not None else None
    if rel_pos and why:
        raise ArchError(f"rel_pos: {why}")
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


def positive_int(name: str, value: Any) -> int:
    """A positive integer within `LIMITS[name]` (checked here, before anything grows with it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or float(value) != int(value):
        raise ArchError(f"{name}: expected an integer, got {value!r}")
    if int(value) <= 0:
        raise ArchError(f"{name}: must be > 0, got {value!r}")
    if name in LIMITS and int(value) > LIMITS[name]:
        raise ArchError(f"{name}: {int(value):,} is above vitnas's limit of {LIMITS[name]:,}")
    return int(value)


def choices(name: str, values: Sequence, kind: type, zero_ok: bool = False) -> tuple:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise ArchError(f"{name}: must be a non-empty list of choices")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                or (v == 0 and not zero_ok):
            raise ArchError(f"{name}: choices must be {'non-negative' if zero_ok else 'positive'} numbers, "
                            f"got {v!r}")
        if kind is int and float(v) != int(v):
            raise ArchError(f"{name}: choices must be integers, got {v!r}")
        if name in LIMITS and v > LIMITS[name]:  # before anything grows with it (the largest arch)
            raise ArchError(f"{name}: {kind(v):,} is above vitnas's limit of {LIMITS[name]:,}")
        out.append(kind(v))
    if len(set(out)) != len(out):
        raise ArchError(f"{name}: duplicate choices in {values!r}")
    return tuple(sorted(out))


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
    # DynamicViT: where keep_tokens drops, a predictor picks each image's tokens (else fixed positions)
    token_predictors: bool = False
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
            positive_int(name, getattr(self, name))
            if getattr(self, name) > LIMITS[name]:
                raise ArchError(f"{name}: {getattr(self, name):,} is above vitnas's limit of {LIMITS[name]:,}")
        fam = family_of(self)
        for name in ("num_heads", "mlp_hidden", "head_dim"):
            values = per_layer(name, list(getattr(self, name)), self.depth, int,
                               zero_ok=fam.derives_heads and name != "mlp_hidden")
            if max(values) > LIMITS[name]:
                raise ArchError(f"{name}: {max(values):,} is above vitnas's limit of {LIMITS[name]:,}")
        if self.mlp_ratio is not None:
            per_layer("mlp_ratio", list(self.mlp_ratio), self.depth, float)
        if self.img_size % self.patch_size:
            raise ArchError(
                f"img_size: {self.img_size} is not divisible by patch_size={self.patch_size}")
        if self.keep_tokens is not None:
            if fam.refusal("keep_tokens"):
                raise ArchError(f"keep_tokens: {fam.refusal('keep_tokens')}")
            _check_keep_tokens(tuple(self.keep_tokens), self.depth, self.num_patches)
        for k, v in check_model_fields(self.global_pool, self.rel_pos, self.rel_pos_clip, self.norm_eps,
                                       block_family=fam).items():
            object.__setattr__(self, k, v)
        if self.token_predictors is not False and (self.token_predictors is not True or self.keep_tokens is None):
            raise ArchError("token_predictors: true only with keep_tokens (the per-layer counts the predictors keep)")
        if self.rel_pos and self.keep_tokens is not None:
            raise ArchError("keep_tokens: token pruning does not combine with relative position (rel_pos) yet; "
                            "slim without tokens")
        fam.check_arch(self)

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
        token_predictors: bool = False,
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
        embed_dim = positive_int("embed_dim", embed_dim)
        depth = positive_int("depth", depth)
        given = {"num_heads": num_heads, "head_dim": head_dim, "units": units, "local_units": local_units,
                 "qkv_ratio": qkv_ratio, "kernel_size": kernel_size, "local_expansion": local_expansion}
        own = family(family_name(given)).create_fields(embed_dim, depth, given)
        heads, hdim = own.pop("num_heads"), own.pop("head_dim")
        ratios = None
        if mlp_ratio is not None and mlp_hidden is not None:
            ratios = per_layer("mlp_ratio", mlp_ratio, depth, float)
            hidden = per_layer("mlp_hidden", mlp_hidden, depth, int)
            if hidden != tuple(int(embed_dim * r) for r in ratios):
                raise ArchError("mlp_hidden: disagrees with mlp_ratio * embed_dim; give only one")
        elif mlp_ratio is not None:
            ratios = per_layer("mlp_ratio", mlp_ratio, depth, float)
            hidden = tuple(int(embed_dim * r) for r in ratios)
        elif mlp_hidden is not None:
            hidden = per_layer("mlp_hidden", mlp_hidden, depth, int)
        else:
            raise ArchError("mlp_ratio: missing (give mlp_ratio or mlp_hidden)")
        tokens = None if keep_tokens is None else per_layer("keep_tokens", keep_tokens, depth, int)
        return cls(embed_dim=embed_dim, depth=depth, num_heads=heads, mlp_hidden=hidden,
                   head_dim=hdim, patch_size=patch_size, img_size=img_size, in_chans=in_chans,
                   num_classes=num_classes, mlp_ratio=ratios, keep_tokens=tokens, token_predictors=token_predictors,
                   global_pool=global_pool,
                   rel_pos=rel_pos, rel_pos_clip=rel_pos_clip, norm_eps=norm_eps, **own)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Arch:
        if not isinstance(d, Mapping):
            raise ArchError(f"arch: expected a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - _PLAIN_KEYS - {k for name in FAMILIES for k in family(name).arch_keys})
        if unknown:
            raise ArchError(f"{unknown[0]}: unknown architecture key")
        for key in ("embed_dim", "depth") if family_of(d).derives_heads else ("embed_dim", "depth", "num_heads"):
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
        if self.token_predictors:
            d["token_predictors"] = True
        d.update(self.model_fields())
        d.update(self.family.arch_dict(self))
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
        if self.family.derives_heads:  # derived from the family's fields, which may change
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
            if "token_predictors" not in changes:
                d.pop("token_predictors", None)  # no counts, nothing to predict
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
    def family(self):
        """The block family (`vitnas.families`): what kind of block every layer is."""
        return family_of(self)

    def attn_dim(self, layer: int) -> int:
        """Channels block `layer`'s attention reads and writes (all of them in a plain ViT)."""
        return family_of(self).attn_dim(self, layer)

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
        if self.token_predictors:  # keys of archs without them stay what they were
            fields.append("token_predictors")
        fields += [getattr(self, k) for k in self.family.arch_keys]
        variant = {k: v for k, v in self.model_fields().items() if MODEL_DEFAULTS[k] != v}
        if variant:  # keys of timm-default archs stay what they were before these fields existed
            fields.append(variant)
        return json.dumps(fields)

    def __str__(self) -> str:
        return self.family.describe_arch(self)

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
