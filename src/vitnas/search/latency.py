"""Latency lookup table (EfficientFormer style): measured once per device, summed per candidate.

A ViT of the space runs as: stem (patch embed + CLS token + position embedding), `depth` blocks,
tail (final norm + classifier on the CLS token). Stem and tail (the "fixed" part) depend only on
the embed width; a block on (embed width, heads, MLP hidden) at the space's token count. The table holds the median
forward latency of each of those pieces, measured on standalone `vitnas.build` models (what gets
deployed), so a candidate's predicted latency is a sum of lookups: no model is built during search.
`measure_table` also checks the sum against end-to-end latency of a few whole models and stores
the relative error in the table.
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from vitnas.errors import ArtifactError
from vitnas.files import read_json
from vitnas.models import build
from vitnas.models.build import Block
from vitnas.space import Arch, SearchSpace
from vitnas.space.arch import MODEL_DEFAULTS

FORMAT = "vitnas-latency/1"
_SHAPE_KEYS = ("head_dim", "patch_size", "img_size", "in_chans", "num_classes", *MODEL_DEFAULTS)


@dataclass
class LatencyTable:
    """Median forward latency (ms) of each piece of the models of one space on one device."""

    space: dict[str, Any]
    batch_size: int
    device: dict[str, Any]
    fixed: dict[int, float]  # embed_dim -> ms of everything but the blocks (stem + tail)
    blocks: dict[tuple[int, int, int], float]  # (embed_dim, num_heads, mlp_hidden) -> ms
    check: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    # ---- lookups ------------------------------------------------------------------------
    def measured_for(self, key: str) -> Any:
        """The space field the table was measured for (timm's model fields for tables from before them)."""
        return self.space.get(key, MODEL_DEFAULTS.get(key))

    def missing(self, arch: Arch) -> str | None:
        """Why the table cannot predict `arch` (the first reason), or None."""
        if arch.family.refusal("latency"):
            return f"it has {arch.family.title} blocks: {arch.family.refusal('latency')}"
        for k in _SHAPE_KEYS:
            want = self.measured_for(k)
            have = arch.head_dim[0] if k == "head_dim" else getattr(arch, k)
            if k == "head_dim" and any(d != want for d in arch.head_dim):
                return f"head_dim {list(arch.head_dim)} != the table's {want}"
            if have != want:
                return f"{k} {have} != the table's {want}"
        e = arch.embed_dim
        if e not in self.fixed:
            return f"no entry for embed_dim {e}"
        for i, (h, m) in enumerate(zip(arch.num_heads, arch.mlp_hidden, strict=True)):
            if (e, h, m) not in self.blocks:
                return f"no block entry for layer {i} (embed {e}, heads {h}, mlp hidden {m})"
        return None

    def predict(self, arch: Arch) -> float:
        """Predicted latency of `arch` in ms: the fixed part of its width + the sum of its blocks."""
        e = arch.embed_dim
        if arch.family.refusal("latency"):
            raise ArtifactError(f"{self.path or 'latency table'}: cannot predict {arch}: {self.missing(arch)}")
        try:
            return self.fixed[e] + sum(
                self.blocks[(e, h, m)] for h, m in zip(arch.num_heads, arch.mlp_hidden, strict=True))
        except KeyError:
            raise ArtifactError(f"{self.path or 'latency table'}: cannot predict {arch}: "
                                f"{self.missing(arch)}; re-run `vitnas latency-table` for this space") from None

    def range(self, space: SearchSpace) -> tuple[float, float]:
        """Exact (min, max) predicted latency over the archs of `space`: the prediction is a sum over
        layers, so the extremes take the fastest/slowest block of a width at the least/most depth."""
        lo = hi = None
        for e in space.embed_dim:
            per_layer = [self.blocks[(e, h, int(e * r))] for h in space.num_heads for r in space.mlp_ratio]
            a = self.fixed[e] + min(space.depth) * min(per_layer)
            b = self.fixed[e] + max(space.depth) * max(per_layer)
            lo, hi = (a, b) if lo is None else (min(lo, a), max(hi, b))
        return lo, hi

    def covers(self, space: SearchSpace) -> str | None:
        """Why the table cannot predict every arch of `space`, or None when it can."""
        if space.family.refusal("latency"):
            return space.family.refusal("latency")
        for k in _SHAPE_KEYS:
            if self.measured_for(k) != getattr(space, k):
                return f"it was measured for {k} {self.measured_for(k)}, the space has {getattr(space, k)}"
        for e in space.embed_dim:
            if e not in self.fixed:
                return f"it has no entry for embed_dim {e}"
            for h in space.num_heads:
                for r in space.mlp_ratio:
                    if (e, h, int(e * r)) not in self.blocks:
                        return f"it has no block entry for embed {e}, heads {h}, mlp ratio {r}"
        return None

    # ---- files --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "batch_size": self.batch_size,
            "device": self.device,
            "space": self.space,
            "fixed": [{"embed_dim": e, "ms": ms} for e, ms in sorted(self.fixed.items())],
            "blocks": [{"embed_dim": e, "num_heads": h, "mlp_hidden": m, "ms": ms}
                       for (e, h, m), ms in sorted(self.blocks.items())],
            "check": self.check,
        }

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON, atomically (temp file + rename)."""
        from vitnas.files import atomic_file

        path = Path(path)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        self.path = path
        return path

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: Path | None = None) -> LatencyTable:
        where = str(path) if path else "latency table"
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise ArtifactError(f"{where}: not a vitnas latency table (format {found!r}, expected {FORMAT!r})")
        try:
            return cls(
                space=dict(d["space"]), batch_size=int(d["batch_size"]), device=dict(d["device"]),
                fixed={int(r["embed_dim"]): float(r["ms"]) for r in d["fixed"]},
                blocks={(int(r["embed_dim"]), int(r["num_heads"]), int(r["mlp_hidden"])): float(r["ms"])
                        for r in d["blocks"]},
                check=dict(d.get("check") or {}), path=path)
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{where}: malformed latency table ({type(e).__name__}: {e})") from None

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        d = read_json(path, ArtifactError, "latency table",
                      missing="latency table not found (run `vitnas latency-table`)")
        return cls.from_dict(d, path)


# ---- measurement ------------------------------------------------------------------------------
def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    else:
        info["name"] = info["processor"]
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_median_ms(fns: Sequence[Callable[[], Any]], device: torch.device, *, warmup: int, repeats: int,
                          rounds: int = 5, progress: Callable[[Iterable], Iterable] | None = None) -> list[float]:
    """Median wall time (ms) of each of `fns`, timed round-robin in `rounds` passes of
    ~`repeats / rounds` calls each, so a load change on a shared machine hits all of them alike."""
    rounds = max(1, min(rounds, repeats))
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    times: list[list[float]] = [[] for _ in fns]
    passes = [(r, i) for r in range(rounds) for i in range(len(fns))]
    with torch.inference_mode():
        for r, i in (progress(passes) if progress else passes):
            fn = fns[i]
            for _ in range(warmup if r == 0 else min(warmup, 2)):
                fn()
            _sync(device)
            for _ in range(per_round[r]):
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def _shell(space: SearchSpace, embed: int) -> torch.nn.Module:
    """A timm ViT of width `embed` with no blocks: everything of a model but its blocks."""
    return VisionTransformer(img_size=space.img_size, patch_size=space.patch_size, in_chans=space.in_chans,
                             num_classes=space.num_classes, embed_dim=embed, depth=0, num_heads=1,
                             qkv_bias=True, class_token=True, global_pool=space.global_pool, fc_norm=False,
                             norm_layer=partial(nn.LayerNorm, eps=space.norm_eps))


def measure_table(space: SearchSpace, *, batch_size: int = 1, warmup: int = 10, repeats: int = 50,
                  rounds: int = 5, check_archs: int = 5, seed: int = 0, device: str | torch.device = "cpu",
                  progress: Callable[[Iterable], Iterable] | None = None) -> LatencyTable:
    """Measure every piece of `space`'s models on `device` and check sums against whole models.

    The fixed part of width e is the end-to-end forward of a model with no blocks (patch embed,
    CLS + position embedding, final norm, head, and the model's own call overhead); a block entry
    is one standalone block on random tokens. The `check_archs` whole models (seeded samples) are
    timed in the same interleaved passes as the pieces, so the reported error is the table's,
    not a change of load between the two. `progress` wraps the passes (e.g. a tqdm), when given.
    """
    if space.family.refusal("latency"):
        raise ValueError(f"space: {space.name}: {space.family.refusal('latency')}")
    device = torch.device(device)
    tokens = space.largest().num_tokens
    img = torch.randn(batch_size, space.in_chans, space.img_size, space.img_size, device=device)
    keys: list[tuple] = []
    fns: list[Callable[[], Any]] = []
    rel = (space.img_size // space.patch_size, space.rel_pos_clip) if space.rel_pos else None
    for e in space.embed_dim:
        shell = _shell(space, e).to(device).eval()
        keys.append((e,))
        fns.append(lambda m=shell: m(img))
        t = torch.randn(batch_size, tokens, e, device=device)
        for h in space.num_heads:
            for m in sorted({int(e * r) for r in space.mlp_ratio}):
                block = Block(e, h, space.head_dim, m, norm_layer=partial(nn.LayerNorm, eps=space.norm_eps),
                              rel_pos=rel).to(device).eval()
                keys.append((e, h, m))
                fns.append(lambda b=block, t=t: b(t))
    rng = random.Random(seed)
    checks = [space.sample(rng) for _ in range(check_archs)]
    for arch in checks:
        model = build(arch).to(device).eval()
        fns.append(lambda m=model: m(img))
    ms = interleaved_median_ms(fns, device, warmup=warmup, repeats=repeats, rounds=rounds, progress=progress)
    fixed = {k[0]: v for k, v in zip(keys, ms, strict=False) if len(k) == 1}
    blocks = {k: v for k, v in zip(keys, ms, strict=False) if len(k) == 3}
    table = LatencyTable(space={k: getattr(space, k) for k in (*_SHAPE_KEYS, "name")}
                         | {k: list(getattr(space, k)) for k in ("embed_dim", "depth", "num_heads", "mlp_ratio")},
                         batch_size=batch_size, device=device_info(device), fixed=fixed, blocks=blocks)
    table.check = check_report(table, checks, ms[len(keys):])
    return table


def check_report(table: LatencyTable, archs: Sequence[Arch], measured_ms: Sequence[float]) -> dict[str, Any]:
    """Predicted (sum of lookups) vs measured end-to-end latency: per arch and mean/max relative error."""
    rows = []
    for arch, measured in zip(archs, measured_ms, strict=True):
        predicted = table.predict(arch)
        rows.append({"arch": arch.to_dict(), "predicted_ms": round(predicted, 5), "measured_ms": round(measured, 5),
                     "rel_error": round(abs(predicted - measured) / measured, 5)})
    errs = [r["rel_error"] for r in rows]
    return {"archs": rows, "mean_rel_error": round(statistics.fmean(errs), 5) if errs else None,
            "max_rel_error": round(max(errs), 5) if errs else None}


def check_table(table: LatencyTable, space: SearchSpace, *, n: int = 5, seed: int = 0,
                device: str | torch.device = "cpu", warmup: int = 10, repeats: int = 50) -> dict[str, Any]:
    """Re-check an existing table against `n` sampled whole models measured now."""
    device = torch.device(device)
    rng = random.Random(seed)
    img = torch.randn(table.batch_size, space.in_chans, space.img_size, space.img_size, device=device)
    archs = [space.sample(rng) for _ in range(n)]
    models = [build(a).to(device).eval() for a in archs]
    ms = interleaved_median_ms([lambda m=m: m(img) for m in models], device, warmup=warmup, repeats=repeats)
    return check_report(table, archs, ms)
