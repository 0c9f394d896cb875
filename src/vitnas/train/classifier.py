"""One standalone classifier trained with the timm/DeiT recipe: retraining and fine-tuning.

AdamW, per-step cosine with warmup, mixup/cutmix, label smoothing, mixed precision on CUDA, an
optional EMA of the weights (validated and saved instead of the raw weights), and optional soft
distillation from a frozen teacher (DeiT's soft variant):

    loss = (1 - alpha) * task + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

Data-parallel like the supernet: every rank holds the plain module and gradients are averaged in
one all-reduce (no DDP wrapper, so EMA, checkpoints and exports see the model itself).
`state_dict()` holds everything a bit-exact resume needs: model, EMA, optimizer, scheduler,
loss scaler, step count and the RNG states.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import ModelEmaV3

from vitnas.progress import progress as progress_bar
from vitnas.train.distributed import DistInfo
from vitnas.train.loop import check_finite, evaluate
from vitnas.train.recipe import Precision, apply_update, make_loss, make_mixup, make_optimizer, make_scheduler


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, scaled by T^2 (Hinton) so its gradient
    size does not shrink as T grows."""
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                    log_target=True, reduction="batchmean") * (t * t)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's state as a tensor and plain numbers: checkpoints load with weights_only=True
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ClassifierTrainer:
    """Trains `model` (images -> logits over `num_classes`) for `epochs` x `steps_per_epoch` updates."""

    def __init__(self, model: nn.Module, *, num_classes: int, epochs: int, steps_per_epoch: int, lr: float,
                 min_lr: float = 1e-5, weight_decay: float = 0.05, warmup_epochs: int = 0, mixup: float = 0.0,
                 cutmix: float = 0.0, label_smoothing: float = 0.1, ema_decay: float | None = None,
                 amp: bool = True, teacher: nn.Module | None = None, distill_alpha: float = 0.5,
                 distill_temperature: float = 1.0, dist: DistInfo | None = None, name: str = "train") -> None:
        if not 0.0 <= distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha: must be in [0, 1], got {distill_alpha}")
        if distill_temperature <= 0:
            raise ValueError(f"distill_temperature: must be > 0, got {distill_temperature}")
        self.dist = dist or DistInfo()
        self.name = name
        self.model = model.to(self.dist.device)
        self.optimizer = make_optimizer(self.model, lr, weight_decay)
        self.scheduler = make_scheduler(self.optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                        warmup_epochs=warmup_epochs, min_lr=min_lr)
        self.mixup = make_mixup(mixup=mixup, cutmix=cutmix, label_smoothing=label_smoothing,
                                num_classes=num_classes)
        self.loss_fn = make_loss(mixup_active=self.mixup is not None, label_smoothing=label_smoothing)
        self.precision = Precision(self.dist.device, amp)
        self.ema = ModelEmaV3(self.model, decay=ema_decay) if ema_decay else None
        self.teacher = None
        if teacher is not None:
            self.teacher = teacher.to(self.dist.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.alpha, self.temperature = float(distill_alpha), float(distill_temperature)
        self.updates = 0

    # ---- training -----------------------------------------------------------------------
    def train_epoch(self, loader: Iterable, epoch: int, progress: bool = True) -> dict[str, float]:
        """One pass over `loader`; mean train loss (and distillation term) and the final lr."""
        self.model.train()
        if self.teacher is not None:
            self.teacher.eval()  # a caller's .train() on a parent module must not wake its dropout
        sums: dict[str, float] = {}
        n = 0
        bar = progress_bar(loader, desc=f"{self.name} epoch {epoch + 1}", unit="steps", lines=False,
                           enabled=progress and self.dist.is_main)
        for step, (x, y) in enumerate(bar):
            stats = self.step(x, y, f"epoch {epoch + 1} step {step + 1}")
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            bar.set_postfix(loss=f"{stats['loss']:.3f}")
        out = {f"train_{k}": v / max(n, 1) for k, v in sums.items()}
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    def step(self, x: torch.Tensor, y: torch.Tensor, where: str = "step") -> dict[str, float]:
        """One update on a batch; raises `LossNotFinite` (weights untouched) on a NaN/Inf loss."""
        given = x
        x = x.to(self.dist.device, non_blocking=True)
        y = y.to(self.dist.device, non_blocking=True)
        target = y
        if self.mixup is not None:  # timm mixes in place: never in the caller's tensor
            x, target = self.mixup(x.clone() if x is given else x, y)
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            logits = self.model(x)
            loss = task = self.loss_fn(logits.float(), target)
            kd = None
            if self.teacher is not None:
                with torch.no_grad():
                    t_logits = self.teacher(x)
                kd = distill_loss(logits, t_logits, self.temperature)
                loss = (1 - self.alpha) * task + self.alpha * kd
        check_finite(loss, f"{self.name} {where}")
        self.precision.backward(loss)
        self.updates = apply_update(self.model, self.optimizer, self.scheduler, self.precision, self.ema,
                                    world_size=self.dist.world_size, updates=self.updates)
        out = {"loss": loss.item()}
        if kd is not None:
            out.update(task=task.item(), kd=kd.item())
        return out

    # ---- evaluation ---------------------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        """What is validated and saved: the EMA weights when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self, data: Iterable) -> dict[str, float]:
        """Top-1 accuracy and mean CE of `eval_model` over (images, labels) batches."""
        model = self.eval_model.eval()
        return evaluate(model, data, self.dist.device, self.precision.autocast)

    # ---- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "precision": self.precision.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None, "updates": self.updates,
                "rng": rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["precision"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("state: has no EMA weights but this trainer uses EMA")
            self.ema.load_state_dict(state["ema"])
        self.updates = int(state["updates"])
        if state.get("rng") is not None:
            set_rng_state(state["rng"])
