"""One proxy scorer for every stage, so the proxy stage's scores and search's proxy fitness agree.

A candidate is scored through one `Supernet(space)` randomly initialised from `seed` (TF-TAS scores
untrained candidates) or through given (trained) weights, on one fixed, seeded batch of train images
for the data-dependent proxies, under a torch RNG forked and seeded from (seed, arch): a score
depends on the seed, the arch and the data only, never on the order or on what was scored before.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch.utils.data import Dataset

from vitnas.proxies import Scored, score_candidate
from vitnas.space import Arch, SearchSpace


def _derived(*parts) -> int:
    return random.Random(repr(parts)).getrandbits(63)


def seeded_supernet(space: SearchSpace, seed: int):
    """The randomly initialised supernet every candidate of `space` is scored through."""
    from vitnas.supernet import Supernet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derived("proxy-init", seed))
        return Supernet(space).eval()


def fixed_batch(dataset: Dataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` (at most all) seeded, sorted samples of `dataset` as (images, labels) tensors."""
    idx = sorted(random.Random(repr(("proxy-batch", seed))).sample(range(len(dataset)), min(n, len(dataset))))
    items = [dataset[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items], dtype=torch.long)


class Scorer:
    """`scorer(arch)` -> `Scored` for the per-candidate proxies among `names` (set-level ones give
    the DSS terms, as `vitnas.proxies.score_candidate`)."""

    def __init__(self, names: Sequence[str], model, *, seed: int = 0, inputs: torch.Tensor | None = None,
                 targets: torch.Tensor | None = None, device: str | torch.device = "cpu") -> None:
        self.names, self.seed = list(names), seed
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.inputs = inputs.to(self.device) if inputs is not None else None
        self.targets = targets.to(self.device) if targets is not None else None

    def __call__(self, arch: Arch) -> Scored:
        with arch_rng(self.seed, arch, self.device):
            res = score_candidate(self.names, self.model, arch, inputs=self.inputs, targets=self.targets)
        return Scored({k: float(v) for k, v in res.scores.items()}, res.terms)


@contextmanager
def arch_rng(seed: int, arch: Arch, device: torch.device):
    """The torch RNG every score of `arch` runs under: forked, seeded from (seed, arch)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(_derived("proxy-arch", seed, arch.key()))
        yield


def score_one(name: str, model, arch: Arch, *, inputs: torch.Tensor | None = None,
              targets: torch.Tensor | None = None) -> float:
    """One per-candidate proxy's score (what search's proxy fitness asks for)."""
    return float(score_candidate([name], model, arch, inputs=inputs, targets=targets).scores[name])
