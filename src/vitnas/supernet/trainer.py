"""Supernet training steps: AutoFormer's uniform single-path sampling, or the sandwich rule with
in-place distillation (largest on labels; smallest and random subnets on the largest's output)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3

from vitnas.progress import progress as progress_bar
from vitnas.space import Arch, SearchSpace
from vitnas.supernet.glit import batchnorms, recalibrate_bn
from vitnas.supernet.model import Supernet
from vitnas.supernet.nasvit import alpha_divergence, project_conflicting
from vitnas.train import (
    DistInfo,
    Precision,
    average_gradients,
    evaluate,
    make_loss,
    make_mixup,
    make_optimizer,
    make_scheduler,
)
from vitnas.train.loop import check_finite
from vitnas.train.recipe import apply_update


def step_archs(space: SearchSpace, sampling: str, sandwich_random: int, seed: int, epoch: int,
               step: int) -> list[Arch]:
    """The subnets trained at one step. Depends only on (seed, epoch, step), never on the rank,
    so every data-parallel rank trains the same subnet."""
    rng = random.Random(repr(("subnet", seed, epoch, step)))
    if sampling == "uniform":
        return [space.sample(rng)]
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(sandwich_random)]


def subnet_record(accs: dict[str, float]) -> dict[str, float]:
    """An epoch's validation as history records it: `val_acc_<subnet>` and, with random subnets,
    their mean (`val_acc_random_mean`)."""
    record = {f"val_acc_{k}": v for k, v in accs.items()}
    rand = [v for k, v in accs.items() if k.startswith("random")]
    if rand:
        record["val_acc_random_mean"] = sum(rand) / len(rand)
    return record


def describe_subnets(record: dict[str, float]) -> str:
    """The epoch line's part for a supernet: `val smallest 0.412  largest 0.655  random mean 0.530`."""
    text = f"val smallest {record['val_acc_smallest']:.3f}  largest {record['val_acc_largest']:.3f}"
    if "val_acc_random_mean" in record:
        text += f"  random mean {record['val_acc_random_mean']:.3f}"
    return text


def validation_archs(space: SearchSpace, k: int, seed: int = 0) -> dict[str, Arch]:
    """Smallest, largest and `k` fixed random subnets: the same ones every epoch, so their curves
    show whether the supernet converges across the space."""
    rng = random.Random(repr(("val-subnets", seed)))
    archs = {"smallest": space.smallest(), "largest": space.largest()}
    archs.update({f"random{i}": space.sample(rng) for i in range(k)})
    return archs


