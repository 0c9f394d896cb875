"""The plain ViT family (AutoFormer / ViT-Slim): per layer a head count (of the space's fixed head
dim) and an MLP ratio, one embed width and a depth."""

from __future__ import annotations

import functools
import random
from typing import Any

from vitnas.errors import ArchError
from vitnas.families import FAMILIES, BlockFamily, family
from vitnas.space.arch import Arch, model_summary, per_layer
from vitnas.space.cost import count_flops, count_params


class VitFamily(BlockFamily):
    name = "vit"
    title = "ViT"
    block_class = "vitnas.models.build:Block"
    super_block_class = "vitnas.supernet.model:SuperBlock"
    shrink_genes = ("num_heads", "mlp_ratio")
    refusals = {"hierarchical": "'hierarchical' is GLiT's two-level search and needs a GLiT space (space.preset "
                                "glit-tiny or glit-demo)"}

    # ---- archs ----------------------------------------------------------------------------
    def create_fields(self, embed_dim: int, depth: int, given: dict[str, Any]) -> dict[str, Any]:
        for key, f, mark in _foreign():
            if given.get(key) is not None:
                raise ArchError(f"{mark}: required with {key} ({f.title} blocks)")
        if given.get("num_heads") is None:
            raise ArchError("num_heads: missing")
        head_dim = given.get("head_dim")
        return {"num_heads": per_layer("num_heads", given["num_heads"], depth, int),
                "head_dim": per_layer("head_dim", 64 if head_dim is None else head_dim, depth, int)}

    def check_arch(self, arch: Arch) -> None:
        for key, f, mark in _foreign():
            if getattr(arch, key) is not None:
                raise ArchError(f"{mark}: required with {key} ({f.title} blocks)")

    def describe_arch(self, arch: Arch) -> str:
        ratios = arch.mlp_ratio or tuple(round(m / arch.embed_dim, 2) for m in arch.mlp_hidden)
        return (f"Arch(embed={arch.embed_dim}, depth={arch.depth}, heads={list(arch.num_heads)}, "
                f"mlp={list(ratios)}, head_dim={arch.to_dict()['head_dim']}"
                + (f", tokens={list(arch.keep_tokens)}" if arch.keep_tokens is not None else "")
                + (" per image" if arch.token_predictors else "")
                + model_summary(arch.model_fields()) + ")")

    # ---- spaces ---------------------------------------------------------------------------
    def check_space(self, space) -> None:
        for key, f, mark in _foreign(space=True):
            if getattr(space, key) is not None and space.__dataclass_fields__[key].default is None:
                raise ArchError(f"{mark}: required with {key} (a {f.title} space)")

    def sample(self, space, rng: random.Random) -> Arch:
        depth = rng.choice(space.depth)
        embed = rng.choice(space.embed_dim)
        heads = [rng.choice(space.num_heads) for _ in range(depth)]
        ratios = [rng.choice(space.mlp_ratio) for _ in range(depth)]
        return space.make_arch(embed, heads, ratios)

    def extreme(self, space, by: str, pick) -> Arch:
        """Every dimension adds cost, so the smallest (largest) choice of each is the extreme by both."""
        d = pick(space.depth)
        return space.make_arch(pick(space.embed_dim), [pick(space.num_heads)] * d, [pick(space.mlp_ratio)] * d)

    def cost_range(self, space) -> tuple[int, int, int, int]:
        lo, hi = space.smallest(), space.largest()
        return count_params(lo), count_params(hi), count_flops(lo), count_flops(hi)

    def size(self, space) -> int:
        per_layer_ = len(space.num_heads) * len(space.mlp_ratio)
        return sum(len(space.embed_dim) * per_layer_**d for d in space.depth)

    def mismatch(self, space, arch: Arch) -> str | None:
        if arch.mlp_ratio is None:
            return "it is given by mlp_hidden, not by mlp_ratio choices"
        for name in ("patch_size", "img_size", "in_chans", "num_classes", *space.model_fields()):
            if getattr(arch, name) != getattr(space, name):
                return f"{name} {getattr(arch, name)} != the space's {getattr(space, name)}"
        if arch.embed_dim not in space.embed_dim:
            return f"embed_dim {arch.embed_dim} not in {list(space.embed_dim)}"
        if arch.depth not in space.depth:
            return f"depth {arch.depth} not in {list(space.depth)}"
        for i, h in enumerate(arch.num_heads):
            if h not in space.num_heads:
                return f"num_heads[{i}] {h} not in {list(space.num_heads)}"
        for i, r in enumerate(arch.mlp_ratio):
            if r not in space.mlp_ratio:
                return f"mlp_ratio[{i}] {r} not in {list(space.mlp_ratio)}"
        for i, d in enumerate(arch.head_dim):
            if d != space.head_dim:
                return f"head_dim[{i}] {d} != the space's {space.head_dim}"
        return None

    def describe_space(self, space) -> str:
        return (f"SearchSpace({space.name}: embed {list(space.embed_dim)}, depth {list(space.depth)}, "
                f"heads {list(space.num_heads)}, mlp {list(space.mlp_ratio)}, head_dim {space.head_dim}, "
                f"{space.img_size}px/{space.patch_size}{model_summary(space.model_fields())}, "
                f"10^{space.log10_size():.1f} archs)")

    def mutate(self, space, arch: Arch, rng: random.Random, mutation_prob: float, resample_prob: float) -> Arch:
        heads, ratios = list(arch.num_heads), list(arch.mlp_ratio)
        if rng.random() < resample_prob:
            depth = rng.choice(space.depth)
            if depth > len(heads):
                for _ in range(depth - len(heads)):
                    heads.append(rng.choice(space.num_heads))
                    ratios.append(rng.choice(space.mlp_ratio))
            else:
                heads, ratios = heads[:depth], ratios[:depth]
        embed = rng.choice(space.embed_dim) if rng.random() < resample_prob else arch.embed_dim
        for i in range(len(heads)):
            if rng.random() < mutation_prob:
                heads[i] = rng.choice(space.num_heads)
            if rng.random() < mutation_prob:
                ratios[i] = rng.choice(space.mlp_ratio)
        return space.make_arch(embed, heads, ratios)

    def crossover(self, space, a: Arch, b: Arch, rng: random.Random, embed: int, depth: int) -> Arch:
        heads, ratios = [], []
        for i in range(depth):
            have = [p for p in (a, b) if i < p.depth]
            heads.append(rng.choice(have).num_heads[i] if len(have) > 1 else have[0].num_heads[i])
            ratios.append(rng.choice(have).mlp_ratio[i] if len(have) > 1 else have[0].mlp_ratio[i])
        return space.make_arch(embed, heads, ratios)

    def level1(self, space):
        raise ArchError(f"units: level1 needs a GLiT space (space {space.name} has no local units)")

    def level2(self, space, arch: Arch):
        raise ArchError(f"units: level2 needs a GLiT space (space {space.name} has no local units)")

    # ---- models ---------------------------------------------------------------------------
    def block(self, arch: Arch, i: int, **kwargs: Any):
        extra = {}
        if arch.keep_tokens is not None:
            extra = {"tokens_in": arch.tokens_in(i - 1) - 1 if i else arch.num_patches,
                     "tokens_out": arch.keep_tokens[i], "predictor": arch.token_predictors}
        if arch.rel_pos:
            extra["rel_pos"] = (arch.img_size // arch.patch_size, arch.rel_pos_clip)
        block = self.load(self.block_class)
        return block(arch.embed_dim, arch.num_heads[i], arch.head_dim[i], arch.mlp_hidden[i], **kwargs, **extra)

    def super_block(self, space, i: int, *, dim: int, hidden: int, qkv_bias_layout: str,
                    layer_scale: float | None = None):
        rel = (space.img_size // space.patch_size, space.rel_pos_clip) if space.rel_pos else None
        block = self.load(self.super_block_class)
        keys = tuple((d, e) for d in space.depth for e in space.embed_dim if d > i)  # the subnets with block i
        return block(dim, max(space.num_heads), space.head_dim, hidden, eps=space.norm_eps, rel_pos=rel,
                     qkv_bias_layout=qkv_bias_layout, layer_scale=layer_scale, scale_keys=keys)


@functools.cache
def _foreign(space: bool = False) -> tuple[tuple[str, BlockFamily, str | None], ...]:
    """(key, the family it belongs to, that family's mark) for every field of the other families:
    a plain ViT arch or space has none of them (computed once: it is read for every arch built)."""
    return tuple((key, f, mark) for name, (_, mark) in FAMILIES.items() if name != VitFamily.name
                 for f in (family(name),) for key in (f.space_keys if space else f.arch_keys) if key != mark)


FAMILY = VitFamily()
