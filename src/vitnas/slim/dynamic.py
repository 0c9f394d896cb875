"""DynamicViT (Rao et al., NeurIPS 2021): per-image token pruning by prediction modules before chosen blocks.

Before each of `layers` (DynamicViT: blocks 3, 6, 9 of 12) a small predictor
(`vitnas.models.token_predictor`) scores every patch token from its own features and a
policy-weighted mean of the kept ones; the k-th keeps `keep_ratio ** k` of the patch tokens (CLS
always). `dynamic_arch` makes such an arch (`keep_tokens` + `token_predictors`); `vitnas.build`
makes its model, which prunes per image on its own; `DynamicViT` wraps it for training.

Training keeps the sequence whole: hard Gumbel-softmax decisions (multiplied by the previous ones)
mask the dropped tokens as keys in every later attention (each token still attends to itself), so
gradients reach the predictors; the loss (`dynamic_loss`) is cross-entropy + 2.0 x the squared gap
between each stage's kept fraction and its target + 0.5 x KL to the unpruned teacher's logits + 0.5
x MSE to its final features of the kept tokens. Inference (the built model itself) takes each
image's top-k tokens by predicted keep score, a fixed count per stage, so images batch, and drops
the others physically.

Differences from raoyongming/DynamicViT, on purpose: the token count comes from the arch (the
public code hard-codes 14 x 14 patches, so any other input size or patch size breaks); average
pooling (AutoFormer's `global_pool: avg`) averages the kept tokens in training as in inference; the
predictor's mean over kept tokens does not divide by zero when an image has none left (the public
code gives NaN then, one way to the NaN losses its issue #27 reports at keep ratios <= 0.7).
Relative position (AutoFormer's) is refused: its index follows token positions that pruning moves.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitnas.models.build import build
from vitnas.slim.train import apply_loss, epoch_means
from vitnas.space import Arch
from vitnas.space.cost import predicted_layers
from vitnas.train import DistInfo, Precision

RATIO_WEIGHT = 2.0
DISTILL_WEIGHT = 0.5


def default_layers(depth: int) -> tuple[int, ...]:
    """DynamicViT's placement, blocks 3, 6, 9 of 12, scaled to `depth`: before blocks depth/4,
    depth/2 and 3 depth/4 (fewer for shallow models, never before block 0)."""
    return tuple(sorted({round(depth * k / 4) for k in (1, 2, 3)} - {0}))


def keep_counts(num_patches: int, keep_ratio: float, stages: int) -> tuple[int, ...]:
    """Patch tokens kept after each stage: `int(num_patches * keep_ratio ** k)`, at least 1."""
    return tuple(max(1, int(num_patches * keep_ratio ** k)) for k in range(1, stages + 1))


def refusal(arch: Arch) -> str | None:
    """Why DynamicViT cannot prune `arch` (a sentence after the key it names), or None."""
    if arch.rel_pos:
        return ("space.rel_pos: DynamicViT does not combine with relative position (its table index follows the "
                "token positions that pruning moves); use a space without rel_pos")
    if arch.keep_tokens is not None:
        return "slim.token_keep_ratio: the model already removes tokens statically (ViT-Slim); use one of the two"
    if arch.family.refusal("keep_tokens"):
        return f"space.preset: {arch.family.refusal('keep_tokens')}"
    return None


def softmax_with_policy(logits: torch.Tensor, policy: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Attention weights with the dropped tokens (policy 0) masked as keys, each token still seeing
    itself, in float32 with DynamicViT's eps (its `softmax_with_policy`)."""
    B, N, _ = policy.shape
    keys = policy.reshape(B, 1, 1, N)
    eye = torch.eye(N, dtype=keys.dtype, device=keys.device).view(1, 1, N, N)
    keys = keys + (1.0 - keys) * eye
    a = (logits - logits.max(-1, keepdim=True)[0]).float().exp() * keys.float()
    return ((a + eps / N) / (a.sum(-1, keepdim=True) + eps)).type_as(logits)


