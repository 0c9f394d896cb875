"""GLiT on Fashion-MNIST: hierarchical search (split first, then the low-level genes) vs flat
evolution over the whole GLiT space, at equal FLOPs, each winner retrained from scratch.

Space: `glit-demo` with 7 px patches at 28 px (3 units of 16 channels per block, 3-4 blocks; 16
tokens). Both searches run through vitnas's real stages (`vitnas.stages.supernet.run`,
`vitnas.stages.search.run`) on the prepared Fashion-MNIST subset of `_fmnist.py`, with the
benchmarks' recipe (AdamW lr 4e-3, batch 128, no augmentation) and the same FLOPs budget and
evaluations per level:
- hierarchical (GLiT): the level-1 supernet (splits only, `--epochs`), level-1 evolution, the
  level-2 supernet over the low-level genes (`--epochs` again), level-2 evolution;
- flat: one supernet over every gene (`--epochs`), one evolution;
Each winner is retrained from scratch for `--retrain-epochs` with each of `--seeds` seeds; test top-1
is used only for these final numbers. Raw results in benchmarks/results/fmnist_glit.json (resumable).

    uv run python benchmarks/fmnist_glit.py                # about 10 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time

from _fmnist import BATCH, CACHE, LR, add_common_args, fmt_ci, log, setup, standalone

import vitnas
from vitnas import Arch
from vitnas.config import parse_params

RUNS = {"hierarchical (GLiT)": ("hierarchical", 1), "flat": ("evolution", 1)}


def params(strategy: str, epochs: int, args, root: str | None, train: int) -> dict:
    search = {"strategy": strategy, "flops_max": args.flops, "population": args.population, "parents": 5,
              "mutations": args.mutations, "crossovers": args.mutations, "generations": args.generations,
              "eval_batch_size": 1000}
    if strategy == "hierarchical":
        search["level2_epochs"] = epochs
    return {"tracking": {"enabled": False},
            "data": {"dataset": "fashion-mnist", "root": root, "img_size": 28, "val_fraction": 0.05,
                     "max_train_images": train, "augment": {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": 0.0}},
            "space": {"preset": "glit-demo", "patch_size": 7},
            "supernet": {"epochs": epochs, "warmup_epochs": min(1, epochs - 1), "lr": LR, "min_lr": LR / 100,
                         "batch_size": BATCH, "drop_path": 0.0, "label_smoothing": 0.0, "amp": False,
                         "hierarchical": strategy == "hierarchical"},
            "search": search}


def run_search(name: str, raw: dict, data_dir, work) -> dict:
    from vitnas.stages import search as search_stage
    from vitnas.stages import supernet as supernet_stage

    p = parse_params(raw)
    shutil.rmtree(work, ignore_errors=True)  # the benchmark's own scratch folder under benchmarks/.cache
    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):
        supernet_stage.run(p, data_dir, work / "supernet", device="cpu", track=False, progress=False)
        t1 = time.time()
        m = search_stage.run(p, data_dir, work / "supernet" / "supernet.pt", work / "search", track=False,
                             progress=False, device="cpu")
    t2 = time.time()
    arch = Arch.load(work / "search" / "best_arch.json")
    return {"arch": arch.to_dict(), "val": m["best_fitness"], "evaluations": m["evaluations"],
            "supernet_seconds": round(t1 - t0, 1), "search_seconds": round(t2 - t1, 1),
            **({"level1_val": m["level1_best_fitness"]} if "level1_best_fitness" in m else {})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--epochs", type=int, default=4, help="epochs of every supernet")
    ap.add_argument("--flops", type=float, default=1.5e6, help="FLOPs (MAC) budget of every search")
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--mutations", type=int, default=10, help="mutations and crossovers per generation, each")
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--retrain-epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args(argv)
    t, store = setup(args, "fmnist_glit")
    log(t.describe())
    for name, (strategy, mult) in RUNS.items():
        raw = params(strategy, args.epochs * mult, args, args.root, args.train)
        found = store.cached(f"search/{name}", lambda r=raw, n=name: run_search(
            n, r, t.data.path, CACHE / "glit-work"), f"{name}: supernet + search")
        arch = Arch.from_dict(found["arch"])
        for seed in range(args.seeds):
            store.cached(f"retrain/{name}/{seed}", lambda a=arch, s=seed: standalone(a, t, epochs=args.retrain_epochs,
                                                                                    seed=s),
                         f"retrain {name}, seed {seed}")

    print(f"## GLiT hierarchical vs flat search on {t.describe()}\n")
    print(f"Space glit-demo, 7 px patches; FLOPs budget {args.flops / 1e6:g}M; supernets {args.epochs} epochs "
          f"(hierarchical: one per level); {args.population} + {args.generations} x {2 * args.mutations} "
          f"evaluations per level; winners retrained {args.retrain_epochs} epochs x {args.seeds} seeds "
          "(mean ± 95% t-interval).\n")
    print("| search | winner MFLOPs | params | val, inherited | test, retrained | evaluations | supernet s | "
          "search s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in RUNS:
        r = store.get(f"search/{name}")
        arch = Arch.from_dict(r["arch"])
        tests = [store.get(f"retrain/{name}/{s}")["test"] for s in range(args.seeds)]
        val = f"{r['val']:.4f}" + (f" (level 1: {r['level1_val']:.4f})" if "level1_val" in r else "")
        print(f"| {name} | {vitnas.count_flops(arch) / 1e6:.2f} | {vitnas.count_params(arch) / 1e3:.1f}k | {val} | "
              f"{fmt_ci(tests)} | {r['evaluations']} | {r['supernet_seconds']:.0f} | {r['search_seconds']:.0f} |")
    for name in RUNS:
        print(f"\n{name}: {Arch.from_dict(store.get(f'search/{name}')['arch'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
