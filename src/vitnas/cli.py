"""`vitnas <stage>` commands: parse arguments, load params, call `vitnas.stages`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from vitnas.errors import ConfigError, VitnasError
from vitnas.stages.contract import ARTIFACTS, stage_dir

# Boxed rich help on a terminal; plain, wrapped help in a log or a pipe, where boxes cut option
# help at 80 columns ("MLFLOW_TRACKING_U...").
HELP_MARKUP = "rich" if sys.stdout.isatty() else None

app = typer.Typer(
    help="Vision Transformer architecture search: one command per pipeline stage.\n\n"
         "Stages, in pipeline order: data -> supernet -> proxy -> search -> slim -> retrain -> transfer.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]}, rich_markup_mode=HELP_MARKUP,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"vitnas {version('vitnas')}")
        except PackageNotFoundError:  # run from a source tree without installing
            typer.echo("vitnas (not installed)")
        raise typer.Exit()


@app.callback()
def _root(_: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit.")) -> None:
    """Vision Transformer architecture search: one command per pipeline stage."""


pipeline_app = typer.Typer(help="Compile, run locally or submit the Kubeflow pipeline.", no_args_is_help=True,
                           rich_markup_mode=HELP_MARKUP)
app.add_typer(pipeline_app, name="pipeline")

ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="params.yaml to read.")
TrackOpt = typer.Option(None, "--track/--no-track",
                        help="Log to MLflow (default: params.yaml tracking.enabled).")
SetOpt = typer.Option(None, "--set", "-S", metavar="KEY=VALUE",
                      help="Override a params.yaml value for this run, e.g. -S supernet.epochs=3 (repeatable; like "
                      "dvc exp run -S).")
ForceOpt = typer.Option(False, "--force", help="Replace the output directory even when vitnas did not write it "
                        "(never a file, the working directory, the repository, or a directory holding an input).")


def _params(params: Path, out: Path, stage: str, force: bool, sets: list[str] | None = None):
    """params.yaml (with --set overrides), validated, after checking that `stage` may write `out`
    (before any work)."""
    from vitnas.config import load_params
    from vitnas.stages._io import check_output

    p = load_params(params, sets or ())
    check_output(out, stage, force=force, inputs=[params])
    return p


@app.command(rich_help_panel="Stages")
def data(params: Path = ParamsOpt, sets: list[str] | None = SetOpt,
         out: Path = typer.Option(stage_dir("data"), "--out", "-o", help="Output directory."),
         track: bool | None = TrackOpt, force: bool = ForceOpt) -> None:
    """Prepare the dataset: seeded train/val/test splits + dataset.json."""
    from vitnas.stages import data as stage

    metrics = stage.run(_params(params, out, "data", force, sets), out, track=track, force=force)
    typer.echo(f"wrote {out}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


@app.command(rich_help_panel="Stages")
def supernet(params: Path = ParamsOpt, sets: list[str] | None = SetOpt,
             data: Path = typer.Option(stage_dir("data"), "--data", help="The data stage's output."),
             out: Path = typer.Option(stage_dir("supernet"), "--out", "-o", help="Output directory."),
             checkpoints: Path | None = typer.Option(
                 None, help="Per-epoch checkpoints (default: OUT-checkpoints beside the output)."),
             resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint when it "
                                         "matches these params and data."),
             device: str = typer.Option("auto", help="auto | cpu | cuda"),
             track: bool | None = TrackOpt, force: bool = ForceOpt) -> None:
    """Train the weight-entangled supernet (AutoFormer).

    Data-parallel: torchrun --nproc_per_node N -m vitnas supernet ...
    """
    from vitnas.stages import supernet as stage

    _report(out, stage.run(_params(params, out, "supernet", force, sets), data, out, checkpoint_dir=checkpoints,
                           resume=resume, device=device, track=track, force=force))


DataOpt = typer.Option(stage_dir("data"), "--data", help="The data stage's output.")
SupernetOpt = typer.Option(stage_dir("supernet") / "supernet.pt", "--supernet", help="The trained supernet.")
DeviceOpt = typer.Option("auto", help="auto | cpu | cuda")


def _report(out: Path, metrics: dict) -> None:
    if metrics:
        typer.echo(f"wrote {out}: " + ", ".join(f"{k}={_value(v)}" for k, v in metrics.items()))


def _value(v) -> str:
    """Counts as counts (40200, not 4.02e+04); other numbers to 4 significant digits."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or (v == v and abs(v) >= 1 and float(v).is_integer() and abs(v) < 1e15):
        return str(int(v))
    return f"{v:.4g}"


