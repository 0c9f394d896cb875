"""Significance tests for the README's Fashion-MNIST readings, from the committed raw results alone
(benchmarks/results/fmnist_*.json; nothing is trained or re-run).

One standard throughout: "A beats B" means the two-sided test below gives p < 0.05 (or, for rank
correlations, a 95% paired bootstrap interval of the difference that excludes 0); otherwise the
reading says "no significant difference", whatever the direction of the means.
- ViT-Slim (slimmed vs uniformly narrowed, 3 seeds each, not paired): Welch's t-test.
- Search (each strategy vs the hand design, 3 seeds): the winners of seed s and the hand design were
  retrained with the same seed s, so the test is paired by seed (paired t-test); Welch's is shown too.
- Ranking (30 archs): the difference in Kendall tau of two rankers against the same ground truth,
  with a 95% paired bootstrap interval (the same resampled archs for both). The intervals cover the
  choice of archs, not the noise of the 3-epoch ground truth (one training per arch).
- GLiT (hierarchical vs flat, 2 seeds, retrained with the same seeds): paired t-test.
- Supernet recipe: per-subnet differences of the one run of each (no seeds), and the time ratio.

    uv run python benchmarks/fmnist_stats.py    # seconds; writes benchmarks/results/fmnist_stats.md
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy import stats

RESULTS = Path(__file__).resolve().parent / "results"
ALPHA = 0.05


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def verdict(p: float, diff: float, a: str, b: str) -> str:
    if p < ALPHA:
        return f"{a} beats {b}" if diff > 0 else f"{b} beats {a}"
    return "no significant difference"


def slim(lines: list[str]) -> None:
    d = load("fmnist_slim")
    s = [d[f"slim/{i}"]["test"] for i in range(3)]
    n = [d[f"narrow/{i}"]["test"] for i in range(3)]
    t = stats.ttest_ind(s, n, equal_var=False)
    diff = statistics.fmean(s) - statistics.fmean(n)
    lines += ["## ViT-Slim: slimmed + fine-tuned vs uniformly narrowed (test top-1, 3 seeds each)", "",
              "| slimmed mean | narrowed mean | difference | Welch t | p | reading |", "|---:|---:|---:|---:|---:|---|",
              f"| {statistics.fmean(s):.4f} | {statistics.fmean(n):.4f} | {diff:+.4f} | {t.statistic:.2f} | "
              f"{t.pvalue:.3f} | {verdict(t.pvalue, diff, 'slimmed', 'narrowed')} |", ""]


def search(lines: list[str]) -> None:
    d = load("fmnist_search")
    lines += ["## Search: each strategy vs the hand design (retrained test top-1, 3 seeds, paired by seed)", "",
              "| budget | strategy | mean difference | paired t | p (paired) | p (Welch) | reading |",
              "|---|---|---:|---:|---:|---:|---|"]
    for budget in ("1e+06", "2e+06"):
        hand = [d[f"retrain/{budget}/hand design/{i}"]["test"] for i in range(3)]
        for strategy in ("evolution", "random", "dss (no supernet)"):
            x = [d[f"retrain/{budget}/{strategy}/{i}"]["test"] for i in range(3)]
            paired = stats.ttest_rel(x, hand)
            welch = stats.ttest_ind(x, hand, equal_var=False)
            diff = statistics.fmean(x) - statistics.fmean(hand)
            lines.append(f"| {float(budget) / 1e6:.0f}M | {strategy} | {diff:+.4f} | {paired.statistic:.2f} | "
                         f"{paired.pvalue:.3f} | {welch.pvalue:.3f} | "
                         f"{verdict(paired.pvalue, diff, strategy, 'hand design')} |")
        evo = [d[f"retrain/{budget}/evolution/{i}"]["test"] for i in range(3)]
        rnd = [d[f"retrain/{budget}/random/{i}"]["test"] for i in range(3)]
        paired = stats.ttest_rel(evo, rnd)
        diff = statistics.fmean(evo) - statistics.fmean(rnd)
        lines.append(f"| {float(budget) / 1e6:.0f}M | evolution vs random | {diff:+.4f} | {paired.statistic:.2f} | "
                     f"{paired.pvalue:.3f} | {stats.ttest_ind(evo, rnd, equal_var=False).pvalue:.3f} | "
                     f"{verdict(paired.pvalue, diff, 'evolution', 'random')} |")
    lines.append("")


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.kendalltau(a, b).statistic)  # tau-b, as vitnas.proxies.kendall_tau


def paired_tau_difference(x: np.ndarray, y: np.ndarray, truth: np.ndarray, n: int = 2000,
                          seed: int = 0) -> tuple[float, float, float]:
    """tau(x, truth) - tau(y, truth) and its 95% percentile interval over archs resampled together."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(truth), len(truth))
        v = _kendall(x[idx], truth[idx]) - _kendall(y[idx], truth[idx])
        if math.isfinite(v):
            diffs.append(v)
    return (_kendall(x, truth) - _kendall(y, truth), float(np.percentile(diffs, 2.5)),
            float(np.percentile(diffs, 97.5)))


