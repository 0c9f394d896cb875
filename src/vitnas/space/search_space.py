"""AutoFormer-style search spaces: one embed width, a depth, and per-layer heads and MLP ratios;
and GLiT global-local spaces: per-block split of `units` between attention heads and local units,
then per-block low-level choices.

The head dim is fixed per space (AutoFormer's "change_qkv": qkv width = head_dim * heads), so any
embed width works with any head count.

GLiT spaces (`units` set; Chen et al., ICCV 2021) have no `num_heads` choices: a block with `L`
local units has `units - L` heads. With `glit_grid="paper"` the low-level genes a block searches
depend on its split, as in GLiT: all-global blocks e_v x FFN, all-local blocks kernel x e_c (FFN
fixed), mixed blocks e_c x FFN (e_v and kernel fixed); fixed genes take the middle choice (upper
middle for an even count), which for GLiT's grids is its own e_v 1, kernel 31, FFN 4. With
`glit_grid="full"` every gene of the branches a block has is searched. `split` fixes `L` per block
(GLiT's level 2); `level1()` / `level2(arch)` give the two spaces of the hierarchical search.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from vitnas.numbers import plain
from vitnas.space.arch import LIMITS, Arch, ArchError, check_model_fields, model_summary
from vitnas.space.cost import count_flops, count_params
from vitnas.space.published import AUTOFORMER_MODEL

GLIT_FIELDS = ("units", "local_units", "split", "qkv_ratio", "kernel_size", "local_expansion", "glit_grid")
GLIT_GRIDS = ("paper", "full")
# One GLiT block's choice: (local units L, e_v, kernel, e_c, FFN ratio); absent branches' genes are 0.
Layer = tuple[int, float, int, float, float]


def _choices(name: str, values: Sequence, kind: type, zero_ok: bool = False) -> tuple:
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
        glit = self.units is not None
        for k, v in check_model_fields(self.global_pool, self.rel_pos, self.rel_pos_clip, self.norm_eps,
                                       glit=glit).items():
            object.__setattr__(self, k, v)
        fields = [("embed_dim", int), ("depth", int), ("mlp_ratio", float)]
        if glit:
            self._init_glit()
        else:
            fields.insert(2, ("num_heads", int))
            for f in GLIT_FIELDS[1:-1]:
                if getattr(self, f) is not None:
                    raise ArchError(f"units: required with {f} (a GLiT space)")
        for f, kind in fields:
            object.__setattr__(self, f, _choices(f, getattr(self, f), kind))
        if glit:
            for e in self.embed_dim:
                if e % self.units:
                    raise ArchError(f"embed_dim: {e} is not divisible by units={self.units}")
            if self.split is not None and (len(self.depth) != 1 or self.depth[0] != len(self.split)):
                raise ArchError(f"split: has {len(self.split)} blocks, so depth must be [{len(self.split)}], "
                                f"got {list(self.depth)}")
        # The largest arch validates the fixed fields (img divisible by patch, positive ints), and
        # must fit in memory (its params bound every other arch's).
        from vitnas.space.memory import check_fits

        check_fits(self.largest(), "the largest arch of the space")

    def _init_glit(self) -> None:
        units = self.units
        if isinstance(units, bool) or not isinstance(units, int) or not 1 <= units <= LIMITS["embed_dim"]:
            raise ArchError(f"units: must be an integer in 1..{LIMITS['embed_dim']}, got {self.units!r}")
        if self.num_heads:
            raise ArchError("num_heads: a GLiT space has no head choices (a block with L local units has "
                            "units - L heads); leave it out")
        if self.glit_grid not in GLIT_GRIDS:
            raise ArchError(f"glit_grid: expected one of {', '.join(GLIT_GRIDS)}, got {self.glit_grid!r}")
        for f, kind in (("qkv_ratio", float), ("kernel_size", int), ("local_expansion", float)):
            if getattr(self, f) is None:
                raise ArchError(f"{f}: required in a GLiT space")
            object.__setattr__(self, f, _choices(f, getattr(self, f), kind))
        for k in self.kernel_size:
            if k % 2 == 0:
                raise ArchError(f"kernel_size: choices must be odd ('same' padding over the tokens), got {k}")
        local = self.local_units if self.local_units is not None else tuple(range(self.units + 1))
        object.__setattr__(self, "local_units", _choices("local_units", local, int, zero_ok=True))
        if max(self.local_units) > self.units:
            raise ArchError(f"local_units: choices must be in 0..units={self.units}, got {list(self.local_units)}")
        if self.split is not None:
            split = self.split if isinstance(self.split, (list, tuple)) else [self.split]
            bad = [v for v in split if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= self.units]
            if not split or bad:
                raise ArchError(f"split: per-block local units in 0..units={self.units}, got {self.split!r}")
            object.__setattr__(self, "split", tuple(split))

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
        d = asdict(self)
        if self.units is None:  # plain spaces keep their original keys
            d = {k: v for k, v in d.items() if k not in GLIT_FIELDS}
        else:
            d.pop("num_heads")
            d.pop("head_dim")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    # ---- GLiT ---------------------------------------------------------------------------
    @property
    def is_glit(self) -> bool:
        return self.units is not None

    def block_local_units(self, layer: int) -> tuple[int, ...]:
        """The local-unit counts block `layer` may have (GLiT)."""
        return (self.split[layer],) if self.split is not None else self.local_units

    def layer_options(self, local: int) -> tuple[tuple[float, int, float, float], ...]:
        """Every (e_v, kernel, e_c, FFN) a GLiT block with `local` local units may take."""
        return _layer_options(self, local)

    def block_options(self, layer: int) -> list[Layer]:
        """Every choice of block `layer` as (L, e_v, kernel, e_c, FFN)."""
        return [(n, *o) for n in self.block_local_units(layer) for o in self.layer_options(n)]

    def free_genes(self, local: int) -> tuple[str, ...]:
        """The low-level genes a block with `local` local units searches (the others are fixed or absent)."""
        return _free_genes(self, local)

    def glit_layers(self, arch: Arch) -> list[Layer]:
        """`arch`'s blocks as (L, e_v, kernel, e_c, FFN) tuples."""
        ratios = arch.mlp_ratio or tuple(m / arch.embed_dim for m in arch.mlp_hidden)
        return list(zip(arch.local_units, arch.qkv_ratio, arch.kernel_size, arch.local_expansion, ratios,
                        strict=True))

    def glit_arch(self, embed: int, layers: Sequence[Layer]) -> Arch:
        """The arch of this space with embed width `embed` and these blocks."""
        return Arch.create(embed_dim=embed, depth=len(layers), units=self.units,
                           local_units=[la[0] for la in layers], qkv_ratio=[la[1] for la in layers],
                           kernel_size=[la[2] for la in layers], local_expansion=[la[3] for la in layers],
                           mlp_ratio=[la[4] for la in layers], patch_size=self.patch_size, img_size=self.img_size,
                           in_chans=self.in_chans, num_classes=self.num_classes, **self.model_fields())

    def sample_layer(self, rng: random.Random, layer: int, local: int | None = None) -> Layer:
        """A random choice of block `layer` (of `local` local units when given): L uniformly, then
        each of its free genes uniformly."""
        n = rng.choice(self.block_local_units(layer)) if local is None else local
        return self._complete(rng, n, {})

    def mutate_layer(self, rng: random.Random, layer: int, current: Layer, prob: float) -> Layer:
        """AutoFormer-style mutation of one GLiT block: re-draw L with `prob` (genes the block had keep
        their values where still free, genes of a branch it did not have are drawn), then every free
        gene with `prob`."""
        n = current[0]
        keep = dict(zip(("qkv_ratio", "kernel_size", "local_expansion", "mlp_ratio"), current[1:], strict=True))
        choices = self.block_local_units(layer)
        if len(choices) > 1 and rng.random() < prob:
            n = rng.choice(choices)
        free = self.free_genes(n)
        keep = {g: v for g, v in keep.items() if g in free and v in getattr(self, g)}
        for g in free:
            if rng.random() < prob:
                keep[g] = rng.choice(getattr(self, g))
        return self._complete(rng, n, keep)

    def _complete(self, rng: random.Random, local: int, genes: dict[str, float]) -> Layer:
        """A block of `local` local units with `genes`, drawing missing free genes and fixing the rest."""
        out = []
        free = self.free_genes(local)
        for g in ("qkv_ratio", "kernel_size", "local_expansion", "mlp_ratio"):
            if not _has_branch(self, local, g):
                out.append(0)
            elif g in free:
                out.append(genes[g] if g in genes else rng.choice(getattr(self, g)))
            else:
                out.append(_middle(getattr(self, g)))
        return (local, float(out[0]), int(out[1]), float(out[2]), float(out[3]))

    def level1(self) -> SearchSpace:
        """GLiT's high-level space: the split per block, low-level genes at their middle choices."""
        self._need_glit("level1")
        if self.split is not None:
            raise ArchError("split: the level-1 space searches the split; this space fixes it")
        mid = {g: (_middle(getattr(self, g)),) for g in ("qkv_ratio", "kernel_size", "local_expansion", "mlp_ratio")}
        return replace(self, name=f"{self.name}:level1", **mid)

    def level2(self, arch: Arch) -> SearchSpace:
        """GLiT's low-level space: `arch`'s embed width, depth and split fixed, every low-level gene free."""
        self._need_glit("level2")
        if arch.units != self.units:
            raise ArchError(f"units: the arch has {arch.units}, the space {self.units}")
        return replace(self, embed_dim=(arch.embed_dim,), depth=(arch.depth,), split=tuple(arch.local_units),
                       name=f"{self.name.removesuffix(':level1')}:level2")

    def _need_glit(self, what: str) -> None:
        if not self.is_glit:
            raise ArchError(f"units: {what} needs a GLiT space (space {self.name} has no local units)")

    def glit_mismatch(self, arch: Arch) -> str | None:
        """Why GLiT `arch` is not in this space (the first reason), or None."""
        if arch.units != self.units:
            return f"units {arch.units} != the space's {self.units}"
        for name in ("patch_size", "img_size", "in_chans", "num_classes", *self.model_fields()):
            if getattr(arch, name) != getattr(self, name):
                return f"{name} {getattr(arch, name)} != the space's {getattr(self, name)}"
        if arch.mlp_ratio is None:
            return "it is given by mlp_hidden, not by mlp_ratio choices"
        if arch.embed_dim not in self.embed_dim:
            return f"embed_dim {arch.embed_dim} not in {list(self.embed_dim)}"
        if arch.depth not in self.depth:
            return f"depth {arch.depth} not in {list(self.depth)}"
        for i, la in enumerate(self.glit_layers(arch)):
            if la[0] not in self.block_local_units(i):
                return f"local_units[{i}] {la[0]} not in {list(self.block_local_units(i))}"
            if la[1:] not in self.layer_options(la[0]):
                return (f"block {i} (local_units {la[0]}: qkv_ratio {la[1]}, kernel_size {la[2]}, "
                        f"local_expansion {la[3]}, mlp_ratio {la[4]}) is not one of the space's "
                        f"{self.glit_grid}-grid choices for that split")
        return None

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
        depth = rng.choice(self.depth)
        embed = rng.choice(self.embed_dim)
        if self.is_glit:
            return self.glit_arch(embed, [self.sample_layer(rng, i) for i in range(depth)])
        heads = [rng.choice(self.num_heads) for _ in range(depth)]
        ratios = [rng.choice(self.mlp_ratio) for _ in range(depth)]
        return self.make_arch(embed, heads, ratios)

    def smallest(self, by: str = "params") -> Arch:
        """The arch with the fewest params (every dimension at its smallest choice; for GLiT, each
        block's cheapest choice by params, then FLOPs; `by="flops"` the other way round)."""
        if self.is_glit:
            return self._glit_extreme(min(self.embed_dim), min(self.depth), by, min)
        d = min(self.depth)
        return self.make_arch(min(self.embed_dim), [min(self.num_heads)] * d, [min(self.mlp_ratio)] * d)

    def largest(self, by: str = "params") -> Arch:
        """The arch with the most params (for GLiT, each block's costliest choice by params, then FLOPs;
        `by="flops"` the other way round)."""
        if self.is_glit:
            return self._glit_extreme(max(self.embed_dim), max(self.depth), by, max)
        d = max(self.depth)
        return self.make_arch(max(self.embed_dim), [max(self.num_heads)] * d, [max(self.mlp_ratio)] * d)

    def _glit_extreme(self, embed: int, depth: int, by: str, pick) -> Arch:
        """Blocks are independent and costs add up, so the per-block extreme gives the arch's extreme."""
        first, second = (count_params, count_flops) if by == "params" else (count_flops, count_params)
        layers = []
        for i in range(depth):
            opts = self.block_options(i)
            costs = [(first(a), second(a)) for a in (self.glit_arch(embed, [o]) for o in opts)]
            layers.append(opts[costs.index(pick(costs))])
        return self.glit_arch(embed, layers)

    def cost_range(self) -> tuple[int, int, int, int]:
        """Exact (min params, max params, min FLOPs, max FLOPs) over every arch of the space."""
        if not self.is_glit:  # every dimension adds cost: the smallest and largest archs bound both
            lo, hi = self.smallest(), self.largest()
            return count_params(lo), count_params(hi), count_flops(lo), count_flops(hi)
        out = []
        for by, count, pick in (("params", count_params, min), ("params", count_params, max),
                                ("flops", count_flops, min), ("flops", count_flops, max)):
            out.append(pick(count(self._glit_extreme(e, d, by, pick)) for e in self.embed_dim for d in self.depth))
        return out[0], out[1], out[2], out[3]

    def size(self) -> int:
        """Number of distinct architectures in the space."""
        if self.is_glit:
            return sum(len(self.embed_dim) * math.prod(len(self.block_options(i)) for i in range(d))
                       for d in self.depth)
        per_layer = len(self.num_heads) * len(self.mlp_ratio)
        return sum(len(self.embed_dim) * per_layer**d for d in self.depth)

    def log10_size(self) -> float:
        return math.log10(self.size())

    def contains(self, arch: Arch) -> bool:
        """Whether `arch` is one of this space's architectures (same input/output shape too)."""
        if self.is_glit or arch.is_glit:
            return self.is_glit and arch.is_glit and self.glit_mismatch(arch) is None
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
            and all(getattr(arch, k) == v for k, v in self.model_fields().items())
        )

    def __str__(self) -> str:
        if self.is_glit:
            split = f"split {list(self.split)}" if self.split is not None else f"local units {list(self.local_units)}"
            return (f"SearchSpace({self.name}: GLiT embed {list(self.embed_dim)}, depth {list(self.depth)}, "
                    f"{self.units} units, {split}, e_v {plain(self.qkv_ratio)}, kernel {list(self.kernel_size)}, "
                    f"e_c {plain(self.local_expansion)}, mlp {plain(self.mlp_ratio)}, {self.glit_grid} grid, "
                    f"{self.img_size}px/{self.patch_size}{model_summary(self.model_fields())}, "
                    f"10^{self.log10_size():.1f} archs)")
        return (f"SearchSpace({self.name}: embed {list(self.embed_dim)}, depth {list(self.depth)}, "
                f"heads {list(self.num_heads)}, mlp {list(self.mlp_ratio)}, head_dim {self.head_dim}, "
                f"{self.img_size}px/{self.patch_size}{model_summary(self.model_fields())}, "
                    f"10^{self.log10_size():.1f} archs)")


