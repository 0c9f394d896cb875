"""Evolutionary architecture search under hard constraints (AutoFormer), with supernet, proxy or
hybrid fitness, and a latency lookup table for latency budgets."""

from vitnas.search.constraints import Constraints, Costs
from vitnas.search.evolution import EvolutionConfig, Search, crossover, mutate, pareto_front
from vitnas.search.fitness import CachedFitness, Fitness, ProxyFitness, ShardedFitness, SupernetFitness
from vitnas.search.latency import LatencyTable, check_table, measure_table

__all__ = ["CachedFitness", "Constraints", "Costs", "EvolutionConfig", "Fitness", "LatencyTable", "ProxyFitness",
           "Search", "ShardedFitness", "SupernetFitness", "check_table", "crossover", "measure_table", "mutate",
           "pareto_front"]
