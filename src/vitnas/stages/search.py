"""Search stage: AutoFormer evolution (or random search, or EfficientFormer's greedy latency-driven
slimming) under params/FLOPs/latency constraints.

Fitness is supernet accuracy with inherited weights on the val split, a zero-cost proxy on a
randomly initialised supernet, or both (proxy pre-filter, then supernet accuracy). Checkpoints the
whole search state after every generation; a resumed run ends with the same best arch and history
as an uninterrupted one.

`strategy: hierarchical` is GLiT's two-level search (`run_hierarchical`): level 1 evolves the
split of every block (attention heads vs local units) on the supernet stage's level-1 supernet;
level 2 fixes the best split, trains a second supernet over the low-level genes in-process and
evolves those. GLiT candidates' BatchNorm statistics are recalibrated before each evaluation.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from vitnas.config import Params
from vitnas.data import PreparedData
from vitnas.digests import file_sha256
from vitnas.errors import ArtifactError, ConfigError
from vitnas.progress import progress as progress_bar
from vitnas.search import (
    Constraints,
    EvolutionConfig,
    GreedyConfig,
    GreedySlimming,
    LatencyTable,
    ProxyFitness,
    Search,
    ShardedFitness,
    SupernetFitness,
)
from vitnas.search.evolution import _num, pareto_front
from vitnas.search.fitness import check_proxy
from vitnas.search.report import candidate_rows, columns, html_report, plot_pareto
from vitnas.search.trials import write_study
from vitnas.space import SearchSpace
from vitnas.stages import _checkpoint
from vitnas.stages._inputs import calibration_images, check_data, eval_batches, reading_fingerprint, train_dataset
from vitnas.stages._io import atomic_dir, claim_output, flat_metrics, write_json
from vitnas.stages._runner import EpochRunner
from vitnas.stages._tracked import open_run
from vitnas.stages.contract import STAGES
from vitnas.supernet import Supernet, SupernetFileError
from vitnas.supernet.trainer import describe_subnets, subnet_record, trainer_from_config, validation_archs
from vitnas.train import DistInfo, reseed, steps_per_epoch
from vitnas.train.distributed import broadcast, init_distributed, resolve_device

OUTPUTS = (*STAGES["search"].outputs, STAGES["search"].metrics)  # always written (the contract)
LEVEL2_SUPERNET = "supernet_level2.pt"  # hierarchical: the level-2 supernet (inherit weights from this one)


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


def load_supernet(path: str | Path, space: SearchSpace, device: torch.device, hint: str = "") -> Supernet:
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
                            f"{want[diff]} from params.yaml and the data); re-run `vitnas supernet`{hint}")
    return net


def proxy_batch(data: PreparedData, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The proxy stage's fixed, seeded batch of `n` eval-transformed train images."""
    from vitnas.proxies.scorer import fixed_batch

    return fixed_batch(data.dataset("train", sparse=True), n, seed)


def write_figures(directory: Path, history: list[dict[str, Any]], stats: list[dict[str, Any]], best: dict[str, Any],
                  label: str, metrics: dict[str, Any], title: str) -> None:
    """pareto.png and the self-contained report.html (also the Kubeflow HTML view) of a search."""
    plot_pareto(history, directory / "pareto.png", label, best)
    (directory / "report.html").write_text(html_report(history, stats, best, label, title=title, summary=metrics))


def _fingerprint(params: Params, space: SearchSpace, data: PreparedData, supernet_path: Path | None,
                 table: LatencyTable | None) -> str:
    digest = file_sha256(supernet_path) if supernet_path is not None else None
    return _checkpoint.fingerprint(params.search.model_dump(), space.to_dict(), data.meta,
                                   digest, table.to_dict() if table is not None else None,
                                   params.proxy.batch_size if params.search.fitness != "supernet" else None)


def run(params: Params, data_dir: str | Path, supernet_path: str | Path | None, out: str | Path, *,
        checkpoint_dir: str | Path | None = None, resume: bool = False, track: bool | None = None,
        progress: bool = True, device: str = "auto", force: bool = False) -> dict[str, float]:
    """Search; writes `out/` = best_arch.json, history.jsonl, pareto.png, metrics.json (+ generations.json).

    `supernet_path` is the supernet file or the supernet stage's output directory (holding
    `supernet.pt`); it may be None only with `search.fitness: proxy`. `force`: replace `out` even
    when vitnas did not write it (a directory only).
    """
    out = Path(out)
    if supernet_path is not None and Path(supernet_path).is_dir():
        supernet_path = Path(supernet_path) / "supernet.pt"
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + "-checkpoints")
    inputs = [data_dir, supernet_path, params.search.latency_table]
    with claim_output(out, "search", force=force, inputs=inputs):
        _checkpoint.claim(ckpt_dir, force=force, inputs=inputs + [out])
        return _run(params, data_dir, supernet_path, out, ckpt_dir, resume=resume, track=track, progress=progress,
                    device=device)


