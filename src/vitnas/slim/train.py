"""ViT-Slim's search: masks and weights trained jointly with the task loss plus L1 on the masks.

loss = task + w_attn*sum|m_attn| + w_mlp*sum|m_mlp| + w_tok*sum|tanh(m_tok)|, where task is
cross-entropy with label smoothing, or with `distill` the mean of that and KL(teacher || student)
on temperature-1 soft logits of the *unmasked* model (a frozen copy). AdamW at a constant lr
(ViT-Slim); weight decay on weight matrices only, none on masks, norms, biases, pos/cls tokens.
Under torchrun gradients are averaged over ranks; the L1 weights are *not* divided by the number
of processes (ViT-Slim's bug).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitnas.progress import progress as progress_bar
from vitnas.slim.masks import MaskedViT
from vitnas.train import DistInfo, Precision, average_gradients
from vitnas.train.loop import check_finite

WEIGHT_DECAY = 0.05
LABEL_SMOOTHING = 0.1


def _param_groups(masked: MaskedViT, lr: float, weight_decay: float) -> list[dict]:
    skip = set(getattr(masked.model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in masked.model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr},
            {"params": masked.mask_parameters(), "weight_decay": 0.0, "lr": lr}]


def apply_loss(loss: torch.Tensor, opt: torch.optim.Optimizer, precision: Precision, dist: DistInfo,
               where: str) -> None:
    """One update from `loss`: refused when not finite (`where` says which step), then backward,
    gradients averaged over ranks, an AMP-aware optimizer step."""
    check_finite(loss, where)
    opt.zero_grad(set_to_none=True)
    precision.backward(loss)
    if dist.world_size > 1:
        average_gradients([p for g in opt.param_groups for p in g["params"]], dist.world_size)
    precision.step(opt)


def epoch_means(step, loader, dist: DistInfo, desc: str, progress: bool) -> dict[str, float]:
    """`step(x, y, where)` over `loader` on `dist.device`, with a bar; the means of what the steps
    returned, as `train_<name>`."""
    sums: dict[str, float] = {}
    n = 0
    bar = progress_bar(loader, desc=desc, unit="steps", lines=False, enabled=progress and dist.is_main)
    for x, y in bar:
        s = step(x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True), f"{desc} step {n + 1}")
        for k, v in s.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        bar.set_postfix(loss=f"{s['loss']:.3f}")
    return {f"train_{k}": v / max(n, 1) for k, v in sums.items()}


class SlimTrainer:
    """Trains a `MaskedViT` (masks + weights) for ViT-Slim's budgeted pruning."""

    def __init__(self, masked: MaskedViT, *, lr: float, w_attn: float, w_mlp: float, w_token: float = 0.0,
                 distill: bool = True, label_smoothing: float = LABEL_SMOOTHING,
                 weight_decay: float = WEIGHT_DECAY, dist: DistInfo | None = None, amp: bool = True) -> None:
        self.masked = masked
        self.dist = dist or DistInfo(device=masked.model.pos_embed.device)
        self.w = (float(w_attn), float(w_mlp), float(w_token))
        self.teacher: nn.Module | None = None
        if distill:
            self.teacher = copy.deepcopy(masked.model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.opt = torch.optim.AdamW(_param_groups(masked, lr, weight_decay), lr=lr,
                                     foreach=True)
        self.precision = Precision(self.dist.device, amp)

    def step(self, x: torch.Tensor, y: torch.Tensor, where: str = "slim") -> dict[str, float]:
        m = self.masked
        m.train()
        with self.precision.autocast():
            logits = m(x)
            task = self.ce(logits.float(), y)
            kd = None
            if self.teacher is not None:
                with torch.no_grad():
                    t = self.teacher(x).float()
                kd = F.kl_div(F.log_softmax(logits.float(), -1), F.log_softmax(t, -1), log_target=True,
                              reduction="batchmean")
                task = 0.5 * task + 0.5 * kd
        l1 = m.sparsity_loss(*self.w).float()
        loss = task + l1
        apply_loss(loss, self.opt, self.precision, self.dist, where)
        out = {"loss": loss.item(), "l1": l1.item()}
        if kd is not None:
            out["kd"] = kd.item()
        return out

    def train_epoch(self, loader, epoch: int = 0, progress: bool = True) -> dict[str, float]:
        out = epoch_means(self.step, loader, self.dist, f"slim epoch {epoch + 1}", progress)
        out.update(self.mask_stats())
        return out

    @torch.no_grad()
    def mask_stats(self) -> dict[str, float]:
        m = self.masked
        a = torch.cat([x.detach().abs().flatten().float() for x in m.attn_masks])
        u = torch.cat([x.detach().abs().flatten().float() for x in m.mlp_masks])
        out = {"mask_attn_mean": a.mean().item(), "mask_mlp_mean": u.mean().item(),
               "mask_attn_below_0.1": (a < 0.1).float().mean().item(),
               "mask_mlp_below_0.1": (u < 0.1).float().mean().item()}
        if m.tokens:
            t = torch.cat([x.flatten().float() for x in m.token_masks()])
            out["mask_token_mean"] = t.mean().item()
        return out
