"""Search on Fashion-MNIST: evolution vs random search vs a hand design, and proxy-only (TF-TAS) vs
supernet search, at two FLOPs budgets, each winner retrained from scratch.

For each budget (`--flops`, multiply-adds) and each of `--seeds` seeds:
- evolution and random search with the same number of evaluations, fitness = val top-1 with the
  weights inherited from the uniform supernet of `fmnist_supernet.py` (AutoFormer; run that first);
- evolution with DSS as the fitness on a random supernet (TF-TAS's training-free search, as
  `search.fitness: proxy` runs it): no supernet training at all;
- the winner of each run retrained from scratch for `--epochs` with that seed; the test split is used
  only for these final numbers.
The hand design is DeiT's rule scaled to the budget: every layer the same, heads = embed / head_dim,
MLP ratio 4, the most FLOPs that fit (deeper first); retrained with each seed too.
Raw results in benchmarks/results/fmnist_search.json (resumable).

    uv run python benchmarks/fmnist_search.py              # about 20 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

import torch
from _fmnist import (
    RESULTS,
    Store,
    add_common_args,
    fmt_ci,
    log,
    setup,
    space,
    standalone,
    supernet_file,
)

import vitnas
from vitnas import Arch, SearchSpace
from vitnas.search import CachedFitness, Constraints, EvolutionConfig, ProxyFitness, Search, SupernetFitness

STRATEGIES = ("evolution", "random", "dss (no supernet)", "hand design")


def hand_design(sp: SearchSpace, flops_max: float) -> Arch:
    """DeiT's scaling rule inside the space: uniform layers, heads = embed / head_dim, MLP ratio 4;
    the most FLOPs within the budget, the deeper one on a tie."""
    best = None
    for depth, embed in itertools.product(sp.depth, sp.embed_dim):
        heads = embed // sp.head_dim
        if heads not in sp.num_heads or 4.0 not in sp.mlp_ratio:
            continue
        a = sp.make_arch(embed, [heads] * depth, [4.0] * depth)
        f = vitnas.count_flops(a)
        if f <= flops_max and (best is None or (f, depth) > (vitnas.count_flops(best), best.depth)):
            best = a
    if best is None:
        raise SystemExit(f"error: --flops: no uniform design of {sp.name} fits {flops_max:g}")
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--flops", type=float, nargs="+", default=[1e6, 2e6], help="FLOPs (MAC) budgets")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="retraining epochs of every winner")
    ap.add_argument("--supernet", default="uniform-3x", choices=["uniform", "uniform-3x", "sandwich"],
                    help="which supernet of fmnist_supernet.py gives the inherited weights")
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--mutations", type=int, default=10)
    ap.add_argument("--crossovers", type=int, default=10)
    ap.add_argument("--parents", type=int, default=5)
    args = ap.parse_args(argv)
    t, store = setup(args, "fmnist_search")
    sp = space()
    path = supernet_file(args.supernet, t)
    if not path.exists():
        print(f"error: {path}: not found; run benchmarks/fmnist_supernet.py first", file=sys.stderr)
        return 2
    net = vitnas.Supernet.load(path)
    fitness = CachedFitness(SupernetFitness(net, t.xv, t.yv, batch_size=1000))
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(t.xs), generator=g)[:32]
    dss = CachedFitness(ProxyFitness("dss", sp, seed=0, inputs=t.xs[idx], targets=t.ys[idx]))
    base = EvolutionConfig(population=args.population, parents=args.parents, mutations=args.mutations,
                           crossovers=args.crossovers, generations=args.generations)
    log(f"{t.describe()}; {base.budget} evaluations per search")

    for budget in args.flops:
        cons = Constraints(flops_max=budget)
        for seed in range(args.seeds):
            for strategy in STRATEGIES:
                key = f"{budget:g}/{strategy}/{seed}"

                def search(strategy=strategy, seed=seed, cons=cons, budget=budget) -> dict:
                    if strategy == "hand design":
                        return {"arch": hand_design(sp, budget).to_dict(), "search_seconds": 0.0, "evaluations": 0}
                    cfg = EvolutionConfig(**{**base.__dict__, "seed": seed,
                                             "strategy": "random" if strategy == "random" else "evolution"})
                    f = dss if strategy.startswith("dss") else fitness
                    t0 = time.time()
                    s = Search(sp, cfg, f, constraints=cons).run()
                    secs = time.time() - t0
                    arch = s.best_arch()
                    return {"arch": arch.to_dict(), "fitness": s.best()["fitness"], "evaluations": s.evaluations,
                            "search_seconds": round(secs, 1), "inherited_val": fitness([arch])[0]}
                found = store.cached(f"search/{key}", search, f"search {key}")
                arch = Arch.from_dict(found["arch"])
                store.cached(f"retrain/{key}", lambda a=arch, s=seed: standalone(a, t, epochs=args.epochs, seed=s),
                             f"retrain {key} {arch}")

    # ---- tables ----
    trained = Store(RESULTS / "fmnist_supernet.json").get(f"supernet/{args.supernet}") or {}
    print(f"## Search at two FLOPs budgets, {sp.name} on {t.describe()}\n")
    print(f"{base.budget} evaluations per search ({args.population} + {args.generations} x "
          f"{args.mutations + args.crossovers}); winners retrained {args.epochs} epochs; {args.seeds} seeds "
          f"(mean ± 95% t-interval). Supernet: {args.supernet}, trained in {trained.get('seconds', 0):.0f} s.\n")
    print("| FLOPs budget | strategy | winner MFLOPs | params | val, inherited | test, retrained | search s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for budget in args.flops:
        for strategy in STRATEGIES:
            runs = [store.get(f"search/{budget:g}/{strategy}/{s}") for s in range(args.seeds)]
            tests = [store.get(f"retrain/{budget:g}/{strategy}/{s}")["test"] for s in range(args.seeds)]
            archs = [Arch.from_dict(r["arch"]) for r in runs]
            flops = statistics.fmean(vitnas.count_flops(a) for a in archs) / 1e6
            params = statistics.fmean(vitnas.count_params(a) for a in archs) / 1e3
            val = [r["inherited_val"] for r in runs if "inherited_val" in r]
            print(f"| {budget / 1e6:g}M | {strategy} | {flops:.2f} | {params:.1f}k | "
                  f"{fmt_ci(val) if val else '-'} | {fmt_ci(tests)} | "
                  f"{statistics.fmean(r['search_seconds'] for r in runs):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