def _run(params: Params, data_dir: str | Path, supernet_path: str | Path | None, out: Path, ckpt_dir: Path, *,
         resume: bool, track: bool | None, progress: bool, device: str) -> dict[str, float]:
    cfg = params.search
    info = init_distributed(device)  # under torchrun every rank evaluates its share of each generation
    data = PreparedData(data_dir)
    check_data(params, data)
    space = params.search_space(num_classes=data.num_classes, in_chans=data.in_chans)
    if cfg.strategy == "hierarchical":
        if info.enabled:
            raise ConfigError("search.strategy: hierarchical runs in one process (its level-2 supernet trains "
                              "in-process); launch it without torchrun")
        return run_hierarchical(params, data, space, supernet_path, out, ckpt_dir=ckpt_dir, resume=resume,
                                track=track, progress=progress, device=info.device)
    table = load_latency_table(params, space)
    constraints = Constraints.from_config(cfg, table)
    constraints.check_feasible(space, seed=cfg.seed)
    fitness, proxy = _fitness(params, data, space, supernet_path, info)
    if cfg.strategy == "greedy":
        search = GreedySlimming(space, GreedyConfig(cfg.greedy_score or "per_cost", cfg.mes_alpha), fitness,
                                constraints=constraints)
    else:
        search = Search(space, EvolutionConfig.from_config(cfg), fitness, constraints=constraints, proxy=proxy)

    fp = _fingerprint(params, space, data, Path(supernet_path) if supernet_path is not None else None, table)
    state = _checkpoint.resume(ckpt_dir, fp) if resume and info.is_main else None
    state = broadcast(state, info)  # every rank continues from rank 0's checkpoint
    if state is not None:
        search.load_state_dict(state["search"])
    elapsed, t0 = float(state.get("seconds", 0.0)) if state else 0.0, time.time()

    def checkpoint(s: Search) -> None:
        _checkpoint.save(ckpt_dir, {"fingerprint": fp, "search": s.state_dict(), "seconds": elapsed + time.time() - t0})

    with open_run("search", params, track, main=info.is_main, inputs={"data": data.path, "supernet": supernet_path}) \
            as run_:
        _evolve(search, "search", progress and info.is_main, run_, "", checkpoint if info.is_main else None)
        values = search_values(search) | {"seconds": round(elapsed + time.time() - t0, 2),
                                          "world_size": info.world_size}
        if proxy is not None or cfg.fitness == "proxy":
            values["proxy_evaluations"] = search.proxy_evaluations if proxy is not None else search.evaluations
        metrics = flat_metrics({k: v for k, v in values.items() if _num(v) != -math.inf})
        if not info.is_main:  # rank 0 writes, logs and reports
            info.barrier()
            return {}
        label = {"supernet": "val top-1 (inherited weights)", "hybrid": "val top-1 (inherited weights)",
                 "proxy": f"proxy {cfg.proxy}"}[cfg.fitness]
        _write_outputs(out, search.history, search.stats, search.best(), label, metrics,
                       f"vitnas search: {cfg.strategy}, fitness {cfg.fitness}", run_)
    info.barrier()
    best = search.best()
    print(f"search ({cfg.strategy}, fitness {cfg.fitness}): best {label} {best['fitness']:.4g} at "
          f"{best['params'] / 1e3:.1f}k params, {best['flops'] / 1e6:.2f}M FLOPs; {search.evaluations} evaluations, "
          f"{metrics['rejected']} rejected before evaluation", flush=True)
    return metrics


