"""One architecture as a value: enough to build the model with no other input.

An `Arch` is immutable and hashable so search code can deduplicate candidates, and it round-trips
through plain JSON (`arch.json`) so every stage, and users' scripts, can hand one to the next.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitnas.errors import VitnasError

_PLAIN_KEYS = {
    "embed_dim", "depth", "num_heads", "mlp_ratio", "mlp_hidden", "head_dim",
    "patch_size", "img_size", "in_chans", "num_classes", "keep_tokens",
}


class ArchError(VitnasError, ValueError):
    """An architecture description that cannot be built."""


def _per_layer(name: str, value: Any, depth: int, kind: type) -> tuple:
    """Accept a scalar (same for every layer) or a per-layer list of exactly `depth` entries."""
    if isinstance(value, (list, tuple)):
        if len(value) != depth:
            raise ArchError(f"{name}: has {len(value)} entries, expected depth={depth}")
        items = tuple(value)
    else:
        items = (value,) * depth
    out = []
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ArchError(f"{name}[{i}]: expected a number, got {v!r}")
        if kind is int:
            if float(v) != int(v):
                raise ArchError(f"{name}[{i}]: expected an integer, got {v!r}")
            v = int(v)
        else:
            v = float(v)
        if v <= 0:
            raise ArchError(f"{name}[{i}]: must be > 0, got {v!r}")
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


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise ArchError(f"{name}: expected an integer, got {value!r}")
    if int(value) <= 0:
        raise ArchError(f"{name}: must be > 0, got {value!r}")
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

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "patch_size", "img_size", "in_chans", "num_classes"):
            _positive_int(name, getattr(self, name))
        for name in ("num_heads", "mlp_hidden", "head_dim"):
            _per_layer(name, list(getattr(self, name)), self.depth, int)
        if self.mlp_ratio is not None:
            _per_layer("mlp_ratio", list(self.mlp_ratio), self.depth, float)
        if self.img_size % self.patch_size:
            raise ArchError(
                f"img_size: {self.img_size} is not divisible by patch_size={self.patch_size}")
        if self.keep_tokens is not None:
            _check_keep_tokens(tuple(self.keep_tokens), self.depth, self.num_patches)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int | Sequence[int],
        mlp_ratio: float | Sequence[float] | None = None,
        mlp_hidden: int | Sequence[int] | None = None,
        head_dim: int | Sequence[int] = 64,
        patch_size: int = 16,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        keep_tokens: int | Sequence[int] | None = None,
    ) -> Arch:
        """Build an Arch from scalars or per-layer lists, checking every field."""
        embed_dim = _positive_int("embed_dim", embed_dim)
        depth = _positive_int("depth", depth)
        heads = _per_layer("num_heads", num_heads, depth, int)
        hdim = _per_layer("head_dim", head_dim, depth, int)
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
                   num_classes=num_classes, mlp_ratio=ratios, keep_tokens=tokens)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Arch:
        if not isinstance(d, Mapping):
            raise ArchError(f"arch: expected a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - _PLAIN_KEYS)
        if unknown:
            raise ArchError(f"{unknown[0]}: unknown architecture key")
        for key in ("embed_dim", "depth", "num_heads"):
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
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> Arch:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ArchError(f"{path}: architecture file not found") from None
        except json.JSONDecodeError as e:
            raise ArchError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        try:
            return cls.from_dict(d)
        except ArchError as e:
            raise ArchError(f"{path}: {e}") from None

    def replace(self, **changes: Any) -> Arch:
        """A copy with some fields changed (input size, classes...), re-validated."""
        d = self.to_dict()
        if self.keep_tokens is not None and "keep_tokens" not in changes and (
                {"img_size", "patch_size"} & set(changes)):
            raise ArchError("keep_tokens: this arch removes tokens at fixed positions of its input grid; "
                            "pass keep_tokens=None to change the input size")
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

    def key(self) -> str:
        """A canonical string, equal for equal architectures (dedupe, caching, file names)."""
        return json.dumps([self.embed_dim, self.depth, self.num_heads, self.mlp_hidden, self.head_dim,
                           self.patch_size, self.img_size, self.in_chans, self.num_classes, self.keep_tokens])

    def __str__(self) -> str:
        ratios = self.mlp_ratio or tuple(round(m / self.embed_dim, 2) for m in self.mlp_hidden)
        return (f"Arch(embed={self.embed_dim}, depth={self.depth}, heads={list(self.num_heads)}, "
                f"mlp={list(ratios)}, head_dim={self.to_dict()['head_dim']}"
                + (f", tokens={list(self.keep_tokens)}" if self.keep_tokens is not None else "") + ")")

    @staticmethod
    def published(name: str, **overrides: Any) -> Arch:
        """A published architecture (REFERENCES.md), e.g. ``Arch.published("autoformer-t")``.

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
