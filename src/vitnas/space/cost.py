"""Exact parameter and multiply-add counts of an `Arch`, without building it.

Search rejects candidates by params/FLOPs before evaluating them, so these must be cheap and must
agree with the built model: params exactly, multiply-adds with `torch.utils.flop_counter` (which
counts matmuls, convolutions and attention, not norms, softmax or activations). Token pruning
(`Arch.keep_tokens`) changes FLOPs, not params: the position embedding keeps every position.
"""

from __future__ import annotations

from vitnas.space.arch import Arch


def count_params(arch: Arch) -> int:
    """Trainable parameters of `vitnas.build(arch)`."""
    d, c, p = arch.embed_dim, arch.in_chans, arch.patch_size
    n = d * c * p * p + d  # patch embedding conv
    n += d + arch.num_tokens * d  # cls token + position embedding
    for q, m in zip(arch.qkv_dim, arch.mlp_hidden, strict=True):
        n += 2 * d  # norm1
        n += d * 3 * q + 3 * q  # qkv (with bias)
        n += q * d + d  # proj
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
        macs += t * d * 3 * q  # qkv
        macs += 2 * t * t * q  # q @ k^T and attn @ v
        macs += t * q * d  # proj
        macs += 2 * t * d * m  # fc1 + fc2
    macs += d * arch.num_classes  # classifier on the CLS token
    return macs
