"""DynamicViT's per-image token pruning vs ViT-Slim's static token pruning vs no pruning on Fashion-MNIST:
test top-1 against measured throughput at keep ratios 0.9 / 0.7 / 0.5, at 16 and 49 tokens.

Per token setting (`--patches`: 7 px patches, 16 tokens; 4 px, 49 tokens) and seed: the largest
`mnist28` shape (embed 64, depth 5, 4 heads of 16, MLP 4x) trained alone for `--epochs`; then, from
that model and for each keep ratio rho,
- DynamicViT (`vitnas.slim.dynamic`): predictors before blocks 1, 2, 4 (DynamicViT's depth/4, depth/2,
  3 depth/4) keeping rho, rho^2, rho^3 of the patch tokens, trained `--prune-epochs` with its loss
  (the base model as teacher, backbone lr x 0.01), then run with each image's top-k tokens;
- ViT-Slim's static token masks (`MaskedViT(tokens=True)`, widths untouched), trained as long with
  the same lr, cut to the same share of (layer, patch) token slots as DynamicViT keeps, so both
  spend the same attention and MLP compute; the removed tokens are the same for every image.
Throughput: images per second of each model in eval mode at batch `--batch`, timed in one
interleaved pass per seed (`interleaved_median_ms`). The test split is used only for the final
numbers. Raw results in benchmarks/results/fmnist_dynamicvit.json (resumable).

    apt-get install dataset-fashion-mnist
    uv run python benchmarks/fmnist_dynamicvit.py     # about 20 min on 2 CPU cores
"""

from __future__ import annotations

import statistics
import sys

import torch
from _fmnist import LR, accuracy, fit, fmt_ci, log, make_parser, seeded, setup, shuffled_batches
from scipy import stats

import vitnas
from vitnas import Arch
from vitnas.search.latency import interleaved_median_ms
from vitnas.slim import BudgetSolver, MaskedViT, SlimTrainer, prune, token_plan
from vitnas.slim.dynamic import DynamicTrainer, dynamic_arch, from_model, keep_counts
from vitnas.train import DistInfo

RATIOS = (0.9, 0.7, 0.5)


def base_arch(patch: int) -> Arch:
    return Arch.create(embed_dim=64, depth=5, num_heads=4, mlp_ratio=4.0, head_dim=16, patch_size=patch, img_size=28,
                       in_chans=1, num_classes=10)


def slot_share(arch: Arch, rho: float) -> float:
    """The share of (layer, patch) token slots DynamicViT keeps at `rho` (its arch's per-layer counts)."""
    return sum(dynamic_arch(arch, rho).keep_tokens) / (arch.depth * arch.num_patches)


def trained_base(arch: Arch, t, epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seeded(seed, "init", arch.key()))
    model = vitnas.build(arch)
    fit(model, t, epochs=epochs, seed=seed)
    return model.eval()


def dynamic(base: torch.nn.Module, arch: Arch, t, rho: float, epochs: int, seed: int) -> torch.nn.Module:
    """The built model of DynamicViT's arch (`token_predictors`), its predictors trained."""
    torch.manual_seed(seeded(seed, "dynamic", rho))
    dyn, _ = from_model(base, arch, keep_ratio=rho)
    trainer = DynamicTrainer(dyn, base, lr=LR / 4, amp=False)
    g = torch.Generator().manual_seed(seeded(seed, "dynamic-order", rho))
    for _ in range(epochs):
        for x, y in shuffled_batches(t, g):
            trainer.step(x, y)
    return dyn.model.eval()