class SupernetTrainer:
    def __init__(self, supernet: Supernet, *, dist: DistInfo, epochs: int, steps_per_epoch: int,
                 lr: float, min_lr: float, weight_decay: float, warmup_epochs: int, mixup: float,
                 cutmix: float, label_smoothing: float, ema_decay: float | None, amp: bool,
                 sampling: str = "uniform", sandwich_random: int = 2, seed: int = 0,
                 kd_warmup_epochs: int = 0) -> None:
        self.dist = dist
        self.kd_warmup_epochs = kd_warmup_epochs
        self.model = supernet.to(dist.device)
        self.space = supernet.space
        self.sampling, self.sandwich_random, self.seed = sampling, sandwich_random, seed
        self.optimizer = make_optimizer(self.model, lr, weight_decay)
        self.scheduler = make_scheduler(self.optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                        warmup_epochs=warmup_epochs, min_lr=min_lr)
        self.mixup = make_mixup(mixup=mixup, cutmix=cutmix, label_smoothing=label_smoothing,
                                num_classes=self.space.num_classes)
        self.loss_fn = make_loss(mixup_active=self.mixup is not None, label_smoothing=label_smoothing)
        self.precision = Precision(dist.device, amp)
        self.ema = ModelEmaV3(self.model, decay=ema_decay) if ema_decay else None
        self.updates = 0

    # ---- training -----------------------------------------------------------------------
    def train_epoch(self, loader: Iterable, epoch: int, progress: bool = True) -> dict[str, float]:
        self.model.train()
        total, n, conflicts = 0.0, 0, 0.0
        bar = progress_bar(loader, desc=f"supernet epoch {epoch + 1}", unit="steps", lines=False,
                           enabled=progress and self.dist.is_main)
        for step, (x, y) in enumerate(bar):
            x = x.to(self.dist.device, non_blocking=True)
            y = y.to(self.dist.device, non_blocking=True)
            target = y
            if self.mixup is not None:
                x, target = self.mixup(x, y)
            archs = step_archs(self.space, self.sampling, self.sandwich_random, self.seed, epoch, step)
            where = f"epoch {epoch + 1} step {step + 1}"
            if self.sampling == "nasvit":
                loss, c = self._step_nasvit(x, target, archs, where, distill=epoch >= self.kd_warmup_epochs)
                conflicts += c
            else:
                loss = self._step(x, target, archs, where)
            total += loss
            n += 1
            bar.set_postfix(loss=f"{loss:.3f}")
        out = {"train_loss": total / max(n, 1), "lr": self.optimizer.param_groups[0]["lr"]}
        if self.sampling == "nasvit":  # the share of weight tensors whose subnet gradient was projected
            out["conflicting_tensors"] = conflicts / max(n, 1)
        return out

    def _step(self, x: torch.Tensor, target: torch.Tensor, archs: Sequence[Arch], where: str) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        teacher = None
        first = 0.0
        for i, arch in enumerate(archs):
            with self.precision.autocast():
                logits = self.model(x, arch)
                if teacher is None:
                    loss = self.loss_fn(logits, target)
                    if len(archs) > 1:
                        teacher = logits.detach().float().softmax(-1)
                else:  # in-place distillation from the largest subnet
                    loss = torch.sum(-teacher * F.log_softmax(logits.float(), -1), -1).mean()
            check_finite(loss, f"{where} ({arch})")
            self.precision.backward(loss)
            if i == 0:
                first = loss.item()
        self.updates = apply_update(self.model, self.optimizer, self.scheduler, self.precision, self.ema,
                                    world_size=self.dist.world_size, updates=self.updates)
        return first

    def _step_nasvit(self, x: torch.Tensor, target: torch.Tensor, archs: Sequence[Arch], where: str, *,
                     distill: bool) -> tuple[float, float]:
        """NASViT's step (`vitnas.supernet.nasvit`): the largest subnet on the labels; the smaller ones
        on the labels during `kd_warmup_epochs`, then distilled from it by the adaptive
        alpha-divergence; their gradient, where it conflicts with the largest's (per tensor), projected
        onto its normal plane; the sum applied. Gradients are averaged over ranks before projecting."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            logits = self.model(x, archs[0])
            loss = self.loss_fn(logits, target)
        check_finite(loss, f"{where} ({archs[0]})")
        self.precision.backward(loss)
        average_gradients(params, self.dist.world_size)
        largest = [None if p.grad is None else p.grad.clone() for p in params]
        teacher = logits.detach().float().softmax(-1)
        self.optimizer.zero_grad(set_to_none=True)
        for arch in archs[1:]:
            with self.precision.autocast():
                out = self.model(x, arch)
                sub = alpha_divergence(out, teacher) if distill else self.loss_fn(out, target)
            check_finite(sub, f"{where} ({arch})")
            self.precision.backward(sub)
        average_gradients(params, self.dist.world_size)
        conflicts = project_conflicting([p.grad for p in params], largest)
        for p, g in zip(params, largest, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad.add_(g)
        self.updates = apply_update(self.model, self.optimizer, self.scheduler, self.precision, self.ema,
                                    world_size=1, updates=self.updates)  # averaged above
        return loss.item(), conflicts / max(len(params), 1)

    # ---- evaluation ---------------------------------------------------------------------
    @property
    def eval_model(self) -> Supernet:
        return self.ema.module if self.ema is not None else self.model

    def validate(self, data_fn, archs: dict[str, Arch], calib: torch.Tensor | None = None) -> dict[str, float]:
        """Val accuracy of each named subnet; `data_fn()` yields fresh (x, y) batches.

        A supernet with BatchNorm (GLiT local units) has running statistics mixed over every subnet
        trained, so each subnet's are recalibrated on `calib` (train images) before it is evaluated.
        """
        model = self.eval_model
        needs_calib = bool(batchnorms(model))
        if needs_calib and calib is None:
            raise ValueError("calib: this supernet has BatchNorm (GLiT local units); validating a subnet needs "
                             "calibration images to recalibrate its statistics")
        model.eval()
        out = {}
        for name, arch in archs.items():
            if needs_calib:
                recalibrate_bn(model, calib, arch)
            out[name] = evaluate(lambda x, a=arch: model(x, a), data_fn(), self.dist.device,
                                 self.precision.autocast)["acc"]
        return out

    # ---- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "precision": self.precision.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["precision"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.updates = int(state["updates"])


def trainer_from_config(supernet, cfg, dist: DistInfo, steps: int, epochs: int | None = None) -> SupernetTrainer:
    """A trainer with a `supernet:` recipe (params.yaml's section, or anything with its attributes);
    `epochs` overrides its schedule length (the hierarchical search's level-2 supernet)."""
    n = epochs or cfg.epochs
    return SupernetTrainer(
        supernet, dist=dist, epochs=n, steps_per_epoch=steps, lr=cfg.lr, min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay, warmup_epochs=min(cfg.warmup_epochs, n - 1), mixup=cfg.mixup,
        cutmix=cfg.cutmix, label_smoothing=cfg.label_smoothing, ema_decay=cfg.ema_decay, amp=cfg.amp,
        sampling=cfg.sampling, sandwich_random=cfg.sandwich_random, seed=cfg.seed,
        kd_warmup_epochs=cfg.kd_warmup)
