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

from components import data_op, proxy_op, search_op, slim_op, supernet_op
from vitnas.config import Params

PIPELINE_NAME = "vitnas"


def _request_gpus(task, gpus: int) -> None:
    """GPU request of a training task on the cluster (kfp.local ignores it)."""
    if gpus > 0:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)


def build(default_params: Params, gpus: int = 1):
    """The pipeline function, with `default_params` as its default parameters and `gpus` GPUs per
    training stage."""

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="ViT architecture search: data -> supernet -> proxy -> search -> slim -> "
                              "retrain -> transfer")
    def vitnas_pipeline(params_json: str = default_params.model_dump_json()) -> NamedTuple(
            "Outputs", data=dsl.Dataset, supernet=dsl.Model, proxy=dsl.Artifact, search=dsl.Artifact,
            slim=dsl.Model):
        data_task = data_op(params_json=params_json)
        data_task.set_display_name("data")
        data_task.set_caching_options(True)

        supernet_task = supernet_op(params_json=params_json, data=data_task.outputs["data"])
        supernet_task.set_display_name("supernet")
        supernet_task.set_caching_options(False)  # never silently reuse a training run
        _request_gpus(supernet_task, gpus)

        proxy_task = proxy_op(params_json=params_json, data=data_task.outputs["data"])
        proxy_task.set_display_name("proxy")

        search_task = search_op(params_json=params_json, data=data_task.outputs["data"],
                                supernet=supernet_task.outputs["supernet"])
        search_task.set_display_name("search")
        search_task.after(proxy_task)  # the pipeline's stage order; proxy scores are reviewed beside the search
        _request_gpus(search_task, gpus)

        slim_task = slim_op(params_json=params_json, data=data_task.outputs["data"],
                            supernet=supernet_task.outputs["supernet"], search=search_task.outputs["search"])
        slim_task.set_display_name("slim")
        _request_gpus(slim_task, gpus)

        return NamedTuple("Outputs", data=dsl.Dataset, supernet=dsl.Model, proxy=dsl.Artifact, search=dsl.Artifact,
                          slim=dsl.Model)(
            data=data_task.outputs["data"], supernet=supernet_task.outputs["supernet"],
            proxy=proxy_task.outputs["proxy"], search=search_task.outputs["search"], slim=slim_task.outputs["slim"])

    return vitnas_pipeline


def compile_pipeline(params: Params, out: str | Path, gpus: int = 1) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(params, gpus), str(out))
    return out


def run_local(params: Params, pipeline_root: str | Path = "local_outputs") -> dict[str, str]:
    """Run every stage in subprocesses of this Python environment; returns output artifact paths."""
    from kfp import local

    os.environ.setdefault("VITNAS_PIPELINE_RUN_ID", f"local-{uuid.uuid4().hex[:8]}")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        run = build(params, gpus=0)(params_json=params.model_dump_json())
    return {name: a.path for name, a in run.outputs.items()}
