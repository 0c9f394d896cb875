"""AutoFormer evolutionary search (and random search at the same budget) as a resumable state machine.

Generation 0 samples `population` random archs. Every later generation takes the top `parents` of
everything evaluated so far, makes `mutations` mutants and `crossovers` children of them, and
evaluates those. Random search makes `mutations + crossovers` fresh random archs per generation
instead, so both strategies spend `population + generations * (mutations + crossovers)` evaluations.

Candidates that were already seen, or that break a constraint, are rejected *before* evaluation and
counted; each wanted candidate gets a bounded number of tries (`max_tries`), and when mutation or
crossover run dry (parents at a constraint boundary, a small space) the generation is topped up
with random archs, as AutoFormer does, so the budget is spent whenever the space allows it. With a
proxy pre-filter (hybrid fitness), each generation proposes `hybrid_ratio` x the candidates, scores
them all by proxy and evaluates only the best `1 / hybrid_ratio` of them.

All randomness comes from one `random.Random(seed)`; `state_dict()` holds it (``getstate()``),
the history, the fitness caches and the counters, so a search restored from the state of
generation g continues exactly as the uninterrupted search would.
"""

from __future__ import annotations

import math
import random
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vitnas.errors import ConfigError
from vitnas.search.constraints import Constraints, Costs
from vitnas.search.fitness import Fitness
from vitnas.space import Arch, SearchSpace

STATE_VERSION = 1
REJECT_REASONS = ("duplicate", "params", "flops", "latency")


@dataclass(frozen=True)
class EvolutionConfig:
    """AutoFormer's defaults (its evolution.py in microsoft/Cream)."""

    strategy: str = "evolution"  # evolution | random
    population: int = 50
    parents: int = 10
    mutations: int = 25
    crossovers: int = 25
    generations: int = 20
    mutation_prob: float = 0.2  # per layer, per gene (heads, mlp ratio)
    resample_prob: float = 0.4  # depth and embed width
    hybrid_ratio: int = 4  # candidates proposed per evaluation when a proxy pre-filters
    max_tries: int = 50  # tries per wanted candidate before giving up on it
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in ("evolution", "random"):
            raise ValueError(f"strategy: expected 'evolution' or 'random', got {self.strategy!r}")
        for name in ("population", "parents", "generations", "hybrid_ratio", "max_tries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.mutations < 0 or self.crossovers < 0 or self.mutations + self.crossovers == 0:
            raise ValueError("mutations + crossovers: must be > 0 (each >= 0)")

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> EvolutionConfig:
        """From a `vitnas.config.SearchConfig` (or anything with the same attributes)."""
        fields = {k: getattr(cfg, k) for k in cls.__dataclass_fields__ if hasattr(cfg, k)}
        return cls(**(fields | overrides))

    @property
    def per_generation(self) -> int:
        return self.mutations + self.crossovers

    @property
    def budget(self) -> int:
        """Evaluations of a full search (fewer only when candidates run out)."""
        return self.population + self.generations * self.per_generation


# ---- operators ----------------------------------------------------------------------------------
def mutate(arch: Arch, space: SearchSpace, rng: random.Random, mutation_prob: float = 0.2,
           resample_prob: float = 0.4) -> Arch:
    """AutoFormer mutation: resample depth (new layers get random genes, removed ones are cut) and
    embed width with `resample_prob`, then each layer's genes with `mutation_prob` (which genes a
    layer has is its block family's: `BlockFamily.mutate`)."""
    return space.family.mutate(space, arch, rng, mutation_prob, resample_prob)


def crossover(a: Arch, b: Arch, space: SearchSpace, rng: random.Random) -> Arch:
    """Uniform crossover of two parents of possibly different depths.

    The child's depth and embed width each come from one parent (chosen uniformly); each layer's
    genes come from either parent where both have the layer, else from the longer one (per gene
    or per whole block, as the block family says: `BlockFamily.crossover`).
    """
    depth = rng.choice((a.depth, b.depth))
    embed = rng.choice((a.embed_dim, b.embed_dim))
    return space.family.crossover(space, a, b, rng, embed, depth)


def pareto_front(costs: Sequence[float], fitness: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (lower or equal cost and higher fitness),
    in increasing cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -_num(fitness[i])))
    front, best = [], -math.inf
    for i in order:
        if _num(fitness[i]) > best:
            front.append(i)
            best = _num(fitness[i])
    return front


def _num(v: float) -> float:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def cached_values(fn: Fitness, cache: dict[str, float], archs: Sequence[Arch]) -> list[float]:
    """`fn` of each arch, evaluating only those not in `cache` (by `Arch.key()`), which it fills."""
    todo = [a for a in archs if a.key() not in cache]
    if todo:
        values = fn(todo)
        if len(values) != len(todo):
            raise RuntimeError(f"fitness returned {len(values)} values for {len(todo)} archs")
        for a, v in zip(todo, values, strict=True):
            cache[a.key()] = float(v)
    return [cache[a.key()] for a in archs]


