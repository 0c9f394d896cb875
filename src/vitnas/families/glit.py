"""The GLiT family (Chen et al., ICCV 2021): global-local blocks.

A block's channels are `units` units of `embed_dim / units` channels: `L` local units go to a
convolution module, the other `units - L` are attention heads of head dim `e_v x unit width`.
A space has no head choices; per block it searches the split `L`, then low-level genes. With
`glit_grid="paper"` the genes a block searches depend on its split, as in GLiT: all-global blocks
e_v x FFN, all-local blocks kernel x e_c (FFN fixed), mixed blocks e_c x FFN (e_v and kernel fixed);
fixed genes take the middle choice (upper middle for an even count), which for GLiT's grids is its
own e_v 1, kernel 31, FFN 4. With `glit_grid="full"` every gene of the branches a block has is
searched. `split` fixes `L` per block (GLiT's level 2); `level1` / `level2` give the two spaces of
the hierarchical search.

One block's choice is a `Layer`: (L, e_v, kernel, e_c, FFN ratio); genes of a branch the block does
not have are 0, so equal models have equal keys.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from vitnas.errors import ArchError
from vitnas.families import BlockFamily
from vitnas.numbers import plain
from vitnas.space.arch import LIMITS, Arch, choices, model_summary, per_layer, positive_int
from vitnas.space.cost import count_flops, count_params

GRIDS = ("paper", "full")
GENES = ("qkv_ratio", "kernel_size", "local_expansion", "mlp_ratio")
Layer = tuple[int, float, int, float, float]


class GlitFamily(BlockFamily):
    name = "glit"
    title = "GLiT"
    block_class = "vitnas.models.build:GlitBlock"
    super_block_class = "vitnas.supernet.glit:GlitSuperBlock"
    has = "GLiT local units (units)"
    arch_keys = ("units", "local_units", "qkv_ratio", "kernel_size", "local_expansion")
    space_keys = ("units", "local_units", "split", "qkv_ratio", "kernel_size", "local_expansion", "glit_grid")
    space_unused = ("num_heads", "head_dim")
    batchnorm = True
    derives_heads = True
    shrink_genes = ("mlp_ratio", "qkv_ratio", "kernel_size", "local_expansion")  # not the split: it is no size
    refusals = {
        "rel_pos": "relative position is AutoFormer's; GLiT blocks do not have it",
        "keep_tokens": "token pruning does not combine with GLiT local units (the local convolution runs over "
                       "the whole token sequence)",
        "timm_weights": "GLiT blocks have local units, which plain timm ViT weights do not have",
        "proxies": "GLiT local units are not supported by the zero-cost proxies (they score attention and MLP "
                   "weights only)",
        "latency": "latency tables hold plain ViT blocks; GLiT spaces (local units) are not supported yet",
        "slim": "GLiT local units cannot be slimmed yet (the masks cover attention and MLP only)",
        "qkv_prefix": "GLiT supernets have only vitnas's own layout",
        "layer_scale": "switchable layer scaling (NASViT) is implemented for plain ViT blocks; GLiT blocks have none",
    }

    # ---- archs ----------------------------------------------------------------------------
    def create_fields(self, embed_dim: int, depth: int, given: dict[str, Any]) -> dict[str, Any]:
        """The canonical per-layer fields (plus the num_heads / head_dim they imply)."""
        units = positive_int("units", given["units"])
        if embed_dim % units:
            raise ArchError(f"embed_dim: {embed_dim} is not divisible by units={units}")
        w = embed_dim // units
        if given.get("local_units") is None:
            raise ArchError("local_units: missing (GLiT archs give the local units of every block)")
        local = per_layer("local_units", given["local_units"], depth, int, zero_ok=True)
        for i, n in enumerate(local):
            if n > units:
                raise ArchError(f"local_units[{i}]: {n} is not in 0..units={units}")
        heads = tuple(units - n for n in local)
        num_heads, head_dim = given.get("num_heads"), given.get("head_dim")
        if num_heads is not None and per_layer("num_heads", num_heads, depth, int, zero_ok=True) != heads:
            raise ArchError(f"num_heads: disagrees with units - local_units = {list(heads)}")
        qkv_ratio = given.get("qkv_ratio")
        if qkv_ratio is None and head_dim is not None:  # e.g. an arch.json written with head dims only
            qkv_ratio = [d / w for d in per_layer("head_dim", head_dim, depth, int, zero_ok=True)]
        need = {"qkv_ratio": any(heads), "kernel_size": any(local), "local_expansion": any(local)}
        values = {"qkv_ratio": qkv_ratio, "kernel_size": given.get("kernel_size"),
                  "local_expansion": given.get("local_expansion")}
        for name, value in values.items():
            if value is None:
                if need[name]:
                    raise ArchError(f"{name}: missing (a block of this arch needs it)")
                values[name] = 0
        ev = per_layer("qkv_ratio", values["qkv_ratio"], depth, float, zero_ok=True)
        ks = per_layer("kernel_size", values["kernel_size"], depth, int, zero_ok=True)
        ec = per_layer("local_expansion", values["local_expansion"], depth, float, zero_ok=True)
        ev = tuple(e if g else 0.0 for e, g in zip(ev, heads, strict=True))
        ks = tuple(k if n else 0 for k, n in zip(ks, local, strict=True))
        ec = tuple(e if n else 0.0 for e, n in zip(ec, local, strict=True))
        hdim = tuple(int(round(e * w)) for e in ev)
        if head_dim is not None:
            want = per_layer("head_dim", head_dim, depth, int, zero_ok=True)
            for i, (g, a, b) in enumerate(zip(heads, hdim, want, strict=True)):
                if g and a != b:
                    raise ArchError(f"head_dim[{i}]: {b} disagrees with qkv_ratio * unit width = {a}")
        return {"units": units, "local_units": local, "qkv_ratio": ev, "kernel_size": ks, "local_expansion": ec,
                "num_heads": heads, "head_dim": hdim}

    def check_arch(self, arch: Arch) -> None:
        """Every GLiT field present, per layer, and consistent with num_heads / head_dim."""
        units = positive_int("units", arch.units)
        if arch.embed_dim % units:
            raise ArchError(f"embed_dim: {arch.embed_dim} is not divisible by units={units}")
        w = arch.embed_dim // units
        for name in self.arch_keys[1:]:
            if getattr(arch, name) is None:
                raise ArchError(f"{name}: missing (GLiT archs give it for every block)")
        local = per_layer("local_units", list(arch.local_units), arch.depth, int, zero_ok=True)
        ev = per_layer("qkv_ratio", list(arch.qkv_ratio), arch.depth, float, zero_ok=True)
        ks = per_layer("kernel_size", list(arch.kernel_size), arch.depth, int, zero_ok=True)
        ec = per_layer("local_expansion", list(arch.local_expansion), arch.depth, float, zero_ok=True)
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
                    raise ArchError(f"head_dim[{i}]: {arch.head_dim[i]} != qkv_ratio * unit width = "
                                    f"{round(ev[i] * w)}")
            elif ev[i] or arch.head_dim[i]:
                raise ArchError(f"qkv_ratio[{i}]: block {i} has no attention heads; store 0 (Arch.create does)")
            if n:
                if ks[i] <= 0 or ks[i] % 2 == 0:
                    raise ArchError(f"kernel_size[{i}]: {ks[i]} must be odd and > 0 ('same' padding over the "
                                    "tokens)")
                if ec[i] <= 0 or int(ec[i] * n * w) < 1:
                    raise ArchError(f"local_expansion[{i}]: {ec[i]} gives no channels")
            elif ks[i] or ec[i]:
                raise ArchError(f"kernel_size[{i}]: block {i} has no local units; store 0 (Arch.create does)")

    def attn_dim(self, arch_: Arch, i: int) -> int:
        return arch_.num_heads[i] * unit_dim(arch_)

    def local_widths(self, arch_: Arch, i: int) -> tuple[int, int]:
        """(channels, hidden width after the GLU) of block `i`'s local units (the supernet block
        reads them through `arch.family`, below which it sits)."""
        return local_dim(arch_, i), local_hidden(arch_, i)

    def describe_arch(self, arch: Arch) -> str:
        ratios = arch.mlp_ratio or tuple(round(m / arch.embed_dim, 2) for m in arch.mlp_hidden)
        return (f"Arch(GLiT embed={arch.embed_dim}, depth={arch.depth}, local={list(arch.local_units)}/"
                f"{arch.units}, e_v={plain(arch.qkv_ratio)}, k={list(arch.kernel_size)}, "
                f"e_c={plain(arch.local_expansion)}, mlp={plain(ratios)}{model_summary(arch.model_fields())})")

    # ---- spaces ---------------------------------------------------------------------------
    def check_space(self, space) -> None:
        units = space.units
        if isinstance(units, bool) or not isinstance(units, int) or not 1 <= units <= LIMITS["embed_dim"]:
            raise ArchError(f"units: must be an integer in 1..{LIMITS['embed_dim']}, got {space.units!r}")
        if space.num_heads:
            raise ArchError("num_heads: a GLiT space has no head choices (a block with L local units has "
                            "units - L heads); leave it out")
        if space.glit_grid not in GRIDS:
            raise ArchError(f"glit_grid: expected one of {', '.join(GRIDS)}, got {space.glit_grid!r}")
        for f, kind in (("qkv_ratio", float), ("kernel_size", int), ("local_expansion", float)):
            if getattr(space, f) is None:
                raise ArchError(f"{f}: required in a GLiT space")
            object.__setattr__(space, f, choices(f, getattr(space, f), kind))
        for k in space.kernel_size:
            if k % 2 == 0:
                raise ArchError(f"kernel_size: choices must be odd ('same' padding over the tokens), got {k}")
        local = space.local_units if space.local_units is not None else tuple(range(units + 1))
        object.__setattr__(space, "local_units", choices("local_units", local, int, zero_ok=True))
        if max(space.local_units) > units:
            raise ArchError(f"local_units: choices must be in 0..units={units}, got {list(space.local_units)}")
        if space.split is not None:
            split = space.split if isinstance(space.split, (list, tuple)) else [space.split]
            bad = [v for v in split if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= units]
            if not split or bad:
                raise ArchError(f"split: per-block local units in 0..units={units}, got {space.split!r}")
            object.__setattr__(space, "split", tuple(split))

    def check_widths(self, space) -> None:
        """After the common fields are canonical: every width splits into units, `split` fits the depth."""
        for e in space.embed_dim:
            if e % space.units:
                raise ArchError(f"embed_dim: {e} is not divisible by units={space.units}")
        if space.split is not None and (len(space.depth) != 1 or space.depth[0] != len(space.split)):
            raise ArchError(f"split: has {len(space.split)} blocks, so depth must be [{len(space.split)}], "
                            f"got {list(space.depth)}")

    def sample(self, space, rng: random.Random) -> Arch:
        depth = rng.choice(space.depth)
        embed = rng.choice(space.embed_dim)
        return arch(space, embed, [sample_layer(space, rng, i) for i in range(depth)])

    def extreme(self, space, by: str, pick) -> Arch:
        """Each block's cheapest (costliest) choice by `by`, then by the other cost."""
        return _extreme(space, pick(space.embed_dim), pick(space.depth), by, pick)

    def cost_range(self, space) -> tuple[int, int, int, int]:
        out = []
        for by, count, pick in (("params", count_params, min), ("params", count_params, max),
                                ("flops", count_flops, min), ("flops", count_flops, max)):
            out.append(pick(count(_extreme(space, e, d, by, pick)) for e in space.embed_dim for d in space.depth))
        return out[0], out[1], out[2], out[3]

    def size(self, space) -> int:
        return sum(len(space.embed_dim) * math.prod(len(block_options(space, i)) for i in range(d))
                   for d in space.depth)

    def mismatch(self, space, arch_: Arch) -> str | None:
        if arch_.units != space.units:
            return f"units {arch_.units} != the space's {space.units}"
        for name in ("patch_size", "img_size", "in_chans", "num_classes", *space.model_fields()):
            if getattr(arch_, name) != getattr(space, name):
                return f"{name} {getattr(arch_, name)} != the space's {getattr(space, name)}"
        if arch_.mlp_ratio is None:
            return "it is given by mlp_hidden, not by mlp_ratio choices"
        if arch_.embed_dim not in space.embed_dim:
            return f"embed_dim {arch_.embed_dim} not in {list(space.embed_dim)}"
        if arch_.depth not in space.depth:
            return f"depth {arch_.depth} not in {list(space.depth)}"
        for i, la in enumerate(layers(arch_)):
            if la[0] not in block_local_units(space, i):
                return f"local_units[{i}] {la[0]} not in {list(block_local_units(space, i))}"
            if la[1:] not in layer_options(space, la[0]):
                return (f"block {i} (local_units {la[0]}: qkv_ratio {la[1]}, kernel_size {la[2]}, "
                        f"local_expansion {la[3]}, mlp_ratio {la[4]}) is not one of the space's "
                        f"{space.glit_grid}-grid choices for that split")
        return None

    def describe_space(self, space) -> str:
        split = f"split {list(space.split)}" if space.split is not None else f"local units {list(space.local_units)}"
        return (f"SearchSpace({space.name}: GLiT embed {list(space.embed_dim)}, depth {list(space.depth)}, "
                f"{space.units} units, {split}, e_v {plain(space.qkv_ratio)}, kernel {list(space.kernel_size)}, "
                f"e_c {plain(space.local_expansion)}, mlp {plain(space.mlp_ratio)}, {space.glit_grid} grid, "
                f"{space.img_size}px/{space.patch_size}{model_summary(space.model_fields())}, "
                f"10^{space.log10_size():.1f} archs)")

    def describe_kind(self, space) -> str:
        return f", GLiT {space.units} units"

    def mutate(self, space, arch_: Arch, rng: random.Random, mutation_prob: float, resample_prob: float) -> Arch:
        """Each block's split (local units) and then each of its free low-level genes re-drawn with
        `mutation_prob` (`mutate_layer`); depth and width as AutoFormer's."""
        blocks = layers(arch_)
        if rng.random() < resample_prob:
            depth = rng.choice(space.depth)
            blocks = blocks[:depth] + [sample_layer(space, rng, i) for i in range(len(blocks), depth)]
        embed = rng.choice(space.embed_dim) if rng.random() < resample_prob else arch_.embed_dim
        blocks = [mutate_layer(space, rng, i, la, mutation_prob) for i, la in enumerate(blocks)]
        return arch(space, embed, blocks)

    def crossover(self, space, a: Arch, b: Arch, rng: random.Random, embed: int, depth: int) -> Arch:
        """Whole blocks: a block's genes depend on its split."""
        la, lb = layers(a), layers(b)
        out = []
        for i in range(depth):
            have = [p for p in (la, lb) if i < len(p)]
            out.append(rng.choice(have)[i] if len(have) > 1 else have[0][i])
        return arch(space, embed, out)

    def level1(self, space):
        """GLiT's high-level space: the split per block, low-level genes at their middle choices."""
        if space.split is not None:
            raise ArchError("split: the level-1 space searches the split; this space fixes it")
        mid = {g: (middle(getattr(space, g)),) for g in GENES}
        return replace(space, name=f"{space.name}:level1", **mid)

    def level2(self, space, arch_: Arch):
        """GLiT's low-level space: `arch`'s embed width, depth and split fixed, every low-level gene free."""
        if arch_.units != space.units:
            raise ArchError(f"units: the arch has {arch_.units}, the space {space.units}")
        return replace(space, embed_dim=(arch_.embed_dim,), depth=(arch_.depth,), split=tuple(arch_.local_units),
                       name=f"{space.name.removesuffix(':level1')}:level2")

    # ---- costs: the local branch ----------------------------------------------------------
    def block_params(self, arch_: Arch, i: int) -> int:
        if not arch_.local_units[i]:
            return 0
        cl, e, k = local_dim(arch_, i), local_hidden(arch_, i), arch_.kernel_size[i]
        # pointwise to both GLU halves, depthwise conv over the tokens, BatchNorm, pointwise back
        return cl * 2 * e + 2 * e + e * k + e + 2 * e + e * cl + cl

    def block_flops(self, arch_: Arch, i: int) -> int:
        if not arch_.local_units[i]:
            return 0
        cl, e, k = local_dim(arch_, i), local_hidden(arch_, i), arch_.kernel_size[i]
        return arch_.tokens_in(i) * (cl * 2 * e + e * k + e * cl)  # pointwise (both GLU halves), depthwise, back

    paper_counter = "GLiT's own counter (GLU projection counted at half)"

    def paper_flops(self, arch_: Arch) -> int:
        """Multiply-adds as GLiT's public counter gives them, to compare with its paper: the pointwise
        projection into the GLU is counted at `c * e` per token instead of `c * 2e` (its output has
        both GLU halves); everything else as `count_flops` (it also skips softmax and norms)."""
        return count_flops(arch_) - sum(arch_.tokens_in(i) * local_dim(arch_, i) * local_hidden(arch_, i)
                                        for i in range(arch_.depth))

    # ---- models ---------------------------------------------------------------------------
    def block(self, arch_: Arch, i: int, **kwargs: Any):
        return self.load(self.block_class)(arch_.embed_dim, arch_.attn_dim(i), arch_.num_heads[i], arch_.head_dim[i],
                         local_hidden(arch_, i), arch_.kernel_size[i], arch_.mlp_hidden[i], **kwargs)

    def super_heads(self, space) -> tuple[int, None]:
        """No single head count / head dim: blocks size themselves (`super_block`)."""
        return space.units, None

    def super_block(self, space, i: int, *, dim: int, hidden: int, qkv_bias_layout: str,
                    layer_scale: float | None = None):
        """Sized for the splits block `i` may take: max heads = units - fewest local units, max head
        dim, max local units x max expansion, largest kernel (see `vitnas.supernet.glit`)."""
        w = dim // space.units
        local = block_local_units(space, i)
        heads, units = space.units - min(local), max(local)
        return self.load(self.super_block_class)(dim, heads, round(max(space.qkv_ratio) * w) if heads else 0, w, units,
                              int(max(space.local_expansion) * units * w) if units else 0,
                              max(space.kernel_size) if units else 0, hidden, eps=space.norm_eps)


