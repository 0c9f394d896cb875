"""NASViT's supernet training pieces (Gong et al., ICLR 2022; facebookresearch/NASViT): in-place
distillation with AlphaNet's adaptive alpha-divergence, and the gradient projection that keeps the
subnets' update from working against the largest subnet's.

- `alpha_divergence`: for each sample, the larger of D_a(p || q) at a = `alpha_min` (-1) and at
  `alpha_max` (+1), p the teacher's (the largest subnet's) probabilities and q the student's, with
  the importance ratio (p/q)^a clipped at `iw_clip` (5), as NASViT's `AdaptiveLossSoft`. Its value
  is AlphaNet's surrogate, whose gradient with respect to the student's logits is the gradient of
  the chosen D_a (tested against autograd of D_a where nothing is clipped).
- `project_conflicting`: the paper's rule. Where a subnet gradient g_s conflicts with the largest
  subnet's g_l (g_s . g_l < 0, per tensor), g_s is projected onto the normal plane of g_l:
  g_s - (g_s . g_l / |g_l|^2) g_l. The public code rescales g_s by a clamped factor instead, and
  only after epoch 100 (its issue #8); vitnas implements the paper.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def f_divergence(student_logits: torch.Tensor, teacher_probs: torch.Tensor, alpha: float,
                 iw_clip: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(D_alpha(p || q) per sample, AlphaNet's surrogate per sample whose gradient is D's)."""
    q = F.softmax(student_logits.float(), -1).detach()
    log_q = F.log_softmax(student_logits.float(), -1)
    ratio = teacher_probs.float() / q
    if abs(alpha) < 1e-3:
        ratio = ratio.clamp(0, iw_clip)
        f, base, rho = -ratio.log(), 0.0, ratio.log() - 1.0
    elif abs(alpha - 1.0) < 1e-3:
        f, base, rho = ratio * ratio.log(), 0.0, ratio
    else:
        iw = ratio.pow(alpha).clamp(0, iw_clip)
        base = 1.0 / alpha / (alpha - 1.0)
        f, rho = iw / alpha / (alpha - 1.0), iw / alpha + base
    return (q * (f - base)).sum(-1), -(q * rho * log_q).sum(-1)


def alpha_divergence(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *, alpha_min: float = -1.0,
                     alpha_max: float = 1.0, iw_clip: float = 5.0) -> torch.Tensor:
    """AlphaNet's adaptive alpha-divergence (NASViT's in-place distillation loss), batch mean."""
    d_min, s_min = f_divergence(student_logits, teacher_probs, alpha_min, iw_clip)
    d_max, s_max = f_divergence(student_logits, teacher_probs, alpha_max, iw_clip)
    pick = (d_min > d_max).float()
    return (pick * s_min + (1.0 - pick) * s_max).mean()


@torch.no_grad()
def project_conflicting(sub: Iterable[torch.Tensor | None], largest: Iterable[torch.Tensor | None]) -> int:
    """Project, in place and per tensor, each subnet gradient that conflicts with the largest
    subnet's onto the normal plane of the latter; returns how many tensors conflicted."""
    n = 0
    for gs, gl in zip(sub, largest, strict=True):
        if gs is None or gl is None:
            continue
        dot = (gs.float() * gl.float()).sum()
        if dot < 0:
            gs.sub_((dot / gl.float().pow(2).sum().clamp_min(1e-30)).to(gs.dtype) * gl)
            n += 1
    return n
