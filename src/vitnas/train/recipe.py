"""The timm/DeiT training recipe pieces: AdamW, per-step cosine with warmup, mixup/cutmix,
label smoothing, mixed precision."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from vitnas.train.distributed import average_gradients


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW without decay on norms, biases and `model.no_weight_decay()` (pos/cls tokens).

    `foreach` (multi-tensor) also on CPU, where torch would default to a per-tensor Python loop.
    """
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay, foreach=True)


def make_scheduler(optimizer, *, epochs: int, steps_per_epoch: int, warmup_epochs: int,
                   min_lr: float) -> CosineLRScheduler:
    """Cosine decay to `min_lr`, stepped every update (smooth on small datasets), linear warmup."""
    total = max(1, epochs * steps_per_epoch)
    base_lr = optimizer.param_groups[0]["lr"]
    return CosineLRScheduler(optimizer, t_initial=total, lr_min=min_lr, warmup_t=warmup_epochs * steps_per_epoch,
                             warmup_lr_init=min(min_lr, base_lr) or base_lr * 1e-3, t_in_epochs=False)


def make_mixup(*, mixup: float, cutmix: float, label_smoothing: float, num_classes: int) -> Mixup | None:
    if mixup <= 0 and cutmix <= 0:
        return None
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                 num_classes=num_classes)


def make_loss(*, mixup_active: bool, label_smoothing: float) -> nn.Module:
    """Soft-target CE when mixup makes soft labels (smoothing is folded in), else smoothed CE."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=label_smoothing)
    return nn.CrossEntropyLoss()


@dataclass
class Precision:
    """Mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); fp32 elsewhere."""

    device: torch.device
    enabled: bool = True

    def __post_init__(self) -> None:
        self.active = self.enabled and self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.active and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.active and self.dtype == torch.float16 else None

    def autocast(self):
        if not self.active:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)


def apply_update(model: nn.Module, optimizer, scheduler, precision: Precision, ema, *, world_size: int,
                 updates: int) -> int:
    """After backward: average gradients over ranks, step (AMP-aware), advance the per-step
    schedule and the EMA. Returns the new update count."""
    average_gradients(model.parameters(), world_size)
    precision.step(optimizer)
    updates += 1
    scheduler.step_update(updates)
    if ema is not None:
        ema.update(model, step=updates)
    return updates
