"""AutoFormer-style search spaces: one embed width, a depth, and per-layer heads and MLP ratios.

The head dim is fixed per space (AutoFormer's "change_qkv": qkv width = head_dim * heads), so any
embed width works with any head count.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from vitnas.space.arch import Arch, ArchError


def _choices(name: str, values: Sequence, kind: type) -> tuple:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise ArchError(f"{name}: must be a non-empty list of choices")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ArchError(f"{name}: choices must be positive numbers, got {v!r}")
        if kind is int and float(v) != int(v):
            raise ArchError(f"{name}: choices must be integers, got {v!r}")
        out.append(kind(v))
    if len(set(out)) != len(out):
        raise ArchError(f"{name}: duplicate choices in {values!r}")
    return tuple(sorted(out))


@dataclass(frozen=True)
class SearchSpace:
    """Choices for each searchable dimension plus the fixed input/output shape."""

    embed_dim: tuple[int, ...]
    depth: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratio: tuple[float, ...]
    head_dim: int = 64
    patch_size: int = 16
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    name: str = "custom"

    def __post_init__(self) -> None:
        for f, kind in (("embed_dim", int), ("depth", int), ("num_heads", int), ("mlp_ratio", float)):
            object.__setattr__(self, f, _choices(f, getattr(self, f), kind))
        # The largest arch validates the fixed fields (img divisible by patch, positive ints).
        self.largest()

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SearchSpace:
        """A named space (`SearchSpace.presets()`); overrides adapt it, e.g. ``img_size=32``."""
        try:
            base = _PRESETS[name]
        except KeyError:
            raise ArchError(f"{name}: unknown search space preset; known: {', '.join(sorted(_PRESETS))}") \
                from None
        return replace(base, **overrides) if overrides else base

    @staticmethod
    def presets() -> list[str]:
        return sorted(_PRESETS)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ArchError(f"{unknown[0]}: unknown search space key")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def with_data(self, *, num_classes: int, in_chans: int, img_size: int | None = None) -> SearchSpace:
        """The same space sized for a dataset's classes, channels and (optionally) input size."""
        return replace(self, num_classes=num_classes, in_chans=in_chans,
                       img_size=self.img_size if img_size is None else img_size)

    # ---- sampling -----------------------------------------------------------------------
    def _arch(self, embed: int, depth: int, heads: Sequence[int], ratios: Sequence[float]) -> Arch:
        return Arch.create(embed_dim=embed, depth=depth, num_heads=list(heads), mlp_ratio=list(ratios),
                           head_dim=self.head_dim, patch_size=self.patch_size, img_size=self.img_size,
                           in_chans=self.in_chans, num_classes=self.num_classes)

    def sample(self, seed: int | random.Random | None = None) -> Arch:
        """A uniformly random arch; the same seed gives the same arch on every machine."""
        rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        depth = rng.choice(self.depth)
        embed = rng.choice(self.embed_dim)
        heads = [rng.choice(self.num_heads) for _ in range(depth)]
        ratios = [rng.choice(self.mlp_ratio) for _ in range(depth)]
        return self._arch(embed, depth, heads, ratios)

    def smallest(self) -> Arch:
        d = min(self.depth)
        return self._arch(min(self.embed_dim), d, [min(self.num_heads)] * d, [min(self.mlp_ratio)] * d)

    def largest(self) -> Arch:
        d = max(self.depth)
        return self._arch(max(self.embed_dim), d, [max(self.num_heads)] * d, [max(self.mlp_ratio)] * d)

    def size(self) -> int:
        """Number of distinct architectures in the space."""
        per_layer = len(self.num_heads) * len(self.mlp_ratio)
        return sum(len(self.embed_dim) * per_layer**d for d in self.depth)

    def log10_size(self) -> float:
        return math.log10(self.size())

    def contains(self, arch: Arch) -> bool:
        """Whether `arch` is one of this space's architectures (same input/output shape too)."""
        if arch.mlp_ratio is None or arch.keep_tokens is not None:
            return False
        return (
            arch.embed_dim in self.embed_dim
            and arch.depth in self.depth
            and all(h in self.num_heads for h in arch.num_heads)
            and all(r in self.mlp_ratio for r in arch.mlp_ratio)
            and all(d == self.head_dim for d in arch.head_dim)
            and (arch.patch_size, arch.img_size, arch.in_chans, arch.num_classes)
            == (self.patch_size, self.img_size, self.in_chans, self.num_classes)
        )

    def __str__(self) -> str:
        return (f"SearchSpace({self.name}: embed {list(self.embed_dim)}, depth {list(self.depth)}, "
                f"heads {list(self.num_heads)}, mlp {list(self.mlp_ratio)}, head_dim {self.head_dim}, "
                f"{self.img_size}px/{self.patch_size}, 10^{self.log10_size():.1f} archs)")


_PRESETS: dict[str, SearchSpace] = {
    # AutoFormer's spaces (REFERENCES.md). mlp 3.0 is in the tiny space as well, because the
    # published AutoFormer-T subnet uses it although the paper's tiny table lists {3.5, 4}.
    "autoformer-tiny": SearchSpace(embed_dim=(192, 216, 240), depth=(12, 13, 14), num_heads=(3, 4),
                                   mlp_ratio=(3.0, 3.5, 4.0), name="autoformer-tiny"),
    "autoformer-small": SearchSpace(embed_dim=(320, 384, 448), depth=(12, 13, 14), num_heads=(5, 6, 7),
                                    mlp_ratio=(3.0, 3.5, 4.0), name="autoformer-small"),
    "autoformer-base": SearchSpace(embed_dim=(528, 576, 624), depth=(14, 15, 16), num_heads=(8, 9, 10),
                                   mlp_ratio=(3.0, 3.5, 4.0), name="autoformer-base"),
    # CPU-sized space for the embedded digits dataset (8x8 digits upsampled to 16 px).
    "demo": SearchSpace(embed_dim=(32, 48, 64), depth=(2, 3, 4), num_heads=(1, 2, 3, 4),
                        mlp_ratio=(2.0, 3.0, 4.0), head_dim=16, patch_size=4, img_size=16,
                        in_chans=1, num_classes=10, name="demo"),
}