@app.command(rich_help_panel="Stages")
def proxy(params: Path = ParamsOpt, sets: list[str] | None = SetOpt, data: Path = DataOpt,
          out: Path = typer.Option(stage_dir("proxy"), "--out", "-o", help="Output directory."),
          supernet: Path | None = typer.Option(None, "--supernet",
                                               help="Score through this trained supernet instead of a "
                                                    "randomly initialised one (TF-TAS scores at init)."),
          device: str = DeviceOpt, track: bool | None = TrackOpt, force: bool = ForceOpt,
          shard: str | None = typer.Option(None, "--shard", metavar="K/N",
                                           help="Score only candidates K, K+N, K+2N, ... (one of N parallel "
                                                "pods); finish with --merge."),
          merge: list[Path] | None = typer.Option(None, "--merge", metavar="DIR",
                                                  help="Write the stage's outputs from these --shard outputs "
                                                       "(repeat the option; nothing is scored again).")) -> None:
    """Score sampled candidates with training-free proxies (TF-TAS DSS and baselines); resumable.

    Scale out with `torchrun --nproc_per_node N -m vitnas proxy ...` (one merged scores.jsonl) or
    with --shard K/N in N pods and one --merge step."""
    from vitnas.stages import proxy as stage

    _report(out, stage.run(_params(params, out, "proxy", force, sets), data, out, supernet_path=supernet, device=device,
                           track=track, force=force, shard=_shard(shard), merge=merge or None))


def _shard(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    k, sep, n = spec.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit()):  # the range is the stage's check
        raise ConfigError(f"--shard {spec}: expected K/N with 0 <= K < N, e.g. 0/4")
    return int(k), int(n)


@app.command(rich_help_panel="Stages")
def search(params: Path = ParamsOpt, sets: list[str] | None = SetOpt, data: Path = DataOpt,
           supernet: Path = SupernetOpt,
           out: Path = typer.Option(stage_dir("search"), "--out", "-o", help="Output directory."),
           checkpoints: Path | None = typer.Option(
               None, help="Per-generation checkpoints (default: OUT-checkpoints beside the output)."),
           resume: bool = typer.Option(False, "--resume", help="Continue from the last generation checkpoint."),
           device: str = DeviceOpt, track: bool | None = TrackOpt, force: bool = ForceOpt) -> None:
    """Evolutionary (or random) search, or greedy latency-driven slimming (EfficientFormer), under
    params/FLOPs/latency constraints.

    Data-parallel: `torchrun --nproc_per_node N -m vitnas search ...` evaluates each generation's
    candidates on N processes, with the same result as one."""
    from vitnas.stages import search as stage

    _report(out, stage.run(_params(params, out, "search", force, sets), data, supernet, out, checkpoint_dir=checkpoints,
                           resume=resume, device=device, track=track, force=force))


@app.command("latency-table", rich_help_panel="Tools")
def latency_table(params: Path = ParamsOpt, data: Path = DataOpt,
                  out: Path = typer.Option(Path(ARTIFACTS) / "latency.json", "--out", "-o"),
                  batch_size: int = typer.Option(1, min=1), repeats: int = typer.Option(50, min=1),
                  warmup: int = typer.Option(10, min=0), rounds: int = typer.Option(5, min=1),
                  check_archs: int = typer.Option(5, min=0, help="Full models measured to check the table."),
                  device: str = DeviceOpt, threads: int | None = typer.Option(None, min=1),
                  track: bool | None = TrackOpt) -> None:
    """Measure a per-block latency lookup table on this device (for search.latency_max_ms).

    OUT may replace a latency table vitnas wrote, never another file."""
    from vitnas.config import load_params
    from vitnas.stages import latency as stage

    _report(out, stage.run(load_params(params), data, out, batch_size=batch_size, repeats=repeats, warmup=warmup,
                           rounds=rounds, check_archs=check_archs, device=device, threads=threads, track=track))