def _fitness(params: Params, data: PreparedData, space: SearchSpace, supernet_path: str | Path | None,
             info: DistInfo):
    """(fitness, proxy pre-filter or None) for `search.fitness`, every input checked before any evaluation."""
    cfg, dev = params.search, info.device
    if cfg.fitness in ("proxy", "hybrid"):
        check_proxy(cfg.proxy)
    fitness, proxy = None, None
    if cfg.fitness in ("supernet", "hybrid"):
        if supernet_path is None:
            raise ArtifactError(f"supernet: a trained supernet file is required with search.fitness {cfg.fitness}")
        net = load_supernet(supernet_path, space, dev)
        x, y = val_tensors(data)
        calib = calibration_images(data, cfg.bn_calib_images, cfg.seed) if space.family.batchnorm else None
        fitness = SupernetFitness(net, x, y, batch_size=cfg.eval_batch_size, device=dev, calib_images=calib)
    elif supernet_path is not None:
        load_supernet(supernet_path, space, torch.device("cpu"))  # still a contract input: must fit
    if cfg.fitness in ("proxy", "hybrid"):
        # the proxy stage's scorer and seed: a candidate scores here as in proxy/scores.jsonl
        inputs, targets = proxy_batch(data, params.proxy.batch_size, params.proxy.seed)
        proxy = ProxyFitness(cfg.proxy, space, seed=params.proxy.seed, inputs=inputs, targets=targets, device=dev)
    if cfg.fitness == "proxy":
        fitness, proxy = proxy, None
    if info.enabled:  # same candidates on every rank, each evaluates its share: the same search as one process
        fitness = ShardedFitness(fitness, info)
        proxy = ShardedFitness(proxy, info) if proxy is not None else None
    return fitness, proxy


def val_tensors(data: PreparedData) -> tuple[torch.Tensor, torch.Tensor]:
    """The val split, which supernet fitness ranks candidates on; refused when empty."""
    x, y = data.eval_tensors("val")
    if len(x) == 0:
        raise ArtifactError(f"{data.path / 'dataset.json'}: the val split is empty; search needs it "
                            "(data.val_fraction)")
    return x, y


def _write_outputs(out: Path, history: list[dict], stats: list[dict], best: dict, label: str,
                   metrics: dict[str, float], title: str, run_, *, shown: tuple[list, list] | None = None, extra=None,
                   artifacts: tuple[str, ...] = ()) -> None:
    """The search contract (best_arch.json, history.jsonl, generations.json, figures, the Optuna study
    optuna.db, metrics.json), written at once, then logged. `shown`: the (history, stats) the figures
    show (default all); `extra(tmp)` adds a strategy's own files."""
    with atomic_dir(out, "search") as tmp:
        write_json(tmp / "best_arch.json", best["arch"])
        with open(tmp / "history.jsonl", "w") as f:
            for rec in history:
                f.write(json.dumps(rec) + "\n")
        write_json(tmp / "generations.json", stats)
        write_figures(tmp, *(shown or (history, stats)), best, label, metrics, title)
        write_study(history, tmp / "optuna.db")
        if extra is not None:
            extra(tmp)
        write_json(tmp / "metrics.json", metrics)
    run_.log_metrics({k: v for k, v in metrics.items() if not k.endswith("generations")})
    run_.log_table(columns(candidate_rows(history)), "candidates.json")
    for name in ("pareto.png", "report.html", "history.jsonl", "best_arch.json", "optuna.db", *artifacts):
        run_.log_artifact(out / name)


def _gen_metrics(stats: dict[str, float], prefix: str = "") -> dict[str, float]:
    return {prefix + k: v for k, v in stats.items() if k != "generation" and math.isfinite(v)}


def search_values(search: Search) -> dict[str, Any]:
    """The summary of a finished search that goes into metrics.json (before the finite filter)."""
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
    return values | {
        "population_mean_fitness": sum(_num(r["fitness"]) for r in pop) / len(pop),
        "evaluations": search.evaluations,
        "budget": search.budget,
        "shortfall": search.shortfall,
        "generations": search.generations,
        "rejected": sum(search.rejected.values()),
        **{f"rejected_{k}": v for k, v in search.rejected.items()},
        "pareto_size_params": len(front),
    }


