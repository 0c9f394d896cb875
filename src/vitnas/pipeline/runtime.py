"""What component bodies call inside the stage containers (and kfp.local's subprocesses).

- Typed pipeline parameters: every scalar key of params.yaml is its own pipeline parameter, so the
  KFP UI shows it per run: `supernet.epochs` -> `supernet_epochs: int`, a nullable text key
  `data.root` -> `data_root: str` (empty for null), a nullable number or switch
  `data.max_train_images` -> `data_max_train_images: str` (its value as text, read as `--set`
  reads it; empty for null). KFP parameters cannot hold null, and kfp.local cannot run an optional
  parameter without a default, so text is the one type with a value ("") that stands for null. The
  rest (lists, transfer targets) travels in `params_json`. The first pipeline step merges both and
  validates them with `vitnas.config` before any GPU pod starts.
- `run_stage`: calls `vitnas.stages.<stage>.run(...)` in this process, or under
  `torchrun --standalone --nproc_per_node N` when a training stage has several GPUs.

Run as `python -m vitnas.pipeline.runtime CALL.json` it is the torchrun worker entry point.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from vitnas.config import Params, parse_params, read_value
from vitnas.errors import ConfigError

PIPELINE_RUN_ENV = "VITNAS_PIPELINE_RUN_ID"


@dataclass(frozen=True)
class TypedParam:
    """One params.yaml key exposed as a typed pipeline parameter."""

    name: str  # pipeline parameter: supernet_epochs
    key: str  # params.yaml key: supernet.epochs
    type: type  # the parameter's type: bool | int | float | str
    nullable: bool = False  # a nullable key: the empty string stands for null
    value_type: type | None = None  # a nullable number or switch, carried as text: the key's own type

    @property
    def description(self) -> str:
        notes = [{int: "integer", float: "number", bool: "true or false"}[self.value_type]] if self.value_type else []
        notes += ["empty for null"] if self.nullable else []
        return f"params.yaml {self.key}" + (f" ({'; '.join(notes)})." if notes else ".")


def _scalar_type(annotation: Any) -> tuple[type, bool, type | None] | None:
    """(parameter type, nullable, value type) for a scalar field: Literal of strings -> str;
    `str | None` -> nullable str; `int | None` (float, bool) -> nullable str carrying an int;
    `float | int` -> str carrying a number; else None."""
    import types

    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        kinds = {(_scalar_type(a) or (None,))[0] for a in args}
        if len(args) == len(typing.get_args(annotation)) and kinds == {int, float}:
            return str, False, float  # a fraction or a count (data.val_fraction): a number, as text
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            inner = _scalar_type(args[0])
            if inner is None:
                return None
            return (str, True, None) if inner[0] is str else (str, True, inner[0])
        return None
    if typing.get_origin(annotation) is typing.Annotated:
        return _scalar_type(typing.get_args(annotation)[0])
    if annotation in (bool, int, float, str):
        return annotation, False, None
    if typing.get_origin(annotation) is typing.Literal:
        values = typing.get_args(annotation)
        return (str, False, None) if all(isinstance(v, str) for v in values) else None
    return None


def typed_params(model: type[BaseModel] = Params, prefix: str = "") -> list[TypedParam]:
    """The typed pipeline parameters, in params.yaml order."""
    out: list[TypedParam] = []
    for field, info in model.model_fields.items():
        key = f"{prefix}{field}"
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(typed_params(ann, f"{key}."))
        elif (t := _scalar_type(ann)) is not None:
            out.append(TypedParam(key.replace(".", "_"), key, *t))
    return out


def split_params(params: Params) -> tuple[dict[str, Any], str]:
    """(typed parameter values, params_json of every other key) of `params`."""
    rest = params.model_dump(mode="json")
    typed: dict[str, Any] = {}
    for p in typed_params():
        *parents, leaf = p.key.split(".")
        node = rest
        for k in parents:
            node = node[k]
        value = node.pop(leaf)
        if value is None and p.nullable:
            typed[p.name] = ""
        elif p.value_type is not None:  # as YAML writes it: 0.9999, 2000000, true
            typed[p.name] = yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()
        else:
            typed[p.name] = p.type(value)
    return typed, json.dumps(_prune(rest), sort_keys=True)


def _prune(d: dict) -> dict:
    """Drop the sections left empty once their scalars became typed parameters."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _prune(v)
            if not v:
                continue
        out[k] = v
    return out


