"""Training-free (zero-cost) proxies: TF-TAS's DSS-indicator first, with the usual baselines.

One registry (`names()`, `info(name)`); one way to score:

    score("dss", vitnas.build(arch))                       # a standalone, randomly initialised model
    score("dss", supernet, arch)                           # the same candidate through a Supernet (no copy)
    score_many(["dss", "snip", "params"], supernet, arch, inputs=x, targets=y)  # shared passes

`model` is a standalone ViT (`vitnas.build(arch)` or any timm VisionTransformer) or a
`vitnas.Supernet` together with `arch`; through the supernet the candidate's weights are the
used slices of the shared ones, and the score equals that of `vitnas.extract(supernet, arch)`.
Higher is better for every proxy. Gradients are taken with `torch.autograd.grad`: `.grad` is
never written, so nothing carries over between candidates, and the model's train/eval mode is
restored. The data-dependent proxies (`needs_data(name)`) use `inputs` (a small batch of real
training images) and, for the cross-entropy ones, `targets`.

`dss_rank` (T-Razor) ranks DSS's two terms across a whole scored set: it is computed with
`rank_combine` over the `dss_terms` of every candidate, not by `score`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from vitnas.proxies import baselines, dss
from vitnas.proxies._linalg import clear_cache, nuclear_norms
from vitnas.proxies._model import Candidate, ProxyError
from vitnas.proxies.ranking import kendall_tau, rank_combine, ranks, spearman_rho
from vitnas.space.arch import Arch


@dataclass(frozen=True)
class ProxyInfo:
    name: str
    group: str  # which shared pass computes it: dss | batch | synflow | cost | set
    inputs: bool  # needs `inputs`
    targets: bool  # needs `targets`
    summary: str


_REGISTRY: dict[str, ProxyInfo] = {p.name: p for p in (
    ProxyInfo("dss", "dss", False, False, "TF-TAS DSS-indicator: MSA synaptic diversity + MLP synaptic saliency"),
    ProxyInfo("dss_rank", "set", False, False, "T-Razor: DSS terms combined by their ranks across the scored set"),
    ProxyInfo("params", "cost", False, False, "parameter count"),
    ProxyInfo("flops", "cost", False, False, "multiply-adds of one forward"),
    ProxyInfo("grad_norm", "batch", True, True, "sum of per-layer gradient norms of the cross-entropy"),
    ProxyInfo("snip", "batch", True, True, "sum |W * dL/dW| (SNIP)"),
    ProxyInfo("grasp", "batch", True, True, "sum -(W * Hg) (GraSP)"),
    ProxyInfo("fisher", "batch", True, True, "activation Fisher of the MLP hidden units"),
    ProxyInfo("jacob_cov", "batch", True, False, "input-Jacobian correlation score (Mellor et al. v1)"),
    ProxyInfo("naswot", "batch", True, False, "log-det of the Hamming kernel of GELU activation codes"),
    ProxyInfo("synflow", "synflow", False, False, "SynFlow on |weights| with an all-ones input (float64)"),
)}


def names() -> list[str]:
    """Every registered proxy, in registry order."""
    return list(_REGISTRY)


def info(name: str) -> ProxyInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ProxyError(f"unknown proxy {name!r}; known: {', '.join(_REGISTRY)}") from None


def is_set_level(name: str) -> bool:
    """Whether the proxy needs the whole scored set (computed with `rank_combine`)."""
    return info(name).group == "set"


def needs_data(name: str) -> bool:
    """Whether the proxy needs a batch of real images (`inputs`)."""
    return info(name).inputs


def dss_terms(model: nn.Module, arch: Arch | None = None) -> dict:
    """Per-layer DSS terms: lists 'qkv', 'proj' (diversity), 'fc1', 'fc2' (saliency), 'msa' (= qkv + proj),
    'mlp' (= fc1 + fc2), one entry per block; totals 'msa_total', 'mlp_total' and 'dss' (their sum)."""
    return dss.compute_terms(Candidate(model, arch))


@dataclass
class Scored:
    """One candidate's per-candidate scores, plus its DSS term totals when dss or dss_rank was asked."""

    scores: dict[str, float]
    terms: dict[str, float] | None = None