# ---- GLiT's hierarchical search ----------------------------------------------------------------------
def run_hierarchical(params: Params, data: PreparedData, space: SearchSpace, supernet_path: str | Path | None,
                     out: str | Path, *, ckpt_dir: Path, resume: bool = False, track: bool | None = None,
                     progress: bool = True, device: torch.device | None = None) -> dict[str, float]:
    """GLiT's two-level search; writes the search contract plus `level1_arch.json`, `level1_pareto.png`
    and `supernet_level2.pt`.

    Level 1 evolves `space.level1()` (each block's split, low-level genes at their middle choices)
    on the supernet stage's level-1 supernet. Level 2 trains a supernet over `space.level2(best
    split)` here (the `supernet:` recipe, `search.level2_epochs`), then evolves it. Both share the
    constraints, budget and val split; records carry `level`, metrics `level1_*` / `level2_*`
    (`best_*` is level 2's). Checkpointed every generation and level-2 epoch."""
    out, dev, level1 = Path(out), device or resolve_device("auto"), space.level1()
    evolution, net1, calib = _level_searches(params, data, level1, supernet_path, dev)
    epochs2 = params.search.level2_epochs or params.supernet.epochs
    search1 = evolution(level1, net1)
    fp = _checkpoint.fingerprint(_fingerprint(params, level1, data, Path(supernet_path), None),
                                 params.supernet.model_dump(exclude={"workers"}), reading_fingerprint(params), epochs2)
    state: dict[str, Any] = (_checkpoint.resume(ckpt_dir, fp) if resume else None) or {"fingerprint": fp}
    if "level1" in state:
        search1.load_state_dict(state["level1"])
    elapsed, t0 = float(state.get("seconds", 0.0)), time.time()

    def save_state(**parts: Any) -> None:
        state.update(parts, seconds=elapsed + time.time() - t0)
        _checkpoint.save(ckpt_dir, state)

    with open_run("search", params, track, inputs={"data": data.path, "supernet": supernet_path},
                  system_metrics=True, tags={"vitnas.search.strategy": "hierarchical"}) as run_:
        _evolve(search1, "level 1 (split)", progress, run_, "level1_", lambda s: save_state(level1=s.state_dict()))
        best1 = search1.best_arch()
        print(f"level 1: best split {list(best1.local_units)} (local units of {space.units} per block), val top-1 "
              f"{search1.best()['fitness']:.4g} with middle low-level genes", flush=True)
        net2, loop2 = _train_level2(params, data, space.level2(best1), epochs2, calib, dev, progress, run_,
                                    state, save_state)
        search2 = evolution(space.level2(best1), net2)
        if "level2" in state:
            search2.load_state_dict(state["level2"])
        _evolve(search2, "level 2 (low-level)", progress, run_, "level2_",
                lambda s: save_state(level2=s.state_dict()))
        metrics = _hierarchical_metrics(search1, search2, loop2, epochs2, elapsed + time.time() - t0)
        history = [r | {"level": i} for i, s in ((1, search1), (2, search2)) for r in s.history]
        stats = [st | {"level": i} for i, s in ((1, search1), (2, search2)) for st in s.stats]
        label = "val top-1 (inherited weights)"

        def extra(tmp: Path) -> None:
            write_json(tmp / "level1_arch.json", search1.best()["arch"])
            plot_pareto(search1.history, tmp / "level1_pareto.png", f"level 1 {label}", search1.best())
            net2.save(tmp / LEVEL2_SUPERNET, meta={"level": 2, "epochs": epochs2, "history": loop2.history,
                                                   "dataset": data.name, "split": list(best1.local_units)})

        _write_outputs(out, history, stats, search2.best(), f"level 2 {label}", metrics,
                       "vitnas search: hierarchical (GLiT), level 2", run_, shown=(search2.history, search2.stats),
                       extra=extra, artifacts=("level1_pareto.png", "level1_arch.json"))
    best = search2.best()
    print(f"search (hierarchical): best val top-1 {best['fitness']:.4g} at {best['params'] / 1e3:.1f}k params, "
          f"{best['flops'] / 1e6:.2f}M FLOPs (level 1 {search1.evaluations} + level 2 {search2.evaluations} "
          f"evaluations)", flush=True)
    return metrics


def _level_searches(params: Params, data: PreparedData, level1: SearchSpace, supernet_path: str | Path | None,
                    dev: torch.device):
    """Every input of the hierarchical search checked before any evaluation: (a factory of one
    level's evolution over a space and a supernet, the level-1 supernet, the BN calibration images)."""
    cfg = params.search
    if cfg.fitness != "supernet":  # config._check already refuses this; keep the library honest too
        raise ConfigError("search.fitness: the hierarchical search ranks candidates by supernet accuracy")
    if supernet_path is None:
        raise ArtifactError("supernet: the level-1 supernet file (supernet stage) is required with "
                            "search.strategy hierarchical")
    constraints = Constraints.from_config(cfg)
    constraints.check_feasible(level1, seed=cfg.seed)  # level-1 candidates carry the middle low-level genes
    net1 = load_supernet(supernet_path, level1, dev, hint=" (with search.strategy hierarchical it trains the "
                         "level-1 space: splits only, low-level genes at their middle choices)")
    x, y = val_tensors(data)
    calib = calibration_images(data, cfg.bn_calib_images, cfg.seed)
    evo = EvolutionConfig.from_config(cfg, strategy="evolution")

    def evolution(space: SearchSpace, net: Supernet) -> Search:
        fitness = SupernetFitness(net, x, y, batch_size=cfg.eval_batch_size, device=dev, calib_images=calib)
        return Search(space, evo, fitness, constraints=constraints)

    return evolution, net1, calib


