"""Retrain stage: train the final architecture with the timm/DeiT recipe and report it once on test.

Input: a model directory (`arch.json` + `model.safetensors`, the slim stage's output) or an
`arch.json` whose weights come from the supernet. `retrain.init`: `inherit` starts from those
weights, `scratch` from a seeded random init of the same arch (no supernet needed).
`retrain.distill`: soft distillation from `retrain.teacher` (a model directory) or else the
supernet's largest subnet.

The val split is evaluated every epoch and is the only thing model selection sees
(`retrain.keep: best` saves the best-val epoch's weights, `last` the final ones); the test split is
evaluated once, on the saved model. Checkpoints every epoch; `resume` continues bit-exactly.
With tracking on, the model is logged to MLflow, registered as `retrain.registered_model`, and the
alias `champion` moves to it only when its val accuracy beats the current champion's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from vitnas import tracking
from vitnas.config import Params, RetrainConfig
from vitnas.data import PreparedData
from vitnas.errors import ArtifactError, ConfigError
from vitnas.models import build
from vitnas.models.model_dir import ARCH_FILE, load_model, save_model
from vitnas.space import Arch, ArchError, count_flops, count_params
from vitnas.stages import _checkpoint
from vitnas.stages._inputs import check_fits_data, eval_batches, load_input_model, reading_fingerprint, train_dataset
from vitnas.stages._io import atomic_dir, claim_output, flat_metrics, write_json
from vitnas.stages._model_log import arch_params, log_model_dir, model_example
from vitnas.stages._runner import EpochRunner
from vitnas.stages._tracked import open_run
from vitnas.stages.contract import STAGES
from vitnas.supernet import Supernet, SupernetFileError, extract
from vitnas.train import ClassifierTrainer, evaluate, init_distributed, reseed, steps_per_epoch

OUTPUTS = (*STAGES["retrain"].outputs, STAGES["retrain"].metrics)  # always written (the contract)
CHAMPION = "champion"


def load_arch(arch_path: str | Path) -> tuple[Arch, Path]:
    """The arch of a model directory or of an arch.json, and the file it came from."""
    path = Path(arch_path)
    file = path / ARCH_FILE if path.is_dir() else path
    if not file.is_file():
        raise ArtifactError(f"{file}: architecture file not found")
    try:
        return Arch.load(file), file
    except ArchError as e:
        raise ArtifactError(str(e)) from None


def load_teacher(cfg: RetrainConfig, supernet_path: str | Path | None,
                 device: torch.device) -> tuple[torch.nn.Module, Arch, Path, str]:
    """(teacher, its arch, where it came from, kind): `retrain.teacher`, else the supernet's largest."""
    if cfg.teacher:
        model, arch = load_model(cfg.teacher, map_location=device)
        return model, arch, Path(cfg.teacher) / ARCH_FILE, "model"
    if supernet_path is None or not Path(supernet_path).is_file():
        missing = f" ({supernet_path} not found)" if supernet_path is not None else ""
        raise ConfigError("retrain.distill: no teacher; set retrain.teacher to a model directory or give the "
                          f"supernet (--supernet) whose largest subnet teaches{missing}")
    try:
        supernet = Supernet.load(supernet_path, map_location=device)
    except SupernetFileError as e:
        raise ArtifactError(str(e)) from None
    largest = supernet.space.largest()
    return extract(supernet, largest).eval(), largest, Path(supernet_path), "supernet"


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of the weights, so a checkpoint is resumed only from the same starting point."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def plot_curves(history: list[dict], best_epoch: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history])
    ax1.set(xlabel="epoch", ylabel="train loss", title="training loss")
    ax2.plot(epochs, [h["val_acc"] for h in history], marker=".")
    ax2.axvline(best_epoch, color="grey", linestyle=":", label=f"saved (epoch {best_epoch})")
    ax2.set(xlabel="epoch", ylabel="val top-1", title="val accuracy")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(params: Params, data_dir: str | Path, supernet_path: str | Path | None, arch_path: str | Path,
        out: str | Path, *, checkpoint_dir: str | Path | None = None, resume: bool = False, device: str = "auto",
        track: bool | None = None, progress: bool = True, force: bool = False) -> dict[str, float]:
    """Retrain the arch; writes `out/arch.json`, `model.safetensors`, `metrics.json`, `history.json`,
    `curves.png`. `arch_path`: a model directory or an arch.json (weights from `supernet_path`).
    `force`: replace `out` even when vitnas did not write it (a directory only)."""
    out = Path(out)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + "-checkpoints")
    inputs = [data_dir, supernet_path, arch_path, params.retrain.teacher]
    with claim_output(out, "retrain", force=force, inputs=inputs):
        _checkpoint.claim(ckpt_dir, force=force, inputs=inputs + [out])
        return _run(params, data_dir, supernet_path, arch_path, out, ckpt_dir, resume=resume, device=device,
                    track=track, progress=progress)


