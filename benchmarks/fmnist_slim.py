"""ViT-Slim on Fashion-MNIST: a trained model slimmed to 60% of its FLOPs and fine-tuned, vs the same
arch narrowed uniformly to the same FLOPs and trained from scratch for the same total epochs.

For each of `--seeds` seeds: the largest `mnist28` arch (embed 64, 5 layers, 4 heads x 16, MLP 4x)
is trained from scratch for `--epochs`; ViT-Slim's soft masks (attention head dims, MLP units) are
trained with it for `--slim-epochs` (vitnas's `SlimTrainer`: L1 on the masks, distillation from the
unmasked model, the slim stage's default weights and lr); vitnas's budget solver keeps the entries
that give 60% of the FLOPs (exact counts), the model is pruned physically and fine-tuned for
`--finetune-epochs`. The control has every layer's head dim and MLP width scaled by one factor to
the same FLOPs, trained from scratch for epochs + slim epochs + fine-tune epochs. Every choice uses
val; test is reported. Raw results in benchmarks/results/fmnist_slim.json (resumable).

    uv run python benchmarks/fmnist_slim.py                # about 12 min on 2 CPU cores
"""

from __future__ import annotations

import statistics
import sys

import torch
from _fmnist import (
    LR,
    Tensors,
    accuracy,
    fit,
    fmt_ci,
    log,
    make_parser,
    seeded,
    setup,
    shuffled_batches,
    space,
    standalone,
)

import vitnas
from vitnas import Arch
from vitnas.config import parse_params
from vitnas.slim import BudgetSolver, MaskedViT, SlimTrainer, prune
from vitnas.train import DistInfo

RATIO = 0.6
TOL = 0.02


def narrowed(arch: Arch, ratio: float) -> Arch:
    """`arch` with every layer's head dim and MLP width scaled by one factor, FLOPs nearest `ratio`."""
    target = ratio * vitnas.count_flops(arch)
    best, err = arch, float("inf")
    for i in range(1, 1001):
        s = i / 1000
        a = Arch.create(embed_dim=arch.embed_dim, depth=arch.depth, num_heads=list(arch.num_heads),
                        head_dim=[max(1, round(d * s)) for d in arch.head_dim],
                        mlp_hidden=[max(1, round(m * s)) for m in arch.mlp_hidden], patch_size=arch.patch_size,
                        img_size=arch.img_size, in_chans=arch.in_chans, num_classes=arch.num_classes)
        e = abs(vitnas.count_flops(a) - target)
        if e < err:
            best, err = a, e
    return best


def slim_once(arch: Arch, t: Tensors, args, seed: int) -> dict:
    cfg = parse_params({}).slim
    torch.manual_seed(seeded(seed, "init", arch.key()))
    model = vitnas.build(arch)
    fit(model, t, epochs=args.epochs, seed=seed)
    full = {"val": accuracy(model, t.xv, t.yv), "test": accuracy(model, t.xt, t.yt)}
    log(f"  seed {seed}: full model val {full['val']:.4f}")
    masked = MaskedViT(model, arch)
    trainer = SlimTrainer(masked, lr=cfg.lr, w_attn=cfg.w_attn, w_mlp=cfg.w_mlp, distill=cfg.distill,
                          dist=DistInfo(), amp=False)
    g = torch.Generator().manual_seed(seeded(seed, "slim-order"))
    for epoch in range(args.slim_epochs):
        trainer.train_epoch(shuffled_batches(t, g), epoch, progress=False)
    masked.eval()
    scores = masked.scores()
    plan = BudgetSolver(arch, scores["attn"], scores["mlp"], kind="flops").solve(RATIO, tol=TOL)
    masked.apply_plan(plan)
    pruned = prune(masked, plan).eval()
    before = accuracy(pruned, t.xv, t.yv)
    fit(pruned, t, epochs=args.finetune_epochs, seed=seed, lr=LR / 4)
    return {"full": full, "pruned_val": before, "val": accuracy(pruned, t.xv, t.yv),
            "test": accuracy(pruned, t.xt, t.yt), "arch": plan.arch.to_dict(),
            "flops_ratio": vitnas.count_flops(plan.arch) / vitnas.count_flops(arch)}


def main(argv: list[str] | None = None) -> int:
    ap = make_parser(__doc__, seeds=3)
    ap.add_argument("--epochs", type=int, default=4, help="training epochs of the full model")
    ap.add_argument("--slim-epochs", type=int, default=1, help="soft-mask search epochs")
    ap.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs after pruning (lr / 4)")
    args = ap.parse_args(argv)
    t, store = setup(args, "fmnist_slim")
    full = space().largest()
    narrow = narrowed(full, RATIO)
    total = args.epochs + args.slim_epochs + args.finetune_epochs
    log(f"{t.describe()}; full {full}; uniform control {narrow}")
    for seed in range(args.seeds):
        store.cached(f"slim/{seed}", lambda s=seed: slim_once(full, t, args, s), f"slimmed, seed {seed}")
        store.cached(f"narrow/{seed}", lambda s=seed: standalone(narrow, t, epochs=total, seed=s),
                     f"uniformly narrowed, seed {seed}")
    slim = [store.get(f"slim/{s}") for s in range(args.seeds)]
    ctrl = [store.get(f"narrow/{s}") for s in range(args.seeds)]
    print(f"## ViT-Slim at 60% FLOPs on {t.describe()}\n")
    print(f"Full model {full}: {vitnas.count_flops(full) / 1e6:.2f}M FLOPs, {vitnas.count_params(full) / 1e3:.1f}k "
          f"params; {args.seeds} seeds (mean ± 95% t-interval).\n")
    print("| model | FLOPs ratio | params | epochs | val top-1 | test top-1 |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| full, trained alone | 1.00 | {vitnas.count_params(full) / 1e3:.1f}k | {args.epochs} | "
          f"{fmt_ci([r['full']['val'] for r in slim])} | {fmt_ci([r['full']['test'] for r in slim])} |")
    sp = statistics.fmean(vitnas.count_params(Arch.from_dict(r["arch"])) for r in slim) / 1e3
    print(f"| slimmed, before fine-tuning | {statistics.fmean(r['flops_ratio'] for r in slim):.3f} | {sp:.1f}k | "
          f"{args.epochs} + {args.slim_epochs} | {fmt_ci([r['pruned_val'] for r in slim])} | - |")
    print(f"| slimmed + fine-tuned (ViT-Slim) | {statistics.fmean(r['flops_ratio'] for r in slim):.3f} | {sp:.1f}k | "
          f"{args.epochs} + {args.slim_epochs} + {args.finetune_epochs} | {fmt_ci([r['val'] for r in slim])} | "
          f"{fmt_ci([r['test'] for r in slim])} |")
    print(f"| uniformly narrowed, from scratch | {vitnas.count_flops(narrow) / vitnas.count_flops(full):.3f} | "
          f"{vitnas.count_params(narrow) / 1e3:.1f}k | {total} | {fmt_ci([r['val'] for r in ctrl])} | "
          f"{fmt_ci([r['test'] for r in ctrl])} |")
    print(f"\nUniform control: {narrow}")
    for s, r in enumerate(slim):
        print(f"Slimmed, seed {s}: {Arch.from_dict(r['arch'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