@app.command(rich_help_panel="Stages")
def slim(params: Path = ParamsOpt, sets: list[str] | None = SetOpt, data: Path = DataOpt,
         supernet: Path | None = SupernetOpt,
         arch: Path = typer.Option(stage_dir("search") / "best_arch.json", "--arch",
                                   help="An arch.json (weights from --supernet) or a model directory "
                                        "(arch.json + model.safetensors)."),
         out: Path = typer.Option(stage_dir("slim"), "--out", "-o", help="Output directory."),
         device: str = DeviceOpt, track: bool | None = TrackOpt, force: bool = ForceOpt) -> None:
    """ViT-Slim soft-mask search to a FLOPs/params budget, then physical pruning; or DynamicViT's
    per-image token pruning (slim.method: dynamicvit)."""
    from vitnas.stages import slim as stage

    _report(out, stage.run(_params(params, out, "slim", force, sets), data, supernet, arch, out, device=device,
                           track=track, force=force))


@app.command(rich_help_panel="Stages")
def retrain(params: Path = ParamsOpt, sets: list[str] | None = SetOpt, data: Path = DataOpt,
            supernet: Path | None = SupernetOpt,
            arch: Path = typer.Option(stage_dir("slim"), "--arch",
                                      help="A model directory (arch.json + model.safetensors) or an arch.json "
                                           "(inherited weights from --supernet)."),
            out: Path = typer.Option(stage_dir("retrain"), "--out", "-o", help="Output directory."),
            checkpoints: Path | None = typer.Option(
                None, help="Per-epoch checkpoints (default: OUT-checkpoints beside the output)."),
            resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint when it "
                                        "matches these params, inputs and data."),
            device: str = DeviceOpt, track: bool | None = TrackOpt, force: bool = ForceOpt) -> None:
    """Retrain the final arch (inherited or scratch init, optional distillation); register the model.

    Data-parallel: torchrun --nproc_per_node N -m vitnas retrain ...
    """
    from vitnas.stages import retrain as stage

    _report(out, stage.run(_params(params, out, "retrain", force, sets), data, supernet, arch, out,
                           checkpoint_dir=checkpoints, resume=resume, device=device, track=track, force=force))


@app.command(rich_help_panel="Stages")
def transfer(params: Path = ParamsOpt, sets: list[str] | None = SetOpt, data: Path = DataOpt,
             model: Path = typer.Option(stage_dir("retrain"), "--model",
                                        help="Model directory (arch.json + model.safetensors), e.g. retrain's."),
             out: Path = typer.Option(stage_dir("transfer"), "--out", "-o", help="Output directory."),
             device: str = DeviceOpt, track: bool | None = TrackOpt, force: bool = ForceOpt) -> None:
    """Fine-tune on the transfer targets: CIFAR-format top-1, COCO-format detection AP (ViTDet backbone)."""
    from vitnas.stages import transfer as stage

    _report(out, stage.run(_params(params, out, "transfer", force, sets), data, model, out, device=device, track=track,
                           force=force))


@app.command("check-params", rich_help_panel="Tools")
def check_params(params: Path = ParamsOpt, sets: list[str] | None = SetOpt) -> None:
    """Validate params.yaml (and that the data roots it names exist here) and print the search space."""
    from vitnas.config import load_params

    p = load_params(params, sets or ())
    from vitnas.data import store

    for key, uri in (("data.root", p.data.root), ("data.shards", p.data.shards)):
        if store.is_s3(uri):  # the bucket answers with these credentials
            store.check_bucket(store.S3Uri.parse(uri, key), key)
    if p.data.root and not store.is_s3(p.data.root) and not p.data.dvc_repo and not p.data.download \
            and not Path(p.data.root).exists():
        raise ConfigError(f"data.root: {p.data.root} does not exist on this machine (the data stage would stop "
                          "there; set data.download: true to fetch a downloadable dataset)")
    for t in p.transfer.targets.values():
        if t.root and not Path(t.root).exists():
            raise ConfigError(f"transfer.targets.{t.name}.root: {t.root} does not exist on this machine")
    typer.echo(f"{params}: ok")
    typer.echo(str(p.search_space()))


@app.command("dvc-yaml", rich_help_panel="Tools")
def dvc_yaml(out: Path = typer.Option(Path("dvc.yaml"), "--out", "-o", help="Where to write it."),
             check: bool = typer.Option(False, "--check", help="Only check that OUT equals the contract.")) -> None:
    """Write dvc.yaml from the stages' declared contract (vitnas/stages/contract.py).

    OUT may replace a dvc.yaml vitnas generated, never a hand-written file or a symbolic link."""
    from vitnas.files import atomic_file
    from vitnas.stages._io import FileKind, check_output_file, starts_with
    from vitnas.stages.contract import HEADER, render_dvc_yaml

    text = render_dvc_yaml()
    if check:
        if not out.is_file() or out.read_bytes() != text.encode():
            raise VitnasError(f"{out}: differs from the stages' contract; run `vitnas dvc-yaml`")
        typer.echo(f"{out}: matches the contract")
        return
    check_output_file(out, FileKind("generated dvc.yaml", starts_with(HEADER.splitlines()[0])))
    with atomic_file(out) as tmp:
        tmp.write_text(text)
    typer.echo(f"wrote {out}")