FAMILY = GlitFamily()


# ---- one block's widths ----------------------------------------------------------------------------
def unit_dim(arch_: Arch) -> int:
    """Channels of one unit."""
    return arch_.embed_dim // arch_.units


def local_dim(arch_: Arch, layer: int) -> int:
    """Channels of block `layer`'s local (convolution) units; 0 without any."""
    return arch_.local_units[layer] * unit_dim(arch_)


def local_hidden(arch_: Arch, layer: int) -> int:
    """Width of block `layer`'s local branch after the GLU (expansion x its channels)."""
    return int(arch_.local_expansion[layer] * local_dim(arch_, layer))


# ---- one block's genes ------------------------------------------------------------------------
def block_local_units(space, layer: int) -> tuple[int, ...]:
    """The local-unit counts block `layer` may have."""
    return (space.split[layer],) if space.split is not None else space.local_units


def layer_options(space, local: int) -> tuple[tuple[float, int, float, float], ...]:
    """Every (e_v, kernel, e_c, FFN) a block with `local` local units may take."""
    return _layer_options(space, local)


def block_options(space, layer: int) -> list[Layer]:
    """Every choice of block `layer` as (L, e_v, kernel, e_c, FFN)."""
    return [(n, *o) for n in block_local_units(space, layer) for o in layer_options(space, n)]


