"""Exact parameter and multiply-add counts of an `Arch`, without building it.

Search rejects candidates by params/FLOPs before evaluating them, so these must be cheap and must
agree with the built model: params exactly, multiply-adds with `torch.utils.flop_counter` (which
counts matmuls, convolutions and attention, not norms, softmax or activations). Token pruning
(`Arch.keep_tokens`) changes FLOPs, not params: the position embedding keeps every position.
DynamicViT's predictors (`Arch.token_predictors`) add their parameters, and their multiply-adds on
the patch tokens they score, at every block where the count drops (`predicted_layers`).

What a block has besides attention and MLP is its family's (`BlockFamily.block_params` /
`block_flops`; GLiT's local branch, see `vitnas.families.glit`), and so is the width its attention
reads and writes (`Arch.attn_dim`).

Relative position (`Arch.rel_pos`, AutoFormer's): every attention layer has a key and a value module,
each with a vertical and a horizontal table of `2 * clip + 2` rows of head-dim entries, so
`4 * (2 * clip + 2) * head_dim` parameters. Its multiply-adds are counted as the model defines them
(AutoFormer's formulation): `q_i . r_k[i, j]` and `sum_j attn_ij r_v[i, j]` for every token pair,
`2 * t * t * q` per layer. vitnas computes the same terms on the small tables with fewer
multiply-adds (see `vitnas.models.relpos`), so `torch.utils.flop_counter` counts less on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: arch.py imports the memory check, which imports this
    from vitnas.space.arch import Arch


def predicted_layers(arch: Arch) -> list[tuple[int, int]]:
    """(block, patch tokens scored) for each block whose kept tokens a predictor chooses."""
    if not arch.token_predictors:
        return []
    out, before = [], arch.num_patches
    for i, k in enumerate(arch.keep_tokens):
        if k < before:
            out.append((i, before))
        before = k
    return out


def predictor_params(d: int) -> int:
    """DynamicViT's predictor: LN, Linear(d, d), then d -> d/2 -> d/4 -> 2."""
    h, q = d // 2, d // 4
    return 2 * d + d * d + d + d * h + h + h * q + q + q * 2 + 2


def predictor_macs(d: int) -> int:
    h, q = d // 2, d // 4
    return d * d + d * h + h * q + q * 2


def count_params(arch: Arch) -> int:
    """Trainable parameters of `vitnas.build(arch)`."""
    d, c, p = arch.embed_dim, arch.in_chans, arch.patch_size
    fam = arch.family
    n = d * c * p * p + d  # patch embedding conv
    n += d + arch.num_tokens * d  # cls token + position embedding
    for i, (q, m) in enumerate(zip(arch.qkv_dim, arch.mlp_hidden, strict=True)):
        a = fam.attn_dim(arch, i)  # channels the attention reads and writes (d unless GLiT)
        n += 2 * d  # norm1
        if q:
            n += a * 3 * q + 3 * q  # qkv (with bias)
            n += q * a + a  # proj
            if arch.rel_pos:
                n += 4 * (2 * arch.rel_pos_clip + 2) * arch.head_dim[i]  # key/value x vertical/horizontal
        n += fam.block_params(arch, i)  # what the family's block has besides attention and MLP
        n += 2 * d  # norm2
        n += d * m + m + m * d + d  # fc1, fc2
    n += 2 * d  # final norm
    n += d * arch.num_classes + arch.num_classes  # classifier
    return n + len(predicted_layers(arch)) * predictor_params(d)


def count_flops(arch: Arch) -> int:
    """Multiply-adds of one forward pass at batch 1 (the usual "FLOPs" of ViT papers)."""
    d, fam = arch.embed_dim, arch.family
    macs = arch.num_patches * d * arch.in_chans * arch.patch_size**2  # patch embedding
    for i, (q, m) in enumerate(zip(arch.qkv_dim, arch.mlp_hidden, strict=True)):
        t = arch.tokens_in(i)  # slimmed models drop patch tokens block by block
        a = fam.attn_dim(arch, i)
        macs += t * a * 3 * q  # qkv
        macs += 2 * t * t * q  # q @ k^T and attn @ v
        if arch.rel_pos:
            macs += 2 * t * t * q  # q . r_k and attn . r_v for every token pair
        macs += t * q * a  # proj
        macs += fam.block_flops(arch, i)
        macs += 2 * t * d * m  # fc1 + fc2
    macs += d * arch.num_classes  # classifier on the pooled token (CLS or the patch-token mean)
    return macs + sum(n * predictor_macs(d) for _, n in predicted_layers(arch))
