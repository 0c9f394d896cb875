"""`vitnas <stage>` commands: parse arguments, load params, call `vitnas.stages`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from vitnas.errors import VitnasError

app = typer.Typer(
    help="Vision Transformer architecture search: one command per pipeline stage.\n\n"
         "Stages, in pipeline order: data -> supernet -> proxy -> search -> slim -> retrain -> transfer.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
pipeline_app = typer.Typer(help="Compile, run locally or submit the Kubeflow pipeline.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")

ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="params.yaml to read.")
TrackOpt = typer.Option(None, "--track/--no-track",
                        help="Log to MLflow (default: params.yaml tracking.enabled).")


@app.command(rich_help_panel="Stages")
def data(params: Path = ParamsOpt,
         out: Path = typer.Option(Path("artifacts/data"), "--out", "-o", help="Output directory."),
         track: bool | None = TrackOpt) -> None:
    """Prepare the dataset: seeded train/val/test splits + dataset.json."""
    from vitnas.config import load_params
    from vitnas.stages import data as stage

    metrics = stage.run(load_params(params), out, track=track)
    typer.echo(f"wrote {out}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


@app.command(rich_help_panel="Stages")
def supernet(params: Path = ParamsOpt,
             data: Path = typer.Option(Path("artifacts/data"), "--data", help="The data stage's output."),
             out: Path = typer.Option(Path("artifacts/supernet"), "--out", "-o", help="Output directory."),
             checkpoints: Path | None = typer.Option(
                 None, help="Per-epoch checkpoints (default: OUT-checkpoints beside the output)."),
             resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint when it "
                                         "matches these params and data."),
             device: str = typer.Option("auto", help="auto | cpu | cuda"),
             track: bool | None = TrackOpt) -> None:
    """Train the weight-entangled supernet (AutoFormer).

    Data-parallel: torchrun --nproc_per_node N -m vitnas supernet ...
    """
    from vitnas.config import load_params
    from vitnas.stages import supernet as stage

    _report(out, stage.run(load_params(params), data, out, checkpoint_dir=checkpoints, resume=resume,
                           device=device, track=track))


DataOpt = typer.Option(Path("artifacts/data"), "--data", help="The data stage's output.")
SupernetOpt = typer.Option(Path("artifacts/supernet/supernet.pt"), "--supernet", help="The trained supernet.")
DeviceOpt = typer.Option("auto", help="auto | cpu | cuda")


def _report(out: Path, metrics: dict) -> None:
    if metrics:
        typer.echo(f"wrote {out}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


@app.command(rich_help_panel="Stages")
def proxy(params: Path = ParamsOpt, data: Path = DataOpt,
          out: Path = typer.Option(Path("artifacts/proxy"), "--out", "-o", help="Output directory."),
          supernet: Path | None = typer.Option(None, "--supernet",
                                               help="Score through this trained supernet instead of a "
                                                    "randomly initialised one (TF-TAS scores at init)."),
          device: str = DeviceOpt, track: bool | None = TrackOpt) -> None:
    """Score sampled candidates with training-free proxies (TF-TAS DSS and baselines); resumable."""
    from vitnas.config import load_params
    from vitnas.stages import proxy as stage

    _report(out, stage.run(load_params(params), data, out, supernet_path=supernet, device=device, track=track))


@app.command(rich_help_panel="Stages")
def search(params: Path = ParamsOpt, data: Path = DataOpt, supernet: Path = SupernetOpt,
           out: Path = typer.Option(Path("artifacts/search"), "--out", "-o", help="Output directory."),
           checkpoints: Path | None = typer.Option(
               None, help="Per-generation checkpoints (default: OUT-checkpoints beside the output)."),
           resume: bool = typer.Option(False, "--resume", help="Continue from the last generation checkpoint."),
           device: str = DeviceOpt, track: bool | None = TrackOpt) -> None:
    """Evolutionary (or random) search under params/FLOPs/latency constraints."""
    from vitnas.config import load_params
    from vitnas.stages import search as stage

    _report(out, stage.run(load_params(params), data, supernet, out, checkpoint_dir=checkpoints, resume=resume,
                           device=device, track=track))


@app.command("latency-table", rich_help_panel="Tools")
def latency_table(params: Path = ParamsOpt, data: Path = DataOpt,
                  out: Path = typer.Option(Path("artifacts/latency.json"), "--out", "-o"),
                  batch_size: int = typer.Option(1, min=1), repeats: int = typer.Option(50, min=1),
                  warmup: int = typer.Option(10, min=0), rounds: int = typer.Option(5, min=1),
                  check_archs: int = typer.Option(5, min=0, help="Full models measured to check the table."),
                  device: str = DeviceOpt, threads: int | None = typer.Option(None, min=1),
                  track: bool | None = TrackOpt) -> None:
    """Measure a per-block latency lookup table on this device (for search.latency_max_ms)."""
    from vitnas.config import load_params
    from vitnas.stages import latency as stage

    _report(out, stage.run(load_params(params), data, out, batch_size=batch_size, repeats=repeats, warmup=warmup,
                           rounds=rounds, check_archs=check_archs, device=device, threads=threads, track=track))


@app.command(rich_help_panel="Stages")
def slim(params: Path = ParamsOpt, data: Path = DataOpt, supernet: Path | None = SupernetOpt,
         arch: Path = typer.Option(Path("artifacts/search/best_arch.json"), "--arch",
                                   help="An arch.json (weights from --supernet) or a model directory "
                                        "(arch.json + model.safetensors)."),
         out: Path = typer.Option(Path("artifacts/slim"), "--out", "-o", help="Output directory."),
         device: str = DeviceOpt, track: bool | None = TrackOpt) -> None:
    """ViT-Slim soft-mask search to a FLOPs/params budget, then physical pruning."""
    from vitnas.config import load_params
    from vitnas.stages import slim as stage

    _report(out, stage.run(load_params(params), data, supernet, arch, out, device=device, track=track))


@app.command("check-params", rich_help_panel="Tools")
def check_params(params: Path = ParamsOpt) -> None:
    """Validate params.yaml and print the resolved search space."""
    from vitnas.config import load_params

    p = load_params(params)
    typer.echo(f"{params}: ok")
    typer.echo(str(p.search_space()))


@app.command(rich_help_panel="Tools")
def spaces() -> None:
    """List the search space presets with their size and cost range."""
    from vitnas.space import SearchSpace, count_flops, count_params

    typer.echo(f"{'preset':<18}{'archs':>10}{'params (M)':>18}{'MACs (G)':>18}  input")
    for name in SearchSpace.presets():
        s = SearchSpace.preset(name)
        lo, hi = s.smallest(), s.largest()
        typer.echo(f"{name:<18}{'1e' + format(s.log10_size(), '.1f'):>10}"
                   f"{count_params(lo) / 1e6:>8.2f}-{count_params(hi) / 1e6:<9.2f}"
                   f"{count_flops(lo) / 1e9:>8.3f}-{count_flops(hi) / 1e9:<9.3f}"
                   f"  {s.img_size}px/{s.patch_size}, {s.in_chans}ch, {s.num_classes} classes")


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


@pipeline_app.command("compile")
def pipeline_compile(out: Path = typer.Option(Path("vitnas_pipeline.yaml"), "--out", "-o"),
                     params: Path = ParamsOpt,
                     gpus: int = typer.Option(1, min=0, help="GPUs requested by each training stage.")) -> None:
    """Compile the Kubeflow pipeline to YAML, with params.yaml as the default parameters."""
    from pipelines.vitnas_pipeline import compile_pipeline
    from vitnas.config import load_params

    compile_pipeline(load_params(params), out, gpus)
    typer.echo(f"wrote {out}")


@pipeline_app.command("run-local")
def pipeline_run_local(params: Path = ParamsOpt,
                       pipeline_root: Path = typer.Option(Path("local_outputs"),
                                                          help="Where kfp.local writes task outputs.")) -> None:
    """Run the whole pipeline on this machine through kfp.local (SubprocessRunner)."""
    from pipelines.vitnas_pipeline import run_local
    from vitnas.config import load_params

    outputs = run_local(load_params(params), pipeline_root)
    for name, path in outputs.items():
        typer.echo(f"{name}: {path}")


def main() -> None:
    try:
        app()
    except VitnasError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