def merge_params(params_json: str, typed: Mapping[str, Any]) -> Params:
    """Validated params from `params_json` plus the typed parameter values (each key set once)."""
    try:
        raw = json.loads(params_json) if params_json.strip() else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"params_json: invalid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"params_json: expected a JSON object, got {type(raw).__name__}")
    by_name = {p.name: p for p in typed_params()}
    unknown = sorted(set(typed) - set(by_name))
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a typed pipeline parameter")
    for name, value in typed.items():
        p = by_name[name]
        *parents, leaf = p.key.split(".")
        node = raw
        for k in parents:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"params_json: {k} must be a mapping")
        if leaf in node:
            raise ConfigError(f"params_json: {p.key} is the typed pipeline parameter {p.name}; set it there")
        node[leaf] = _coerce(p, value)
    return parse_params(raw, "pipeline parameters")


def _coerce(p: TypedParam, value: Any) -> Any:
    """KFP hands over JSON numbers (an int may arrive as 3.0); keep the declared type."""
    if value is None or (p.nullable and value == ""):
        return None  # validation says whether the key may be null; an empty optional string is null
    if p.value_type is not None and isinstance(value, str):
        return read_value(value, p.name)  # "2e6" -> 2000000, "true" -> True; validation types it
    if p.type is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if p.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def init_pipeline(params_json: str, typed: Mapping[str, Any]) -> dict[str, str]:
    """The first step: merge and validate the parameters, and open this pipeline run's MLflow
    parent run before any stage pod starts (so parallel stages never race to create it).
    Returns each stage's declared keys as JSON (`vitnas.stages.contract.stage_params`): a step's
    input changes only when a key it reads changes, so KFP reuses every other step's cached result."""
    params = merge_params(params_json, typed)
    run_id = os.environ.get(PIPELINE_RUN_ENV)
    if params.tracking.enabled and run_id:
        from vitnas import tracking

        parent = tracking.pipeline_parent(run_id, params.tracking.experiment, params=params.flat())
        print(f"MLflow parent run {parent} (experiment {params.tracking.experiment}) for pipeline run {run_id}")
    from vitnas.stages.contract import ORDER, stage_params

    return {stage: json.dumps(stage_params(params, stage), sort_keys=True) for stage in ORDER}


# ---- stage calls --------------------------------------------------------------------------------
def _call(stage: str, params_json: str, args: list, kwargs: dict) -> dict[str, float]:
    module = importlib.import_module(f"vitnas.stages.{stage}")
    # this stage's keys only, cross-checked as a whole by the init step
    return module.run(parse_params(json.loads(params_json), stage, cross_checks=False), *args, **kwargs)


