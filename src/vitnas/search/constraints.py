"""Hard constraints on candidates: params window, FLOPs window, latency budget.

Costs are exact and cheap (`count_params`/`count_flops` are arithmetic, latency is a sum of table
lookups), so every candidate is checked *before* it is evaluated. A constraint that no arch of
the space can meet is reported before any evaluation, with the space's feasible range.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from vitnas.errors import ConfigError
from vitnas.families import extremes_by
from vitnas.numbers import human
from vitnas.search.latency import LatencyTable
from vitnas.space import Arch, SearchSpace, count_flops, count_params


def _given(v: float) -> str:
    return str(int(v)) if float(v) == int(v) else repr(v)


@dataclass(frozen=True)
class Costs:
    params: int
    flops: int
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"params": self.params, "flops": self.flops}
        if self.latency_ms is not None:
            d["latency_ms"] = round(self.latency_ms, 5)
        return d


@dataclass(frozen=True)
class Constraints:
    """Inclusive windows; None = unbounded. `latency` predicts latency (needed for latency_max_ms)."""

    params_min: float | None = None
    params_max: float | None = None
    flops_min: float | None = None
    flops_max: float | None = None
    latency_max_ms: float | None = None
    latency: LatencyTable | None = None
    prefix: str = "search"  # key path of the config section, for messages

    def __post_init__(self) -> None:
        if self.latency_max_ms is not None and self.latency is None:
            raise ConfigError(f"{self.prefix}.latency_table: required when {self.prefix}.latency_max_ms is set")

    @classmethod
    def from_config(cls, cfg: Any, latency: LatencyTable | None = None, prefix: str = "search") -> Constraints:
        """From a `SearchConfig` (or anything with the same attributes)."""
        return cls(params_min=cfg.params_min, params_max=cfg.params_max, flops_min=cfg.flops_min,
                   flops_max=cfg.flops_max, latency_max_ms=cfg.latency_max_ms, latency=latency, prefix=prefix)

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.params_min, self.params_max, self.flops_min, self.flops_max,
                                           self.latency_max_ms))

    def costs(self, arch: Arch) -> Costs:
        return Costs(count_params(arch), count_flops(arch),
                     self.latency.predict(arch) if self.latency is not None else None)

    def violation(self, arch: Arch, costs: Costs | None = None) -> str | None:
        """The name of the first constraint `arch` breaks ('params', 'flops', 'latency'), or None."""
        c = costs or self.costs(arch)
        if (self.params_min is not None and c.params < self.params_min) or \
                (self.params_max is not None and c.params > self.params_max):
            return "params"
        if (self.flops_min is not None and c.flops < self.flops_min) or \
                (self.flops_max is not None and c.flops > self.flops_max):
            return "flops"
        if self.latency_max_ms is not None and c.latency_ms is not None and c.latency_ms > self.latency_max_ms:
            return "latency"
        return None

    def ok(self, arch: Arch) -> bool:
        return self.violation(arch) is None

    def first_key(self) -> str:
        """Key path of the first constraint set (to name in messages about all of them)."""
        for k in ("params_min", "params_max", "flops_min", "flops_max", "latency_max_ms"):
            if getattr(self, k) is not None:
                return f"{self.prefix}.{k}"
        return self.prefix

    def describe(self) -> str:
        parts = []
        for name, lo, hi in (("params", self.params_min, self.params_max), ("flops", self.flops_min, self.flops_max)):
            if lo is not None or hi is not None:
                parts.append(f"{name} {human(lo) if lo is not None else '0'}-{human(hi) if hi is not None else 'inf'}")
        if self.latency_max_ms is not None:
            parts.append(f"latency <= {self.latency_max_ms:g} ms")
        return ", ".join(parts) or "none"

    # ---- feasibility -----------------------------------------------------------------------
    def check_feasible(self, space: SearchSpace, *, samples: int = 2000, seed: int = 0) -> None:
        """Raise `ConfigError` (key path first) when no arch of `space` can meet the constraints.

        `SearchSpace.cost_range` bounds params and FLOPs exactly (for plain spaces, which grow with
        every dimension, by the smallest and largest archs); the latency range is exact too
        (`LatencyTable.range`: measured latencies need not grow with every dimension, so it is not
        taken from those two archs).
        When each window is reachable on its own, a seeded sample (plus the two extremes) must
        hold at least one arch meeting all of them together.
        """
        p_lo, p_hi, f_lo, f_hi = space.cost_range()
        p = self.prefix
        ranges = [("params", p_lo, p_hi, self.params_min, self.params_max, "params"),
                  ("flops", f_lo, f_hi, self.flops_min, self.flops_max, "multiply-adds")]
        for name, a, b, want_lo, want_hi, unit in ranges:
            feasible = f"feasible range {human(a)}-{human(b)}"
            if want_hi is not None and want_hi < a:
                raise ConfigError(f"{p}.{name}_max: {_given(want_hi)} is below the smallest arch in the space "
                                  f"({human(a)} {unit}); {feasible}")
            if want_lo is not None and want_lo > b:
                raise ConfigError(f"{p}.{name}_min: {_given(want_lo)} is above the largest arch in the space "
                                  f"({human(b)} {unit}); {feasible}")
        if self.latency_max_ms is not None:
            a, b = self.latency.range(space)
            if self.latency_max_ms < a:
                raise ConfigError(f"{p}.latency_max_ms: {self.latency_max_ms:g} is below the fastest arch in the "
                                  f"space ({a:.4g} ms by the latency table); feasible range {a:.4g}-{b:.4g} ms")
        if not self.active:
            return
        rng = random.Random(seed)
        for arch in (*extremes_by(space), *(space.sample(rng) for _ in range(samples))):
            if self.ok(arch):
                return
        raise ConfigError(f"{self.first_key()}: no arch of the space meets all constraints together "
                          f"({self.describe()}) in {samples} random samples; params range of the space "
                          f"{human(p_lo)}-{human(p_hi)}, FLOPs range {human(f_lo)}-{human(f_hi)}")
