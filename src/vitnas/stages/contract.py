"""Each stage's contract, declared once: what it reads, which params.yaml keys, what it writes.

dvc.yaml is generated from these declarations (`vitnas dvc-yaml`, and a test keeps the committed
file equal), the Kubeflow components receive only their stage's keys (so a change reruns that stage
and what follows, never what precedes it), MLflow logs each stage's declared keys, and the output
guard (`_io`) recognises a stage's directory by its files. A test runs every stage with a params
view that records each key read and fails on any key not declared here.

`tracking.*` is read by every stage and declared by none: where runs are logged never changes what
a stage computes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARTIFACTS = "artifacts"  # each stage writes artifacts/<stage>/ (the CLI's defaults, dvc.yaml's outs)
UNDECLARED_OK = ("tracking",)


@dataclass(frozen=True)
class Plot:
    """A curve of one of the stage's JSON files (a DVC plot, its file kept in git so `dvc plots diff`
    draws it for any two revisions), or an image (an output; the HTML report's figure)."""

    title: str
    file: str
    x: str | None = None
    y: tuple[str, ...] = ()
    x_label: str | None = None
    y_label: str | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str  # the `vitnas` command line, without --params
    inputs: Mapping[str, tuple[str, ...]]  # upstream stage -> files of its output read
    params: tuple[str, ...]  # params.yaml sections or dotted keys read
    outputs: tuple[str, ...]  # files (or folders) written into the stage's directory, metrics.json aside
    plots: tuple[Plot, ...] = ()
    checkpoints: bool = False  # per-epoch checkpoints under artifacts/checkpoints/<stage> (persisted)
    gpu: bool = False  # runs on a GPU when the cluster has them
    data_parallel: bool = False  # under torchrun on all of a pod's GPUs (training: gradients averaged;
    #                              search and proxy: candidates shared out, the same result as one process)
    multinode: bool = False  # can run as a Kubeflow Trainer TrainJob of several nodes
    persist: tuple[str, ...] = ()  # outputs kept across runs (resumed in place)
    metrics: str = "metrics.json"
    report: str | None = None  # a self-contained HTML page of the outputs: the Kubeflow HTML view when given
    extra_outputs: tuple[str, ...] = field(default=())  # written in some configurations only
    # keys inside a declared section that the stage does not read (data: how training reads the data)
    excludes: tuple[str, ...] = ()
    # metrics.json names (fnmatch patterns) copied onto the pipeline's parent run in MLflow
    headline: tuple[str, ...] = ()

    @property
    def files(self) -> frozenset[str]:
        """Every name the stage may write into its directory."""
        return frozenset((*self.outputs, *self.extra_outputs, self.metrics))

    def reads(self, key: str) -> bool:
        """Whether dotted `key` is covered by a declared section or key (and not excluded)."""
        def under(k: str, prefixes: tuple[str, ...]) -> bool:
            return any(k == p or k.startswith(p + ".") for p in prefixes)

        return under(key, self.params) and not under(key, self.excludes)

    def dvc_params(self) -> list[str]:
        """`params` as dvc.yaml lists them: a section with exclusions spelled out key by key."""
        if not self.excludes:
            return list(self.params)
        from vitnas.config import Params  # the sections' keys (lazy: the contract loads without torch)

        out: list[str] = []
        for p in self.params:
            if not any(e.startswith(p + ".") for e in self.excludes):
                out.append(p)
                continue
            model: Any = Params
            for part in p.split("."):
                model = model.model_fields[part].annotation
            out += [f"{p}.{k}" for k in model.model_fields if f"{p}.{k}" not in self.excludes]
        return out


# data.* keys read where training reads the data, not where the data stage writes it: changing one
# reruns the stages that train, never the data stage (which would re-shard the whole dataset).
READ_TIME_DATA_KEYS = ("data.augment", "data.shuffle_buffer")


# shards.json lists every shard's digest: a changed shard changes it (the shards/ folder itself is
# an output of the data stage, not a dependency of each stage).
_DATA_SPLITS = ("train.npz", "val.npz", "dataset.json", "shards.json")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("data", "vitnas data --out artifacts/data",
          inputs={}, params=("data", "transfer.targets"), excludes=READ_TIME_DATA_KEYS,
          outputs=("transfer", "train.npz", "val.npz", "test.npz", "dataset.json", "shards", "shards.json")),
    Stage("supernet", "vitnas supernet --data artifacts/data --out artifacts/supernet "
          "--checkpoints artifacts/checkpoints/supernet --resume",
          inputs={"data": _DATA_SPLITS}, params=("space", "supernet", "data.img_size", *READ_TIME_DATA_KEYS),
          outputs=("supernet.pt", "history.json", "curves.png"),
          plots=(Plot("supernet convergence", "history.json", "epoch",
                      ("val_acc_smallest", "val_acc_largest", "val_acc_random_mean"), "epoch", "val top-1"),
                 Plot("supernet curves", "curves.png")),
          checkpoints=True, headline=("val_acc_largest", "val_acc_smallest"),
          gpu=True, data_parallel=True, multinode=True),
    Stage("proxy", "vitnas proxy --data artifacts/data --out artifacts/proxy",
          inputs={"data": ("train.npz", "dataset.json", "shards.json")},
          params=("proxy", "space", "data.img_size", "search.params_min", "search.params_max", "search.flops_min",
                  "search.flops_max"),
          outputs=("scores.jsonl", "top_k.json"),
          persist=("scores.jsonl",), extra_outputs=(".scores.fingerprint",),
          gpu=True, data_parallel=True),
    Stage("search", "vitnas search --data artifacts/data --supernet artifacts/supernet/supernet.pt "
          "--out artifacts/search --checkpoints artifacts/checkpoints/search --resume",
          inputs={"data": _DATA_SPLITS, "supernet": ("supernet.pt",)},
          params=("search", "space", "data.img_size", *READ_TIME_DATA_KEYS, "proxy.batch_size", "proxy.seed",
                  "supernet"),
          outputs=("best_arch.json", "history.jsonl", "pareto.png", "generations.json", "report.html", "optuna.db"),
          plots=(Plot("search progress", "generations.json", "generation",
                      ("best_fitness", "population_mean_fitness"), "generation", "fitness (val top-1)"),
                 Plot("search pareto front", "pareto.png")),
          report="report.html",
          checkpoints=True,
          extra_outputs=("level1_arch.json", "level1_pareto.png", "supernet_level2.pt"),
          headline=("best_fitness", "best_params", "best_flops"),
          gpu=True, data_parallel=True),
    Stage("slim", "vitnas slim --data artifacts/data --supernet artifacts/supernet/supernet.pt "
          "--arch artifacts/search/best_arch.json --out artifacts/slim",
          inputs={"data": _DATA_SPLITS, "supernet": ("supernet.pt",), "search": ("best_arch.json",)},
          params=("slim", *READ_TIME_DATA_KEYS),
          outputs=("arch.json", "model.safetensors", "config.json", "widths.png"),
          plots=(Plot("slimming widths", "widths.png"),),
          headline=("params_ratio", "flops_ratio", "val_acc_after"),
          gpu=True, data_parallel=True),
    Stage("retrain", "vitnas retrain --data artifacts/data --supernet artifacts/supernet/supernet.pt "
          "--arch artifacts/slim --out artifacts/retrain --checkpoints artifacts/checkpoints/retrain --resume",
          inputs={"data": (*_DATA_SPLITS, "test.npz"), "supernet": ("supernet.pt",),
                  "slim": ("arch.json", "model.safetensors")},
          params=("retrain", *READ_TIME_DATA_KEYS),
          outputs=("arch.json", "model.safetensors", "config.json", "history.json", "confusion.json",
                   "curves.png"),
          plots=(Plot("retrain curves", "history.json", "epoch", ("val_acc",), "epoch", "val top-1"),
                 Plot("retrain loss and accuracy", "curves.png")),
          checkpoints=True, headline=("test_acc", "params", "flops"),
          gpu=True, data_parallel=True, multinode=True),
    Stage("transfer", "vitnas transfer --data artifacts/data --model artifacts/retrain --out artifacts/transfer",
          inputs={"data": ("transfer",), "retrain": ("arch.json", "model.safetensors")},
          params=("transfer",),
          outputs=("detections.png",),
          plots=(Plot("detections", "detections.png"),),
          headline=("*.top1", "*.AP"),
          gpu=True),
)}
ORDER = tuple(STAGES)