@app.command(rich_help_panel="Tools")
def spaces() -> None:
    """List the search space presets with their size and cost range."""
    from vitnas.space import SearchSpace
    from vitnas.space.arch import model_summary

    typer.echo(f"{'preset':<18}{'archs':>10}{'params (M)':>18}{'MACs (G)':>18}  input")
    for name in SearchSpace.presets():
        s = SearchSpace.preset(name)
        p_lo, p_hi, f_lo, f_hi = s.cost_range()
        kind = s.family.describe_kind(s)
        typer.echo(f"{name:<18}{'1e' + format(s.log10_size(), '.1f'):>10}"
                   f"{p_lo / 1e6:>8.2f}-{p_hi / 1e6:<9.2f}{f_lo / 1e9:>8.3f}-{f_hi / 1e9:<9.3f}"
                   f"  {s.img_size}px/{s.patch_size}, {s.in_chans}ch, {s.num_classes} classes{kind}"
                   + model_summary(s.model_fields()))


@app.command("import-autoformer", rich_help_panel="Tools")
def import_autoformer(
        checkpoint: Path = typer.Argument(..., help="A supernet .pth trained by AutoFormer's code (e.g. the released "
                                          "supernet-tiny.pth)."),
        space: str = typer.Option(..., "--space", help="The space it was trained on: autoformer-tiny | "
                                  "autoformer-small | autoformer-base, or a JSON file of a space (input size, "
                                  "channels and classes are read from the checkpoint)."),
        out: Path = typer.Option(Path(ARTIFACTS) / "imported" / "supernet.pt", "--out", "-o",
                                 help="The vitnas supernet file to write (for `vitnas search --supernet`)."),
        force: bool = typer.Option(False, "--force", help="Replace OUT when it is a supernet file vitnas wrote "
                                   "(never another file, a directory, a link or the checkpoint).")) -> None:
    """Convert an AutoFormer supernet checkpoint into a vitnas supernet, every subnet unchanged."""
    from vitnas.errors import ArtifactError
    from vitnas.space import SearchSpace
    from vitnas.space.cost import count_params
    from vitnas.stages._io import FileKind, check_output_file
    from vitnas.supernet import Supernet
    from vitnas.supernet.file_format import SupernetFileError, is_supernet_file

    check_output_file(out, FileKind("vitnas supernet", is_supernet_file, replace_needs_force=True), force=force,
                      inputs=[checkpoint, space if space.endswith(".json") else None])
    if space.endswith(".json"):
        from vitnas.files import read_json

        doc = read_json(space, ArtifactError, "search space file")
        try:
            preset = SearchSpace.from_dict(doc)
        except (ValueError, TypeError) as e:
            raise ArtifactError(f"{space}: not a search space ({e})") from None
    else:
        preset = SearchSpace.preset(space)
    try:
        net = Supernet.from_autoformer(checkpoint, preset, adapt_shape=True)
    except SupernetFileError as e:
        raise ArtifactError(str(e)) from None
    s = net.space
    net.save(out, meta=net.meta)
    typer.echo(f"wrote {out}: {s.name} space at {s.img_size}px/{s.patch_size}, {s.in_chans} channels, "
               f"{s.num_classes} classes; largest subnet {count_params(s.largest()) / 1e6:.3f} M params")


@app.command(rich_help_panel="Tools")
def arch(name: str = typer.Argument(..., help="A published arch name (e.g. autoformer-t) or an arch.json."),
         img_size: int | None = typer.Option(None, help="Evaluate at another input size."),
         num_classes: int | None = typer.Option(None, help="Evaluate with another number of classes.")) -> None:
    """Show an architecture with its exact params and multiply-adds."""
    from vitnas.space import Arch, count_flops, count_params
    from vitnas.space.published import PUBLISHED

    a = Arch.published(name) if name in PUBLISHED else Arch.load(name)
    changes = {k: v for k, v in (("img_size", img_size), ("num_classes", num_classes)) if v is not None}
    a = a.replace(**changes) if changes else a
    typer.echo(json.dumps(a.to_dict()))
    typer.echo(f"params {count_params(a) / 1e6:.3f} M, MACs {count_flops(a) / 1e9:.4f} G")
    paper = a.family.paper_flops(a)
    if paper is not None:
        typer.echo(f"MACs by {a.family.paper_counter} {paper / 1e9:.4f} G")