def ranking(lines: list[str]) -> None:
    d = load("fmnist_ranking")
    truth = np.array([a["val_alone"] for a in d["archs"]])
    rankers = {"flops": np.array([a["flops"] for a in d["archs"]], dtype=float),
               "params": np.array([a["params"] for a in d["archs"]], dtype=float)}
    for name in ("uniform", "uniform-3x", "sandwich"):
        rankers[f"supernet ({name})"] = np.array(d[f"inherited/{name}"]["val"])
    for name, s in d["proxies"]["scores"].items():
        rankers[name] = np.array(s, dtype=float)
    finite = np.all([np.isfinite(v) for v in rankers.values()], axis=0)
    truth = truth[finite]
    rankers = {k: v[finite] for k, v in rankers.items()}
    lines += [f"## Ranking: Kendall tau minus FLOPs' tau, paired bootstrap over the {len(truth)} archs", "",
              "| ranked by | tau | tau - tau(flops) | 95% paired CI | reading |", "|---|---:|---:|---|---|"]
    order = sorted(rankers, key=lambda k: -_kendall(rankers[k], truth))
    for name in order:
        if name == "flops":
            continue
        diff, lo, hi = paired_tau_difference(rankers[name], rankers["flops"], truth)
        reading = ("better than FLOPs" if lo > 0 else "worse than FLOPs" if hi < 0
                   else "no significant difference")
        lines.append(f"| {name} | {_kendall(rankers[name], truth):+.3f} | {diff:+.3f} | [{lo:+.2f}, {hi:+.2f}] | "
                     f"{reading} |")
    dss_flops = _kendall(rankers["dss"], rankers["flops"])
    sup_flops = _kendall(rankers["supernet (uniform)"], rankers["flops"])
    lines += ["", f"tau(dss, flops) = {dss_flops:+.3f}; tau(supernet (uniform), flops) = {sup_flops:+.3f} "
              "(how much of each ranking is model size).", ""]


def supernet(lines: list[str]) -> None:
    d = load("fmnist_supernet")
    u, s = d["eval/uniform"], d["eval/sandwich"]
    gaps = {k: (u[k]["val"] - s[k]["val"]) * 100 for k in u}
    ratio = d["supernet/sandwich"]["seconds"] / d["supernet/uniform"]["seconds"]
    lines += ["## Supernet recipe: sandwich vs uniform (one run each, val top-1 of 12 subnets)", "",
              f"uniform minus sandwich: {min(gaps.values()):.1f} to {max(gaps.values()):.1f} points "
              f"(smallest {gaps['smallest']:.1f}, largest {gaps['largest']:.1f}); sandwich trained "
              f"{d['supernet/sandwich']['epochs']} epochs in {d['supernet/sandwich']['seconds']:.0f} s, "
              f"{ratio:.2f}x uniform's {d['supernet/uniform']['seconds']:.0f} s.", ""]


def glit(lines: list[str]) -> None:
    d = load("fmnist_glit")
    h = [d[f"retrain/hierarchical (GLiT)/{i}"]["test"] for i in range(2)]
    f = [d[f"retrain/flat/{i}"]["test"] for i in range(2)]
    paired = stats.ttest_rel(h, f)
    diff = statistics.fmean(h) - statistics.fmean(f)
    lines += ["## GLiT: hierarchical vs flat search (retrained test top-1, 2 seeds, paired by seed)", "",
              "| hierarchical mean | flat mean | difference | paired t | p | reading |",
              "|---:|---:|---:|---:|---:|---|",
              f"| {statistics.fmean(h):.4f} | {statistics.fmean(f):.4f} | {diff:+.4f} | {paired.statistic:.2f} | "
              f"{paired.pvalue:.3f} | {verdict(paired.pvalue, diff, 'hierarchical', 'flat')} |", ""]


def main() -> int:
    lines = ["# Fashion-MNIST readings: the tests behind them", "",
             f"Standard: a difference is called significant at p < {ALPHA} (two-sided) or when its 95% "
             "interval excludes 0.", ""]
    for part in (supernet, ranking, search, slim, glit):
        part(lines)
    text = "\n".join(lines)
    print(text)
    (RESULTS / "fmnist_stats.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