def downstream() -> dict[str, tuple[str, ...]]:
    """Each stage's direct consumers (the stages that read its output)."""
    return {name: tuple(s.name for s in STAGES.values() if name in s.inputs) for name in STAGES}


def stage_dir(stage: str) -> Path:
    """The stage's output directory in a project (`artifacts/<stage>`)."""
    return Path(ARTIFACTS) / stage


def stage_params(params: Any, stage: str) -> dict[str, Any]:
    """The declared keys of `stage` (and `tracking`) as a nested params mapping: what its
    Kubeflow component receives."""
    full = params.model_dump(mode="json")
    out: dict[str, Any] = {"tracking": full["tracking"]}
    for key in STAGES[stage].params:
        *parents, leaf = key.split(".")
        src, dst = full, out
        for k in parents:
            src, dst = src[k], dst.setdefault(k, {})
        dst[leaf] = src[leaf]
    for key in STAGES[stage].excludes:
        *parents, leaf = key.split(".")
        node = out
        for k in parents:
            node = node[k]
        node.pop(leaf, None)
    return out


def logged_params(params: Any, stage: str) -> dict[str, Any]:
    """The declared keys of `stage` with dotted names: what its MLflow run logs."""
    flat = params.flat()
    return {k: v for k, v in flat.items() if STAGES[stage].reads(k)}


