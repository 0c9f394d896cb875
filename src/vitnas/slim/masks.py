"""ViT-Slim soft masks on a timm ViT built by `vitnas.build`, without editing timm.

`MaskedViT(model, arch)` holds the masks and runs the wrapped model's own submodules by hand
(patch_embed, _pos_embed, each block's norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / act /
fc2, final norm and head), inserting the masks:

- attention: one mask per (head, head-dim) entry of every layer, shape [heads, head_dim],
  multiplying q, k and v of that entry (ViT-Slim). Initialised to 1. With relative position the
  masked q meets the key tables and the v mask multiplies the attention output instead (the same
  for v's term, and it also covers the value tables' term); such layers are pruned by whole heads,
  see `slim.budget`.
- MLP: one mask per hidden unit, multiplying the hidden activation after fc1 + GELU.
  Initialised to 1.
- tokens (optional, `tokens=True`): one score per *patch* position per block, the mask being
  `tanh(score)` (score initialised at 3). CLS is never masked. The effective token mask of
  block `l` is the cumulative minimum over blocks `0..l` of the clamped `tanh` values, so any
  global threshold gives nested keep-sets (kept at a later block => kept at every earlier one).
  In the soft forward the token mask weights the token *as a key/value*: attention logits get
  `log(mask)` added for that key, so a mask of 0 takes the token out of every other token's
  attention (ViT-Slim multiplied features, so "removed" tokens still acted as keys/values).
  Once binarised (`apply_plan`) masked tokens are *removed* from the sequence (gathered out), so
  they cost nothing and cannot act as keys or values.

The wrapped model's weights are trained jointly with the masks (ViT-Slim's search); the wrapper
owns no copy of them, so after training `prune.prune(masked, plan)` slices the trained weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from vitnas.models.build import RelPosAttention
from vitnas.models.relpos import rel_pos_attention
from vitnas.space.arch import Arch, ArchError

TOKEN_INIT = 3.0


def _check_model(model: nn.Module, arch: Arch) -> None:
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"model: expected a timm VisionTransformer (vitnas.build), got {type(model).__name__}")
    if arch.keep_tokens is not None:
        raise ValueError("model: its arch already removes tokens (keep_tokens); slim a model with every token")
    if arch.family.refusal("slim"):
        raise ArchError(f"model: {arch.family.refusal('slim')}")
    if len(model.blocks) != arch.depth:
        raise ValueError(f"model: has {len(model.blocks)} blocks, arch.depth is {arch.depth}")
    if model.cls_token is None or getattr(model, "global_pool", "token") not in ("token", "avg") \
            or model.num_reg_tokens:
        raise ValueError("model: masks need a CLS-token ViT without register tokens (global_pool 'token' or 'avg')")
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        want = (arch.num_heads[i], arch.head_dim[i], arch.mlp_hidden[i])
        have = (a.num_heads, a.head_dim, blk.mlp.fc1.out_features)
        if want != have:
            raise ValueError(f"model: block {i} has (heads, head_dim, mlp_hidden) {have}, arch says {want}")
        if not (isinstance(a.q_norm, nn.Identity) and isinstance(a.k_norm, nn.Identity)
                and isinstance(a.norm, nn.Identity) and getattr(a, "gate", None) is None):
            raise ValueError(f"model: block {i} attention has qk-norm/scale-norm/gating, which masks "
                             "cannot be folded through")


class MaskedViT(nn.Module):
    """A ViT with ViT-Slim soft masks; `forward(x)` gives class logits."""

    def __init__(self, model: VisionTransformer, arch: Arch, *, tokens: bool = False,
                 token_init: float = TOKEN_INIT) -> None:
        super().__init__()
        _check_model(model, arch)
        if tokens and arch.rel_pos:
            raise ArchError("slim.tokens: token pruning does not combine with relative position (the arch's rel_pos) "
                            "yet; set slim.tokens: false")
        self.model = model
        self.arch = arch
        self.tokens = bool(tokens)
        ref = model.pos_embed
        kw = {"device": ref.device, "dtype": ref.dtype}
        self.attn_masks = nn.ParameterList(
            nn.Parameter(torch.ones(h, d, **kw)) for h, d in zip(arch.num_heads, arch.head_dim, strict=True))
        self.mlp_masks = nn.ParameterList(nn.Parameter(torch.ones(m, **kw)) for m in arch.mlp_hidden)
        self.token_scores = nn.ParameterList(
            nn.Parameter(torch.full((arch.num_patches,), float(token_init), **kw))
            for _ in range(arch.depth)) if self.tokens else nn.ParameterList()
        # Hard token removal, set by `apply_plan`: per block, the kept patch positions (nested).
        self.token_keep: list[torch.Tensor] | None = None
        # Fading (`fade`): a constant factor per entry on top of its mask, 1 until a plan fades the
        # entries it drops; buffers, so they follow the model's device and never train.
        for i, (h, d) in enumerate(zip(arch.num_heads, arch.head_dim, strict=True)):
            self.register_buffer(f"attn_gate_{i}", torch.ones(h, d, **kw), persistent=False)
        for i, m in enumerate(arch.mlp_hidden):
            self.register_buffer(f"mlp_gate_{i}", torch.ones(m, **kw), persistent=False)

    # ---- parameters -------------------------------------------------------------------------
    def mask_parameters(self) -> list[nn.Parameter]:
        return [*self.attn_masks, *self.mlp_masks, *self.token_scores]

    def token_masks(self) -> list[torch.Tensor]:
        """Effective per-block patch-token masks in [0, 1]: cumulative min over depth of tanh(score)."""
        if not self.tokens:
            return []
        out, run = [], None
        for s in self.token_scores:
            t = torch.tanh(s).clamp(0.0, 1.0)
            run = t if run is None else torch.minimum(run, t)
            out.append(run)
        return out

    def sparsity_loss(self, w_attn: float, w_mlp: float, w_token: float = 0.0) -> torch.Tensor:
        """ViT-Slim's L1 terms: w_attn*sum|m_attn| + w_mlp*sum|m_mlp| + w_token*sum|tanh(m_tok)|.

        Not divided by the number of processes (ViT-Slim did, which weakens the penalty per GPU).
        """
        loss = self.model.pos_embed.new_zeros(())
        if w_attn:
            loss = loss + w_attn * sum(m.abs().sum() for m in self.attn_masks)
        if w_mlp:
            loss = loss + w_mlp * sum(m.abs().sum() for m in self.mlp_masks)
        if w_token and self.tokens:
            loss = loss + w_token * sum(torch.tanh(s).abs().sum() for s in self.token_scores)
        return loss

    @torch.no_grad()
    def scores(self) -> dict[str, list[torch.Tensor]]:
        """Importance of every prunable entry (CPU float tensors): |m_attn| [H, D] and |m_mlp| [M]
        per layer, and (with tokens) the effective nested token masks [num_patches] per layer. A
        faded entry ranks by its own mask, not times its fading factor, so that the plan of a later
        fading epoch can take it back (ranking by what it still contributes locks in the first plan:
        0.944 vs 0.965 val on the digits demo with every epoch fading)."""
        out = {"attn": [m.detach().abs().float().cpu() for m in self.attn_masks],
               "mlp": [m.detach().abs().float().cpu() for m in self.mlp_masks]}
        if self.tokens:
            out["tokens"] = [t.detach().float().cpu() for t in self.token_masks()]
        return out

    # ---- fading and binarisation --------------------------------------------------------------
    def _gate(self, kind: str, i: int) -> torch.Tensor:
        return getattr(self, f"{kind}_gate_{i}")

    @torch.no_grad()
    def fade(self, plan, level: float) -> None:
        """Scale the entries `plan` drops by `level` (1: untouched, 0: gone) and give every entry it
        keeps its full mask, so that training adapts to their removal before the physical cut."""
        for i, (heads, dims) in enumerate(zip(plan.heads, plan.dims, strict=True)):
            g = self._gate("attn", i)
            g.fill_(level)
            for h, ds in zip(heads, dims, strict=True):
                g[h, list(ds)] = 1.0
        for i, units in enumerate(plan.mlp):
            g = self._gate("mlp", i)
            g.fill_(level)
            g[list(units)] = 1.0

    @torch.no_grad()
    def apply_plan(self, plan) -> None:
        """Binarise in place by a `SlimPlan`: entries the plan drops become 0, kept ones keep their
        soft value; with tokens, dropped tokens are removed from the sequence from then on."""
        for i, (m, heads, dims) in enumerate(zip(self.attn_masks, plan.heads, plan.dims, strict=True)):
            keep = torch.zeros_like(m, dtype=torch.bool)
            for h, ds in zip(heads, dims, strict=True):
                keep[h, list(ds)] = True
            m.mul_(keep.to(m.dtype))
            if not keep.any():
                raise ValueError(f"plan: layer {i} keeps no attention entry")
        for m, units in zip(self.mlp_masks, plan.mlp, strict=True):
            keep = torch.zeros_like(m, dtype=torch.bool)
            keep[list(units)] = True
            m.mul_(keep.to(m.dtype))
        for i in range(self.arch.depth):  # the masks alone now say what is kept (as `prune` folds them)
            self._gate("attn", i).fill_(1.0)
            self._gate("mlp", i).fill_(1.0)
        if plan.tokens is not None:
            self.set_token_keep(plan.tokens)

    def set_token_keep(self, keep: Sequence[Sequence[int]] | None) -> None:
        """Remove tokens: `keep[l]` are the patch positions (0-based, CLS excluded) kept at block l;
        must be nested (keep[l+1] a subset of keep[l]). None switches back to soft token masks."""
        if keep is None:
            self.token_keep = None
            return
        if len(keep) != self.arch.depth:
            raise ValueError(f"token keep: {len(keep)} layers, expected {self.arch.depth}")
        prev: set[int] | None = None
        out = []
        for i, k in enumerate(keep):
            s = set(int(j) for j in k)
            if any(j < 0 or j >= self.arch.num_patches for j in s):
                raise ValueError(f"token keep[{i}]: positions must be in [0, {self.arch.num_patches})")
            if prev is not None and not s <= prev:
                raise ValueError(f"token keep[{i}]: not nested in keep[{i - 1}]")
            prev = s
            out.append(torch.tensor(sorted(s), dtype=torch.long, device=self.model.pos_embed.device))
        self.token_keep = out

    # ---- forward ----------------------------------------------------------------------------
    def _attention(self, blk: nn.Module, x: torch.Tensor, m: torch.Tensor,
                   key_bias: torch.Tensor | None) -> torch.Tensor:
        a = blk.attn
        b, n, _ = x.shape
        qkv = a.qkv(x).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        mask = m.to(qkv.dtype)[None, :, None, :]  # [1, H, 1, D] over [B, H, N, D]
        q, k, v = qkv[0] * mask, qkv[1] * mask, qkv[2] * mask
        attn_mask = None if key_bias is None else key_bias.to(q.dtype)[None, None, None, :]
        drop = a.attn_drop.p if self.training else 0.0
        if isinstance(a, RelPosAttention):
            # the masked q meets the key tables; the mask on v moves to the output, so that it also
            # covers the value tables' term (P @ (v * m) = (P @ v) * m, and a dropped entry gives 0)
            out = rel_pos_attention(q, k, qkv[2], a.rel_pos_k, a.rel_pos_v, scale=a.scale, grid=a.grid,
                                    attn_mask=attn_mask, dropout_p=drop) * mask
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=a.scale, dropout_p=drop)
        out = out.transpose(1, 2).reshape(b, n, a.num_heads * a.head_dim)
        return a.proj_drop(a.proj(out))

    def _mlp(self, mlp: nn.Module, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        h = mlp.drop1(mlp.act(mlp.fc1(x)))
        h = mlp.norm(h) * m.to(h.dtype)
        return mlp.drop2(mlp.fc2(h))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.model
        x = vit.patch_embed(x)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        soft_tokens = self.token_masks() if self.tokens and self.token_keep is None else None
        cur: torch.Tensor | None = None  # positions (CLS excluded) currently in the sequence
        for i, blk in enumerate(vit.blocks):
            key_bias = None
            if self.token_keep is not None:
                keep = self.token_keep[i]
                # rows of the current sequence to keep: CLS (row 0) + the kept patch positions
                if cur is None:
                    rows = keep + 1
                else:
                    rows = torch.searchsorted(cur, keep) + 1
                x = torch.cat((x[:, :1], x[:, rows]), dim=1)
                cur = keep
            elif soft_tokens is not None:
                t = soft_tokens[i]
                # log(mask) as an additive key bias: mask 0 -> the key gets no attention at all
                log_t = torch.where(t > 0, t.clamp_min(1e-30).log(), torch.full_like(t, -math.inf))
                key_bias = torch.cat((log_t.new_zeros(1), log_t))
            attn_mask = self.attn_masks[i] * self._gate("attn", i)
            x = x + blk.drop_path1(blk.ls1(self._attention(blk, blk.norm1(x), attn_mask, key_bias)))
            x = x + blk.drop_path2(blk.ls2(self._mlp(blk.mlp, blk.norm2(x), self.mlp_masks[i] * self._gate("mlp", i))))
        return vit.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.forward_features(x))
