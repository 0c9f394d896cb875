"""Slim stage: ViT-Slim soft masks on the searched arch, cut to a FLOPs/params budget, pruned; or
DynamicViT's per-image token predictors (`slim.method: dynamicvit`, `_run_dynamic`).

Input model: the searched `arch.json` with weights inherited from the supernet (`extract`), or
a model directory (`arch.json` + `model.safetensors`, e.g. retrain's output or any
`vitnas.build` model) given as `arch_path`, in which case the supernet is not needed.

Steps: val accuracy of the unmasked model; masks (attention head-dims, MLP units) and weights
trained jointly for `slim.epochs` on the augmented train split with L1 on the masks (and
distillation from the unmasked model); the budget solver picks the kept entries whose physical
arch hits `slim.target_flops_ratio` / `slim.target_params_ratio` within 2% (exact counts); the
masks are binarised and folded into a smaller standalone model; its val accuracy. No fine-tune.

Tokens (`slim.token_keep_ratio` set): token masks are trained too (L1 weight `slim.w_token`),
that fraction of the (layer, patch) token slots is kept as nested per-layer sets, and the pruned
model removes the others physically (`arch.keep_tokens`); the widths are then solved for the
FLOPs that remain. Token pruning ties the model to its input size, so it is off by default.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from vitnas.config import Params
from vitnas.data import PreparedData
from vitnas.errors import ConfigError
from vitnas.models.model_dir import ARCH_FILE, save_model
from vitnas.slim import BudgetError, BudgetSolver, MaskedViT, SlimTrainer, prune, token_plan
from vitnas.slim.dynamic import DynamicTrainer, from_model
from vitnas.space import Arch, count_flops, count_params
from vitnas.stages._inputs import check_fits_data, load_input_model, train_dataset
from vitnas.stages._io import atomic_dir, claim_output, flat_metrics, write_json
from vitnas.stages._model_log import log_model_dir, model_example
from vitnas.stages._runner import EpochRunner
from vitnas.stages._tracked import open_run
from vitnas.stages.contract import STAGES
from vitnas.train import batches, evaluate, init_distributed, reseed, steps_per_epoch

OUTPUTS = (*STAGES["slim"].outputs, STAGES["slim"].metrics)  # always written (the contract)
TOL = 0.02  # the pruned model's FLOPs/params are within 2% of the target


def target_key(kind: str) -> str:
    return "slim.target_params_ratio" if kind == "params" else "slim.target_flops_ratio"


def plot_widths(before: Arch, after: Arch, path: Path) -> None:
    """ViT-Slim's figure: per-layer attention (heads x head dim) and MLP widths, before vs after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = np.arange(before.depth)
    panels = [("attention dims (heads x head dim)", before.qkv_dim, after.qkv_dim),
              ("MLP hidden units", before.mlp_hidden, after.mlp_hidden)]
    if after.keep_tokens is not None:
        panels.append(("patch tokens in", [before.num_patches] * before.depth, after.keep_tokens))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(8, 0.6 * before.depth + 6) * len(panels) / 2, 3.8))
    for ax, (title, b, a) in zip(axes, panels, strict=True):
        ax.bar(layers - 0.2, b, width=0.4, label="before", color="#bbbbbb")
        ax.bar(layers + 0.2, a, width=0.4, label="after", color="#1f77b4")
        ax.set(xlabel="layer", title=title, xticks=layers)
        ax.legend(fontsize=8)
    for i, (h, d) in enumerate(zip(after.num_heads, after.head_dim, strict=True)):
        axes[0].annotate(f"{h}x{d}", (i + 0.2, after.qkv_dim[i]), ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(params: Params, data_dir: str | Path, supernet_path: str | Path | None, arch_path: str | Path,
        out: str | Path, *, device: str = "auto", track: bool | None = None,
        progress: bool = True, force: bool = False) -> dict[str, float]:
    """Slim the model to the budget; writes `out/arch.json`, `model.safetensors`, `metrics.json`,
    `widths.png`. `arch_path`: an arch.json (weights from `supernet_path`) or a model directory.
    `force`: replace `out` even when vitnas did not write it (a directory only)."""
    with claim_output(out, "slim", force=force, inputs=[data_dir, supernet_path, arch_path]):
        return _run(params, data_dir, supernet_path, arch_path, Path(out), device=device, track=track,
                    progress=progress)


def _run(params: Params, data_dir: str | Path, supernet_path: str | Path | None, arch_path: str | Path,
         out: Path, *, device: str, track: bool | None, progress: bool) -> dict[str, float]:
    cfg = params.slim
    dist = init_distributed(device)
    dev = dist.device
    data = PreparedData(data_dir)
    model, arch, source = load_input_model(arch_path, supernet_path, dev)
    where = Path(arch_path) / ARCH_FILE if Path(arch_path).is_dir() else Path(arch_path)
    check_fits_data(arch, data, where)
    check_reachable(cfg, arch, where)
    train_ds = train_dataset(data, params)
    steps_per_epoch(len(train_ds), cfg.batch_size, dist.world_size, "slim.batch_size")
    xv, yv = data.eval_tensors("val")
    inputs = {"data": data_dir, "supernet": supernet_path, "arch": arch_path}
    val_acc = accuracy_on(xv, yv, max(cfg.batch_size, 256), dev)
    if cfg.method == "dynamicvit":
        return _run_dynamic(params, data, train_ds, val_acc, model, arch, out, dist, where, track=track,
                            progress=progress, inputs=inputs, source=source)

    reseed(cfg.seed, "init")
    model = model.to(dev).eval()
    acc_before = val_acc(model) if dist.is_main else float("nan")
    masked = MaskedViT(model, arch, tokens=cfg.token_keep_ratio is not None).to(dev)
    trainer = SlimTrainer(masked, lr=cfg.lr, w_attn=cfg.w_attn, w_mlp=cfg.w_mlp,
                          w_token=cfg.w_token if masked.tokens else 0.0, distill=cfg.distill, dist=dist)
    loop = EpochRunner("slim", trainer, train_ds, cfg, dist, model=masked,
                       hint="Nothing was written. Lower slim.lr or the mask penalties (slim.w_attn, slim.w_mlp)")

    fading = Fading(cfg, arch, masked)

    def evaluate_masked(epoch: int, stats: dict) -> dict[str, float]:
        masked.eval()
        return {"val_acc_masked": val_acc(masked), **fading.record()}

    t0 = time.time()
    with open_run("slim", params, track, main=dist.is_main, system_metrics=True, tags={"vitnas.slim.source": source},
                  inputs=inputs) as run_:
        history = loop.run(run_, progress=progress, evaluate=evaluate_masked, before=fading, describe=describe_epoch)
        metrics: dict[str, float] = {}
        if dist.is_main:
            pruned, after, metrics = _cut(cfg, arch, masked, val_acc, xv[:64].to(dev), fading.plan,
                                          acc_soft=history[-1]["val_acc_masked"])
            metrics = flat_metrics(metrics | {"val_acc_before": acc_before, "slim_seconds": round(time.time() - t0, 2)})
            check_cut(cfg, metrics)
            _write_outputs(out, run_, data, pruned, arch, after, metrics)
            kind, ratio = cfg.target
            before_n, after_n = (metrics["flops_before"], metrics["flops_after"]) if kind == "flops" else \
                (metrics["params_before"], metrics["params_after"])
            print(f"slim: {kind} {before_n:,} -> {after_n:,} ({after_n / before_n:.3f}, target {ratio:g}); val acc "
                  f"{acc_before:.3f} -> {metrics['val_acc_after']:.3f}; {after}", flush=True)
        dist.barrier()
    return metrics


def _run_dynamic(params: Params, data: PreparedData, train_ds, val_acc, model, arch: Arch, out: Path, dist,
                 where: Path, *, track: bool | None, progress: bool, inputs: dict, source: str) -> dict[str, float]:
    """DynamicViT (`slim.method: dynamicvit`): predictors trained on the input model (its frozen copy
    the teacher) for `slim.epochs`; the output model prunes each image's tokens itself."""
    cfg, dev = params.slim, dist.device
    reseed(cfg.seed, "init")  # the predictors' initialisation
    try:
        dyn, new = from_model(model.to(dev).eval(), arch, cfg.token_keep_ratio)
    except ValueError as e:
        raise ConfigError(f"{e} ({where})") from None
    acc_before = val_acc(model) if dist.is_main else float("nan")
    trainer = DynamicTrainer(dyn, model, lr=cfg.lr, dist=dist)
    loop = EpochRunner("slim", trainer, train_ds, cfg, dist, model=dyn, hint="Nothing was written. Lower slim.lr")
    t0 = time.time()
    with open_run("slim", params, track, main=dist.is_main, system_metrics=True, inputs=inputs,
                  tags={"vitnas.slim.source": source, "vitnas.slim.method": "dynamicvit"}) as run_:
        loop.run(run_, progress=progress, describe=lambda r: f"kept {r['train_kept']:.3f} (last stage)",
                 evaluate=lambda epoch, stats: {"val_acc_pruned": val_acc(dyn.model.eval())})
        metrics: dict[str, float] = {}
        if dist.is_main:
            metrics = flat_metrics(cost_metrics(arch, new) | {
                "val_acc_before": acc_before,
                "val_acc_after": loop.history[-1]["val_acc_pruned"], "token_keep_ratio": cfg.token_keep_ratio,
                "tokens_kept": sum(new.keep_tokens) / (arch.depth * arch.num_patches), "epochs": cfg.epochs,
                "slim_seconds": round(time.time() - t0, 2)})
            _write_outputs(out, run_, data, dyn.model, arch, new, metrics)
            print(f"slim (dynamicvit): patch tokens per block {list(new.keep_tokens)} chosen per image; FLOPs "
                  f"{metrics['flops_before']:,} -> {metrics['flops_after']:,} ({metrics['flops_ratio']:.3f}); "
                  f"val acc {acc_before:.3f} -> {metrics['val_acc_after']:.3f}", flush=True)
        dist.barrier()
    return metrics


def cost_metrics(before: Arch, after: Arch) -> dict[str, float]:
    """Params and FLOPs before and after slimming, and their ratios (exact counts)."""
    pb, pa, fb, fa = count_params(before), count_params(after), count_flops(before), count_flops(after)
    return {"params_before": pb, "params_after": pa, "params_ratio": pa / pb,
            "flops_before": fb, "flops_after": fa, "flops_ratio": fa / fb}


def _write_outputs(out: Path, run_, data: PreparedData, model, before: Arch, after: Arch, metrics: dict) -> None:
    """The slim contract (model directory, metrics.json, widths.png) written at once, then logged."""
    with atomic_dir(out, "slim") as tmp:
        save_model(model, after, tmp, dataset=data.meta)
        write_json(tmp / "metrics.json", metrics)
        plot_widths(before, after, tmp / "widths.png")
    run_.log_metrics(metrics)
    log_model_dir(run_, model, out, after, model_example(data, after))
    for name in ("arch.json", "widths.png"):
        run_.log_artifact(out / name)


def describe_epoch(r: dict) -> str:
    """The epoch line's part for slimming: mask means, val with the soft masks, the fading level."""
    return (f"masks attn {r['mask_attn_mean']:.3f} mlp {r['mask_mlp_mean']:.3f}  val (soft masks) "
            f"{r['val_acc_masked']:.3f}" + (f"  fading {r['fade_level']:.2f}" if "fade_level" in r else ""))


class Fading:
    """The last `slim.fade_epochs` epochs fade out what the budget drops: at the start of each, the
    budget is solved on the masks and the entries it drops train scaled by a level that falls
    linearly to 0 in the last epoch (`MaskedViT.fade`), so the network adapts to their removal and the
    physical cut (with the last epoch's plan) changes nothing. ViT-Slim cuts masks that a short
    schedule has barely moved (0.96-0.99 on the digits demo) at the end, which cost 2.8 points there."""

    def __init__(self, cfg, arch: Arch, masked: MaskedViT) -> None:
        self.cfg, self.arch, self.masked = cfg, arch, masked
        self.plan, self.level = None, None

    def __call__(self, epoch: int) -> None:
        first = self.cfg.epochs - self.cfg.fade
        if epoch >= first:
            self.level = 1.0 - (epoch - first + 1) / self.cfg.fade
            self.plan = solve(self.cfg, self.arch, self.masked)
            self.masked.fade(self.plan, self.level)

    def record(self) -> dict[str, float]:
        return {} if self.plan is None else {"fade_level": self.level}


def accuracy_on(x: torch.Tensor, y: torch.Tensor, batch_size: int, device):
    """`val_acc(forward)`: top-1 of a model (or any forward) on (x, y)."""
    return lambda forward: evaluate(forward, batches(x, y, batch_size), device)["acc"]


def check_reachable(cfg, arch: Arch, where: Path) -> None:
    """An impossible target fails before any training (the scores do not change the bounds; with
    tokens, one token per layer bounds what any token plan can save). ViT-Slim's only."""
    if cfg.method != "vit-slim":
        return
    cfg.check_fade()
    kind, ratio = cfg.target
    tokens = cfg.token_keep_ratio is not None
    if tokens and arch.rel_pos:
        raise ConfigError(f"slim.token_keep_ratio: {where} has relative position (rel_pos), which token pruning "
                          "does not combine with yet; set it to null")
    probe = BudgetSolver(arch, [torch.ones(h, d) for h, d in zip(arch.num_heads, arch.head_dim, strict=True)],
                         [torch.ones(m) for m in arch.mlp_hidden], round_to=cfg.round_to, kind=kind,
                         tokens=[[0]] * arch.depth if tokens and kind == "flops" else None)
    min_ratio = probe.min_cost() / probe.full_cost()
    if min_ratio > ratio * (1 + TOL):
        raise ConfigError(f"{target_key(kind)}: {ratio:g} is below the smallest model slimming can reach "
                          f"({min_ratio:.3f} of the {kind} at slim.round_to={cfg.round_to})")


def solve(cfg, arch: Arch, masked: MaskedViT):
    """The entries to keep: the budget solved on the masks' current scores."""
    kind, ratio = cfg.target
    tokens = cfg.token_keep_ratio is not None
    scores = masked.scores()
    token_sets = token_plan(scores["tokens"], cfg.token_keep_ratio) if tokens else None
    solver = BudgetSolver(arch, scores["attn"], scores["mlp"], round_to=cfg.round_to, kind=kind,
                          tokens=token_sets, keep_tokens=cfg.token_keep_ratio)
    try:
        return solver.solve(ratio, tol=TOL)
    except BudgetError as e:
        hint = " (slim.token_keep_ratio removes part of it already)" if tokens else ""
        raise ConfigError(f"{target_key(kind)}: {e}{hint}") from None


def check_cut(cfg, metrics: dict[str, float]) -> None:
    """The physical cut may lose at most `slim.cut_tolerance` of val accuracy; more is said in one line."""
    if metrics["cut_drop"] > cfg.cut_tolerance:
        print(f"warning: slim: the cut lost {metrics['cut_drop']:.3f} of val accuracy (masked "
              f"{metrics['val_acc_masked']:.3f} -> pruned {metrics['val_acc_after']:.3f}), more than "
              f"slim.cut_tolerance {cfg.cut_tolerance:g}; raise slim.fade_epochs (now {cfg.fade}) or slim.epochs",
              flush=True)


def _cut(cfg, arch: Arch, masked: MaskedViT, val_acc, probe: torch.Tensor, plan=None, *, acc_soft: float):
    """Binarise by `plan` (the last fading epoch's; None: solved on the trained masks), fold into a
    smaller model: (pruned model, its arch, metrics of the cut). `acc_soft`: the masked model's val
    accuracy after the last epoch (measured there)."""
    kind, ratio = cfg.target
    masked.eval()
    plan = plan if plan is not None else solve(cfg, arch, masked)
    masked.apply_plan(plan)
    acc_binary = val_acc(masked)
    pruned = prune(masked, plan).eval()
    acc_after = val_acc(pruned)
    with torch.no_grad():
        diff = (pruned(probe) - masked(probe)).abs().max().item() if len(probe) else 0.0
    after = plan.arch
    return pruned, after, cost_metrics(arch, after) | {
        "target_ratio": ratio, "target_is_flops": int(kind == "flops"),
        "target_rel_error": plan.rel_error,
        "val_acc_masked": acc_soft, "val_acc_binarized": acc_binary, "val_acc_after": acc_after,
        "keep_attn": plan.keep_attn, "keep_mlp": plan.keep_mlp,
        "attn_dims_kept": sum(after.qkv_dim) / sum(arch.qkv_dim),
        "tokens_kept": (sum(after.keep_tokens) if after.keep_tokens else arch.depth * arch.num_patches)
        / (arch.depth * arch.num_patches),
        "mlp_units_kept": sum(after.mlp_hidden) / sum(arch.mlp_hidden),
        "prune_max_abs_diff": diff, "epochs": cfg.epochs, "fade_epochs": cfg.fade,
        "cut_drop": acc_soft - acc_after,
    }