def _middle(values: Sequence) -> Any:
    """The middle choice (upper middle for an even count): GLiT's fixed value for a gene a block
    does not search (e_v 1, kernel 31, FFN 4 in its space)."""
    return values[len(values) // 2]


def _has_branch(space: SearchSpace, local: int, gene: str) -> bool:
    if gene == "qkv_ratio":
        return local < space.units
    if gene in ("kernel_size", "local_expansion"):
        return local > 0
    return True  # every block has its MLP


@functools.lru_cache(maxsize=256)
def _free_genes(space: SearchSpace, local: int) -> tuple[str, ...]:
    genes = [g for g in ("qkv_ratio", "kernel_size", "local_expansion", "mlp_ratio") if _has_branch(space, local, g)]
    if space.glit_grid == "paper":
        if local == 0:
            genes = ["qkv_ratio", "mlp_ratio"]
        elif local == space.units:
            genes = ["kernel_size", "local_expansion"]
        else:
            genes = ["local_expansion", "mlp_ratio"]
    return tuple(genes)


@functools.lru_cache(maxsize=256)
def _layer_options(space: SearchSpace, local: int) -> tuple[tuple[float, int, float, float], ...]:
    free = _free_genes(space, local)
    grids = []
    for g in ("qkv_ratio", "kernel_size", "local_expansion", "mlp_ratio"):
        if not _has_branch(space, local, g):
            grids.append((0,))
        elif g in free:
            grids.append(getattr(space, g))
        else:
            grids.append((_middle(getattr(space, g)),))
    return tuple((float(a), int(b), float(c), float(d)) for a in grids[0] for b in grids[1] for c in grids[2]
                 for d in grids[3])


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