def free_genes(space, local: int) -> tuple[str, ...]:
    """The low-level genes a block with `local` local units searches (the others are fixed or absent)."""
    return _free_genes(space, local)


def layers(arch_: Arch) -> list[Layer]:
    """`arch`'s blocks as (L, e_v, kernel, e_c, FFN) tuples."""
    ratios = arch_.mlp_ratio or tuple(m / arch_.embed_dim for m in arch_.mlp_hidden)
    return list(zip(arch_.local_units, arch_.qkv_ratio, arch_.kernel_size, arch_.local_expansion, ratios,
                    strict=True))


def arch(space, embed: int, blocks: Sequence[Layer]) -> Arch:
    """The arch of `space` with embed width `embed` and these blocks."""
    return Arch.create(embed_dim=embed, depth=len(blocks), units=space.units,
                       local_units=[la[0] for la in blocks], qkv_ratio=[la[1] for la in blocks],
                       kernel_size=[la[2] for la in blocks], local_expansion=[la[3] for la in blocks],
                       mlp_ratio=[la[4] for la in blocks], patch_size=space.patch_size, img_size=space.img_size,
                       in_chans=space.in_chans, num_classes=space.num_classes, **space.model_fields())


def sample_layer(space, rng: random.Random, layer: int, local: int | None = None) -> Layer:
    """A random choice of block `layer` (of `local` local units when given): L uniformly, then each
    of its free genes uniformly."""
    n = rng.choice(block_local_units(space, layer)) if local is None else local
    return _complete(space, rng, n, {})