ModelDirArg = typer.Argument(..., help="A model directory (config.json/arch.json + model.safetensors), e.g. "
                             "artifacts/retrain.")


def _model_and_data(model_dir: Path, data_dir: Path):
    """The model directory's model and the prepared data it must fit (input size, channels, classes)."""
    from vitnas.data import PreparedData
    from vitnas.models.model_dir import load_model
    from vitnas.stages._inputs import check_fits_data

    model, arch = load_model(model_dir)
    data = PreparedData(data_dir)
    check_fits_data(arch, data, model_dir / "arch.json")
    return model, arch, data


@app.command(rich_help_panel="Tools")
def export(model_dir: Path = ModelDirArg,
           fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (needs the onnx extra: pip install "
                                   "'vitnas[onnx]') | pt2 (torch.export)."),
           out: Path | None = typer.Option(None, "--out", "-o", help="File to write (default: MODEL_DIR.onnx or "
                                           "MODEL_DIR.pt2 beside the directory)."),
           dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Any batch size (default: the "
                                              "exported model takes exactly --batch-size images)."),
           batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Batch of the exported model."),
           data: Path = typer.Option(stage_dir("data"), "--data", help="Prepared data whose val split's "
                                     "first images check the exported file against the eager model."),
           tolerance: float = typer.Option(1e-4, "--tolerance", min=0.0, help="Largest allowed |exported - eager| "
                                           "over the logits."),
           force: bool = typer.Option(False, "--force", help="Replace OUT when it is an export vitnas wrote "
                                      "(never another file, a directory, a link or an input).")) -> None:
    """Export a model directory to ONNX or pt2 and check it against the eager model on real images."""
    import torch

    from vitnas.deploy.export import SUFFIX, ExportError, check_format, check_parity, is_vitnas_export
    from vitnas.deploy.export import export as write
    from vitnas.errors import ArtifactError
    from vitnas.files import atomic_file
    from vitnas.stages._io import FileKind, check_output_file

    check_format(fmt)
    out = out or model_dir.resolve().with_suffix(SUFFIX[fmt])
    check_output_file(out, FileKind("vitnas export", is_vitnas_export, replace_needs_force=True), force=force,
                      inputs=[model_dir, data])
    model, arch, prepared = _model_and_data(model_dir, data)
    sizes = [max(batch_size, 2), 1] if dynamic_batch else [batch_size]  # torch.export specialises a batch of 1
    val = prepared.dataset("val")
    if len(val) < max(sizes):
        raise ArtifactError(f"{prepared.path / 'val.npz'}: {len(val)} images, the check needs {max(sizes)}")
    x = torch.stack([val[i][0] for i in range(max(sizes))])
    with atomic_file(out) as tmp:  # OUT appears only once the exported file passed its parity check
        write(model, x[:sizes[0]], tmp, fmt, dynamic_batch=dynamic_batch)
        checks = [check_parity(model, tmp, fmt, x[:n]) for n in sizes]
        worst = max(c.max_abs_diff for c in checks)
        if not worst <= tolerance:
            raise ExportError(f"{out}: the exported model differs from the eager one by {worst:.3g} (> --tolerance "
                              f"{tolerance:g}); nothing written")
    batch = "dynamic batch" if dynamic_batch else f"batch {batch_size}"
    typer.echo(f"wrote {out} ({fmt}, {batch}, input {arch.in_chans}x{arch.img_size}x{arch.img_size}, "
               f"{out.stat().st_size / 2**20:.2f} MiB)")
    typer.echo(f"parity on {', '.join(str(c.batch) for c in checks)} val image(s) via {checks[0].runtime}: "
               f"max |exported - eager| = {worst:.3g} (tolerance {tolerance:g})")