class Stepwise(ABC):
    """A search that runs step by step (a generation, a slimming step): `run()` is shared."""

    @property
    @abstractmethod
    def done(self) -> bool:
        """Whether no step is left."""

    @abstractmethod
    def step(self) -> dict[str, float]:
        """Run the next step; its statistics (also appended to `stats`)."""

    def run(self, on_generation: Callable[[Any, dict[str, float]], None] | None = None):
        """Run the remaining steps; `on_generation(search, stats)` after each (checkpointing)."""
        while not self.done:
            stats = self.step()
            if on_generation is not None:
                on_generation(self, stats)
        return self


# ---- the search ---------------------------------------------------------------------------------
class Search(Stepwise):
    """One evolutionary (or random) search; `step()` runs one generation, `run()` all of them.

    `fitness(archs) -> list[float]` scores candidates (higher is better); `proxy`, when given, is a
    pre-filter (hybrid fitness). Every record of `history` is one evaluated candidate::

        {"arch": Arch.to_dict(), "generation": g, "origin": "random"|"mutation"|"crossover",
         "params": ..., "flops": ..., ["latency_ms": ...], "fitness": ..., ["proxy": ...]}
    """

    def __init__(self, space: SearchSpace, config: EvolutionConfig, fitness: Fitness, *,
                 constraints: Constraints | None = None, proxy: Fitness | None = None) -> None:
        self.space = space
        self.config = config
        self.fitness = fitness
        self.constraints = constraints or Constraints()
        self.proxy = proxy
        self.rng = random.Random(config.seed)
        self.next_generation = 0
        self.history: list[dict[str, Any]] = []
        self.stats: list[dict[str, float]] = []
        self.seen: set[str] = set()
        self.fitness_cache: dict[str, float] = {}
        self.proxy_cache: dict[str, float] = {}
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self.shortfall = 0  # evaluations short of the budget (candidates not found within the tries)
        self.evaluations = 0
        self.proxy_evaluations = 0
        self._archs: list[Arch] = []  # parallel to history

    # ---- progress -------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.next_generation > self.config.generations

    @property
    def total_generations(self) -> int:
        """Steps of a full search: the initial population plus `generations`."""
        return self.config.generations + 1

    @property
    def budget(self) -> int:
        return self.config.budget

    @property
    def generations(self) -> int:
        return self.config.generations

    def _ranked(self) -> list[int]:
        """Best fitness first; among equal fitness (common on a small val split) the cheaper arch, so
        the reported best is on the Pareto front."""
        h = self.history
        return sorted(range(len(h)), key=lambda i: (-_num(h[i]["fitness"]), h[i].get("flops", 0),
                                                    h[i].get("params", 0), i))

    def best(self) -> dict[str, Any]:
        if not self.history:
            raise RuntimeError("no candidate evaluated yet")
        return self.history[self._ranked()[0]]

    def best_arch(self) -> Arch:
        return self._archs[self._ranked()[0]]

    def population(self) -> list[dict[str, Any]]:
        """The current population: the best `population` candidates evaluated so far."""
        return [self.history[i] for i in self._ranked()[:self.config.population]]

    def parents(self) -> list[Arch]:
        return [self._archs[i] for i in self._ranked()[:self.config.parents]]

    # ---- one generation --------------------------------------------------------------------
    def _propose(self, n: int, make: Callable[[], Arch], origin: str, pending: set[str],
                 out: list[tuple[Arch, str, Costs]]) -> None:
        found, tries = 0, 0
        while found < n and tries < n * self.config.max_tries:
            tries += 1
            arch = make()
            key = arch.key()
            if key in self.seen or key in pending:
                self.rejected["duplicate"] += 1
                continue
            costs = self.constraints.costs(arch)
            why = self.constraints.violation(arch, costs)
            if why is not None:
                self.rejected[why] += 1
                continue
            pending.add(key)
            out.append((arch, origin, costs))
            found += 1

    def _two_parents(self, parents: list[Arch]) -> tuple[Arch, Arch]:
        if len(parents) == 1:
            return parents[0], parents[0]
        a, b = self.rng.sample(range(len(parents)), 2)
        return parents[a], parents[b]

    def _proposals(self, g: int, ratio: int) -> tuple[list[tuple[Arch, str, Costs]], int]:
        cfg, rng, space = self.config, self.rng, self.space
        pending: set[str] = set()
        out: list[tuple[Arch, str, Costs]] = []
        if g == 0 or cfg.strategy == "random":
            n = cfg.population if g == 0 else cfg.per_generation
            self._propose(n * ratio, lambda: space.sample(rng), "random", pending, out)
            return out, n
        parents = self.parents()
        self._propose(cfg.mutations * ratio,
                      lambda: mutate(rng.choice(parents), space, rng, cfg.mutation_prob, cfg.resample_prob),
                      "mutation", pending, out)
        self._propose(cfg.crossovers * ratio, lambda: crossover(*self._two_parents(parents), space, rng),
                      "crossover", pending, out)
        missing = cfg.per_generation * ratio - len(out)
        if missing > 0:  # as AutoFormer: operators that ran dry are topped up with random archs
            self._propose(missing, lambda: space.sample(rng), "random", pending, out)
        return out, cfg.per_generation

    def step(self) -> dict[str, float]:
        """Run the next generation; returns its statistics (also appended to `stats`)."""
        if self.done:
            raise RuntimeError("the search is finished")
        g = self.next_generation
        ratio = self.config.hybrid_ratio if self.proxy is not None else 1
        proposed, wanted = self._proposals(g, ratio)
        scores: list[float | None] = [None] * len(proposed)
        if self.proxy is not None and proposed:
            scores = cached_values(self.proxy, self.proxy_cache, [a for a, _, _ in proposed])
            self.proxy_evaluations += len(proposed)
            for arch, _, _ in proposed:  # proxy-scored and filtered out: seen, never proposed again
                self.seen.add(arch.key())
            keep = sorted(range(len(proposed)), key=lambda i: (-_num(scores[i]), i))[:wanted]
            keep.sort()
            proposed, scores = [proposed[i] for i in keep], [scores[i] for i in keep]
        archs = [a for a, _, _ in proposed]
        values = cached_values(self.fitness, self.fitness_cache, archs) if archs else []
        self.evaluations += len(archs)
        self.shortfall += max(0, wanted - len(archs))
        for (arch, origin, costs), value, score in zip(proposed, values, scores, strict=True):
            rec: dict[str, Any] = {"arch": arch.to_dict(), "generation": g, "origin": origin, **costs.to_dict(),
                                   "fitness": value}
            if score is not None:
                rec["proxy"] = score
            elif getattr(self.fitness, "kind", None) == "proxy":
                rec["proxy"] = value
            self.history.append(rec)
            self._archs.append(arch)
            self.seen.add(arch.key())
        if not self.history:
            c = self.constraints
            raise ConfigError(f"{c.first_key()}: no arch meeting the constraints ({c.describe()}) was found in "
                              f"{wanted * ratio * self.config.max_tries} random samples of the space")
        self.next_generation += 1
        pop = [_num(r["fitness"]) for r in self.population()]
        stats = {
            "generation": g,
            "evaluated": len(archs),
            "best_fitness": _num(self.best()["fitness"]),
            "population_mean_fitness": statistics.fmean(pop),
            "generation_best_fitness": max((_num(v) for v in values), default=-math.inf),
            "generation_mean_fitness": statistics.fmean([_num(v) for v in values]) if values else math.nan,
            "evaluations": self.evaluations,
            "rejected": sum(self.rejected.values()),
        }
        self.stats.append(stats)
        return stats

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "config": asdict(self.config),
            "space": self.space.to_dict(),
            "next_generation": self.next_generation,
            "rng": self.rng.getstate(),
            "history": [dict(r) for r in self.history],
            "stats": [dict(s) for s in self.stats],
            "seen": sorted(self.seen),
            "fitness_cache": dict(self.fitness_cache),
            "proxy_cache": dict(self.proxy_cache),
            "rejected": dict(self.rejected),
            "shortfall": self.shortfall,
            "evaluations": self.evaluations,
            "proxy_evaluations": self.proxy_evaluations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"search state version {state.get('version')!r} != {STATE_VERSION}")
        if state["config"] != asdict(self.config) or state["space"] != self.space.to_dict():
            raise ValueError("search state was made with another config or space")
        self.next_generation = int(state["next_generation"])
        self.rng.setstate(state["rng"])
        self.history = [dict(r) for r in state["history"]]
        self._archs = [Arch.from_dict(r["arch"]) for r in self.history]
        self.stats = [dict(s) for s in state["stats"]]
        self.seen = set(state["seen"])
        self.fitness_cache = dict(state["fitness_cache"])
        self.proxy_cache = dict(state["proxy_cache"])
        self.rejected = dict.fromkeys(REJECT_REASONS, 0) | dict(state["rejected"])
        self.shortfall = int(state["shortfall"])
        self.evaluations = int(state["evaluations"])
        self.proxy_evaluations = int(state["proxy_evaluations"])