def run_stage(stage: str, params_json: str, nproc: int, *args, trainjob: str = "", **kwargs) -> dict[str, float]:
    """`vitnas.stages.<stage>.run(params, *args, **kwargs)`: here when nproc <= 1, else in
    `nproc` data-parallel processes under torchrun (rank 0's metrics are returned).

    `trainjob` (a `vitnas.pipeline.trainjob.TrainJobSpec` as JSON): run it as a multi-node Kubeflow
    Trainer TrainJob instead (positional args: inputs..., output)."""
    if trainjob:
        return _run_trainjob(stage, params_json, trainjob, [str(a) for a in args], kwargs)
    if nproc <= 1:
        return _call(stage, params_json, list(args), kwargs)
    with tempfile.TemporaryDirectory(prefix="vitnas-torchrun-") as tmp:
        call, result = Path(tmp, "call.json"), Path(tmp, "metrics.json")
        call.write_text(json.dumps({"stage": stage, "params": params_json, "args": [str(a) for a in args],
                                    "kwargs": kwargs, "result": str(result)}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "vitnas.pipeline.runtime", str(call)]
        print("+ " + " ".join(cmd[1:]), flush=True)
        code = subprocess.run(cmd).returncode
        if code != 0:
            raise RuntimeError(f"{stage}: torchrun with {nproc} processes exited with status {code}")
        return json.loads(result.read_text())


def _run_trainjob(stage: str, params_json: str, spec_json: str, args: list[str], kwargs: dict) -> dict[str, float]:
    import shutil

    from vitnas.pipeline import trainjob

    spec = trainjob.TrainJobSpec.from_json(spec_json)
    workdir = Path(spec.mount) / (os.environ.get(PIPELINE_RUN_ENV) or "local") / f"{stage}-trainjob"
    call, out = trainjob.stage_call(stage, params_json, args, kwargs, workdir)
    trainjob.run(stage, call, spec, workdir=workdir)
    shutil.copytree(out, args[-1], dirs_exist_ok=True)  # the step's KFP output artifact
    return json.loads(Path(call["result"]).read_text())


def shard_specs(params_json: str, num_shards: int) -> list[str]:
    """The proxy fan-out's loop items: each shard's params and index as one JSON string. (The stage
    params travel inside the items, not as a loop input: kfp.local replaces a task output that
    enters a ParallelFor with the loop item.)"""
    return [json.dumps({"params": params_json, "shard": k, "num_shards": num_shards}) for k in range(num_shards)]


def log_metrics(metrics, values: Mapping[str, float]) -> None:
    """Copy a stage's metrics into the KFP Metrics artifact (shown in the run's UI)."""
    for name, value in values.items():
        metrics.log_metric(name, value)


def checkpoint_dir(root: str, stage: str):
    """(directory, resume) of a stage's checkpoints: on the pipeline's persistent volume when
    `root` is set (a retried or preempted pod of the same run resumes there), else a temp dir."""
    if root:
        run_id = os.environ.get(PIPELINE_RUN_ENV) or "local"
        path = Path(root) / run_id / stage
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, True
    return Path(tempfile.mkdtemp(prefix=f"vitnas-{stage}-ckpt-")), False


def write_report(html, stage: str, out_dir: str, values: Mapping[str, float]) -> None:
    """The KFP UI's view of a stage: its own HTML report when the contract declares one, else its
    figures (the contract's image plots, inlined) and metrics."""
    import base64
    import html as h

    from vitnas.stages.contract import STAGES

    own = Path(out_dir) / STAGES[stage].report if STAGES[stage].report else None
    if own is not None and own.is_file():
        Path(html.path).write_text(own.read_text())
        return
    parts = [f"<h2>vitnas {h.escape(stage)}</h2>"]
    for plot in STAGES[stage].plots:
        f = Path(out_dir) / plot.file
        if plot.x is None and f.is_file():
            data = base64.b64encode(f.read_bytes()).decode()
            parts.append(f"<h3>{h.escape(plot.title)}</h3>"
                         f"<img src='data:image/png;base64,{data}' style='max-width:100%'>")
    rows = "".join(f"<tr><td>{h.escape(k)}</td><td>{v:.6g}</td></tr>" for k, v in values.items())
    parts.append(f"<h3>metrics.json</h3><table border='1' cellpadding='4'>{rows}</table>")
    Path(html.path).write_text("<html><body style='font-family:sans-serif'>" + "".join(parts) + "</body></html>")


def log_confusion(classification, out_dir: str) -> None:
    """The retrained model's test-split confusion matrix as KFP ClassificationMetrics."""
    c = json.loads((Path(out_dir) / "confusion.json").read_text())
    classification.log_confusion_matrix(c["classes"], c["matrix"])


def _worker(call_file: str) -> None:
    spec = json.loads(Path(call_file).read_text())
    values = _call(spec["stage"], spec["params"], spec["args"], spec["kwargs"])
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        Path(spec["result"]).write_text(json.dumps(values))


if __name__ == "__main__":
    _worker(sys.argv[1])