def _run(params: Params, data_dir: str | Path, supernet_path: str | Path | None, arch_path: str | Path,
         out: Path, ckpt_dir: Path, *, resume: bool, device: str, track: bool | None,
         progress: bool) -> dict[str, float]:
    cfg = params.retrain
    dist = init_distributed(device)
    data = PreparedData(data_dir)
    model, arch, source, teacher, t_source = _inputs(params, data, supernet_path, arch_path, dist.device)
    train_ds = train_dataset(data, params)
    steps = steps_per_epoch(len(train_ds), cfg.batch_size, dist.world_size, "retrain.batch_size")
    trainer = ClassifierTrainer(
        model, num_classes=arch.num_classes, dist=dist, epochs=cfg.epochs, steps_per_epoch=steps, lr=cfg.lr,
        min_lr=cfg.min_lr, weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs, mixup=cfg.mixup,
        cutmix=cfg.cutmix, label_smoothing=cfg.label_smoothing, ema_decay=cfg.ema_decay, amp=cfg.amp,
        teacher=teacher, distill_alpha=cfg.distill_alpha, distill_temperature=cfg.distill_temperature,
        name="retrain")
    val_data = eval_batches(data, "val", max(cfg.batch_size, 256), cfg.workers)

    fp = _checkpoint.fingerprint(
        cfg.model_dump(exclude={"workers", "registered_model"}), arch.to_dict(), data.meta,
        reading_fingerprint(params), dist.world_size, weights_digest(model) if cfg.init == "inherit" else None,
        weights_digest(teacher) if teacher is not None else None)
    loop = EpochRunner("retrain", trainer, train_ds, cfg, dist, ckpt_dir=ckpt_dir, fingerprint=fp,
                       hint="Lower retrain.lr or raise retrain.warmup_epochs")
    kept = {"best": {"epoch": 0, "val_acc": -1.0, "state": None}, "val_acc_init": float("nan")}
    state = loop.resume() if resume else None
    if state is not None:
        kept = {"best": dict(state["best"]), "val_acc_init": float(state["val_acc_init"])}
    elif dist.is_main:
        kept["val_acc_init"] = trainer.evaluate(val_data())["acc"]  # the inherited weights, before training

    def evaluate(epoch: int, stats: dict) -> dict[str, float]:
        v = trainer.evaluate(val_data())
        if cfg.keep == "last" or v["acc"] > kept["best"]["val_acc"]:
            kept["best"] = {"epoch": epoch + 1, "val_acc": v["acc"], "state": {
                k: t.detach().cpu().clone() for k, t in trainer.eval_model.state_dict().items()}}
        return {"val_acc": v["acc"], "val_loss": v["loss"]}

    tags = {"vitnas.retrain.init": cfg.init, "vitnas.retrain.source": source}
    if teacher is not None:
        tags["vitnas.retrain.teacher"] = t_source
    inputs = {"data": data_dir, "supernet": supernet_path, "arch": arch_path, "teacher": cfg.teacher}
    with open_run("retrain", params, track, main=dist.is_main, extra_params=arch_params(arch), inputs=inputs,
                  system_metrics=True, tags=tags) as run_:
        history = loop.run(run_, progress=progress, evaluate=evaluate, keep=lambda: kept,
                           describe=lambda r: f"val {r['val_acc']:.4f}")
        metrics: dict[str, float] = {}
        if dist.is_main:
            metrics = _finish(params, data, arch, trainer, history, kept, loop.seconds, out, run_, val_data)
        dist.barrier()
    return metrics


