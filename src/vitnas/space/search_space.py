"""Search spaces: the choices of each searchable dimension plus the fixed input/output shape.

AutoFormer-style spaces (the ViT family): one embed width, a depth, and per-layer heads and MLP
ratios; the head dim is fixed per space (AutoFormer's "change_qkv": qkv width = head_dim * heads),
so any embed width works with any head count. GLiT spaces (`units` set): per-block split of
`units` between attention heads and local units, then per-block low-level choices (see
`vitnas.families.glit`). What differs between the two is the space's block family's
(`vitnas.families`); this module holds what every space shares.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from vitnas.families import FAMILIES, family, family_of
from vitnas.space.arch import Arch, ArchError, check_model_fields, choices
from vitnas.space.published import AUTOFORMER_MODEL


@dataclass(frozen=True)
class SearchSpace:
    """Choices for each searchable dimension plus the fixed input/output shape."""

    embed_dim: tuple[int, ...]
    depth: tuple[int, ...]
    num_heads: tuple[int, ...] = ()  # plain spaces only; GLiT spaces derive heads from the split
    mlp_ratio: tuple[float, ...] = ()
    head_dim: int = 64
    patch_size: int = 16
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    name: str = "custom"
    # GLiT spaces only (see the module docstring); None / unused for plain spaces.
    units: int | None = None
    local_units: tuple[int, ...] | None = None
    split: tuple[int, ...] | None = None
    qkv_ratio: tuple[float, ...] | None = None
    kernel_size: tuple[int, ...] | None = None
    local_expansion: tuple[float, ...] | None = None
    glit_grid: str = "paper"
    # How every arch's network is built around its widths (`Arch`: pooling, relative position, eps).
    global_pool: str = "token"
    rel_pos: bool = False
    rel_pos_clip: int = 14
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        fam = family_of(self)
        for k, v in check_model_fields(self.global_pool, self.rel_pos, self.rel_pos_clip, self.norm_eps,
                                       block_family=fam).items():
            object.__setattr__(self, k, v)
        fam.check_space(self)
        fields = [("embed_dim", int), ("depth", int), ("mlp_ratio", float)]
        if not fam.derives_heads:
            fields.insert(2, ("num_heads", int))
        for f, kind in fields:
            object.__setattr__(self, f, choices(f, getattr(self, f), kind))
        fam.check_widths(self)
        # The largest arch validates the fixed fields (img divisible by patch, positive ints), and
        # must fit in memory (its params bound every other arch's).
        from vitnas.space.memory import check_fits

        check_fits(self.largest(), "the largest arch of the space")

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

    def model_fields(self) -> dict[str, Any]:
        """The fields every arch of the space shares besides its input/output shape."""
        return {"global_pool": self.global_pool, "rel_pos": self.rel_pos, "rel_pos_clip": self.rel_pos_clip,
                "norm_eps": self.norm_eps}

    def to_dict(self) -> dict[str, Any]:
        fam = self.family
        others = {k for name in FAMILIES if family(name) is not fam for k in family(name).space_keys}
        d = {k: v for k, v in asdict(self).items() if k not in others and k not in fam.space_unused}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    # ---- the block family ---------------------------------------------------------------
    @property
    def family(self):
        """The block family (`vitnas.families`) of every arch of the space."""
        return family_of(self)

    def level1(self) -> SearchSpace:
        """GLiT's high-level space: the split per block, low-level genes at their middle choices."""
        return self.family.level1(self)

    def level2(self, arch: Arch) -> SearchSpace:
        """GLiT's low-level space: `arch`'s embed width, depth and split fixed, every low-level gene free."""
        return self.family.level2(self, arch)

    def mismatch(self, arch: Arch) -> str | None:
        """Why `arch` is not one of this space's archs (the first reason), or None."""
        if arch.keep_tokens is not None:
            return "it removes tokens (keep_tokens, a slimmed model); supernets run every token"
        mine, its = self.family, arch.family
        if mine is not its:
            return f"it has no {mine.has}, the space's blocks do" if mine.has else \
                f"it has {its.has}, the space's blocks do not"
        return mine.mismatch(self, arch)

    def with_data(self, *, num_classes: int, in_chans: int, img_size: int | None = None) -> SearchSpace:
        """The same space sized for a dataset's classes, channels and (optionally) input size."""
        return replace(self, num_classes=num_classes, in_chans=in_chans,
                       img_size=self.img_size if img_size is None else img_size)

    # ---- sampling -----------------------------------------------------------------------
    def make_arch(self, embed: int, heads: Sequence[int], ratios: Sequence[float]) -> Arch:
        """The plain arch of this space with embed width `embed` and per-layer heads / MLP ratios."""
        return Arch.create(embed_dim=embed, depth=len(heads), num_heads=list(heads), mlp_ratio=list(ratios),
                           head_dim=self.head_dim, patch_size=self.patch_size, img_size=self.img_size,
                           in_chans=self.in_chans, num_classes=self.num_classes, **self.model_fields())

    def sample(self, seed: int | random.Random | None = None) -> Arch:
        """A uniformly random arch; the same seed gives the same arch on every machine."""
        rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        return self.family.sample(self, rng)

    def smallest(self, by: str = "params") -> Arch:
        """The arch with the fewest params (`by="flops"`: FLOPs); for families whose blocks trade
        one for the other, ties are broken by the other cost."""
        return self.family.extreme(self, by, min)

    def largest(self, by: str = "params") -> Arch:
        """The arch with the most params (`by="flops"`: FLOPs)."""
        return self.family.extreme(self, by, max)

    def cost_range(self) -> tuple[int, int, int, int]:
        """Exact (min params, max params, min FLOPs, max FLOPs) over every arch of the space."""
        return self.family.cost_range(self)

    def size(self) -> int:
        """Number of distinct architectures in the space."""
        return self.family.size(self)

    def log10_size(self) -> float:
        return math.log10(self.size())

    def contains(self, arch: Arch) -> bool:
        """Whether `arch` is one of this space's architectures (same input/output shape too)."""
        return self.mismatch(arch) is None

    def __str__(self) -> str:
        return self.family.describe_space(self)


