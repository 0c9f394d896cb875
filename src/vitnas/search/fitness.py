"""Fitness of candidate archs: supernet accuracy, a zero-cost proxy, or both (proxy pre-filter).

A fitness is a callable ``fitness(archs) -> list[float]`` (higher is better), batched so an
evaluator can amortise its set-up over a generation. Its ``kind`` attribute names it.

- `SupernetFitness`: top-1 on the validation split with weights inherited from the trained
  supernet (AutoFormer), eval mode, no grad, fixed batches: deterministic. A GLiT supernet's
  BatchNorm statistics are recalibrated for each candidate on fixed train images first.
- `ProxyFitness`: any proxy registered in `vitnas.proxies`, computed on a randomly initialised
  supernet of the space seeded once (TF-TAS scores untrained candidates). Each score runs under a
  forked torch RNG seeded from (seed, arch), so scores do not depend on evaluation order.
- Hybrid fitness is a `SupernetFitness` plus a `ProxyFitness` used as a pre-filter: the search
  proposes `hybrid_ratio` x the candidates it needs and evaluates only the best by proxy
  (see `vitnas.search.evolution.Search`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from vitnas.errors import ConfigError
from vitnas.space import Arch, SearchSpace
from vitnas.supernet import Supernet, batchnorms, recalibrate_bn
from vitnas.train.distributed import DistInfo, gather_map
from vitnas.train.loop import batches, evaluate


class Fitness(Protocol):
    kind: str

    def __call__(self, archs: Sequence[Arch]) -> list[float]: ...


class SupernetFitness:
    """Top-1 accuracy of each arch with inherited supernet weights on fixed (images, labels)."""

    kind = "supernet"

    def __init__(self, supernet: Supernet, images: torch.Tensor, labels: torch.Tensor, *,
                 batch_size: int = 256, device: str | torch.device | None = None,
                 calib_images: torch.Tensor | None = None) -> None:
        if len(images) == 0:
            raise ValueError("images: the evaluation set is empty")
        self.device = torch.device(device) if device is not None else next(supernet.parameters()).device
        self.supernet = supernet.to(self.device).eval()
        # Small evaluation sets live on the device once, not once per candidate.
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.batch_size = batch_size
        self.calibrates = bool(batchnorms(supernet))
        if self.calibrates and (calib_images is None or len(calib_images) == 0):
            raise ValueError("calib_images: this supernet has BatchNorm (GLiT local units); its statistics are "
                             "recalibrated per candidate on train images, so give some")
        self.calib_images = calib_images.to(self.device) if self.calibrates else None
        self.calls = 0

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        self.calls += 1
        self.supernet.eval()
        out = []
        for arch in archs:
            self.supernet.check_arch(arch)
            if self.calibrates:  # BatchNorm statistics of this candidate, not of the whole training mix
                recalibrate_bn(self.supernet, self.calib_images, arch, batch_size=self.batch_size)
            res = evaluate(lambda x, a=arch: self.supernet(x, a), batches(self.images, self.labels, self.batch_size),
                           self.device)
            out.append(float(res["acc"]))
        return out


def check_proxy(name: str, key: str = "search.proxy") -> None:
    """Fail fast with a `ConfigError` when the proxy registry is missing or lacks `name`."""
    try:
        proxies = importlib.import_module("vitnas.proxies")
    except ImportError as e:
        raise ConfigError(f"{key}: the proxy registry (vitnas.proxies) is not available ({e})") from None
    known = list(proxies.names())
    if name not in known:
        raise ConfigError(f"{key}: unknown proxy {name!r}; known: {', '.join(known)}")
    set_level = getattr(proxies, "is_set_level", None)
    if callable(set_level) and set_level(name):
        per_candidate = [n for n in known if not set_level(n)]
        raise ConfigError(f"{key}: {name!r} ranks a whole scored set, so it cannot score candidates one by one "
                          f"during search; use one of {', '.join(per_candidate)}")


class ProxyFitness:
    """A registered zero-cost proxy of each arch on a randomly initialised `Supernet(space)`."""

    kind = "proxy"

    def __init__(self, name: str, space: SearchSpace, *, seed: int = 0, inputs: torch.Tensor | None = None,
                 targets: torch.Tensor | None = None, device: str | torch.device = "cpu",
                 scorer: Callable[..., float] | None = None) -> None:
        from vitnas.proxies.scorer import score_one, seeded_supernet

        self.name = name
        self.seed = seed
        self.device = torch.device(device)
        self.calls = 0
        if scorer is None:
            check_proxy(name)
            scorer = score_one
        self.scorer = scorer
        # the proxy stage's supernet, batch and per-arch RNG: equal scores for equal (seed, arch, data)
        self.supernet = seeded_supernet(space, seed).to(self.device)
        self.inputs = inputs.to(self.device) if inputs is not None else None
        self.targets = targets.to(self.device) if targets is not None else None

    def score(self, arch: Arch) -> float:
        from vitnas.proxies.scorer import arch_rng

        with arch_rng(self.seed, arch, self.device):
            value = float(self.scorer(self.name, self.supernet, arch, inputs=self.inputs, targets=self.targets))
        return value if math.isfinite(value) else float("-inf")

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        self.calls += 1
        return [self.score(a) for a in archs]


class CachedFitness:
    """Wraps a fitness with a cache by `arch.key()` (e.g. to share evaluations between runs)."""

    def __init__(self, fitness: Fitness) -> None:
        self.fitness = fitness
        self.kind = fitness.kind
        self.cache: dict[str, float] = {}

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        todo = [a for a in dict.fromkeys(archs) if a.key() not in self.cache]
        if todo:
            for a, v in zip(todo, self.fitness(todo), strict=True):
                self.cache[a.key()] = float(v)
        return [self.cache[a.key()] for a in archs]


class ShardedFitness:
    """A fitness whose candidates are split across the ranks of a torchrun job (data-parallel search).

    Every rank holds the same evaluator (same supernet, val images, proxy batch) and calls this with
    the same candidates; each evaluates its share and all get every value, in order. A candidate's
    value does not depend on which rank computed it or on what else was evaluated, so a search over
    W processes makes the same choices as one process.
    """

    def __init__(self, fitness: Fitness, info: DistInfo) -> None:
        self.fitness = fitness
        self.info = info
        self.kind = fitness.kind

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        return [float(v) for v in gather_map(self.fitness, list(archs), self.info)]