def static(base: torch.nn.Module, arch: Arch, t, share: float, epochs: int, seed: int) -> torch.nn.Module:
    import copy

    torch.manual_seed(seeded(seed, "static", share))
    masked = MaskedViT(copy.deepcopy(base), arch, tokens=True)
    trainer = SlimTrainer(masked, lr=LR / 4, w_attn=0.0, w_mlp=0.0, w_token=1e-4, distill=True, dist=DistInfo(),
                          amp=False)
    g = torch.Generator().manual_seed(seeded(seed, "static-order", share))
    for epoch in range(epochs):
        trainer.train_epoch(shuffled_batches(t, g), epoch, progress=False)
    masked.eval()
    scores = masked.scores()
    solver = BudgetSolver(arch, scores["attn"], scores["mlp"], kind="flops", tokens=token_plan(scores["tokens"], share),
                          keep_tokens=share)
    plan = solver.plan(solver.attn.n, solver.mlp.n)  # every width kept: tokens only
    masked.apply_plan(plan)
    return prune(masked, plan).eval()


def one_seed(t, patch: int, seed: int, args) -> dict:
    arch = base_arch(patch)
    base = trained_base(arch, t, args.epochs, seed)
    models = {"none": base}
    for rho in RATIOS:
        log(f"  patch {patch} seed {seed}: rho {rho}")
        models[f"dynamicvit {rho}"] = dynamic(base, arch, t, rho, args.prune_epochs, seed)
        models[f"static {rho}"] = static(base, arch, t, slot_share(arch, rho), args.prune_epochs, seed)
    img = t.xt[:args.batch]
    with torch.no_grad():
        ms = interleaved_median_ms([lambda m=m: m(img) for m in models.values()], torch.device("cpu"), warmup=3,
                                   repeats=20)
        out = {name: {"test": accuracy(m, t.xt, t.yt), "images_per_s": args.batch / (v / 1e3)}
               for (name, m), v in zip(models.items(), ms, strict=True)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = make_parser(__doc__, seeds=3)
    ap.add_argument("--patches", type=int, nargs="+", default=[7, 4], help="patch sizes (28 px images)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the unpruned model, trained alone")
    ap.add_argument("--prune-epochs", type=int, default=1, help="epochs of DynamicViT's and ViT-Slim's training")
    ap.add_argument("--batch", type=int, default=256, help="images per forward when timing")
    args = ap.parse_args(argv)
    t, store = setup(args, "fmnist_dynamicvit")
    runs = {p: [store.cached(f"{p}/{args.epochs}/{args.prune_epochs}/{s}", lambda p=p, s=s: one_seed(t, p, s, args),
                             f"patch {p}, seed {s}") for s in range(args.seeds)] for p in args.patches}
    print(f"## DynamicViT vs static token pruning vs none on {t.describe()}\n")
    print(f"Embed 64, depth 5, 4 heads, MLP 4x; trained alone {args.epochs} epochs, pruning trained "
          f"{args.prune_epochs}; {args.seeds} seeds (mean ± 95% t-interval); throughput at batch {args.batch}, "
          f"{torch.get_num_threads()} threads, eval mode.\n")
    for p, rs in runs.items():
        arch = base_arch(p)
        print(f"### {arch.num_patches} tokens ({p} px patches)\n")
        print("| model | tokens kept per stage | test top-1 | images/s | speed-up | vs static, paired t (p) |")
        print("|---|---|---:|---:|---:|---|")
        base_speed = statistics.fmean(r["none"]["images_per_s"] for r in rs)
        for name in rs[0]:
            acc = [r[name]["test"] for r in rs]
            speed = statistics.fmean(r[name]["images_per_s"] for r in rs)
            rho = float(name.split()[-1]) if name != "none" else 1.0
            kept = "all" if name == "none" else (
                " / ".join(map(str, keep_counts(arch.num_patches, rho, 3))) if name.startswith("dynamicvit")
                else f"{slot_share(arch, rho):.0%} of slots, fixed")
            test = "-"
            if name.startswith("dynamicvit"):
                other = [r[f"static {rho}"]["test"] for r in rs]
                diff = statistics.fmean(acc) - statistics.fmean(other)
                p_value = stats.ttest_rel(acc, other).pvalue if len(rs) > 1 else float("nan")
                test = f"{diff:+.4f} (p = {p_value:.3f})"
            print(f"| {name} | {kept} | {fmt_ci(acc)} | {speed:,.0f} | {speed / base_speed:.2f}x | {test} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
