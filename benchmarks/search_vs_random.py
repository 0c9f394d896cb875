"""Evolutionary vs random search at equal evaluation budgets, on the demo supernet.

1. Full demo space: both strategies over several seeds; best val top-1 (inherited supernet
   weights, the search fitness) found: median and min-max; plus the test top-1 of each run's best
   arch with the same inherited weights (the test split plays no part in the search).
2. A small sub-space evaluated exhaustively: its true optimum, and how close each strategy gets
   with a budget well below the sub-space's size (gap to the optimum, rank among all its archs).

Without --supernet, prepares the digits data and trains a demo supernet briefly into a temp dir
(`vitnas.stages.supernet.run`). Prints markdown tables.

    uv run python benchmarks/search_vs_random.py --seeds 5 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitnas import Arch, SearchSpace
from vitnas.config import parse_params
from vitnas.data import PreparedData
from vitnas.search import CachedFitness, Constraints, EvolutionConfig, Search, SupernetFitness
from vitnas.supernet import Supernet


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",")]


def train_supernet(workdir: Path, epochs: int, data_dir: Path | None) -> tuple[Path, Path]:
    from vitnas.stages import data as data_stage
    from vitnas.stages import supernet as supernet_stage

    # A quicker recipe than params.yaml's for this tiny task: higher lr, no drop-path / smoothing.
    params = parse_params({"tracking": {"enabled": False},
                           "supernet": {"epochs": epochs, "warmup_epochs": min(2, epochs - 1), "lr": 3e-3,
                                        "batch_size": 32, "drop_path": 0.0, "label_smoothing": 0.0,
                                        "amp": False}})
    if data_dir is None:
        data_dir = workdir / "data"
        data_stage.run(params, data_dir, track=False)
    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # per-epoch lines: keep stdout for the tables
        supernet_stage.run(params, data_dir, workdir / "supernet", device="cpu", track=False, progress=False)
    print(f"trained the demo supernet for {epochs} epochs in {time.time() - t0:.0f} s", file=sys.stderr)
    return data_dir, workdir / "supernet" / "supernet.pt"


def enumerate_space(space: SearchSpace) -> list[Arch]:
    out = []
    for depth in space.depth:
        for embed in space.embed_dim:
            for layers in itertools.product(itertools.product(space.num_heads, space.mlp_ratio), repeat=depth):
                out.append(Arch.create(embed_dim=embed, depth=depth, num_heads=[h for h, _ in layers],
                                       mlp_ratio=[r for _, r in layers], head_dim=space.head_dim,
                                       patch_size=space.patch_size, img_size=space.img_size,
                                       in_chans=space.in_chans, num_classes=space.num_classes))
    assert len(out) == space.size()
    return out


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} | {min(values):.4f}-{max(values):.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--supernet", type=Path, help="a trained demo supernet.pt (default: train one)")
    ap.add_argument("--data", type=Path, help="the data stage's output (default: prepare digits)")
    ap.add_argument("--epochs", type=int, default=40, help="supernet epochs when training one")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--parents", type=int, default=5)
    ap.add_argument("--mutations", type=int, default=10)
    ap.add_argument("--crossovers", type=int, default=10)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--params-max", type=float, help="params constraint for the full-space runs")
    ap.add_argument("--sub-embed", type=_ints, default=[32, 64])
    ap.add_argument("--sub-depth", type=_ints, default=[2, 3])
    ap.add_argument("--sub-heads", type=_ints, default=[1, 2, 4])
    ap.add_argument("--sub-mlp", type=_floats, default=[2.0, 4.0])
    ap.add_argument("--sub-population", type=int, default=10)
    ap.add_argument("--sub-parents", type=int, default=5)
    ap.add_argument("--sub-mutations", type=int, default=5)
    ap.add_argument("--sub-crossovers", type=int, default=5)
    ap.add_argument("--sub-generations", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir, supernet_path = args.data, args.supernet
        if supernet_path is None:
            data_dir, supernet_path = train_supernet(Path(tmp), args.epochs, data_dir)
        if data_dir is None:
            from vitnas.stages import data as data_stage

            data_dir = Path(tmp) / "data"
            data_stage.run(parse_params({}), data_dir, track=False)
        data = PreparedData(data_dir)
        net = Supernet.load(supernet_path)
        space = net.space
        val = SupernetFitness(net, *data.eval_tensors("val"), batch_size=512)
        test = SupernetFitness(net, *data.eval_tensors("test"), batch_size=512)
        fitness = CachedFitness(val)  # shared by every run: an arch is evaluated once

        # ---- 1. full space ----
        base = EvolutionConfig(population=args.population, parents=args.parents, mutations=args.mutations,
                               crossovers=args.crossovers, generations=args.generations)
        cons = Constraints(params_max=args.params_max)
        if args.params_max:
            cons.check_feasible(space)
        full: dict[str, dict[str, list[float]]] = {}
        for strategy in ("evolution", "random"):
            res = full.setdefault(strategy, {"val": [], "test": [], "evals": [], "rejected": []})
            for seed in range(args.seeds):
                cfg = EvolutionConfig(**{**base.__dict__, "strategy": strategy, "seed": seed})
                s = Search(space, cfg, fitness, constraints=cons).run()
                res["val"].append(s.best()["fitness"])
                res["test"].append(test([s.best_arch()])[0])
                res["evals"].append(s.evaluations)
                res["rejected"].append(sum(s.rejected.values()))

        # ---- 2. exhaustive sub-space ----
        sub = SearchSpace(embed_dim=args.sub_embed, depth=args.sub_depth, num_heads=args.sub_heads,
                          mlp_ratio=args.sub_mlp, head_dim=space.head_dim, patch_size=space.patch_size,
                          img_size=space.img_size, in_chans=space.in_chans, num_classes=space.num_classes,
                          name="sub")
        t0 = time.time()
        every = enumerate_space(sub)
        accs = dict(zip((a.key() for a in every), fitness(every), strict=True))
        t_exh = time.time() - t0
        ranked = sorted(accs.values(), reverse=True)
        optimum = ranked[0]
        n_opt = sum(v == optimum for v in ranked)
        sub_base = EvolutionConfig(population=args.sub_population, parents=args.sub_parents,
                                   mutations=args.sub_mutations, crossovers=args.sub_crossovers,
                                   generations=args.sub_generations)
        subres: dict[str, dict[str, list[float]]] = {}
        for strategy in ("evolution", "random"):
            res = subres.setdefault(strategy, {"val": [], "rank": [], "hit": []})
            for seed in range(args.seeds):
                cfg = EvolutionConfig(**{**sub_base.__dict__, "strategy": strategy, "seed": seed})
                best = Search(sub, cfg, fitness).run().best()["fitness"]
                res["val"].append(best)
                res["rank"].append(1 + sum(v > best for v in ranked))
                res["hit"].append(best == optimum)

    print(f"## Evolution vs random search on the demo supernet ({space.name} space, {space.size():,} archs)\n")
    print(f"Supernet {'trained ' + str(args.epochs) + ' epochs' if args.supernet is None else args.supernet}; "
          f"fitness = val top-1 with inherited weights ({len(val.labels)} images); {args.seeds} seeds; "
          f"{args.threads} thread(s); total {time.time() - t_start:.0f} s.\n")
    print(f"### Full space, budget {base.budget} evaluations (population {base.population}, parents "
          f"{base.parents}, {base.mutations} mutations + {base.crossovers} crossovers x {base.generations} "
          f"generations){', params <= ' + format(args.params_max, 'g') if args.params_max else ''}\n")
    print("| strategy | evaluations | best val top-1 median | min-max | test top-1 of best, median | min-max |")
    print("|---|---|---|---|---|---|")
    for strategy, r in full.items():
        print(f"| {strategy} | {int(statistics.median(r['evals']))} | {_summary(r['val'])} | {_summary(r['test'])} |")
    print(f"\n### Exhaustive sub-space: embed {args.sub_embed}, depth {args.sub_depth}, heads {args.sub_heads}, "
          f"mlp {args.sub_mlp} ({sub.size()} archs, all evaluated in {t_exh:.0f} s)\n")
    print(f"Optimum val top-1 {optimum:.4f} ({n_opt} arch(s) tie); median arch {statistics.median(ranked):.4f}. "
          f"Budget {sub_base.budget} evaluations ({100 * sub_base.budget / sub.size():.0f}% of the sub-space).\n")
    print("| strategy | best val top-1 median | min-max | gap to optimum, median | rank median (1 = optimum) | "
          "worst rank | found optimum |")
    print("|---|---|---|---|---|---|---|")
    for strategy, r in subres.items():
        gaps = [optimum - v for v in r["val"]]
        print(f"| {strategy} | {_summary(r['val'])} | {statistics.median(gaps):.4f} | "
              f"{statistics.median(r['rank']):g} | {max(r['rank'])} | {sum(r['hit'])}/{args.seeds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