@app.command(rich_help_panel="Tools")
def validate(model_dir: Path = ModelDirArg,
             data: Path = typer.Option(stage_dir("data"), "--data", help="The data stage's output."),
             split: str = typer.Option("val", "--split", help="val | test | train."),
             batch_size: int = typer.Option(256, "--batch-size", "-b", min=1),
             device: str = DeviceOpt,
             as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object.")) -> None:
    """Top-1/top-5 accuracy, loss and throughput of a model directory on a split (like timm's validate.py)."""
    from vitnas.deploy.validate import validate as run
    from vitnas.stages._inputs import eval_batches
    from vitnas.train.distributed import resolve_device

    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split: expected val, test or train, got {split!r}")
    model, arch, prepared = _model_and_data(model_dir, data)
    dev = resolve_device(device)
    r = run(model, eval_batches(prepared, split, batch_size)(), dev)
    if as_json:
        typer.echo(json.dumps({"model": str(model_dir), "split": split, "device": str(dev), **r}))
        return
    k = min(5, arch.num_classes)
    typer.echo(f"{model_dir} on {prepared.name} {split} ({r['images']:,} images, {dev}): top-1 {r['top1']:.4f} "
               f"({100 * r['top1']:.2f}%)  top-{k} {r['top5']:.4f}  loss {r['loss']:.4f}  "
               f"{r['images_per_s']:,.0f} images/s (batch {batch_size})")


_IMAGE_HELP = ("Image repository (or a full reference with tag or digest); default $VITNAS_IMAGE or "
               "ghcr.io/vitnas/vitnas.")
ImageOpt = typer.Option(None, "--image", help=_IMAGE_HELP, rich_help_panel="Cluster")
ImageTagOpt = typer.Option(None, "--image-tag", help="Image tag (default: this checkout's short git commit; "
                           "'latest' outside a git checkout, which turns KFP caching off).",
                           rich_help_panel="Cluster")
GpusOpt = typer.Option(1, "--gpus", min=0, help="GPUs of each data-parallel stage (supernet, proxy, search, slim, "
                       "retrain; torchrun nproc_per_node); transfer gets 1. 0: CPU only.",
                       rich_help_panel="Cluster")
AcceleratorOpt = typer.Option("nvidia.com/gpu", "--accelerator", help="Accelerator resource name.",
                              rich_help_panel="Cluster")
NodeSelectorOpt = typer.Option(None, "--node-selector", help="KEY=VALUE node label of GPU stages (repeatable).",
                               rich_help_panel="Cluster")
TolerationOpt = typer.Option(None, "--toleration", help="KEY[=VALUE][:EFFECT] taint GPU stages tolerate "
                             "(repeatable), e.g. nvidia.com/gpu:NoSchedule.", rich_help_panel="Cluster")
SecretOpt = typer.Option(None, "--secret", help="Kubernetes secret whose keys MLFLOW_TRACKING_URI (required "
                         "unless --mlflow-uri), MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN, AWS_ACCESS_KEY_ID, "
                         "AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, MLFLOW_S3_ENDPOINT_URL become env vars of "
                         "every pod.", rich_help_panel="Cluster")
MlflowUriOpt = typer.Option(None, "--mlflow-uri", help="MLFLOW_TRACKING_URI of every pod, e.g. "
                            "http://mlflow.mlflow.svc.cluster.local:5000.", rich_help_panel="Cluster")
ShmOpt = typer.Option("8Gi", "--shm-size", help="Memory-backed /dev/shm of GPU stages ('0': none).",
                      rich_help_panel="Cluster")
CpuOpt = typer.Option("4", "--cpu", help="CPU request of each stage ('0': none).", rich_help_panel="Cluster")
MemoryOpt = typer.Option("16Gi", "--memory", help="Memory request of each stage ('0': none).",
                         rich_help_panel="Cluster")
CheckpointPvcOpt = typer.Option(None, "--checkpoint-pvc", help="PersistentVolumeClaim mounted by the supernet, "
                                "search and retrain pods for their checkpoints, so a retried or preempted pod "
                                "resumes (default: pod-local, lost with the pod).", rich_help_panel="Cluster")
DataPvcOpt = typer.Option(None, "--data-pvc", metavar="NAME[:MOUNT]", help="PersistentVolumeClaim holding your "
                          "datasets, mounted at MOUNT (default /data) in every step that reads data: set data.root "
                          "to a path under MOUNT.", rich_help_panel="Cluster")
RetriesOpt = typer.Option(2, "--retries", min=0, help="Retries of a failed or preempted stage pod.",
                          rich_help_panel="Cluster")
ProxyShardsOpt = typer.Option(1, "--proxy-shards", min=1, help="Fan proxy scoring out to K pods (ParallelFor), "
                              "merged by a CPU step into the one stage's outputs.", rich_help_panel="Cluster")
NodesOpt = typer.Option(1, "--nodes", min=1, help="Run supernet and retrain as Kubeflow Trainer TrainJobs of this "
                        "many nodes x --gpus (needs --checkpoint-pvc, a ReadWriteMany volume).",
                        rich_help_panel="Cluster")
CacheSupernetOpt = typer.Option(True, "--cache-supernet/--no-cache-supernet",
                                help="Let KFP reuse a supernet trained with the same params, inputs and image "
                                     "(its cache key); --no-cache-supernet trains it again.",
                                rich_help_panel="Cluster")


def _cluster_options(image, image_tag, gpus, accelerator, node_selector, toleration, secret, mlflow_uri,
                     shm_size, cpu, memory, cache_supernet, checkpoint_pvc=None, retries=2, proxy_shards=1,
                     nodes=1, data_pvc=None):
    """ClusterOptions from the shared compile/submit options; prints what the user should know."""
    from vitnas.pipeline.dag import DATA_MOUNT, ClusterOptions, Toleration, image_reference
    from vitnas.pipeline.k8s import check_image, check_tag

    if image is not None:
        check_image("--image", image)
    if image_tag is not None:
        check_tag("--image-tag", image_tag)
    ref, notes = image_reference(image, image_tag, Path.cwd())
    if ref.endswith(":latest"):
        notes.append("the image tag 'latest' is mutable: KFP caching is turned off, so no step reuses results "
                     "of another code version")
    selector = {}
    for item in node_selector or []:
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise ConfigError(f"--node-selector {item}: expected KEY=VALUE")
        selector[key] = value
    if not (secret or mlflow_uri):
        notes.append("no --secret or --mlflow-uri: stage pods log MLflow runs to a throwaway sqlite file")
    none = ("", "0", "none")
    pvc_name, _, pvc_mount = (data_pvc or "").partition(":")
    pvc_name, pvc_mount = pvc_name or None, pvc_mount or DATA_MOUNT
    opts = ClusterOptions(
        image=ref, gpus=gpus, accelerator=accelerator, node_selector=selector,
        tolerations=tuple(Toleration.parse(t) for t in toleration or []), secret=secret, mlflow_uri=mlflow_uri,
        shm_size=None if shm_size in none else shm_size, cpu=None if cpu in none else cpu,
        memory=None if memory in none else memory, cache_supernet=cache_supernet, checkpoint_pvc=checkpoint_pvc,
        retries=retries, proxy_shards=proxy_shards, nodes=nodes, data_pvc=pvc_name, data_mount=pvc_mount,
        code_version=ref.rsplit("@" if "@" in ref else ":", 1)[-1])
    for note in notes:  # after every check: a refused command prints its one error line only
        typer.echo(f"warning: {note}", err=True)
    return opts


@pipeline_app.command("compile")
def pipeline_compile(out: Path = typer.Option(Path("vitnas_pipeline.yaml"), "--out", "-o"),
                     params: Path = ParamsOpt, image: str | None = ImageOpt, image_tag: str | None = ImageTagOpt,
                     gpus: int = GpusOpt, accelerator: str = AcceleratorOpt,
                     node_selector: list[str] | None = NodeSelectorOpt, toleration: list[str] | None = TolerationOpt,
                     secret: str | None = SecretOpt, mlflow_uri: str | None = MlflowUriOpt, shm_size: str = ShmOpt,
                     cpu: str = CpuOpt, memory: str = MemoryOpt, cache_supernet: bool = CacheSupernetOpt,
                     checkpoint_pvc: str | None = CheckpointPvcOpt, retries: int = RetriesOpt,
                     proxy_shards: int = ProxyShardsOpt, nodes: int = NodesOpt,
                     data_pvc: str | None = DataPvcOpt) -> None:
    """Compile the Kubeflow pipeline to YAML, with params.yaml as the default parameters.

    OUT may replace a pipeline vitnas compiled, never another file, the params file or a link."""
    from vitnas.config import load_params
    from vitnas.pipeline.dag import PIPELINE_FILE, compile_pipeline
    from vitnas.stages._io import check_output_file

    check_output_file(out, PIPELINE_FILE, inputs=[params])
    p = load_params(params)
    opts = _cluster_options(image, image_tag, gpus, accelerator, node_selector, toleration, secret, mlflow_uri,
                            shm_size, cpu, memory, cache_supernet, checkpoint_pvc, retries, proxy_shards, nodes,
                            data_pvc)
    compile_pipeline(p, out, opts)
    typer.echo(f"wrote {out} (image {opts.image})")


@pipeline_app.command("run-local")
def pipeline_run_local(params: Path = ParamsOpt,
                       pipeline_root: Path = typer.Option(Path("local_outputs"),
                                                          help="Where kfp.local writes task outputs."),
                       proxy_shards: int = ProxyShardsOpt) -> None:
    """Run the whole pipeline on this machine through kfp.local (SubprocessRunner)."""
    from vitnas.config import load_params
    from vitnas.pipeline.dag import run_local

    outputs = run_local(load_params(params), pipeline_root, proxy_shards=proxy_shards)
    for name, path in outputs.items():
        typer.echo(f"{name}: {path}")


@pipeline_app.command("submit")
def pipeline_submit(host: str = typer.Option(..., "--host", envvar="KFP_HOST",
                                             help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080."),
                    experiment: str = typer.Option("vitnas", "--experiment", help="KFP experiment (created if new)."),
                    run_name: str | None = typer.Option(None, "--run-name", help="Default: vitnas-<UTC time>."),
                    namespace: str | None = typer.Option(None, "--namespace", help="Kubeflow profile namespace."),
                    token: str | None = typer.Option(None, "--token", envvar="KFP_TOKEN",
                                                     help="Bearer token for the API server."),
                    wait: bool = typer.Option(False, "--wait/--no-wait", help="Wait for the run to finish."),
                    timeout: int = typer.Option(24 * 3600, "--timeout", min=1, help="--wait limit in seconds."),
                    params: Path = ParamsOpt, image: str | None = ImageOpt, image_tag: str | None = ImageTagOpt,
                    gpus: int = GpusOpt, accelerator: str = AcceleratorOpt,
                    node_selector: list[str] | None = NodeSelectorOpt, toleration: list[str] | None = TolerationOpt,
                    secret: str | None = SecretOpt, mlflow_uri: str | None = MlflowUriOpt, shm_size: str = ShmOpt,
                    cpu: str = CpuOpt, memory: str = MemoryOpt, cache_supernet: bool = CacheSupernetOpt,
                    checkpoint_pvc: str | None = CheckpointPvcOpt, retries: int = RetriesOpt,
                    proxy_shards: int = ProxyShardsOpt, nodes: int = NodesOpt,
                    data_pvc: str | None = DataPvcOpt) -> None:
    """Compile the pipeline and start a run of it on a Kubeflow Pipelines cluster."""
    import tempfile
    import time

    from vitnas.config import load_params
    from vitnas.pipeline.dag import compile_pipeline, pipeline_arguments, submit

    p = load_params(params)
    opts = _cluster_options(image, image_tag, gpus, accelerator, node_selector, toleration, secret, mlflow_uri,
                            shm_size, cpu, memory, cache_supernet, checkpoint_pvc, retries, proxy_shards, nodes,
                            data_pvc)
    run_name = run_name or time.strftime("vitnas-%Y%m%d-%H%M%S", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(p, Path(tmp) / "vitnas_pipeline.yaml", opts)
        client, run_id = _kfp_call(host, lambda: submit(package, pipeline_arguments(p), host=host,
                                                        experiment=experiment, run_name=run_name,
                                                        namespace=namespace, token=token))
    typer.echo(f"run {run_name} ({run_id}) in experiment {experiment}: {host.rstrip('/')}/#/runs/details/{run_id}")
    if wait:
        run = _kfp_call(host, lambda: client.wait_for_run_completion(run_id, timeout))
        state = str(run.state)
        typer.echo(f"run {run_id}: {state}")
        if state != "SUCCEEDED":
            raise typer.Exit(1)


def _kfp_call(host: str, call):
    """A KFP client call, with connection and API errors as one-line user errors."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return call()
    except HTTPError as e:
        reason = getattr(e, "reason", None) or e
        raise VitnasError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from None
    except ApiException as e:
        raise VitnasError(f"Kubeflow Pipelines at {host} answered {e.status} {e.reason}: "
                          f"{(e.body or '').strip()[:300]}") from None


def main() -> None:
    try:
        app()
    except VitnasError as e:
        typer.echo(f"error: {_one_line(str(e))}", err=True)
        sys.exit(2)
    except OSError as e:  # the file system said no (permissions, a full disk, ...): the user's to fix
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        typer.echo(f"error: {where}{_one_line(e.strerror or str(e))}", err=True)
        sys.exit(2)


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


if __name__ == "__main__":
    main()
