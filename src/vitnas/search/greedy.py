"""EfficientFormer's latency-driven slimming as a resumable search: greedy, from the largest subnet.

Each step takes every slimming action of the current arch (`BlockFamily.shrink_actions`: the next
smaller depth, the next narrower embed width, each layer's next smaller head count or MLP ratio),
evaluates the result with the same fitness as evolution (val accuracy with the supernet's weights,
or a proxy), and keeps the action with the smallest fitness drop per unit of cost saved
(EfficientFormer V1), or per unit of Mobile Efficiency Score gained (`score="mes"`, EfficientFormer
V2: MES = 100 * (latency / 1 ms)^-a * (params / 1M)^-(1 - a)). It stops at the first arch that meets
every max constraint (`latency_max_ms`, `flops_max`, `params_max`); min constraints are floors no
action may cross. The cost that drives it is latency when a latency budget is set (the lookup
table's prediction), else FLOPs, else params.

EfficientFormer's search code was never released; its papers define the actions and the score.
There the accuracy drop comes from a Gumbel-softmax supernet's architecture weights; here it is
measured, as the issue asks ("accuracy from a short evaluation").
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from vitnas.errors import ConfigError
from vitnas.search.budgets import driving_cost
from vitnas.search.constraints import Constraints, Costs
from vitnas.search.evolution import Stepwise, _num, cached_values
from vitnas.search.fitness import Fitness
from vitnas.space import Arch, SearchSpace

STATE_VERSION = 1
SCORES = ("per_cost", "mes")


@dataclass(frozen=True)
class GreedyConfig:
    score: str = "per_cost"  # per_cost (EfficientFormer: fitness drop per cost saved) | mes (V2)
    mes_alpha: float = 0.5  # mes: the latency exponent; params get 1 - mes_alpha

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score: expected one of {SCORES}, got {self.score!r}")
        if not 0 < self.mes_alpha < 1:
            raise ValueError(f"mes_alpha: must be in (0, 1), got {self.mes_alpha}")


def mes(costs: Costs, alpha: float) -> float:
    """EfficientFormerV2's Mobile Efficiency Score over latency (1 ms units) and size (1M params)."""
    return 100.0 * (costs.latency_ms or math.inf) ** -alpha * (costs.params / 1e6) ** -(1 - alpha)


