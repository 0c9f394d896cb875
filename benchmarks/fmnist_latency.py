"""Latency-driven slimming (EfficientFormer, `search.strategy: greedy`) vs evolution vs ViT-Slim at one
latency budget on Fashion-MNIST, every winner retrained from scratch with the same schedule.

- The latency table of the space (`vitnas latency-table`'s `measure_table`) is measured on this CPU
  at `--batch` images; the budget is `--budget-ratio` x the largest arch's predicted latency.
- Greedy slimming (drop per ms saved, and EfficientFormerV2's MES) and evolution (`search.latency_max_ms`,
  the budget of `fmnist_search.py`) rank candidates by val top-1 with the weights inherited from the
  uniform-3x supernet of `fmnist_supernet.py` (trained here when its file is not cached).
- ViT-Slim has no latency target: its soft masks are trained on the largest arch (trained alone for
  `--slim-full-epochs`, masks 1 epoch) and cut to a FLOPs ratio equal to the latency budget's ratio,
  the mapping a user would make; its latency is then measured.
- Every winner is trained from scratch for `--epochs` with seeds 0..seeds-1 (greedy slimming is
  deterministic: one arch, retrained with each seed; evolution and ViT-Slim find one arch per seed).
  The test split is used only for these final numbers; paired t-tests by seed.
- The latency of every winner is measured end to end in one interleaved pass, beside the table's
  prediction.
Raw results in benchmarks/results/fmnist_latency.json (resumable).

    uv run python benchmarks/fmnist_latency.py     # about 25 min on 2 CPU cores (3 of them the supernet)
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from _fmnist import (
    Store,
    fmt_ci,
    log,
    make_parser,
    setup,
    shuffled_batches,
    space,
    standalone,
    trained_supernet,
)
from scipy import stats

import vitnas
from vitnas import Arch
from vitnas.config import parse_params
from vitnas.search import (
    CachedFitness,
    Constraints,
    EvolutionConfig,
    GreedyConfig,
    GreedySlimming,
    LatencyTable,
    Search,
    SupernetFitness,
    measure_table,
)
from vitnas.search.latency import interleaved_median_ms
from vitnas.slim import BudgetSolver, MaskedViT, SlimTrainer, prune
from vitnas.train import DistInfo

METHODS = ("greedy (EfficientFormer)", "greedy, MES (EfficientFormerV2)", "evolution", "ViT-Slim")
EVOLUTION = {"population": 20, "parents": 5, "mutations": 10, "crossovers": 10, "generations": 6}


def vit_slim(t, full: Arch, ratio: float, epochs: int, seed: int) -> dict:
    """ViT-Slim on the largest arch: trained alone, masks for one epoch, cut to `ratio` of its FLOPs."""
    from _fmnist import fit, seeded

    cfg = parse_params({}).slim
    torch.manual_seed(seeded(seed, "init", full.key()))
    model = vitnas.build(full)
    t0 = time.time()
    fit(model, t, epochs=epochs, seed=seed)
    masked = MaskedViT(model, full)
    trainer = SlimTrainer(masked, lr=cfg.lr, w_attn=cfg.w_attn, w_mlp=cfg.w_mlp, distill=cfg.distill,
                          dist=DistInfo(), amp=False)
    trainer.train_epoch(shuffled_batches(t, torch.Generator().manual_seed(seeded(seed, "slim-order"))), 0,
                        progress=False)
    masked.eval()
    scores = masked.scores()
    plan = BudgetSolver(full, scores["attn"], scores["mlp"], kind="flops").solve(ratio, tol=0.02)
    masked.apply_plan(plan)
    prune(masked, plan)
    return {"arch": plan.arch.to_dict(), "search_seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = make_parser(__doc__, seeds=3)
    ap.add_argument("--budget-ratio", type=float, default=0.6, help="latency budget / the largest arch's latency")
    ap.add_argument("--batch", type=int, default=1, help="images per forward of the latency table and checks")
    ap.add_argument("--epochs", type=int, default=10, help="retraining epochs of every winner")
    ap.add_argument("--slim-full-epochs", type=int, default=4, help="ViT-Slim: epochs of the full model before "
                                                                   "its masks are trained")
    args = ap.parse_args(argv)
    t, store = setup(args, "fmnist_latency")
    sp = space()
    net = trained_supernet("uniform-3x", t, epochs=24, sampling="uniform", store=store)
    table = LatencyTable.from_dict(store.cached(f"table/{args.batch}", lambda: measure_table(
        sp, batch_size=args.batch, warmup=10, repeats=60).to_dict(), f"latency table, batch {args.batch}"))
    full = sp.largest()
    budget = args.budget_ratio * table.predict(full)
    cons = Constraints(latency_max_ms=budget, latency=table)
    fitness = CachedFitness(SupernetFitness(net, t.xv, t.yv, batch_size=1000))
    log(f"{t.describe()}; budget {budget:.4f} ms ({args.budget_ratio:g} x the largest arch's "
        f"{table.predict(full):.4f})")

    def search(method: str, seed: int) -> dict:
        t0 = time.time()
        if method == "ViT-Slim":
            return vit_slim(t, full, args.budget_ratio, args.slim_full_epochs, seed)
        if method.startswith("greedy"):
            s = GreedySlimming(sp, GreedyConfig(score="mes" if "MES" in method else "per_cost"), fitness,
                               constraints=cons).run()
        else:
            s = Search(sp, EvolutionConfig(**EVOLUTION, seed=seed), fitness, constraints=cons).run()
        return {"arch": s.best_arch().to_dict(), "fitness": s.best()["fitness"], "evaluations": s.evaluations,
                "search_seconds": round(time.time() - t0, 1), "steps": [r["origin"] for r in s.population()]}

    found: dict[str, list[Arch]] = {}
    for method in METHODS:
        for seed in range(args.seeds):
            key = f"{args.batch}/{args.budget_ratio:g}/{method}/{seed if not method.startswith('greedy') else 0}"
            r = store.cached(f"search/{key}", lambda m=method, s=seed: search(m, s), f"search {key}")
            arch = Arch.from_dict(r["arch"])
            found.setdefault(method, []).append(arch)
            store.cached(f"retrain/{key}/{args.epochs}/{seed}",
                         lambda a=arch, s=seed: standalone(a, t, epochs=args.epochs, seed=s),
                         f"retrain {key} seed {seed} {arch}")

    # every distinct winner (and the full model) timed end to end in one interleaved pass
    winners = list(dict.fromkeys([full, *(a for archs in found.values() for a in archs)]))
    mkey = f"measured/{args.batch}/{args.budget_ratio:g}"
    if store.get(mkey) is None:
        img = torch.randn(args.batch, sp.in_chans, sp.img_size, sp.img_size)
        models = [vitnas.build(a).eval() for a in winners]
        ms = interleaved_median_ms([lambda m=m: m(img) for m in models], torch.device("cpu"), warmup=10, repeats=100)
        store.put(mkey, {a.key(): v for a, v in zip(winners, ms, strict=True)})
    measured = store.get(mkey)
    print_tables(args, t, sp, store, table, budget, full, found, measured)
    return 0


def print_tables(args, t, sp, store: Store, table: LatencyTable, budget: float, full: Arch,
                 found: dict[str, list[Arch]], measured: dict[str, float]) -> None:
    def key(method: str, seed: int) -> str:
        return f"{args.batch}/{args.budget_ratio:g}/{method}/{seed if not method.startswith('greedy') else 0}"

    def tests(method: str) -> list[float]:
        return [store.get(f"retrain/{key(method, s)}/{args.epochs}/{s}")["test"] for s in range(args.seeds)]

    print(f"## Latency-driven slimming vs evolution vs ViT-Slim, {sp.name} on {t.describe()}\n")
    print(f"Latency table measured on this CPU ({table.device.get('threads')} threads, batch {args.batch}); budget "
          f"{budget:.4f} ms = {args.budget_ratio:g} x the largest arch's predicted {table.predict(full):.4f} ms "
          f"(measured {measured[full.key()]:.4f} ms). Winners retrained from scratch {args.epochs} epochs, seeds "
          f"0-{args.seeds - 1} (mean ± 95% t-interval).\n")
    print("| method | depth | MFLOPs | params | predicted ms | measured ms | within budget (measured) | "
          "val, inherited | test, retrained | search s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method in METHODS:
        archs = found[method]
        runs = [store.get(f"search/{key(method, s)}") for s in range(args.seeds)]
        pred = [table.predict(a) for a in archs if table.missing(a) is None]
        meas = [measured[a.key()] for a in archs]
        val = [r["fitness"] for r in runs if "fitness" in r]
        predicted = f"{statistics.fmean(pred):.4f}" if pred else "-"
        print(f"| {method} | {statistics.fmean(a.depth for a in archs):.1f} | "
              f"{statistics.fmean(vitnas.count_flops(a) for a in archs) / 1e6:.2f} | "
              f"{statistics.fmean(vitnas.count_params(a) for a in archs) / 1e3:.1f}k | {predicted} | "
              f"{statistics.fmean(meas):.4f} | {sum(m <= budget for m in meas)}/{len(meas)} | "
              f"{fmt_ci(val) if val else '-'} | {fmt_ci(tests(method))} | "
              f"{statistics.fmean(r['search_seconds'] for r in runs):.0f} |")
    print("\n### Paired t-tests by seed (retrained test top-1)\n")
    print("| comparison | mean difference | t | p | reading (p < 0.05) |")
    print("|---|---:|---:|---:|---|")
    base = tests(METHODS[0])
    for other in METHODS[1:]:
        x = tests(other)
        diff = statistics.fmean(base) - statistics.fmean(x)
        res = stats.ttest_rel(base, x)
        reading = ("greedy better" if diff > 0 else "greedy worse") if res.pvalue < 0.05 else "not distinguishable"
        print(f"| greedy vs {other} | {diff:+.4f} | {res.statistic:.2f} | {res.pvalue:.3f} | {reading} |")
    print("\n### The table's prediction vs end-to-end latency of each winner\n")
    print("| arch | predicted ms | measured ms | relative error |")
    print("|---|---:|---:|---:|")
    for a in dict.fromkeys([full, *(a for archs in found.values() for a in archs)]):
        p = table.predict(a) if table.missing(a) is None else None
        m = measured[a.key()]
        print(f"| {a} | {p:.4f} | {m:.4f} | {abs(p - m) / m:.1%} |" if p is not None else f"| {a} | - | {m:.4f} | - |")
    greedy = store.get(f"search/{key(METHODS[0], 0)}")
    print(f"\nGreedy path: {' -> '.join(greedy['steps'])} ({greedy['evaluations']} evaluations)")


if __name__ == "__main__":
    sys.exit(main())
