"""Which cost greedy slimming trades fitness for: a rule the config check and the search share,
kept free of torch so `vitnas check-params` stays fast."""

from __future__ import annotations

from typing import Any

from vitnas.errors import ConfigError

# the max constraint that drives greedy slimming, first set first, and the cost it limits
DRIVERS = (("latency_max_ms", "latency_ms"), ("flops_max", "flops"), ("params_max", "params"))


def driving_cost(cfg: Any, score: str = "per_cost", p: str = "search") -> str:
    """`latency_ms`, `flops` or `params` (the first max constraint of `cfg`, a `Constraints` or a
    `SearchConfig`, that is set), or `mes` for EfficientFormerV2's score, which needs a latency
    budget. `p`: the config section, for messages."""
    if score == "mes":
        if cfg.latency_max_ms is None:
            raise ConfigError(f"{p}.latency_max_ms: required with {p}.greedy_score mes (MES weighs latency and "
                              "size)")
        return "mes"
    for key, cost in DRIVERS:
        if getattr(cfg, key) is not None:
            return cost
    raise ConfigError(f"{p}.latency_max_ms: the greedy strategy slims the largest arch until a budget is met; "
                      f"set {p}.latency_max_ms (with {p}.latency_table), {p}.flops_max or {p}.params_max")
