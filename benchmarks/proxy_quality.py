"""How well does each zero-cost proxy rank architectures by their accuracy after training?

Samples K distinct archs of a space (sized for the data), scores each with every proxy exactly as
the proxy stage does (randomly initialised, through one seeded `Supernet(space)`; the data-dependent
proxies on one fixed batch of train images; `dss_rank` over the K archs), trains each from scratch
for E epochs (`vitnas.build`, AdamW + warmup/cosine from `vitnas.train`, cross-entropy, batch 64,
on the eval-transformed train split held in memory and reshuffled every epoch by a seeded order:
no augmentation, to keep the run short and deterministic), and measures top-1 on the val split.
Then Kendall tau and Spearman rho of every proxy against val accuracy, with bootstrap 95%
confidence intervals (archs resampled with replacement; percentile intervals), a scatter-plot grid
and a markdown table on stdout. The CIs cover the choice of archs, not training noise.

    uv run python benchmarks/proxy_quality.py --space demo --archs 24 --epochs 15 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import vitnas
from vitnas import proxies
from vitnas.data import PreparedData
from vitnas.train import batches, evaluate, make_optimizer, make_scheduler


def prepared_data(path: str | None, tmp: Path) -> PreparedData:
    if path:
        return PreparedData(path)
    from vitnas.config import parse_params
    from vitnas.stages import data as data_stage

    out = tmp / "data"
    print(f"no --data: preparing the default dataset (params defaults) into {out}", flush=True)
    data_stage.run(parse_params({}), out, track=False)
    return PreparedData(out)


def sample_archs(space: vitnas.SearchSpace, k: int, seed: int) -> list[vitnas.Arch]:
    rng = random.Random(repr(("proxy-quality", seed)))
    found: dict[vitnas.Arch, None] = {}
    while len(found) < min(k, space.size()):
        found.setdefault(space.sample(rng), None)
    return list(found)


def train_and_eval(arch: vitnas.Arch, xs, ys, xv, yv, *, epochs: int, batch_size: int, lr: float,
                   seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model = vitnas.build(arch)
    opt = make_optimizer(model, lr, 0.05)
    steps = len(xs) // batch_size
    sched = make_scheduler(opt, epochs=epochs, steps_per_epoch=steps, warmup_epochs=1 if epochs > 1 else 0,
                           min_lr=lr * 0.01)
    g = torch.Generator().manual_seed(seed)
    step = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=g)
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(step)
    model.eval()
    return evaluate(model, batches(xv, yv, 256), torch.device("cpu"))


def bootstrap_ci(a: np.ndarray, b: np.ndarray, stat, n: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(a), len(a))
        v = stat(a[idx].tolist(), b[idx].tolist())
        if math.isfinite(v):
            vals.append(v)
    if not vals:
        return math.nan, math.nan
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def scatter_grid(names: list[str], scores: dict[str, list[float]], acc: list[float], taus: dict[str, float],
                 path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        ax.scatter(scores[name], acc, s=14)
        ax.set_title(f"{name}  (tau {taus[name]:+.2f})", fontsize=10)
        ax.set_xlabel("proxy score", fontsize=8)
        ax.set_ylabel("val top-1", fontsize=8)
        if name in ("params", "flops", "synflow", "fisher") and min(scores[name]) > 0:
            ax.set_xscale("log")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--space", default="demo", choices=vitnas.SearchSpace.presets())
    ap.add_argument("--archs", type=int, default=24, help="number of sampled archs K")
    ap.add_argument("--epochs", type=int, default=15, help="training epochs E per arch")
    ap.add_argument("--data", default=None, help="a prepared data dir (default: run the data stage into a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="artifacts/benchmarks/proxy_quality",
                    help="output directory (results.json, table.md, proxy_vs_acc.png)")
    ap.add_argument("--batch-size", type=int, default=64, help="training batch size")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--proxy-batch", type=int, default=32, help="train images for data-dependent proxies")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepared_data(args.data, Path(tmp))
        space = vitnas.SearchSpace.preset(args.space).with_data(num_classes=data.num_classes,
                                                                in_chans=data.in_chans, img_size=data.img_size)
        xs, ys = data.eval_tensors("train")
        xv, yv = data.eval_tensors("val")
    archs = sample_archs(space, args.archs, args.seed)
    print(f"{space}\n{len(archs)} archs, {args.epochs} epochs each, train {len(xs)} / val {len(xv)} images, "
          f"threads {torch.get_num_threads()}", flush=True)

    # ---- proxies (as the proxy stage scores them) ----
    names = [n for n in proxies.names() if not proxies.is_set_level(n)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        net = vitnas.Supernet(space).eval()
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(xs), generator=g)[:args.proxy_batch]
    px, py = xs[idx], ys[idx]
    t0 = time.time()
    scored = [proxies.score_candidate(names + ["dss_rank"], net, a, inputs=px, targets=py) for a in archs]
    scores = {n: [s.scores[n] for s in scored] for n in names}
    scores["dss_rank"] = proxies.rank_combine([s.terms for s in scored])
    names = ["dss", "dss_rank"] + [n for n in names if n != "dss"]
    print(f"proxies scored in {time.time() - t0:.1f} s", flush=True)

    # ---- ground truth ----
    accs = []
    t0 = time.time()
    for i, arch in enumerate(archs):
        r = train_and_eval(arch, xs, ys, xv, yv, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           seed=args.seed * 1000 + i)
        accs.append(r["acc"])
        print(f"  [{i + 1}/{len(archs)}] {arch}  params {vitnas.count_params(arch):,}  val acc {r['acc']:.4f}  "
              f"({time.time() - t0:.0f} s)", flush=True)

    # ---- correlations ----
    acc = np.asarray(accs)
    rows = []
    for n in names:
        s = np.asarray(scores[n], dtype=np.float64)
        finite = np.isfinite(s)
        tau = proxies.kendall_tau(s[finite].tolist(), acc[finite].tolist())
        rho = proxies.spearman_rho(s[finite].tolist(), acc[finite].tolist())
        tci = bootstrap_ci(s[finite], acc[finite], proxies.kendall_tau, args.bootstrap, args.seed)
        rci = bootstrap_ci(s[finite], acc[finite], proxies.spearman_rho, args.bootstrap, args.seed)
        rows.append({"proxy": n, "kendall_tau": tau, "kendall_ci": tci, "spearman": rho, "spearman_ci": rci,
                     "finite": int(finite.sum())})
    rows.sort(key=lambda r: -r["kendall_tau"] if math.isfinite(r["kendall_tau"]) else math.inf)
    table = [f"Proxy vs val top-1 on {space.name} ({len(archs)} archs, {args.epochs} epochs each, "
             f"val acc {acc.min():.3f}-{acc.max():.3f}, {args.bootstrap} bootstrap resamples)", "",
             "| proxy | Kendall tau | 95% CI | Spearman rho | 95% CI |", "|---|---:|---|---:|---|"]
    for r in rows:
        (k0, k1), (s0, s1) = r["kendall_ci"], r["spearman_ci"]
        table.append(f"| {r['proxy']} | {r['kendall_tau']:+.3f} | [{k0:+.2f}, {k1:+.2f}] | {r['spearman']:+.3f} | "
                     f"[{s0:+.2f}, {s1:+.2f}] |")
    text = "\n".join(table)
    print("\n" + text, flush=True)
    scatter_grid(names, scores, accs, {r["proxy"]: r["kendall_tau"] for r in rows}, out / "proxy_vs_acc.png")
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({
        "space": space.to_dict(), "epochs": args.epochs, "seed": args.seed,
        "archs": [{"arch": a.to_dict(), "params": vitnas.count_params(a), "val_acc": accs[i],
                   "scores": {n: scores[n][i] for n in names}} for i, a in enumerate(archs)],
        "correlations": rows, "seconds": round(time.time() - t_start, 1)}, indent=1) + "\n")
    print(f"\nwrote {out / 'table.md'}, {out / 'proxy_vs_acc.png'}, {out / 'results.json'} "
          f"({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
