"""Search stage: AutoFormer evolution (or random search) under params/FLOPs/latency constraints.

Fitness is supernet accuracy with inherited weights on the val split, a zero-cost proxy on a
randomly initialised supernet, or both (proxy pre-filter, then supernet accuracy). Checkpoints the
whole search state after every generation; a resumed run ends with the same best arch and history
as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vitnas import tracking
from vitnas.config import Params
from vitnas.data import PreparedData
from vitnas.errors import ArtifactError, ConfigError
from vitnas.search import Constraints, EvolutionConfig, LatencyTable, ProxyFitness, Search, SupernetFitness
from vitnas.search.evolution import pareto_front
from vitnas.search.fitness import check_proxy
from vitnas.space import SearchSpace
from vitnas.stages import _checkpoint
from vitnas.stages._io import atomic_dir, flat_metrics, write_json
from vitnas.stages.supernet import check_data
from vitnas.supernet import Supernet, SupernetFileError

OUTPUTS = ("best_arch.json", "history.jsonl", "pareto.png", "metrics.json")


def load_latency_table(params: Params, space: SearchSpace) -> LatencyTable | None:
    """The configured latency table (checked against `space`), or None when none is set."""
    cfg = params.search
    if cfg.latency_max_ms is not None and cfg.latency_table is None:
        raise ConfigError("search.latency_table: required when search.latency_max_ms is set")
    if cfg.latency_table is None:
        return None
    table = LatencyTable.load(cfg.latency_table)
    why = table.covers(space)
    if why is not None:
        raise ArtifactError(f"{cfg.latency_table}: latency table does not fit the search space ({why}); "
                            "re-run `vitnas latency-table`")
    return table


def load_supernet(path: str | Path, space: SearchSpace, device: torch.device) -> Supernet:
    """The trained supernet, which must have been built from `space`."""
    try:
        net = Supernet.load(path, map_location=device)
    except SupernetFileError as e:
        raise ArtifactError(str(e)) from None
    have = {k: v for k, v in net.space.to_dict().items() if k != "name"}
    want = {k: v for k, v in space.to_dict().items() if k != "name"}
    if have != want:
        diff = next(k for k in want if have.get(k) != want[k])
        raise ArtifactError(f"{path}: supernet was trained on another search space ({diff} {have.get(diff)} != "
                            f"{want[diff]} from params.yaml and the data); re-run `vitnas supernet`")
    return net


def proxy_batch(data: PreparedData, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded batch of `n` eval-transformed train images for data-dependent proxies."""
    ds = data.dataset("train")
    idx = sorted(random.Random(repr(("proxy-batch", seed))).sample(range(len(ds)), min(n, len(ds))))
    items = [ds[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items], dtype=torch.long)


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def plot_pareto(history: list[dict[str, Any]], path: Path, fitness_label: str) -> None:
    """Fitness vs params, FLOPs (and latency when known); Pareto fronts highlighted, best starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_spec = [("params", "params"), ("flops", "FLOPs (multiply-adds)")]
    if history and all("latency_ms" in r for r in history):
        axes_spec.append(("latency_ms", "predicted latency (ms)"))
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(5 * len(axes_spec) + 1, 4.2), squeeze=False,
                             layout="constrained")
    fit = [r["fitness"] for r in history]
    best = max(range(len(history)), key=lambda i: (_finite(fit[i]), -i)) if history else None
    gens = [r["generation"] for r in history]
    for ax, (key, label) in zip(axes[0], axes_spec, strict=True):
        cost = [r[key] for r in history]
        sc = ax.scatter(cost, fit, c=gens, cmap="viridis", s=12, alpha=0.6, label="evaluated")
        front = pareto_front(cost, fit)
        ax.step([cost[i] for i in front], [fit[i] for i in front], where="post", color="tab:red", lw=1.5)
        ax.scatter([cost[i] for i in front], [fit[i] for i in front], color="tab:red", s=28,
                   label=f"Pareto front ({len(front)})", zorder=3)
        if best is not None:
            ax.scatter([cost[best]], [fit[best]], marker="*", s=200, color="gold", edgecolor="black",
                       label="best", zorder=4)
        ax.set(xlabel=label, ylabel=fitness_label)
        ax.legend(fontsize=8, loc="best")
    fig.colorbar(sc, ax=axes[0].tolist(), label="generation")
    fig.suptitle(f"search: {len(history)} evaluated candidates")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _finite(v: float) -> float:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def _fingerprint(params: Params, space: SearchSpace, data: PreparedData, supernet_path: Path | None,
                 table: LatencyTable | None) -> str:
    digest = None
    if supernet_path is not None:
        import hashlib

        h = hashlib.sha256()
        with open(supernet_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
    return _checkpoint.fingerprint(params.search.model_dump(), space.to_dict(), data.meta,
                                   digest, table.to_dict() if table is not None else None,
                                   params.proxy.batch_size if params.search.fitness != "supernet" else None)


def run(params: Params, data_dir: str | Path, supernet_path: str | Path | None, out: str | Path, *,
        checkpoint_dir: str | Path | None = None, resume: bool = False, track: bool | None = None,
        progress: bool = True, device: str = "auto") -> dict[str, float]:
    """Search; writes `out/` = best_arch.json, history.jsonl, pareto.png, metrics.json (+ generations.json).

    `supernet_path` is the supernet file or the supernet stage's output directory (holding
    `supernet.pt`); it may be None only with `search.fitness: proxy`.
    """
    cfg = params.search
    out = Path(out)
    if supernet_path is not None and Path(supernet_path).is_dir():
        supernet_path = Path(supernet_path) / "supernet.pt"
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + "-checkpoints")
    dev = _device(device)

    # ---- inputs and config, all checked before any evaluation ----
    data = PreparedData(data_dir)
    check_data(params, data)
    space = params.search_space(num_classes=data.num_classes, in_chans=data.in_chans)
    table = load_latency_table(params, space)
    constraints = Constraints.from_config(cfg, table)
    constraints.check_feasible(space, seed=cfg.seed)
    if cfg.fitness in ("proxy", "hybrid"):
        check_proxy(cfg.proxy)
    net = None
    if cfg.fitness in ("supernet", "hybrid"):
        if supernet_path is None:
            raise ArtifactError(f"supernet: a trained supernet file is required with search.fitness {cfg.fitness}")
        net = load_supernet(supernet_path, space, dev)
    elif supernet_path is not None:
        load_supernet(supernet_path, space, torch.device("cpu"))  # still a contract input: must fit

    fitness, proxy = None, None
    if net is not None:
        x, y = data.eval_tensors("val")
        if len(x) == 0:
            raise ArtifactError(f"{data.path / 'dataset.json'}: the val split is empty; search needs it "
                                "(data.val_fraction)")
        fitness = SupernetFitness(net, x, y, batch_size=cfg.eval_batch_size, device=dev)
    if cfg.fitness in ("proxy", "hybrid"):
        inputs, targets = proxy_batch(data, params.proxy.batch_size, cfg.seed)
        proxy = ProxyFitness(cfg.proxy, space, seed=cfg.seed, inputs=inputs, targets=targets, device=dev)
    if cfg.fitness == "proxy":
        fitness, proxy = proxy, None
    search = Search(space, EvolutionConfig.from_config(cfg), fitness, constraints=constraints, proxy=proxy)

    # ---- resume ----
    fp = _fingerprint(params, space, data, Path(supernet_path) if supernet_path is not None else None, table)
    elapsed = 0.0
    if resume:
        state = _checkpoint.load(ckpt_dir)
        if state is not None and state.get("fingerprint") == fp:
            search.load_state_dict(state["search"])
            elapsed = float(state.get("seconds", 0.0))
            print(f"resuming from {ckpt_dir / _checkpoint.CHECKPOINT} after generation "
                  f"{search.next_generation - 1}")
        elif state is not None:
            print(f"warning: {ckpt_dir / _checkpoint.CHECKPOINT} was made with other params, data or supernet; "
                  "starting over")

    label = {"supernet": "val top-1 (inherited weights)", "hybrid": "val top-1 (inherited weights)",
             "proxy": f"proxy {cfg.proxy}"}[cfg.fitness]
    enabled = params.tracking.enabled if track is None else track
    t0 = time.time()
    with tracking.stage_run("search", params=params.section_params("search") | params.section_params("space"),
                            experiment=params.tracking.experiment, enabled=enabled) as run_:
        for s in search.stats:  # a resumed run's MLflow run still shows every generation
            run_.log_metrics(_gen_metrics(s), step=int(s["generation"]))
        bar = tqdm(total=search.total_generations, initial=search.next_generation, desc="search", unit="gen",
                   disable=not progress or None)

        def after_generation(s: Search, stats: dict[str, float]) -> None:
            _checkpoint.save(ckpt_dir, {"fingerprint": fp, "search": s.state_dict(),
                                        "seconds": elapsed + time.time() - t0})
            run_.log_metrics(_gen_metrics(stats), step=int(stats["generation"]))
            bar.update(1)
            bar.set_postfix(best=f"{stats['best_fitness']:.4g}", pop_mean=f"{stats['population_mean_fitness']:.4g}",
                            rejected=int(stats["rejected"]))

        try:
            search.run(after_generation)
        finally:
            bar.close()

        best = search.best()
        pop = search.population()
        front = pareto_front([r["params"] for r in search.history], [r["fitness"] for r in search.history])
        values: dict[str, Any] = {
            "best_fitness": best["fitness"],
            "best_params": best["params"],
            "best_flops": best["flops"],
            "best_generation": best["generation"],
        }
        if "latency_ms" in best:
            values["best_latency_ms"] = best["latency_ms"]
        if "proxy" in best:
            values["best_proxy"] = best["proxy"]
        values |= {
            "population_mean_fitness": sum(_finite(r["fitness"]) for r in pop) / len(pop),
            "evaluations": search.evaluations,
            "budget": search.config.budget,
            "shortfall": search.shortfall,
            "generations": search.config.generations,
            "rejected": sum(search.rejected.values()),
            **{f"rejected_{k}": v for k, v in search.rejected.items()},
            "pareto_size_params": len(front),
            "seconds": round(elapsed + time.time() - t0, 2),
        }
        if proxy is not None or cfg.fitness == "proxy":
            values["proxy_evaluations"] = search.proxy_evaluations if proxy is not None else search.evaluations
        metrics = flat_metrics({k: v for k, v in values.items() if _finite(v) != -math.inf})

        with atomic_dir(out) as tmp:
            write_json(tmp / "best_arch.json", best["arch"])
            with open(tmp / "history.jsonl", "w") as f:
                for rec in search.history:
                    f.write(json.dumps(rec) + "\n")
            write_json(tmp / "generations.json", search.stats)
            plot_pareto(search.history, tmp / "pareto.png", label)
            write_json(tmp / "metrics.json", metrics)
        run_.log_metrics({k: v for k, v in metrics.items() if k != "generations"})
        for name in ("pareto.png", "history.jsonl", "best_arch.json"):
            run_.log_artifact(out / name)
    print(f"search ({cfg.strategy}, fitness {cfg.fitness}): best {label} {best['fitness']:.4g} at "
          f"{best['params'] / 1e3:.1f}k params, {best['flops'] / 1e6:.2f}M FLOPs; {search.evaluations} evaluations, "
          f"{metrics['rejected']} rejected before evaluation", flush=True)
    return metrics


def _gen_metrics(stats: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in stats.items() if k != "generation" and math.isfinite(v)}
