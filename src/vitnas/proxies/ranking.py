"""Set-level scores and rank statistics.

`rank_combine` is T-Razor's fix for DSS (Zhou et al., TPAMI 2024): the raw MSA nuclear-norm
terms are orders of magnitude larger than the MLP saliency terms, so the raw sum is in effect
the MSA term alone. Ranking each term across the scored set and combining the ranks weighs the
two equally. It needs the whole set, so it is no per-candidate proxy: `score("dss_rank", ...)`
raises, and the proxy stage computes it once all candidates are scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from vitnas.proxies._model import ProxyError


def ranks(values: Sequence[float]) -> np.ndarray:
    """Average ranks 1..n (ties share the mean of their ranks); larger value, larger rank."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    r = np.empty(len(v), dtype=np.float64)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def _total(value) -> float:
    if isinstance(value, Mapping):
        raise ProxyError("rank_combine: 'msa'/'mlp' must be a number or a per-layer list")
    total = float(sum(value)) if isinstance(value, (list, tuple)) else float(value)
    if not math.isfinite(total):
        raise ProxyError(f"rank_combine: term is not finite ({total})")
    return total


def rank_combine(terms: Sequence[Mapping]) -> list[float]:
    """DSS by ranks (T-Razor): `(rank(msa) + rank(mlp)) / (2 n)` per candidate, in (0, 1].

    `terms`: one mapping per candidate of the scored set with 'msa' and 'mlp', each a total or
    a per-layer list (as `dss_terms` returns, or the `terms` of a scores.jsonl line). Higher is
    better, and a candidate's score never decreases when one of its terms increases.
    """
    if not terms:
        return []
    try:
        msa = [_total(t["msa"]) for t in terms]
        mlp = [_total(t["mlp"]) for t in terms]
    except (KeyError, TypeError) as e:
        raise ProxyError(f"rank_combine: every candidate needs 'msa' and 'mlp' terms ({e})") from None
    n = len(terms)
    return ((ranks(msa) + ranks(mlp)) / (2 * n)).tolist()


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall tau-b (NaN when either side is constant or fewer than 2 values)."""
    from scipy.stats import kendalltau

    if len(a) < 2:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def spearman_rho(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (NaN when either side is constant or fewer than 2 values)."""
    from scipy.stats import spearmanr

    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)