def _attention(attn: nn.Module, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """timm's `Attention.forward` with `softmax_with_policy` in place of the softmax."""
    B, N, _ = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    w = attn.attn_drop(softmax_with_policy((q * attn.scale) @ k.transpose(-2, -1), policy))
    x = attn.norm((w @ v).transpose(1, 2).reshape(B, N, -1))
    return attn.proj_drop(attn.proj(x))


def _block(block: nn.Module, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    x = x + block.drop_path1(block.ls1(_attention(block.attn, block.norm1(x), policy)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def from_model(model: nn.Module, arch: Arch, keep_ratio: float = 0.7,
               layers: Sequence[int] | None = None) -> tuple[DynamicViT, Arch]:
    """A `DynamicViT` over a copy of `model` (a `vitnas.build(arch)` model with every token) with
    fresh predictors, and its arch; `model` itself is left as it is (the teacher)."""
    new = dynamic_arch(arch, keep_ratio, layers)
    net = build(new).to(next(model.parameters()).device)
    missing, unexpected = net.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(".predictor." not in k for k in missing):  # a bug, not user error
        raise RuntimeError(f"dynamic: weights do not carry over: {(unexpected or missing)[:3]}")
    return DynamicViT(net, new), new


def dynamic_arch(arch: Arch, keep_ratio: float = 0.7, layers: Sequence[int] | None = None) -> Arch:
    """`arch` with DynamicViT's predictors: before each of `layers` (default `default_layers`) the
    patch tokens drop to `keep_counts(...)`, chosen per image (`Arch.token_predictors`)."""
    why = refusal(arch)
    if why is not None:
        raise ValueError(why)
    layers = tuple(default_layers(arch.depth) if layers is None else layers)
    if not layers or list(layers) != sorted(set(layers)) or not 0 < layers[0] or layers[-1] >= arch.depth:
        raise ValueError(f"layers: increasing block indices in 1..{arch.depth - 1}, got {list(layers)}")
    if not 0 < keep_ratio < 1:
        raise ValueError(f"keep_ratio: must be in (0, 1), got {keep_ratio}")
    counts = keep_counts(arch.num_patches, keep_ratio, len(layers))
    keep, n = [], arch.num_patches
    for i in range(arch.depth):
        n = counts[layers.index(i)] if i in layers else n
        keep.append(n)
    return arch.replace(keep_tokens=keep, token_predictors=True)


class DynamicViT(nn.Module):
    """Trains the predictors of a `vitnas.build(arch)` model whose arch has `token_predictors`.

    `forward(x)`: in training, `(logits, final patch features, last decision, per-stage decisions)`
    (every token kept in the sequence, dropped ones masked as keys); in eval, the model itself
    (each image's top tokens after each predictor, removed physically)."""

    def __init__(self, model: nn.Module, arch: Arch) -> None:
        super().__init__()
        if not arch.token_predictors:
            raise ValueError("arch: no token predictors; make one with vitnas.slim.dynamic.dynamic_arch")
        self.model, self.num_patches = model, arch.num_patches
        self.stages = tuple(i for i, _ in predicted_layers(arch))
        self.counts = tuple(arch.keep_tokens[i] for i in self.stages)
        self.targets = tuple(c / arch.num_patches for c in self.counts)  # the fraction inference keeps
        self.avg_pool = model.global_pool == "avg"

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    def _head(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits from final-norm tokens `x` (average pooling over the kept tokens, `keep` [B, N, 1])."""
        m = self.model
        pooled = (x[:, 1:] * keep).sum(1) / keep.sum(1).clamp_min(1e-6) if self.avg_pool else x[:, 0]
        return m.head(m.head_drop(m.fc_norm(pooled)))

    def forward(self, x: torch.Tensor):
        return self.forward_train(x) if self.training else self.model(x)

    def forward_train(self, x: torch.Tensor):
        x = self._tokens(x)
        B, N = x.shape[0], self.num_patches
        prev = torch.ones(B, N, 1, dtype=x.dtype, device=x.device)
        policy, decisions = None, []
        for i, block in enumerate(self.model.blocks):
            if i in self.stages:
                score = block.predictor(x[:, 1:], prev)
                prev = F.gumbel_softmax(score, hard=True)[..., :1] * prev
                decisions.append(prev.reshape(B, N))
                policy = torch.cat([torch.ones_like(prev[:, :1]), prev], dim=1)
            x = block(x) if policy is None else _block(block, x, policy)
        x = self.model.norm(x)
        return self._head(x, prev), x[:, 1:], prev.detach(), decisions


def dynamic_loss(outputs, labels: torch.Tensor, teacher_logits: torch.Tensor, teacher_feats: torch.Tensor,
                 targets: Sequence[float], *, ce: nn.Module, ratio_weight: float = RATIO_WEIGHT,
                 distill_weight: float = DISTILL_WEIGHT) -> tuple[torch.Tensor, dict[str, float]]:
    """DynamicViT's `DistillDiffPruningLoss_dynamic` with `mse_token` (its DeiT setting): task loss
    + ratio_weight x mean over stages of the batch mean of (kept fraction - target)^2 + distill_weight
    x (KL to the teacher's logits + MSE to its final features on the kept tokens)."""
    logits, feats, last, decisions = outputs
    ratio = sum(((d.mean(1) - t) ** 2).mean() for d, t in zip(decisions, targets, strict=True)) / len(decisions)
    task = ce(logits.float(), labels)
    kl = F.kl_div(F.log_softmax(logits.float(), -1), F.log_softmax(teacher_logits.float(), -1), log_target=True,
                  reduction="batchmean")
    kept = last.reshape(-1) > 0.5
    C = feats.shape[-1]
    mse = (feats.reshape(-1, C)[kept].float() - teacher_feats.reshape(-1, C)[kept].float()).pow(2).mean() \
        if kept.any() else feats.new_zeros(())
    loss = task + ratio_weight * ratio + distill_weight * (kl + mse)
    return loss, {"task": task.item(), "ratio": float(ratio.detach()), "kl": kl.item(),
                  "token_mse": float(mse.detach()), "kept": float(decisions[-1].detach().mean())}


class DynamicTrainer:
    """Trains a `DynamicViT`: predictors at `lr`, the backbone at `lr x backbone_lr_scale`
    (DynamicViT: 0.01), AdamW; a frozen copy of `teacher`, the unpruned model, distils."""

    def __init__(self, dyn: DynamicViT, teacher: nn.Module, *, lr: float, backbone_lr_scale: float = 0.01,
                 weight_decay: float = 0.05, label_smoothing: float = 0.1, dist: DistInfo | None = None,
                 amp: bool = True) -> None:
        self.dyn = dyn
        self.dist = dist or DistInfo(device=next(dyn.parameters()).device)
        self.teacher = copy.deepcopy(teacher).eval()  # the caller's model stays trainable
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        skip = set(getattr(dyn.model, "no_weight_decay", lambda: set())())
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, p in dyn.named_parameters():
            scale = 1.0 if ".predictor." in name else backbone_lr_scale
            wd = 0.0 if p.ndim <= 1 or name.removeprefix("model.") in skip else weight_decay
            groups.setdefault((lr * scale, wd), []).append(p)
        self.opt = torch.optim.AdamW([{"params": ps, "lr": g_lr, "weight_decay": wd}
                                      for (g_lr, wd), ps in groups.items()], lr=lr, foreach=True)
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.precision = Precision(self.dist.device, amp)

    def step(self, x: torch.Tensor, y: torch.Tensor, where: str = "slim") -> dict[str, float]:
        self.dyn.train()
        with self.precision.autocast():
            outputs = self.dyn(x)
            with torch.no_grad():
                feats = self.teacher.forward_features(x)
                t_logits = self.teacher.forward_head(feats)
            # timm's forward_features ends with the final norm: the student's features are normed too
            loss, parts = dynamic_loss(outputs, y, t_logits, feats[:, 1:], self.dyn.targets, ce=self.ce)
        apply_loss(loss, self.opt, self.precision, self.dist, where)
        return {"loss": loss.item(), **parts}

    def train_epoch(self, loader, epoch: int = 0, progress: bool = True) -> dict[str, float]:
        """One pass over `loader`; the means of the loss and its parts (`train_*`)."""
        return epoch_means(self.step, loader, self.dist, f"slim epoch {epoch + 1}", progress)