class GreedySlimming(Stepwise):
    """The search, step by step; the interface of `Search` where the stage reads it (`run`, `history`,
    `stats`, `best`, `best_arch`, `population`, `state_dict`). Every evaluated arch is a record of
    `history` ({"arch", "generation": step, "origin": the action, costs, "fitness", "chosen"}); the
    chosen ones are the path from the largest arch to the result, which is `best()`."""

    def __init__(self, space: SearchSpace, config: GreedyConfig, fitness: Fitness, *,
                 constraints: Constraints) -> None:
        self.space, self.config, self.fitness, self.constraints = space, config, fitness, constraints
        self.cost = driving_cost(constraints, config.score, constraints.prefix)
        self.history: list[dict[str, Any]] = []
        self.stats: list[dict[str, float]] = []
        self.path: list[int] = []  # indices into history of the chosen archs, the largest first
        self.fitness_cache: dict[str, float] = {}
        self.rejected = {"floor": 0, "no_saving": 0}
        self.evaluations = 0
        self.proxy_evaluations = 0
        self.shortfall = 0
        self.next_generation = 0

    # ---- what the stage reads ------------------------------------------------------------
    @property
    def done(self) -> bool:
        return bool(self.path) and self.constraints.ok(self.best_arch())

    @property
    def total_generations(self) -> int:
        """An upper bound on the steps (every gene from its largest to its smallest choice), for progress."""
        sp, top = self.space, self.space.largest()
        return 1 + len(sp.embed_dim) + len(sp.depth) + top.depth * sum(
            len(getattr(sp, g)) for g in top.family.shrink_genes)

    @property
    def budget(self) -> int:
        return self.evaluations  # no fixed budget: every action of every step

    @property
    def generations(self) -> int:
        return max(0, self.next_generation - 1)

    def best(self) -> dict[str, Any]:
        if not self.path:
            raise RuntimeError("no candidate evaluated yet")
        return self.history[self.path[-1]]

    def best_arch(self) -> Arch:
        return Arch.from_dict(self.best()["arch"])

    def population(self) -> list[dict[str, Any]]:
        return [self.history[i] for i in self.path]

    # ---- one step --------------------------------------------------------------------------
    def _value(self, costs: Costs) -> float:
        return mes(costs, self.config.mes_alpha) if self.cost == "mes" else float(getattr(costs, self.cost))

    def _evaluate(self, archs: list[Arch]) -> list[float]:
        self.evaluations += len({a.key() for a in archs} - set(self.fitness_cache))
        return cached_values(self.fitness, self.fitness_cache, archs)

    def _record(self, arch: Arch, origin: str, costs: Costs, fitness: float) -> int:
        self.history.append({"arch": arch.to_dict(), "generation": self.next_generation, "origin": origin,
                             **costs.to_dict(), "fitness": fitness, "chosen": False})
        return len(self.history) - 1

    def _candidates(self, current: Arch, cur: float) -> list[tuple[str, Arch, Costs]]:
        """The actions from `current` (of cost value `cur`) that save cost and cross no floor (the
        others counted)."""
        out = []
        for name, arch in self.space.family.shrink_actions(self.space, current):
            costs = self.constraints.costs(arch)
            if _below_floor(self.constraints, costs):
                self.rejected["floor"] += 1
            elif (self._value(costs) <= cur) if self.cost == "mes" else (self._value(costs) >= cur):
                self.rejected["no_saving"] += 1
            else:
                out.append((name, arch, costs))
        return out

    def step(self) -> dict[str, float]:
        """Evaluate the largest arch (step 0) or every action of the current one and take the best."""
        if self.done:
            raise RuntimeError("the search is finished")
        if not self.path:
            top = self.space.largest()
            costs = self.constraints.costs(top)
            if _below_floor(self.constraints, costs):
                raise ConfigError(f"{self.constraints.first_key()}: the largest arch of the space is below it")
            self.path.append(self._record(top, "largest", costs, self._evaluate([top])[0]))
            self.history[-1]["chosen"] = True
            return self._finish([self.history[-1]["fitness"]])
        current, cur = self.best_arch(), self.best()
        base = self._value(self.constraints.costs(current))
        cands = self._candidates(current, base)
        if not cands:
            c = self.constraints
            raise ConfigError(f"{c.first_key()}: greedy slimming stopped at {current}: no action saves "
                              f"{self.cost} without crossing a floor, and the constraints ({c.describe()}) are not met")
        values = self._evaluate([a for _, a, _ in cands])
        scores = [(cur["fitness"] - v) / abs(self._value(c) - base) for (_, _, c), v in zip(cands, values, strict=True)]
        pick = min(range(len(cands)), key=lambda i: (scores[i] if math.isfinite(scores[i]) else math.inf, i))
        idx = [self._record(a, name, c, v) for (name, a, c), v in zip(cands, values, strict=True)]
        self.history[idx[pick]]["chosen"] = True
        self.history[idx[pick]]["score"] = scores[pick]
        self.path.append(idx[pick])
        return self._finish(values)

    def _finish(self, values: list[float]) -> dict[str, float]:
        best = self.best()
        stats = {"generation": self.next_generation, "evaluated": len(values), "best_fitness": _num(best["fitness"]),
                 "population_mean_fitness": statistics.fmean(_num(r["fitness"]) for r in self.population()),
                 "generation_best_fitness": max(_num(v) for v in values),
                 "generation_mean_fitness": statistics.fmean(_num(v) for v in values),
                 "evaluations": self.evaluations, "rejected": sum(self.rejected.values()),
                 "cost": self._value(Costs(best["params"], best["flops"], best.get("latency_ms")))}
        self.stats.append(stats)
        self.next_generation += 1
        return stats

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "config": asdict(self.config), "space": self.space.to_dict(),
                "history": [dict(r) for r in self.history], "stats": [dict(s) for s in self.stats],
                "path": list(self.path), "fitness_cache": dict(self.fitness_cache), "rejected": dict(self.rejected),
                "evaluations": self.evaluations, "next_generation": self.next_generation}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"search state version {state.get('version')!r} != {STATE_VERSION}")
        if state["config"] != asdict(self.config) or state["space"] != self.space.to_dict():
            raise ValueError("search state was made with another config or space")
        self.history = [dict(r) for r in state["history"]]
        self.stats = [dict(s) for s in state["stats"]]
        self.path = [int(i) for i in state["path"]]
        self.fitness_cache = dict(state["fitness_cache"])
        self.rejected = dict(state["rejected"])
        self.evaluations = int(state["evaluations"])
        self.next_generation = int(state["next_generation"])


def _below_floor(c: Constraints, costs: Costs) -> bool:
    return (c.params_min is not None and costs.params < c.params_min) or \
        (c.flops_min is not None and costs.flops < c.flops_min)
