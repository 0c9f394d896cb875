"""Physical pruning: a smaller standalone `vitnas.build(plan.arch)` with the masks folded in.

Folding (exact, so the pruned model equals the masked model with its masks binarised by the
plan — dropped entries 0, kept entries at their soft values):

- attention: the mask of entry (h, d) scales q, k and v of that entry, so it multiplies the
  q, k and v rows of that entry in `attn.qkv` (weight and bias). The pruned layer has a smaller
  head dim d', so timm scales logits by 1/sqrt(d') instead of 1/sqrt(d): the q rows also get
  sqrt(d'/d). `attn.proj` keeps the columns of the kept entries. Relative-position layers (whole
  heads kept) carry the v mask on the attention output, so it scales `attn.proj`'s columns instead
  of v's rows, and the tables are copied unchanged.
- MLP: the mask sits after fc1 + GELU, so it multiplies the kept columns of `fc2`; `fc1` keeps
  the rows of the kept units unscaled (GELU is not linear, the mask cannot go before it).
- tokens: the plan's nested kept positions become `arch.keep_tokens` (counts, for `build` and
  `count_flops`) and, per block that drops tokens, a `token_rows` buffer (positions within its
  input sequence) in the state dict, so the pruned model gathers them out and never computes them.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer

from vitnas.models.build import REL_POS_KEYS, build
from vitnas.models.model_dir import ARCH_FILE, WEIGHTS_FILE, load_model, load_weights, save_model  # noqa: F401 (re-exported)
from vitnas.slim.budget import SlimPlan
from vitnas.slim.masks import MaskedViT


@torch.no_grad()
def prune(masked: MaskedViT, plan: SlimPlan) -> VisionTransformer:
    """`vitnas.build(plan.arch)` carrying the masked model's weights with the masks folded in."""
    src_arch, arch = masked.arch, plan.arch
    if (arch.embed_dim, arch.depth, arch.patch_size, arch.img_size, arch.in_chans, arch.num_classes) != (
            src_arch.embed_dim, src_arch.depth, src_arch.patch_size, src_arch.img_size, src_arch.in_chans,
            src_arch.num_classes):
        raise ValueError("plan: its arch differs from the masked model's outside heads/head dim/MLP widths")
    src = {k: v.detach() for k, v in masked.model.state_dict().items()}
    out: dict[str, torch.Tensor] = {k: v for k, v in src.items() if not k.startswith("blocks.")}
    for i in range(arch.depth):
        p = f"blocks.{i}."
        H, D = src_arch.num_heads[i], src_arch.head_dim[i]
        heads, dims, units = plan.heads[i], plan.dims[i], plan.mlp[i]
        hd = arch.head_dim[i]
        if len(heads) != arch.num_heads[i] or any(len(d) != hd for d in dims) or len(units) != arch.mlp_hidden[i]:
            raise ValueError(f"plan: layer {i} kept sets do not match its arch")
        m = masked.attn_masks[i].detach()
        cols = torch.tensor([h * D + d for h, ds in zip(heads, dims, strict=True) for d in ds], dtype=torch.long)
        mval = torch.stack([m[h, list(ds)] for h, ds in zip(heads, dims, strict=True)]).flatten()
        q_fix = math.sqrt(hd / D)
        rows = torch.cat([cols + s * H * D for s in range(3)])
        rel = src_arch.rel_pos  # the v mask sits on the attention output (see masks)
        v_scale = torch.ones_like(mval) if rel else mval
        scale = torch.cat([mval * q_fix, mval, v_scale]).to(src[p + "attn.qkv.weight"].dtype)
        out[p + "attn.qkv.weight"] = src[p + "attn.qkv.weight"][rows] * scale[:, None]
        if p + "attn.qkv.bias" in src:
            out[p + "attn.qkv.bias"] = src[p + "attn.qkv.bias"][rows] * scale
        out[p + "attn.proj.weight"] = src[p + "attn.proj.weight"][:, cols]
        if rel:
            out[p + "attn.proj.weight"] = out[p + "attn.proj.weight"] * mval.to(out[p + "attn.proj.weight"].dtype)
        out[p + "attn.proj.bias"] = src[p + "attn.proj.bias"]
        u = torch.tensor(units, dtype=torch.long)
        mm = masked.mlp_masks[i].detach()[u].to(src[p + "mlp.fc2.weight"].dtype)
        out[p + "mlp.fc1.weight"] = src[p + "mlp.fc1.weight"][u]
        out[p + "mlp.fc1.bias"] = src[p + "mlp.fc1.bias"][u]
        out[p + "mlp.fc2.weight"] = src[p + "mlp.fc2.weight"][:, u] * mm[None, :]
        out[p + "mlp.fc2.bias"] = src[p + "mlp.fc2.bias"]
        for k in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"):
            out[p + k] = src[p + k]
        if rel:  # whole heads: the tables stay as they are
            if hd != D:
                raise ValueError(f"plan: layer {i} cuts the head dim of a relative-position layer")
            for k in REL_POS_KEYS:
                out[p + k] = src[p + k]
    want = None if plan.tokens is None else tuple(len(t) for t in plan.tokens)
    if arch.keep_tokens != want:
        raise ValueError(f"plan: arch.keep_tokens {arch.keep_tokens} does not match its token keep-sets {want}")
    if plan.tokens is not None:
        prev = torch.arange(src_arch.num_patches)
        for i, keep in enumerate(plan.tokens):
            k = torch.tensor(sorted(keep), dtype=torch.long)
            if len(k) < len(prev):
                out[f"blocks.{i}.token_rows"] = torch.searchsorted(prev, k).to(masked.model.pos_embed.device)
            prev = k
    ref = masked.model.pos_embed
    model = build(arch).to(device=ref.device, dtype=ref.dtype)
    model.load_state_dict({k: v.contiguous() for k, v in out.items()}, strict=True)
    return model.train(masked.training)
