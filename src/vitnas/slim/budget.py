"""From mask scores and a FLOPs or params budget to a physically prunable architecture.

ViT-Slim ranks each mask kind globally (all layers of a kind pooled and sorted) and keeps the top
fraction, so per-layer widths differ. Here the kept fraction is *solved for* so that the final,
physical architecture hits a FLOPs or params target, counted exactly with `count_flops` /
`count_params` on that architecture (not a dimension fraction, as in ViT-Slim).

From kept entries to a physical architecture (`SlimPlan`), per layer:

- MLP: the number of globally kept units, at least 1, rounded *up* to a multiple of `round_to`
  (capped at the layer's width); the top-scoring units of the layer are kept.
- attention: a standalone timm model needs one head dim per layer, so a layer keeps n heads of
  d dims each. `head_rule="max"` (default): heads with at least one globally kept (head, dim)
  entry are kept (at least the layer's best head); d is the largest kept count over those heads,
  rounded up to `round_to` (capped at the original head dim). Nothing globally kept is lost;
  heads with fewer kept entries are padded with their next-best dims (which keep their soft mask
  values). `head_rule="fit"`: the layer's kept count c from the global ranking is matched as
  closely as the shape allows (smallest n*d >= c over d a multiple of `round_to`, ties broken by
  the most mask mass: the n heads with the largest sum of their top-d scores). On the digits
  demo (same trained masks, FLOPs targets 0.4 / 0.5 / 0.6) the pruned models kept 0.1 / 3.3 /
  0.9 points more train accuracy with "max" than with "fit" (equal at 0.7, 0.8): shrinking
  the head dim of strong heads hurt more than cutting weak layers harder, so "max" is the
  default. Either way each kept head keeps its top-scoring dims and the
  accounting uses the final physical arch. With relative position (`arch.rel_pos`) a layer keeps
  whole heads (d = its head dim): the position tables are shared by all heads of a layer, so a
  head dim cut per head would need tables per head, which AutoFormer's model does not have.
- tokens (optional): a global threshold on the nested (cumulative-min) token masks keeps a
  given fraction of all (layer, patch) slots as nested per-layer keep-sets (`token_plan`).
  They are fixed first; their counts become `arch.keep_tokens`, so every candidate's cost
  below already includes the token savings and the widths are solved for what remains.

Solver: the kept counts k_attn and k_mlp (of the pooled entries of each kind) move the cost
monotonically. For a grid of k_attn values (plus the ends) the largest k_mlp with cost <= target
is found by bisection, and it and the next one are both candidates; among candidates within
`tol` (2%) of the target, the one whose two kept fractions are closest (ViT-Slim's single
budget), then closest to the target, wins. Joint rather than one shared fraction because
rounding makes cost a step function of a shared fraction, which can jump over the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vitnas.errors import VitnasError
from vitnas.space.arch import Arch
from vitnas.space.cost import count_flops, count_params

KINDS = ("flops", "params")
HEAD_RULES = ("max", "fit")


class BudgetError(VitnasError, ValueError):
    """A budget the architecture cannot meet (below the smallest prunable model, or unreachable)."""


@dataclass(frozen=True)
class SlimPlan:
    """What to keep: the physical arch and, per layer, the kept heads, dims per head and MLP units."""

    arch: Arch
    heads: tuple[tuple[int, ...], ...]  # per layer: kept head indices (ascending)
    dims: tuple[tuple[tuple[int, ...], ...], ...]  # per layer, per kept head: kept dim indices
    mlp: tuple[tuple[int, ...], ...]  # per layer: kept hidden units (ascending)
    tokens: tuple[tuple[int, ...], ...] | None = None  # per layer: kept patch positions (nested)
    keep_attn: float = 1.0  # fraction of the pooled attention entries globally kept
    keep_mlp: float = 1.0
    keep_tokens: float | None = None
    kind: str = "flops"
    cost: int = 0
    target: float = 0.0  # target cost (absolute)
    info: dict = field(default_factory=dict, compare=False)

    @property
    def rel_error(self) -> float:
        return self.cost / self.target - 1.0 if self.target else 0.0

    def to_dict(self) -> dict:
        return {"arch": self.arch.to_dict(), "heads": [list(h) for h in self.heads],
                "dims": [[list(d) for d in ds] for ds in self.dims], "mlp": [list(m) for m in self.mlp],
                "tokens": None if self.tokens is None else [list(t) for t in self.tokens],
                "keep_attn": self.keep_attn, "keep_mlp": self.keep_mlp, "keep_tokens": self.keep_tokens,
                "kind": self.kind, "cost": self.cost, "target": self.target}


def cost_of(arch: Arch, kind: str) -> int:
    if kind == "flops":
        return count_flops(arch)
    if kind == "params":
        return count_params(arch)
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


def _round_up(n: int, multiple: int, cap: int) -> int:
    return min(cap, max(1, math.ceil(max(n, 1) / multiple) * multiple))


def _order(scores: torch.Tensor) -> torch.Tensor:
    """Indices by descending score; ties by position (deterministic)."""
    return torch.sort(scores.flatten().double(), descending=True, stable=True).indices


class _Pool:
    """One mask kind pooled over layers, pre-sorted so "top k" is a prefix of `order`."""

    def __init__(self, per_layer: Sequence[torch.Tensor], group_size: Sequence[int]) -> None:
        flat = torch.cat([s.detach().float().flatten().cpu() for s in per_layer])
        self.order = _order(flat)
        self.n = flat.numel()
        # group id of every entry: (layer, head) for attention, layer for MLP
        ids, off = [], 0
        for s, g in zip(per_layer, group_size, strict=True):
            ids.append(torch.arange(s.numel()) // g + off)
            off += s.numel() // g
        self.group = torch.cat(ids)[self.order].numpy()
        self.groups = off

    def counts(self, k: int) -> list[int]:
        """Kept entries per group when the global top-k are kept."""
        return np.bincount(self.group[:k], minlength=self.groups).tolist()


class BudgetSolver:
    """Plans for any kept counts of the pooled attention / MLP entries of `arch`."""

    def __init__(self, arch: Arch, attn_scores: Sequence[torch.Tensor], mlp_scores: Sequence[torch.Tensor],
                 *, round_to: int = 1, kind: str = "flops", head_rule: str = "max",
                 tokens: Sequence[Sequence[int]] | None = None, keep_tokens: float | None = None) -> None:
        if head_rule not in HEAD_RULES:
            raise ValueError(f"head_rule: expected one of {HEAD_RULES}, got {head_rule!r}")
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        if round_to < 1:
            raise ValueError(f"round_to: must be >= 1, got {round_to}")
        if len(attn_scores) != arch.depth or len(mlp_scores) != arch.depth:
            raise ValueError(f"scores: expected {arch.depth} layers")
        for i, (a, m) in enumerate(zip(attn_scores, mlp_scores, strict=True)):
            if tuple(a.shape) != (arch.num_heads[i], arch.head_dim[i]):
                raise ValueError(f"attn scores[{i}]: shape {tuple(a.shape)}, expected "
                                 f"{(arch.num_heads[i], arch.head_dim[i])}")
            if tuple(m.shape) != (arch.mlp_hidden[i],):
                raise ValueError(f"mlp scores[{i}]: shape {tuple(m.shape)}, expected {(arch.mlp_hidden[i],)}")
        self.arch, self.kind, self.round_to, self.head_rule = arch, kind, int(round_to), head_rule
        self.tokens = None if tokens is None else tuple(tuple(sorted(int(j) for j in t)) for t in tokens)
        self.keep_tokens = keep_tokens
        self._token_counts = None if self.tokens is None else [len(t) for t in self.tokens]
        if self._token_counts is not None:  # validates the counts (nested, in range) at once
            arch.replace(keep_tokens=self._token_counts)
        self.attn_scores = [a.detach().float().cpu() for a in attn_scores]
        self.mlp_scores = [m.detach().float().cpu() for m in mlp_scores]
        self.attn = _Pool(self.attn_scores, arch.head_dim)
        self.mlp = _Pool(self.mlp_scores, [m for m in arch.mlp_hidden])
        self._best_head = [int(a.max(dim=1).values.argmax()) for a in self.attn_scores]
        # per layer: mass[h, j] = sum of head h's top-j scores; shape[c] = (n, d) for kept count c
        self._mass = [torch.cat((a.new_zeros(a.shape[0], 1), a.sort(dim=1, descending=True).values.cumsum(1)), 1)
                      .double().numpy() for a in self.attn_scores]
        self._shape = [self._shape_table(i) for i in range(arch.depth)] if head_rule == "fit" else []
        self._heads: dict[tuple[int, int, int], list[int]] = {}
        self._cache: dict[tuple[int, int], tuple[Arch, int]] = {}

    # ---- counts -> arch ---------------------------------------------------------------------
    def _head_dims(self, i: int) -> list[int]:
        d = self.arch.head_dim[i]
        if self.arch.rel_pos:  # the relative-position tables are shared by every head: whole heads only
            return [d]
        return sorted({min(d, r * self.round_to) for r in range(1, d // self.round_to + 2)})

    def _top_heads(self, i: int, n: int, d: int) -> list[int]:
        key = (i, n, d)
        if key not in self._heads:
            mass = torch.from_numpy(self._mass[i][:, d].copy())
            self._heads[key] = sorted(_order(mass)[:n].tolist())
        return self._heads[key]

    def _shape_table(self, i: int) -> list[tuple[int, int]]:
        """(heads, head dim) for every kept count c = 0..H*D of layer i (for head_rule "fit")."""
        H, D = self.arch.num_heads[i], self.arch.head_dim[i]
        mass = self._mass[i]
        table = []
        for c in range(H * D + 1):
            best = None
            for d in self._head_dims(i):
                n = math.ceil(max(c, 1) / d)
                if n > H:
                    continue
                kept = float(np.sort(mass[:, d])[::-1][:n].sum())
                key = (n * d, -kept, d)
                if best is None or key < best[0]:
                    best = (key, (n, d))
            table.append(best[1])
        return table

    def widths(self, k_attn: int, k_mlp: int) -> tuple[list[list[int]], list[int], list[int]]:
        """Per layer: kept heads, head dim, MLP width for the global top-k of each kind."""
        a = self.arch
        per_head = self.attn.counts(k_attn)
        heads, hdims, off = [], [], 0
        for i, (h, d) in enumerate(zip(a.num_heads, a.head_dim, strict=True)):
            c = per_head[off:off + h]
            off += h
            if self.head_rule == "fit":
                n, hd = self._shape[i][sum(c)]
                heads.append(self._top_heads(i, n, hd))
                hdims.append(hd)
                continue
            kept = [j for j in range(h) if c[j] > 0]
            if not kept:  # every layer keeps at least its best head
                kept = [self._best_head[i]]
            heads.append(kept)
            hdims.append(d if a.rel_pos else _round_up(max(c[j] for j in kept), self.round_to, d))
        units = [_round_up(c, self.round_to, m)
                 for c, m in zip(self.mlp.counts(k_mlp), a.mlp_hidden, strict=True)]
        return heads, hdims, units

    def arch_for(self, k_attn: int, k_mlp: int) -> tuple[Arch, int]:
        key = (k_attn, k_mlp)
        if key not in self._cache:
            heads, hdims, units = self.widths(k_attn, k_mlp)
            arch = self.arch.replace(num_heads=[len(h) for h in heads], head_dim=hdims, mlp_hidden=units,
                                     keep_tokens=self._token_counts)
            self._cache[key] = (arch, cost_of(arch, self.kind))
        return self._cache[key]

    def plan(self, k_attn: int, k_mlp: int, *, target: float = 0.0) -> SlimPlan:
        heads, hdims, units = self.widths(k_attn, k_mlp)
        arch, cost = self.arch_for(k_attn, k_mlp)
        dims = []
        for i, (hs, hd) in enumerate(zip(heads, hdims, strict=True)):
            dims.append(tuple(tuple(sorted(_order(self.attn_scores[i][h])[:hd].tolist())) for h in hs))
        mlp = tuple(tuple(sorted(_order(self.mlp_scores[i])[:u].tolist())) for i, u in enumerate(units))
        return SlimPlan(arch=arch, heads=tuple(tuple(h) for h in heads), dims=tuple(dims), mlp=mlp,
                        tokens=self.tokens, keep_attn=k_attn / self.attn.n, keep_mlp=k_mlp / self.mlp.n,
                        keep_tokens=self.keep_tokens, kind=self.kind, cost=cost, target=float(target))

    # ---- solve ------------------------------------------------------------------------------
    def min_cost(self) -> int:
        return self.arch_for(0, 0)[1]

    def full_cost(self) -> int:
        return cost_of(self.arch, self.kind)

    def solve(self, ratio: float, *, tol: float = 0.02, grid: int = 64) -> SlimPlan:
        """The plan whose physical arch's cost is within `tol` of `ratio` x the unpruned cost."""
        if not 0.0 < ratio <= 1.0:
            raise BudgetError(f"target ratio: must be in (0, 1], got {ratio}")
        full = self.full_cost()
        target = ratio * full
        lo_cost = self.min_cost()
        if lo_cost > target * (1 + tol):
            raise BudgetError(f"target {self.kind} ratio {ratio:g} is below the smallest prunable model "
                              f"({lo_cost / full:.3f} of the {self.kind}: one head of "
                              f"{min(self.round_to, min(self.arch.head_dim))} dims and "
                              f"{self.round_to} MLP units per layer at round_to={self.round_to})")
        na, nm = self.attn.n, self.mlp.n
        ka_grid = sorted({0, na, *(round(na * j / grid) for j in range(grid + 1))})
        cands: list[tuple[int, int, int]] = []
        for ka in ka_grid:
            if self.arch_for(ka, 0)[1] > target * (1 + tol):
                break  # attention alone already too big; larger ka only costs more
            lo, hi = 0, nm  # largest km with cost <= target (cost is non-decreasing in km)
            if self.arch_for(ka, nm)[1] <= target:
                lo = nm
            else:
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if self.arch_for(ka, mid)[1] <= target:
                        lo = mid
                    else:
                        hi = mid
            for km in {lo, min(lo + 1, nm)}:
                cands.append((ka, km, self.arch_for(ka, km)[1]))
        ok = [c for c in cands if abs(c[2] / target - 1) <= tol]
        if not ok:
            best = min(cands, key=lambda c: abs(c[2] / target - 1))
            raise BudgetError(f"target {self.kind} ratio {ratio:g} cannot be met within {tol:.0%} at "
                              f"round_to={self.round_to}; the closest is {best[2] / full:.3f} "
                              "(lower round_to or change the target)")
        ka, km, _ = min(ok, key=lambda c: (round(abs(c[0] / na - c[1] / nm), 3), abs(c[2] / target - 1)))
        return self.plan(ka, km, target=target)


