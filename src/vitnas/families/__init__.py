"""Block families: what kind of block an architecture's layers are, as one object each.

A family owns everything that differs between kinds of blocks (as timm chooses variants through
its layer factories and `block_fn`, not through `if`s): its genes and their sampling, mutation and
crossover, the exact cost of a block, how a space's extremes and size are found, why an arch is
not in a space, the standalone block and the supernet block, and its rules (what it does not
combine with, and why, in one sentence each).

The registry maps a family's name to its module (imported on first use, as timm's model
entrypoints) and to the `Arch` / `SearchSpace` field whose presence marks it; an arch or a space
with none of the marks is a plain ViT. Adding a family is one module under `vitnas/families/`
with a `FAMILY` object, and one line in `FAMILIES`.
"""

from __future__ import annotations

import importlib
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitnas.space.arch import Arch
    from vitnas.space.search_space import SearchSpace

# name -> (module, the field that marks the family, or None for the default family)
FAMILIES: dict[str, tuple[str, str | None]] = {
    "glit": ("vitnas.families.glit", "units"),
    "vit": ("vitnas.families.vit", None),
}
_LOADED: dict[str, BlockFamily] = {}
_DEFAULT = next(name for name, (_, mark) in FAMILIES.items() if mark is None)


def family(name: str) -> BlockFamily:
    """The registered family `name`."""
    fam = _LOADED.get(name)
    if fam is None:
        if name not in FAMILIES:
            raise KeyError(f"{name}: unknown block family; known: {', '.join(sorted(FAMILIES))}")
        fam = _LOADED[name] = importlib.import_module(FAMILIES[name][0]).FAMILY
    return fam


def family_name(fields: Any) -> str:
    """The family of an `Arch`, a `SearchSpace` or a mapping of their fields: the first whose mark is set."""
    mapping = not hasattr(fields, "__dataclass_fields__") and isinstance(fields, Mapping)
    for name, (_, mark) in FAMILIES.items():
        if mark is not None and (fields.get(mark) if mapping else getattr(fields, mark, None)) is not None:
            return name
    return _DEFAULT


def family_of(fields: Any) -> BlockFamily:
    return family(family_name(fields))


