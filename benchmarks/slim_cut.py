"""What the physical cut of slimming costs: ViT-Slim's cut of barely trained masks at the end
(`slim.fade_epochs: 0`) vs vitnas's fading (the default: the last half of the mask epochs fade out
what the budget drops), on Fashion-MNIST, paired by seed.

For each of `--seeds` seeds: the largest `mnist28` arch is trained for `--epochs`; from that one
model, masks are trained for `--slim-epochs` both ways (the slim stage's weights, lr and
distillation; fading through the stage's own `Fading`), cut to 60% of the FLOPs (exact counts) and
fine-tuned for `--finetune-epochs` (the same seed and order for both). Reported per way: val top-1
of the masked model at the end of the mask epochs, of the pruned model, the drop at the cut, and
test top-1 after fine-tuning; the paired difference of the two ways with its 95% t-interval and a
paired t-test (scipy). Raw results in benchmarks/results/slim_cut.json (resumable).

    apt-get install dataset-fashion-mnist      # Debian's copy of the four idx files
    uv run python benchmarks/slim_cut.py       # about 10 min on 2 CPU cores
"""

from __future__ import annotations

import statistics
import sys

import torch
from _fmnist import (
    CACHE,
    LR,
    accuracy,
    fit,
    fmt_ci,
    log,
    make_parser,
    mean_ci,
    seeded,
    setup,
    shuffled_batches,
    space,
)

import vitnas
from vitnas.config import parse_params
from vitnas.slim import MaskedViT, SlimTrainer, prune
from vitnas.stages.slim import Fading, solve
from vitnas.train import DistInfo

RATIO = 0.6
WAYS = {"cut": 0, "fade": None}  # slim.fade_epochs: ViT-Slim's cut at the end; vitnas's default (half)


def slim_once(model_state: dict, arch, t, args, seed: int, fade_epochs: int | None) -> dict:
    cfg = parse_params({"slim": {"epochs": args.slim_epochs, "fade_epochs": fade_epochs,
                                 "target_flops_ratio": RATIO}}).slim
    model = vitnas.build(arch)
    model.load_state_dict(model_state)
    masked = MaskedViT(model, arch)
    trainer = SlimTrainer(masked, lr=cfg.lr, w_attn=cfg.w_attn, w_mlp=cfg.w_mlp, distill=cfg.distill,
                          dist=DistInfo(), amp=False)
    fading = Fading(cfg, arch, masked)
    g = torch.Generator().manual_seed(seeded(seed, "slim-order"))
    for epoch in range(cfg.epochs):
        fading(epoch)
        torch.manual_seed(seeded(seed, "slim-epoch", epoch))
        trainer.train_epoch(shuffled_batches(t, g), epoch, progress=False)
    masked.eval()
    plan = fading.plan if fading.plan is not None else solve(cfg, arch, masked)
    masked_val = accuracy(masked, t.xv, t.yv)
    masked.apply_plan(plan)
    pruned = prune(masked, plan).eval()
    pruned_val = accuracy(pruned, t.xv, t.yv)
    fit(pruned, t, epochs=args.finetune_epochs, seed=seed, lr=LR / 4)
    return {"masked_val": masked_val, "pruned_val": pruned_val, "cut_drop": masked_val - pruned_val,
            "val": accuracy(pruned, t.xv, t.yv), "test": accuracy(pruned, t.xt, t.yt),
            "arch": plan.arch.to_dict(), "fade_epochs": cfg.fade,
            "flops_ratio": vitnas.count_flops(plan.arch) / vitnas.count_flops(arch)}


def full_model(arch, t, args, seed: int) -> dict[str, torch.Tensor]:
    """The trained full model's weights, kept in the benchmark cache (safetensors) for a resumed run."""
    from safetensors.torch import load_file, save_file

    path = CACHE / f"slim_cut-full-{seed}-{args.epochs}-{len(t.xs)}.safetensors"
    if path.exists():
        return load_file(path)
    torch.manual_seed(seeded(seed, "init", arch.key()))
    model = vitnas.build(arch)
    fit(model, t, epochs=args.epochs, seed=seed)
    log(f"  seed {seed}: full model val {accuracy(model, t.xv, t.yv):.4f}")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path)
    return state


def paired(a: list[float], b: list[float]) -> str:
    from scipy import stats

    d = [x - y for x, y in zip(a, b, strict=True)]
    m, h = mean_ci(d)
    p = stats.ttest_rel(a, b).pvalue if len(d) > 1 else float("nan")
    return f"{m:+.4f} (95% CI {m - h:+.4f} to {m + h:+.4f}; paired t-test p = {p:.3f})"


def main(argv: list[str] | None = None) -> int:
    ap = make_parser(__doc__, seeds=3)
    ap.add_argument("--epochs", type=int, default=4, help="training epochs of the full model")
    ap.add_argument("--slim-epochs", type=int, default=2, help="mask epochs (configs/fashion-mnist.yaml: 2)")
    ap.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs after the cut (lr / 4)")
    args = ap.parse_args(argv)
    t, store = setup(args, "slim_cut")
    arch = space().largest()
    log(f"{t.describe()}; {arch}")
    rows: dict[str, list[dict]] = {w: [] for w in WAYS}
    for seed in range(args.seeds):
        state: dict = {}
        for way, fade in WAYS.items():
            def run(s=seed, f=fade, st=state):
                st.update(st or full_model(arch, t, args, s))
                return slim_once(st, arch, t, args, s, f)

            rows[way].append(store.cached(f"{way}/{seed}", run, f"{way}, seed {seed}"))
    print(f"## The physical cut of slimming at {RATIO:.0%} FLOPs on {t.describe()}\n")
    print(f"{arch} trained {args.epochs} epochs; masks {args.slim_epochs} epochs; fine-tune {args.finetune_epochs} "
          f"epochs; {args.seeds} seeds, mean ± 95% t-interval.\n")
    print("| cut | fade epochs | masked val | pruned val | drop at the cut | val after fine-tune "
          "| test after fine-tune |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for way, label in (("cut", "ViT-Slim: masks cut at the end"), ("fade", "vitnas: dropped entries faded out")):
        r = rows[way]
        print(f"| {label} | {r[0]['fade_epochs']} | {fmt_ci([x['masked_val'] for x in r])} | "
              f"{fmt_ci([x['pruned_val'] for x in r])} | {fmt_ci([x['cut_drop'] for x in r])} | "
              f"{fmt_ci([x['val'] for x in r])} | {fmt_ci([x['test'] for x in r])} |")
    print()
    for key, what in (("pruned_val", "pruned val, before fine-tuning"), ("test", "test after fine-tuning")):
        print(f"- fade - cut, {what}: {paired([x[key] for x in rows['fade']], [x[key] for x in rows['cut']])}")
    print(f"- mean FLOPs ratio: cut {statistics.fmean(x['flops_ratio'] for x in rows['cut']):.3f}, "
          f"fade {statistics.fmean(x['flops_ratio'] for x in rows['fade']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