def _validate(proxies: Iterable[str]) -> list[str]:
    if isinstance(proxies, str):
        raise ProxyError(f"names: give a list of proxy names, not the string {proxies!r}")
    proxies = list(proxies)
    if not proxies:
        raise ProxyError("names: give a non-empty list of proxy names")
    for n in proxies:
        info(n)
    dup = sorted({n for n in proxies if proxies.count(n) > 1})
    if dup:
        raise ProxyError(f"proxy {dup[0]!r} given twice")
    return proxies


def score_candidate(proxies: Sequence[str], model: nn.Module, arch: Arch | None = None, *,
                    inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> Scored:
    """Score one candidate with every per-candidate proxy in `proxies`, sharing passes.

    Set-level proxies (`dss_rank`) get no score here; asking for one makes the DSS terms
    (`Scored.terms` = {'msa': total, 'mlp': total}) available for `rank_combine` over the set.
    """
    proxies = _validate(proxies)
    cand = Candidate(model, arch)
    wanted = set(proxies)
    groups = {info(n).group for n in wanted}
    values: dict[str, float] = {}
    terms = None
    if groups & {"dss", "set"}:
        t = dss.compute_terms(cand)
        values["dss"] = t["dss"]
        terms = {"msa": t["msa_total"], "mlp": t["mlp_total"]}
    batch = wanted & set(baselines.BATCH_PROXIES)
    if batch:
        values.update(baselines.batch_scores(cand, batch, inputs, targets))
    if "synflow" in wanted:
        values["synflow"] = baselines.synflow_score(cand)
    values.update(baselines.cost_scores(cand, wanted))
    return Scored({n: values[n] for n in proxies if not is_set_level(n)}, terms)


def score_many(proxies: Sequence[str], model: nn.Module, arch: Arch | None = None,
               inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> dict[str, float]:
    """{name: score} of one candidate for per-candidate `proxies`, sharing forward/backward passes:
    one all-ones pass for dss, one batch forward (+ cross-entropy backward) for the data-dependent
    baselines, one float64 pass for synflow."""
    proxies = _validate(proxies)
    for n in proxies:
        if is_set_level(n):
            raise _set_level_error(n)
    return score_candidate(proxies, model, arch, inputs=inputs, targets=targets).scores


def score(name: str, model: nn.Module, arch: Arch | None = None, *, inputs: torch.Tensor | None = None,
          targets: torch.Tensor | None = None) -> float:
    """One proxy's score of one candidate (higher is better)."""
    if is_set_level(name):
        raise _set_level_error(name)
    return score_many([name], model, arch, inputs, targets)[name]


def _set_level_error(name: str) -> ProxyError:
    return ProxyError(f"{name}: ranks the DSS terms across the whole scored set, so it has no score for one "
                      "candidate; collect dss_terms(model, arch) (or score_candidate(...).terms) for every "
                      "candidate and call vitnas.proxies.rank_combine(list_of_terms)")


def combine_set(name: str, terms: Sequence[Mapping]) -> list[float]:
    """A set-level proxy's scores for a whole scored set, from each candidate's `terms`."""
    if not is_set_level(name):
        raise ProxyError(f"{name}: not a set-level proxy")
    return rank_combine(terms)


__all__ = [
    "Candidate", "ProxyError", "ProxyInfo", "Scored", "clear_cache", "combine_set", "dss_terms", "info",
    "is_set_level", "kendall_tau", "names", "needs_data", "nuclear_norms", "rank_combine", "ranks", "score",
    "score_candidate", "score_many", "spearman_rho",
]