def _inputs(params: Params, data: PreparedData, supernet_path: str | Path | None, arch_path: str | Path,
            dev: torch.device):
    """(model, arch, source, teacher, teacher's source), all checked against the data before any training."""
    cfg = params.retrain
    if cfg.init == "inherit":
        src, arch, source = load_input_model(arch_path, supernet_path, dev)
        where = Path(arch_path) / ARCH_FILE if Path(arch_path).is_dir() else Path(arch_path)
    else:
        arch, where = load_arch(arch_path)
        src, source = None, "scratch"
    check_fits_data(arch, data, where)
    teacher = t_source = None
    if cfg.distill:
        teacher, t_arch, t_where, t_source = load_teacher(cfg, supernet_path, dev)
        check_fits_data(t_arch, data, t_where)
    for split in ("val", "test"):
        if not data.meta["splits"].get(split):
            raise ArtifactError(f"{data.path / 'dataset.json'}: the {split} split is empty; retrain needs it")
    reseed(cfg.seed, "init")
    model = build(arch, drop_path_rate=cfg.drop_path)
    if src is not None:
        model.load_state_dict(src.state_dict())
    return model.to(dev), arch, source, teacher, t_source


def _finish(params: Params, data: PreparedData, arch: Arch, trainer: ClassifierTrainer, history: list[dict],
            kept: dict, seconds: float, out: Path, run_, val_data) -> dict[str, float]:
    """The saved model tested once, the outputs written, the model logged, registered and maybe promoted."""
    cfg, dev, best = params.retrain, trainer.dist.device, kept["best"]
    final = build(arch).to(dev)
    final.load_state_dict(best["state"])
    final.eval()
    test = evaluate(final, eval_batches(data, "test", max(cfg.batch_size, 256), cfg.workers)(), dev,
                    trainer.precision.autocast, num_classes=arch.num_classes)
    val_acc = _accuracy(final, val_data(), dev, trainer)
    metrics = flat_metrics({
        "val_acc": val_acc, "test_acc": test["acc"], "val_acc_last": history[-1]["val_acc"],
        "val_acc_init": kept["val_acc_init"], "best_epoch": best["epoch"], "train_loss": history[-1]["train_loss"],
        "params": count_params(arch), "flops": count_flops(arch), "epochs": cfg.epochs,
        "init_inherit": int(cfg.init == "inherit"), "distill": int(cfg.distill),
        "train_seconds": round(seconds, 2),
    })
    with atomic_dir(out, "retrain") as tmp:
        save_model(final, arch, tmp, dataset=data.meta)
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "history.json", history)
        write_json(tmp / "confusion.json", {"classes": [str(c) for c in data.meta.get(
            "classes", range(arch.num_classes))], "matrix": test["confusion"]})  # test split, true x predicted
        plot_curves(history, best["epoch"], tmp / "curves.png")
    # registered and promoted only once the model is on disk: a kill before this line
    # leaves no registered version pointing at a missing model
    champion = False
    version = log_model_dir(run_, final, out, arch, model_example(data, arch), registered_model=cfg.registered_model)
    if version is not None:
        champion = tracking.promote_if_better(cfg.registered_model, version, val_acc, alias=CHAMPION)
        run_.set_tags({"vitnas.registered_version": version, "vitnas.champion": str(champion).lower()})
    metrics = metrics | {"champion": int(champion)}  # an MLflow fact: returned and logged, not in metrics.json
    run_.log_metrics(metrics)
    for name in ("arch.json", "history.json", "curves.png"):
        run_.log_artifact(out / name)
    print(f"retrain: {arch}  val {val_acc:.4f} (epoch {best['epoch']})  test {test['acc']:.4f}"
          + (f"  registered {cfg.registered_model} v{version}" + (f" ({CHAMPION})" if champion else "")
             if version is not None else ""), flush=True)
    return metrics


def _accuracy(model: torch.nn.Module, data, device: torch.device, trainer: ClassifierTrainer) -> float:
    return evaluate(model, data, device, trainer.precision.autocast)["acc"]