# ---- dvc.yaml ----------------------------------------------------------------------------------
def dvc_yaml() -> dict[str, Any]:
    """The content of dvc.yaml, stage by stage."""
    from vitnas.stages._code_deps import code_deps

    stages: dict[str, Any] = {}
    for s in STAGES.values():
        base = f"{ARTIFACTS}/{s.name}"
        deps = [f"{ARTIFACTS}/{up}/{f}" for up, files in s.inputs.items() for f in files]
        deps += code_deps(s.name)  # the source files the stage's module imports, found from its imports
        series = {p.file for p in s.plots if p.x is not None}
        outs: list[Any] = []
        for f in s.outputs:
            if f in s.persist:
                outs.append({f"{base}/{f}": {"persist": True}})
            elif f in series:  # git's, like metrics.json: `dvc plots diff` finds it in every commit and experiment
                outs.append({f"{base}/{f}": {"cache": False}})
            else:
                outs.append(f"{base}/{f}")
        if s.checkpoints:
            outs.append({f"{ARTIFACTS}/checkpoints/{s.name}": {"persist": True, "cache": False}})
        entry: dict[str, Any] = {
            "cmd": s.cmd.replace(f"vitnas {s.name} ", f"vitnas {s.name} --params params.yaml ", 1),
            "deps": deps,
            "params": s.dvc_params(),
            "outs": outs,
            # metrics.json is tracked by git (see .gitignore), so `dvc exp show` and
            # `dvc metrics diff` find it for every commit and experiment
            "metrics": [{f"{base}/{s.metrics}": {"cache": False}}],
        }
        stages[s.name] = entry
    plots = []
    for s in STAGES.values():
        for p in s.plots:
            if p.x is None:
                continue
            plots.append({p.title: {"x": p.x, "y": {f"{ARTIFACTS}/{s.name}/{p.file}": list(p.y)},
                                    "x_label": p.x_label, "y_label": p.y_label}})
    return {"stages": stages, "plots": plots}


HEADER = ("# Generated from vitnas.stages.contract by `vitnas dvc-yaml`: edit the contract, not this file\n"
          "# (tests/test_contract.py keeps them equal). One stage per pipeline stage, running the\n"
          "# project's own command with params.yaml.\n")


def render_dvc_yaml() -> str:
    import yaml

    return HEADER + yaml.safe_dump(dvc_yaml(), sort_keys=False, width=120)


def undeclared(stage: str, keys: Iterable[str]) -> list[str]:
    """The keys among `keys` that `stage` reads without declaring them."""
    s = STAGES[stage]
    return sorted(k for k in keys if not s.reads(k) and not any(k == u or k.startswith(u + ".")
                                                              for u in UNDECLARED_OK))
