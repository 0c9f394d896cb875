"""Architecture search under hard constraints: AutoFormer's evolution (or random search) and
EfficientFormer's greedy latency-driven slimming, with supernet, proxy or hybrid fitness, and a
latency lookup table for latency budgets.

Names are imported on first use (PEP 562), so the config layer can read the torch-free rules
(`vitnas.search.budgets`) without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOME = {
    "Constraints": "constraints", "Costs": "constraints",
    "EvolutionConfig": "evolution", "Search": "evolution", "crossover": "evolution", "mutate": "evolution",
    "pareto_front": "evolution",
    "GreedyConfig": "greedy", "GreedySlimming": "greedy",
    "CachedFitness": "fitness", "Fitness": "fitness", "ProxyFitness": "fitness", "ShardedFitness": "fitness",
    "SupernetFitness": "fitness",
    "LatencyTable": "latency", "check_table": "latency", "measure_table": "latency",
}
__all__ = ["CachedFitness", "Constraints", "Costs", "EvolutionConfig", "Fitness", "GreedyConfig", "GreedySlimming",
           "LatencyTable", "ProxyFitness", "Search", "ShardedFitness", "SupernetFitness", "check_table", "crossover",
           "measure_table", "mutate", "pareto_front"]  # = sorted(_HOME) (tests/test_greedy.py)

if TYPE_CHECKING:
    from vitnas.search.constraints import Constraints, Costs
    from vitnas.search.evolution import EvolutionConfig, Search, crossover, mutate, pareto_front
    from vitnas.search.fitness import CachedFitness, Fitness, ProxyFitness, ShardedFitness, SupernetFitness
    from vitnas.search.greedy import GreedyConfig, GreedySlimming
    from vitnas.search.latency import LatencyTable, check_table, measure_table


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'vitnas.search' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vitnas.search.{_HOME[name]}"), name)
