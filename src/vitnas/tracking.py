"""The one place that talks to MLflow, so library code never does.

Defaults to a local sqlite store (`mlflow.db` in the working directory) and honours
`MLFLOW_TRACKING_URI`. Stage runs of one pipeline run become children of one parent run: the
parent is found (or created) by the pipeline run id in `VITNAS_PIPELINE_RUN_ID`, or given
directly by `VITNAS_PARENT_RUN_ID`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PIPELINE_TAG = "vitnas.pipeline_run_id"
ROLE_TAG = "vitnas.role"
STAGE_TAG = "vitnas.stage"
PARENT_TAG = "mlflow.parentRunId"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


class StageRun:
    """Logging handle of one stage run; every method is a no-op when tracking is off."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active or not params:
            return
        items = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in params.items()}
        keys = list(items)
        for i in range(0, len(keys), 100):  # MLflow's per-call limit
            _mlflow().log_params({k: items[k] for k in keys[i:i + 100]})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.active and metrics:
            _mlflow().log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            _mlflow().log_artifact(str(path), artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            _mlflow().log_artifacts(str(path), artifact_path)

    def log_figure(self, figure, name: str) -> None:
        if self.active:
            _mlflow().log_figure(figure, name)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.active:
            _mlflow().set_tags(dict(tags))


def _experiment_id(mlflow, name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    return exp.experiment_id if exp else mlflow.create_experiment(name)


def pipeline_parent(pipeline_run_id: str, experiment: str = "vitnas") -> str:
    """The run id of the parent run of a pipeline run, created on first use."""
    mlflow = _mlflow()
    exp_id = _experiment_id(mlflow, experiment)
    found = mlflow.search_runs(
        experiment_ids=[exp_id], output_format="list", max_results=1,
        filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run_id}' and tags.`{ROLE_TAG}` = 'pipeline'",
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(exp_id, run_name=f"pipeline-{pipeline_run_id}",
                            tags={PIPELINE_TAG: pipeline_run_id, ROLE_TAG: "pipeline"})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@contextmanager
def stage_run(stage: str, *, params: Mapping[str, Any] | None = None, experiment: str = "vitnas",
              enabled: bool = True, tags: Mapping[str, str] | None = None) -> Iterator[StageRun]:
    """An MLflow run for one stage (a child of the pipeline run when there is one)."""
    if not enabled:
        yield StageRun(None)
        return
    mlflow = _mlflow()
    exp_id = _experiment_id(mlflow, experiment)
    all_tags = {STAGE_TAG: stage, ROLE_TAG: "stage", **dict(tags or {})}
    pipeline_id = os.environ.get("VITNAS_PIPELINE_RUN_ID")
    parent = os.environ.get("VITNAS_PARENT_RUN_ID") or (
        pipeline_parent(pipeline_id, experiment) if pipeline_id else None)
    if pipeline_id:
        all_tags[PIPELINE_TAG] = pipeline_id
    if parent:
        all_tags[PARENT_TAG] = parent
    with mlflow.start_run(experiment_id=exp_id, run_name=stage, tags=all_tags) as run:
        handle = StageRun(run.info.run_id)
        handle.log_params(params or {})
        yield handle