_PRESETS: dict[str, SearchSpace] = {
    # AutoFormer's spaces (its experiments/supernet/*.yaml). mlp 3.0 is in the tiny space as well, because the
    # published AutoFormer-T subnet uses it although the paper's tiny table lists {3.5, 4}.
    # Their model is AutoFormer's as its scripts run it (`--gp --relative_position`): avg pooling after
    # the final norm, 2-D relative position clipped at 14, LayerNorm eps 1e-5.
    "autoformer-tiny": SearchSpace(embed_dim=(192, 216, 240), depth=(12, 13, 14), num_heads=(3, 4),
                                   mlp_ratio=(3.0, 3.5, 4.0), name="autoformer-tiny", **AUTOFORMER_MODEL),
    "autoformer-small": SearchSpace(embed_dim=(320, 384, 448), depth=(12, 13, 14), num_heads=(5, 6, 7),
                                    mlp_ratio=(3.0, 3.5, 4.0), name="autoformer-small", **AUTOFORMER_MODEL),
    "autoformer-base": SearchSpace(embed_dim=(528, 576, 624), depth=(14, 15, 16), num_heads=(8, 9, 10),
                                   mlp_ratio=(3.0, 3.5, 4.0), name="autoformer-base", **AUTOFORMER_MODEL),
    # CPU-sized space for the embedded digits dataset (8x8 digits upsampled to 16 px); timm's ViT
    # (CLS token, no relative position): on a 4x4 patch grid relative position adds little.
    "demo": SearchSpace(embed_dim=(32, 48, 64), depth=(2, 3, 4), num_heads=(1, 2, 3, 4),
                        mlp_ratio=(2.0, 3.0, 4.0), head_dim=16, patch_size=4, img_size=16,
                        in_chans=1, num_classes=10, name="demo"),
    # CPU-sized space for 28 px MNIST-format data (Fashion-MNIST, MNIST, KMNIST): 7 px patches, 16 tokens,
    # one more layer than demo; subnets train at 1.6k (largest) to 9k (smallest) images/s on 2 CPU cores.
    "mnist28": SearchSpace(embed_dim=(32, 48, 64), depth=(2, 3, 4, 5), num_heads=(1, 2, 3, 4),
                           mlp_ratio=(2.0, 3.0, 4.0), head_dim=16, patch_size=7, img_size=28,
                           in_chans=1, num_classes=10, name="mnist28"),
    # GLiT's space (the paper, Chen et al. ICCV 2021): DeiT-Ti's shape, 3 units of 64 channels per block, G/L split per
    # block, then e_v / FFN (global), kernel / e_c (local), e_c / FFN (mixed).
    "glit-tiny": SearchSpace(embed_dim=(192,), depth=(12,), mlp_ratio=(2.0, 4.0, 6.0), units=3,
                             local_units=(0, 1, 2, 3), qkv_ratio=(0.5, 1.0, 2.0), kernel_size=(17, 31, 45),
                             local_expansion=(1.0, 2.0, 4.0), name="glit-tiny"),
    # CPU-sized GLiT space for digits: 3 units of 16 channels, kernels sized for 17 tokens.
    "glit-demo": SearchSpace(embed_dim=(48,), depth=(3, 4), mlp_ratio=(2.0, 4.0), units=3, local_units=(0, 1, 2, 3),
                             qkv_ratio=(0.5, 1.0, 2.0), kernel_size=(3, 5, 7), local_expansion=(1.0, 2.0),
                             patch_size=4, img_size=16, in_chans=1, num_classes=10, name="glit-demo"),
}
