"""GLiT's hierarchical search in the glit-demo space vs AutoFormer's evolution in the demo space, on digits.

Both run through the real stages (`vitnas.stages.supernet.run`, `vitnas.stages.search.run`) with
the same recipe, supernet epochs, evaluation budget per level and FLOPs budget:

- autoformer: the demo supernet (`--epochs`), then evolution under `--flops-max`.
- glit: the level-1 supernet (splits only, `--epochs`), level-1 evolution, then the level-2
  supernet over the low-level genes (`--epochs` again, trained by the search stage), level-2
  evolution; so it trains two supernets and evaluates twice the candidates (reported in seconds).

The best arch of each is then retrained from scratch `--retrain-epochs` epochs for each of
`--seeds` seeds (same recipe, no augmentation beyond the data stage's) and its test top-1 reported
(mean and min-max); the test split plays no part in either search. `--ablations` adds two
controls: plain (single-level) evolution over the whole glit-demo space with one supernet, and
AutoFormer with a supernet trained twice as long (the hierarchical search's total supernet epochs).
Prints a markdown table.

    uv run python benchmarks/glit_vs_autoformer.py --data /tmp/g/data --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitnas import Arch, build, count_flops, count_params
from vitnas.config import parse_params
from vitnas.data import PreparedData
from vitnas.train import epoch_loader, evaluate, make_loss, make_optimizer, make_scheduler, reseed
from vitnas.train.loop import batches


def _params(space: str, strategy: str, args, epochs: int | None = None) -> dict:
    budget = {"population": args.population, "parents": args.parents, "mutations": args.mutations,
              "crossovers": args.crossovers, "generations": args.generations}
    search = {"strategy": strategy, "flops_max": args.flops_max, **budget}
    epochs = epochs or args.epochs
    if strategy == "hierarchical":
        search["level2_epochs"] = epochs
    # A quicker recipe than params.yaml's for this tiny task (as benchmarks/search_vs_random.py).
    return {"tracking": {"enabled": False}, "space": {"preset": space}, "search": search,
            "supernet": {"epochs": epochs, "warmup_epochs": min(2, epochs - 1), "lr": 3e-3,
                         "batch_size": 32, "drop_path": 0.0, "label_smoothing": 0.0, "amp": False,
                         "hierarchical": strategy == "hierarchical"}}


def run_search(name: str, raw: dict, data_dir: Path, work: Path) -> dict:
    from vitnas.stages import search as search_stage
    from vitnas.stages import supernet as supernet_stage

    params = parse_params(raw)
    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # per-epoch lines: keep stdout for the table
        supernet_stage.run(params, data_dir, work / name / "supernet", device="cpu", track=False, progress=False)
        t1 = time.time()
        metrics = search_stage.run(params, data_dir, work / name / "supernet" / "supernet.pt", work / name / "search",
                                   track=False, progress=False, device="cpu")
    t2 = time.time()
    arch = Arch.load(work / name / "search" / "best_arch.json")
    print(f"{name}: supernet {t1 - t0:.0f} s, search {t2 - t1:.0f} s, best {arch}", file=sys.stderr)
    return {"arch": arch, "metrics": metrics, "supernet_s": t1 - t0, "search_s": t2 - t1}


def retrain(arch: Arch, data: PreparedData, epochs: int, seed: int) -> float:
    """Test top-1 of `arch` trained from scratch (AdamW + cosine, the benchmark's supernet recipe)."""
    reseed(seed, "retrain-init")
    model = build(arch)
    train = data.dataset("train")
    steps = len(train) // 32
    opt = make_optimizer(model, 3e-3, 0.05)
    sched = make_scheduler(opt, epochs=epochs, steps_per_epoch=steps, warmup_epochs=min(2, epochs - 1), min_lr=1e-5)
    loss_fn = make_loss(mixup_active=False, label_smoothing=0.0)
    updates = 0
    for epoch in range(epochs):
        reseed(seed, "retrain", epoch)
        model.train()
        for x, y in epoch_loader(train, batch_size=32, seed=seed, epoch=epoch):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            updates += 1
            sched.step_update(updates)
    model.eval()
    x, y = data.eval_tensors("test")
    return evaluate(model, batches(x, y, 256), torch.device("cpu"))["acc"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="prepared digits (`vitnas data` output); default: "
                                                             "prepare into a temp dir")
    ap.add_argument("--epochs", type=int, default=30, help="epochs of every supernet")
    ap.add_argument("--flops-max", default="2M", help="FLOPs (multiply-adds) budget of both searches")
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--parents", type=int, default=6)
    ap.add_argument("--mutations", type=int, default=10)
    ap.add_argument("--crossovers", type=int, default=10)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--retrain-epochs", type=int, default=20, help="0: no retraining")
    ap.add_argument("--seeds", type=int, default=2, help="retraining seeds")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ablations", action="store_true", help="also: flat evolution in glit-demo, and AutoFormer "
                                                              "with a 2x longer supernet")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_dir = args.data
        if data_dir is None:
            from vitnas.stages import data as data_stage

            data_dir = work / "data"
            data_stage.run(parse_params({}), data_dir, track=False)
        data = PreparedData(data_dir)
        runs = {
            ("demo", "evolution (AutoFormer)"): run_search("autoformer", _params("demo", "evolution", args),
                                                           data_dir, work),
            ("glit-demo", "hierarchical (GLiT)"): run_search("glit", _params("glit-demo", "hierarchical", args),
                                                             data_dir, work),
        }
        if args.ablations:
            runs[("glit-demo", "evolution (flat, one supernet)")] = run_search(
                "glit-flat", _params("glit-demo", "evolution", args), data_dir, work)
            runs[("demo", f"evolution, {2 * args.epochs}-epoch supernet")] = run_search(
                "autoformer-2x", _params("demo", "evolution", args, epochs=2 * args.epochs), data_dir, work)
        rows = []
        for (space, strategy), r in runs.items():
            arch, m = r["arch"], r["metrics"]
            t0 = time.time()
            tests = [retrain(arch, data, args.retrain_epochs, s) for s in range(args.seeds)] \
                if args.retrain_epochs > 0 else []
            rows.append({"space": space, "strategy": strategy, "flops": count_flops(arch), "params": count_params(arch),
                         "val": m["best_fitness"], "test": tests, "evaluations": m["evaluations"],
                         "supernet_s": r["supernet_s"], "search_s": r["search_s"], "retrain_s": time.time() - t0,
                         "arch": arch.to_dict()})
            if "level1_best_fitness" in m:
                rows[-1]["level1_val"] = m["level1_best_fitness"]

    budget = args.flops_max
    print(f"\nFLOPs budget {budget} multiply-adds, supernets {args.epochs} epochs each, evolution "
          f"{args.population} + {args.generations} x {args.mutations + args.crossovers} evaluations per level, "
          f"retrained {args.retrain_epochs} epochs x {args.seeds} seeds\n")
    print("| space | strategy | best arch FLOPs | params | val top-1 (inherited) | test top-1 (retrained) "
          "| evaluations | supernet s | search s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        t = r["test"]
        test = f"{statistics.fmean(t):.4f} ({min(t):.4f}-{max(t):.4f})" if t else "-"
        val = f"{r['val']:.4f}" + (f" (level 1: {r['level1_val']:.4f})" if "level1_val" in r else "")
        print(f"| {r['space']} | {r['strategy']} | {r['flops'] / 1e6:.2f}M | {r['params'] / 1e3:.1f}k | {val} | "
              f"{test} | {r['evaluations']} | {r['supernet_s']:.0f} | {r['search_s']:.0f} |")
    for r in rows:
        print(f"\n{r['space']} best: {json.dumps(r['arch'])}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
