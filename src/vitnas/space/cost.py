"""Exact parameter and multiply-add counts of an `Arch`, without building it.

Search rejects candidates by params/FLOPs before evaluating them, so these must be cheap and must
agree with the built model: params exactly, multiply-adds with `torch.utils.flop_counter` (which
counts matmuls, convolutions and attention, not norms, softmax or activations). Token pruning
(`Arch.keep_tokens`) changes FLOPs, not params: the position embedding keeps every position.

GLiT blocks: the attention reads and writes only its `G * w` channels, and the local branch on the
other `L * w` channels costs its two pointwise projections (the first to both GLU halves, `2 * e`
outputs) and the depthwise conv (`e * k` per token). BatchNorm has 2 parameters per channel and,
like LayerNorm, GLU and Swish, no multiply-adds here (GLiT's own counter also halves the GLU
projection, see README).

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


def count_params(arch: Arch) -> int:
    """Trainable parameters of `vitnas.build(arch)`."""
    d, c, p = arch.embed_dim, arch.in_chans, arch.patch_size
    n = d * c * p * p + d  # patch embedding conv
    n += d + arch.num_tokens * d  # cls token + position embedding
    for i, (q, m) in enumerate(zip(arch.qkv_dim, arch.mlp_hidden, strict=True)):
        a = arch.attn_dim(i)  # channels the attention reads and writes (d unless GLiT)
        n += 2 * d  # norm1
        if q:
            n += a * 3 * q + 3 * q  # qkv (with bias)
            n += q * a + a  # proj
            if arch.rel_pos:
                n += 4 * (2 * arch.rel_pos_clip + 2) * arch.head_dim[i]  # key/value x vertical/horizontal
        if arch.is_glit and arch.local_units[i]:
            cl, e, k = arch.local_dim(i), arch.local_hidden(i), arch.kernel_size[i]
            n += cl * 2 * e + 2 * e  # pointwise to both GLU halves
            n += e * k + e  # depthwise conv over the tokens
            n += 2 * e  # BatchNorm
            n += e * cl + cl  # pointwise back
        n += 2 * d  # norm2
        n += d * m + m + m * d + d  # fc1, fc2
    n += 2 * d  # final norm
    n += d * arch.num_classes + arch.num_classes  # classifier
    return n


def count_flops(arch: Arch) -> int:
    """Multiply-adds of one forward pass at batch 1 (the usual "FLOPs" of ViT papers)."""
    d = arch.embed_dim
    macs = arch.num_patches * d * arch.in_chans * arch.patch_size**2  # patch embedding
    for i, (q, m) in enumerate(zip(arch.qkv_dim, arch.mlp_hidden, strict=True)):
        t = arch.tokens_in(i)  # slimmed models drop patch tokens block by block
        a = arch.attn_dim(i)
        macs += t * a * 3 * q  # qkv
        macs += 2 * t * t * q  # q @ k^T and attn @ v
        if arch.rel_pos:
            macs += 2 * t * t * q  # q . r_k and attn . r_v for every token pair
        macs += t * q * a  # proj
        if arch.is_glit and arch.local_units[i]:
            cl, e, k = arch.local_dim(i), arch.local_hidden(i), arch.kernel_size[i]
            macs += t * (cl * 2 * e + e * k + e * cl)  # pointwise (both GLU halves), depthwise, pointwise
        macs += 2 * t * d * m  # fc1 + fc2
    macs += d * arch.num_classes  # classifier on the pooled token (CLS or the patch-token mean)
    return macs


def count_flops_glit(arch: Arch) -> int:
    """Multiply-adds as GLiT's public counter gives them, to compare with its paper: the pointwise
    projection into the GLU is counted at `c * e` per token instead of `c * 2e` (its output has
    both GLU halves); everything else as `count_flops` (it also skips softmax and norms)."""
    macs = count_flops(arch)
    if arch.is_glit:
        macs -= sum(arch.tokens_in(i) * arch.local_dim(i) * arch.local_hidden(i) for i in range(arch.depth))
    return macs
