"""The vitnas pipeline as a Kubeflow DAG: compile to YAML, or run it here through kfp.local.

The pipeline's `params_json` parameter is the whole params.yaml as JSON (a string, since KFP
struct parameters cannot hold nulls); every component validates it. Its default is the params.yaml
given at compile time. (No `from __future__ import annotations`
here: kfp reads the real annotation objects.)
"""


import os
import uuid
import warnings
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl

from components import data_op
from vitnas.config import Params

PIPELINE_NAME = "vitnas"


def build(default_params: Params):
    """The pipeline function, with `default_params` as its default parameters."""

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="ViT architecture search: data -> supernet -> proxy -> search -> slim -> "
                              "retrain -> transfer")
    def vitnas_pipeline(params_json: str = default_params.model_dump_json()) -> NamedTuple(
            "Outputs", data=dsl.Dataset):
        data_task = data_op(params_json=params_json)
        data_task.set_display_name("data")
        data_task.set_caching_options(True)
        return NamedTuple("Outputs", data=dsl.Dataset)(data=data_task.outputs["data"])

    return vitnas_pipeline


def compile_pipeline(params: Params, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(params), str(out))
    return out


def run_local(params: Params, pipeline_root: str | Path = "local_outputs") -> dict[str, str]:
    """Run every stage in subprocesses of this Python environment; returns output artifact paths."""
    from kfp import local

    os.environ.setdefault("VITNAS_PIPELINE_RUN_ID", f"local-{uuid.uuid4().hex[:8]}")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        run = build(params)(params_json=params.model_dump_json())
    return {name: a.path for name, a in run.outputs.items()}