def token_plan(token_scores: Sequence[torch.Tensor], keep: float) -> tuple[tuple[int, ...], ...]:
    """Nested per-layer kept patch positions: the global top-`keep` fraction of all (layer, patch)
    slots of the (cumulative-min) token masks, at least one patch per layer.

    Ties (masks clamp at 0 and 1) are broken towards earlier layers, then lower positions: with
    masks non-increasing over depth this keeps the sets nested and the count exact."""
    if not token_scores:
        return ()
    flat = torch.cat([t.detach().double().flatten().cpu() for t in token_scores])  # layer-major
    k = min(flat.numel(), max(1, round(keep * flat.numel())))
    chosen = torch.sort(-flat, stable=True).indices[:k]
    n = token_scores[0].numel()
    per_layer: list[set[int]] = [set() for _ in token_scores]
    for idx in chosen.tolist():
        per_layer[idx // n].add(idx % n)
    out, prev = [], None
    for t, kept in zip(token_scores, per_layer, strict=True):
        if prev is not None:
            kept &= prev  # a no-op for cumulative-min masks; guards hand-made scores
        if not kept:
            kept = {int(t.argmax())} if prev is None else {max(sorted(prev), key=lambda j: float(t[j]))}
        out.append(tuple(sorted(kept)))
        prev = kept
    return tuple(out)


def solve_budget(arch: Arch, scores: dict, *, kind: str = "flops", ratio: float = 0.6, round_to: int = 1,
                 tol: float = 0.02, head_rule: str = "max", token_keep: float | None = None) -> SlimPlan:
    """`scores` as `MaskedViT.scores()` ({"attn": [...], "mlp": [...], optionally "tokens": [...]}).

    `token_keep`: the fraction of (layer, patch) token slots kept (needs token scores); None keeps
    every token."""
    tokens = None
    if token_keep is not None:
        if not scores.get("tokens"):
            raise ValueError("token_keep: needs token scores (MaskedViT(..., tokens=True))")
        tokens = token_plan(scores["tokens"], token_keep)
    solver = BudgetSolver(arch, scores["attn"], scores["mlp"], round_to=round_to, kind=kind, head_rule=head_rule,
                          tokens=tokens, keep_tokens=token_keep)
    return solver.solve(ratio, tol=tol)