def mutate_layer(space, rng: random.Random, layer: int, current: Layer, prob: float) -> Layer:
    """AutoFormer-style mutation of one block: re-draw L with `prob` (genes the block had keep their
    values where still free, genes of a branch it did not have are drawn), then every free gene
    with `prob`."""
    n = current[0]
    keep = dict(zip(GENES, current[1:], strict=True))
    local_choices = block_local_units(space, layer)
    if len(local_choices) > 1 and rng.random() < prob:
        n = rng.choice(local_choices)
    free = free_genes(space, n)
    keep = {g: v for g, v in keep.items() if g in free and v in getattr(space, g)}
    for g in free:
        if rng.random() < prob:
            keep[g] = rng.choice(getattr(space, g))
    return _complete(space, rng, n, keep)


def middle(values: Sequence) -> Any:
    """The middle choice (upper middle for an even count): GLiT's fixed value for a gene a block
    does not search (e_v 1, kernel 31, FFN 4 in its space)."""
    return values[len(values) // 2]


def _complete(space, rng: random.Random, local: int, genes: dict[str, float]) -> Layer:
    """A block of `local` local units with `genes`, drawing missing free genes and fixing the rest."""
    out = []
    free = free_genes(space, local)
    for g in GENES:
        if not _has_branch(space, local, g):
            out.append(0)
        elif g in free:
            out.append(genes[g] if g in genes else rng.choice(getattr(space, g)))
        else:
            out.append(middle(getattr(space, g)))
    return (local, float(out[0]), int(out[1]), float(out[2]), float(out[3]))


def _extreme(space, embed: int, depth: int, by: str, pick) -> Arch:
    """Blocks are independent and costs add up, so the per-block extreme gives the arch's extreme."""
    first, second = (count_params, count_flops) if by == "params" else (count_flops, count_params)
    out = []
    for i in range(depth):
        opts = block_options(space, i)
        costs = [(first(a), second(a)) for a in (arch(space, embed, [o]) for o in opts)]
        out.append(opts[costs.index(pick(costs))])
    return arch(space, embed, out)


def _has_branch(space, local: int, gene: str) -> bool:
    if gene == "qkv_ratio":
        return local < space.units
    if gene in ("kernel_size", "local_expansion"):
        return local > 0
    return True  # every block has its MLP


@functools.lru_cache(maxsize=256)
def _free_genes(space, local: int) -> tuple[str, ...]:
    genes = [g for g in GENES if _has_branch(space, local, g)]
    if space.glit_grid == "paper":
        if local == 0:
            genes = ["qkv_ratio", "mlp_ratio"]
        elif local == space.units:
            genes = ["kernel_size", "local_expansion"]
        else:
            genes = ["local_expansion", "mlp_ratio"]
    return tuple(genes)


@functools.lru_cache(maxsize=256)
def _layer_options(space, local: int) -> tuple[tuple[float, int, float, float], ...]:
    free = _free_genes(space, local)
    grids = []
    for g in GENES:
        if not _has_branch(space, local, g):
            grids.append((0,))
        elif g in free:
            grids.append(getattr(space, g))
        else:
            grids.append((middle(getattr(space, g)),))
    return tuple((float(a), int(b), float(c), float(d)) for a in grids[0] for b in grids[1] for c in grids[2]
                 for d in grids[3])