class BlockFamily(ABC):
    """The interface every family implements (see the module docstring): the abstract methods are
    what a family must say, the rest have defaults. `refusals` maps what the family does not support
    to why, in words a user reads after the key that asked for it."""

    name = ""
    title = ""
    arch_keys: tuple[str, ...] = ()  # Arch fields only this family has (arch.json keys)
    space_keys: tuple[str, ...] = ()  # SearchSpace fields only this family has
    space_unused: tuple[str, ...] = ()  # SearchSpace fields this family does not use (left out of to_dict)
    has = ""  # what its archs have that others' do not, as a mismatch message says it
    batchnorm = False  # subnets' BatchNorm statistics are recalibrated before evaluation
    derives_heads = False  # num_heads / head_dim follow from the family's fields (a block may have no heads)
    shrink_genes: tuple[str, ...] = ()  # per-layer genes whose smaller choice is cheaper (greedy slimming)
    refusals: Mapping[str, str] = {}

    # The family's blocks, "module:Class", imported on first use: they live with the layers they
    # belong to (`vitnas.models`, `vitnas.supernet`), which this layer sits below.
    block_class = ""
    super_block_class = ""

    def load(self, ref: str):
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)

    def refusal(self, what: str) -> str | None:
        """Why `what` (a capability: `rel_pos`, `keep_tokens`, `timm_weights`, `proxies`, `latency`,
        `slim`, `hierarchical`, `qkv_prefix`, `layer_scale`) does not combine with this family; None when it does."""
        return self.refusals.get(what)

    # ---- archs (`vitnas.space.arch`) -------------------------------------------------------
    @abstractmethod
    def create_fields(self, embed_dim: int, depth: int, given: dict[str, Any]) -> dict[str, Any]:
        """`Arch.create`'s family part: `num_heads`, `head_dim` and the family's own fields."""

    @abstractmethod
    def check_arch(self, arch: Arch) -> None:
        """Raise `ArchError` naming the field when `arch`'s family fields are inconsistent."""

    def arch_dict(self, arch: Arch) -> dict[str, Any]:
        """The family's keys of `arch.to_dict()`."""
        return {k: list(getattr(arch, k)) if isinstance(getattr(arch, k), tuple) else getattr(arch, k)
                for k in self.arch_keys}

    @abstractmethod
    def describe_arch(self, arch: Arch) -> str:
        """`str(arch)`."""

    def attn_dim(self, arch: Arch, i: int) -> int:
        """Channels block `i`'s attention reads and writes."""
        return arch.embed_dim

    # ---- spaces (`vitnas.space.search_space`) ------------------------------------------------
    @abstractmethod
    def check_space(self, space: SearchSpace) -> None:
        """Check (and make canonical) the space's family fields; `ArchError` naming the field."""

    @abstractmethod
    def sample(self, space: SearchSpace, rng: random.Random) -> Arch:
        """A uniformly random arch of the space, drawn from `rng` only."""

    @abstractmethod
    def extreme(self, space: SearchSpace, by: str, pick) -> Arch:
        """The arch with the least (`pick=min`) or most (`max`) `by` ("params" or "flops")."""

    @abstractmethod
    def cost_range(self, space: SearchSpace) -> tuple[int, int, int, int]:
        """Exact (min params, max params, min FLOPs, max FLOPs) over every arch of the space."""

    @abstractmethod
    def size(self, space: SearchSpace) -> int:
        """Number of distinct archs of the space."""

    @abstractmethod
    def mismatch(self, space: SearchSpace, arch: Arch) -> str | None:
        """Why `arch` is not one of `space`'s archs (the first reason), or None."""

    @abstractmethod
    def describe_space(self, space: SearchSpace) -> str:
        """`str(space)`."""

    def describe_kind(self, space: SearchSpace) -> str:
        """What `vitnas spaces` adds after a space's input shape (", GLiT 3 units")."""
        return ""

    def check_widths(self, space: SearchSpace) -> None:
        """Checks once the common fields are canonical (none by default)."""
        return None

    @abstractmethod
    def level1(self, space: SearchSpace) -> SearchSpace:
        """GLiT's high-level space, or `ArchError` where the family has no hierarchical search."""

    @abstractmethod
    def level2(self, space: SearchSpace, arch: Arch) -> SearchSpace:
        """GLiT's low-level space around `arch`, or `ArchError` as `level1`."""

    @abstractmethod
    def mutate(self, space: SearchSpace, arch: Arch, rng: random.Random, mutation_prob: float,
               resample_prob: float) -> Arch:
        """AutoFormer-style mutation of `arch` within the space."""

    @abstractmethod
    def crossover(self, space: SearchSpace, a: Arch, b: Arch, rng: random.Random, embed: int, depth: int) -> Arch:
        """A child of depth `depth` and width `embed` whose layers come from `a` and `b`."""

    def shrink_actions(self, space: SearchSpace, arch: Arch) -> list[tuple[str, Arch]]:
        """EfficientFormer's slimming actions from `arch`, each as (what it does, the arch after it):
        the next smaller depth (the last blocks go: a supernet's depth d is its first d blocks), the
        next narrower embed width, and each layer's next smaller choice of each `shrink_genes` gene;
        only actions whose result is in `space`, in that order (ties go to the first)."""
        from vitnas.errors import ArchError

        d = arch.to_dict()
        if self.derives_heads:
            d.pop("num_heads"), d.pop("head_dim")
        layered = [k for k, v in d.items() if isinstance(v, list) and len(v) == arch.depth]
        proposals: list[tuple[str, dict[str, Any]]] = []
        depth = max((x for x in space.depth if x < arch.depth), default=None)
        if depth is not None:
            proposals.append((f"depth {arch.depth}->{depth}", {"depth": depth} | {k: d[k][:depth] for k in layered}))
        embed = max((x for x in space.embed_dim if x < arch.embed_dim), default=None)
        if embed is not None:
            proposals.append((f"embed {arch.embed_dim}->{embed}", {"embed_dim": embed}))
        for i in range(arch.depth):
            for gene in self.shrink_genes:
                smaller = [c for c in getattr(space, gene) if c < d[gene][i]]
                if smaller:
                    values = list(d[gene])
                    values[i] = max(smaller)
                    proposals.append((f"layer {i} {gene} {d[gene][i]:g}->{values[i]:g}", {gene: values}))
        out = []
        for name, change in proposals:
            try:
                new = type(arch).from_dict(d | change)
            except ArchError:
                continue
            if space.mismatch(new) is None:
                out.append((name, new))
        return out

    # ---- costs (`vitnas.space.cost`): what a block has besides attention and MLP ----------------
    def block_params(self, arch: Arch, i: int) -> int:
        return 0

    def block_flops(self, arch: Arch, i: int) -> int:
        return 0

    paper_counter = ""  # whose multiply-add counter `paper_flops` follows, to compare with a paper

    def paper_flops(self, arch: Arch) -> int | None:
        """Multiply-adds as the family's paper counts them, where that differs from `count_flops`."""
        return None

    # ---- models -------------------------------------------------------------------------------
    @abstractmethod
    def block(self, arch: Arch, i: int, **kwargs: Any):
        """Block `i` of `vitnas.build(arch)` (timm's `block_fn` keyword arguments in `kwargs`)."""

    def super_heads(self, space: SearchSpace) -> tuple[int, int | None]:
        """The supernet's (head count, head dim) as tools read them (`Supernet.num_heads` / `head_dim`)."""
        return max(space.num_heads), space.head_dim

    @abstractmethod
    def super_block(self, space: SearchSpace, i: int, *, dim: int, hidden: int, qkv_bias_layout: str,
                    layer_scale: float | None = None):
        """Block `i` of the supernet over `space` (embed width `dim`, MLP hidden `hidden`, NASViT's
        switchable layer scales starting at `layer_scale`); it has `plan(arch, i)` (its forward's
        arguments after the width) and `views(arch, i)`."""


def extremes_by(space: SearchSpace) -> tuple[Arch, ...]:
    """The archs that bound the space's costs: smallest and largest by params, and by FLOPs where
    those differ (they do when blocks trade params for FLOPs)."""
    out = [space.smallest(), space.largest()]
    for a in (space.smallest(by="flops"), space.largest(by="flops")):
        if a not in out:
            out.append(a)
    return tuple(out)
