"""Ranking quality on Fashion-MNIST: the supernet's inherited accuracy (AutoFormer) and every
training-free proxy (TF-TAS's DSS and the baselines) against the accuracy of the same archs trained
alone.

`--archs` distinct archs of the `mnist28` space are sampled (seeded), each trained from scratch for
`--epochs` (`_fmnist.standalone`: val top-1 is the ground truth). Each is also scored
- with inherited weights of the uniform and the sandwich supernets of `fmnist_supernet.py` (run it
  first: they are read from benchmarks/.cache), on val;
- by every proxy, exactly as the proxy stage scores (one seeded random `Supernet(space)`, the
  data-dependent proxies on one fixed batch of 32 train images, `dss_rank` over the set).
Kendall tau and Spearman rho with 95% bootstrap intervals (archs resampled; they cover the choice of
archs, not training noise). Also the wall time of each way to rank the archs. Raw results in
benchmarks/results/fmnist_ranking.json (resumable).

    uv run python benchmarks/fmnist_ranking.py             # about 15 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from _fmnist import (
    CACHE,
    RESULTS,
    Store,
    add_common_args,
    bootstrap_ci,
    inherited,
    kendall,
    log,
    sample_archs,
    setup,
    space,
    spearman,
    standalone,
    supernet_file,
)

import vitnas
from vitnas import proxies


def score_proxies(archs, sp, t, seed: int = 0) -> dict[str, list[float]]:
    names = [n for n in proxies.names() if not proxies.is_set_level(n)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = vitnas.Supernet(sp).eval()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(t.xs), generator=g)[:32]
    scored = [proxies.score_candidate(names + ["dss_rank"], net, a, inputs=t.xs[idx], targets=t.ys[idx])
              for a in archs]
    out = {n: [float(s.scores[n]) for s in scored] for n in names}
    out["dss_rank"] = [float(v) for v in proxies.rank_combine([s.terms for s in scored])]
    return out


def correlate(scores: list[float], truth: list[float]) -> dict:
    pairs = [(s, a) for s, a in zip(scores, truth, strict=True) if math.isfinite(s)]
    s, a = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"kendall": kendall(s, a), "kendall_ci": bootstrap_ci(s, a, kendall),
            "spearman": spearman(s, a), "spearman_ci": bootstrap_ci(s, a, spearman), "n": len(pairs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--archs", type=int, default=30, help="sampled archs (at least 30)")
    ap.add_argument("--epochs", type=int, default=3, help="standalone training epochs per arch")
    args = ap.parse_args(argv)
    t, store = setup(args, "fmnist_ranking")
    sp = space()
    archs = sample_archs(sp, args.archs, seed=0)
    log(f"{t.describe()}; {len(archs)} archs")
    truth = []
    for i, a in enumerate(archs):
        r = store.cached(f"alone/{a.key()}/{args.epochs}", lambda a=a: standalone(a, t, epochs=args.epochs, seed=0),
                         f"[{i + 1}/{len(archs)}] {a}")
        truth.append(r["val"])
    seconds_alone = sum(store.get(f"alone/{a.key()}/{args.epochs}")["seconds"] for a in archs)

    rankers: dict[str, list[float]] = {}
    cost: dict[str, float] = {}
    for name in ("uniform", "uniform-3x", "sandwich"):
        path = supernet_file(name, t)
        if not path.exists():
            print(f"error: {path}: not found; run benchmarks/fmnist_supernet.py first (it trains the supernets "
                  f"into {CACHE})", file=sys.stderr)
            return 2

        def run(path=path) -> dict:
            t0 = time.time()
            acc = inherited(vitnas.Supernet.load(path), archs, t.xv, t.yv)
            return {"val": acc, "seconds": round(time.time() - t0, 2)}
        r = store.cached(f"inherited/{name}", run, f"{name} supernet, inherited val")
        rankers[f"supernet ({name})"] = r["val"]
        cost[f"supernet ({name})"] = r["seconds"]

    def run_proxies() -> dict:
        t0 = time.time()
        return {"scores": score_proxies(archs, sp, t), "seconds": round(time.time() - t0, 2)}
    p = store.cached("proxies", run_proxies, "proxies")
    for name, s in p["scores"].items():
        rankers[name] = s
        cost[name] = p["seconds"]
    rows = {name: correlate(s, truth) for name, s in rankers.items()}
    store.put("correlations", rows)
    store.put("archs", [{"arch": a.to_dict(), "params": vitnas.count_params(a), "flops": vitnas.count_flops(a),
                         "val_alone": v} for a, v in zip(archs, truth, strict=True)])

    order = sorted(rows, key=lambda n: -rows[n]["kendall"] if math.isfinite(rows[n]["kendall"]) else math.inf)
    print(f"## Ranking {len(archs)} archs of {sp.name} on {t.describe()}\n")
    print(f"Ground truth: val top-1 after {args.epochs} epochs alone ({min(truth):.3f}-{max(truth):.3f}; "
          f"{seconds_alone / 60:.0f} min of training in all). 95% bootstrap intervals over the archs.\n")
    print("| ranked by | Kendall tau | 95% CI | Spearman rho | 95% CI |")
    print("|---|---:|---|---:|---|")
    for n in order:
        r = rows[n]
        (k0, k1), (s0, s1) = r["kendall_ci"], r["spearman_ci"]
        print(f"| {n} | {r['kendall']:+.3f} | [{k0:+.2f}, {k1:+.2f}] | {r['spearman']:+.3f} | [{s0:+.2f}, {s1:+.2f}] |")
    trained = Store(RESULTS / "fmnist_supernet.json").get("supernet/uniform") or {}
    print(f"\nScoring all {len(archs)}: every proxy together {p['seconds']:.0f} s; a supernet "
          f"{cost['supernet (uniform)']:.0f} s of evaluation after {trained.get('seconds', math.nan):.0f} s "
          "of training.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