def _hierarchical_metrics(search1: Search, search2: Search, loop2: EpochRunner, epochs2: int,
                          seconds: float) -> dict[str, float]:
    """`level1_*`, `level2_*`, `level2_supernet_*`; `best_*` and the totals are the two levels'."""
    v1, v2 = search_values(search1), search_values(search2)
    values: dict[str, Any] = {k: v2[k] for k in ("best_fitness", "best_params", "best_flops", "best_generation")}
    values |= {f"level1_{k}": v for k, v in v1.items()} | {f"level2_{k}": v for k, v in v2.items()}
    last = loop2.history[-1] if loop2.history else {}
    values |= {f"level2_supernet_{k}": v for k, v in last.items() if k.startswith("val_acc_") or k == "train_loss"}
    values |= {
        "evaluations": search1.evaluations + search2.evaluations,
        "budget": search1.budget + search2.budget,
        "rejected": v1["rejected"] + v2["rejected"],
        "level2_supernet_epochs": epochs2,
        "level2_supernet_train_seconds": round(loop2.seconds, 2),
        "seconds": round(seconds, 2),
    }
    return flat_metrics({k: v for k, v in values.items() if _num(v) != -math.inf})


def _evolve(search: Search, desc: str, progress: bool, run_, prefix: str, checkpoint) -> None:
    """Run (or finish) an evolution: after each generation the checkpoint (`checkpoint(search)`, None:
    not this process), the generation's MLflow metrics and the progress bar."""
    for st in search.stats:  # a resumed run's MLflow run still shows every generation
        run_.log_metrics(_gen_metrics(st, prefix), step=int(st["generation"]))
    bar = progress_bar(total=search.total_generations, initial=search.next_generation, desc=desc,
                       unit="generations", enabled=progress)

    def after_generation(s: Search, stats: dict[str, float]) -> None:
        if checkpoint is None:
            return
        checkpoint(s)
        run_.log_metrics(_gen_metrics(stats, prefix), step=int(stats["generation"]))
        bar.set_postfix(best=f"{stats['best_fitness']:.4g}", mean=f"{stats['population_mean_fitness']:.4g}",
                        evaluations=int(stats["evaluations"]))
        bar.update(1)

    try:
        search.run(after_generation)
    finally:
        bar.close()


def _train_level2(params: Params, data: PreparedData, space: SearchSpace, epochs: int, calib: torch.Tensor,
                  device: torch.device, progress: bool, run_, state: dict[str, Any], save_state):
    """Train (or finish training) the level-2 supernet with the `supernet:` recipe, single process;
    per-epoch validation of the smallest, largest and random subnets as in the supernet stage."""
    cfg = params.supernet
    reseed(cfg.seed, "level2-init")
    net = Supernet(space, drop_path_rate=cfg.drop_path)
    train_ds = train_dataset(data, params)
    steps = steps_per_epoch(len(train_ds), cfg.batch_size, 1, "supernet.batch_size")
    dist = DistInfo(device=device)
    trainer = trainer_from_config(net, cfg, dist, steps, epochs=epochs)
    loop = EpochRunner("search: level-2 supernet", trainer, train_ds, cfg, dist, epochs=epochs,
                       hint="Lower supernet.lr or enable supernet.ema_decay/warmup", series_prefix="level2_supernet_",
                       save=lambda st: save_state(level2_train=st), seed_keys=lambda epoch: ("level2", epoch))
    loop.restore(state.get("level2_train") or None)
    val_archs = validation_archs(space, cfg.val_random_subnets, cfg.seed)
    val_data = eval_batches(data, "val", max(cfg.batch_size, 256), cfg.workers)
    loop.run(run_, progress=progress, describe=describe_subnets,
             evaluate=lambda epoch, stats: subnet_record(trainer.validate(val_data, val_archs, calib)))
    return trainer.eval_model.eval(), loop
