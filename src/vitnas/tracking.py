"""The one place that talks to MLflow, so library code never does.

Defaults to a local sqlite store (`mlflow.db` in the working directory) and honours
`MLFLOW_TRACKING_URI`. Stage runs of one pipeline run become children of one parent run: the
parent is found (or created) by the pipeline run id in `VITNAS_PIPELINE_RUN_ID`, or given
directly by `VITNAS_PARENT_RUN_ID`.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PIPELINE_TAG = "vitnas.pipeline_run_id"
ROLE_TAG = "vitnas.role"
STAGE_TAG = "vitnas.stage"
PARENT_TAG = "mlflow.parentRunId"
CODE_VERSION_TAG = "vitnas.code_version"
HOST_TAG = "vitnas.host"
PID_TAG = "vitnas.pid"
CODE_VERSION_ENV = "VITNAS_CODE_VERSION"  # set in pipeline pods (the image tag) and by `pipeline run-local`
MISSING_TAG = "vitnas.pipeline.missing"  # on a parent: the stages its pipeline run has not finished
# MLflow 3 opens an experiment on its GenAI pages unless this tag says it holds model training
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


_READY: set[str] = set()  # tracking URIs whose store this process has opened


@contextmanager
def store_lock() -> Iterator[None]:
    """Serialise, among the processes of this machine, what MLflow does not make atomic: the first
    use of a new sqlite store (its schema migration) and the find-or-create of a parent run."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        lock = Path(uri.removeprefix("sqlite:///") + ".vitnas-lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
    else:
        lock = Path(tempfile.gettempdir()) / f"vitnas-mlflow-{hashlib.sha256(uri.encode()).hexdigest()[:12]}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# MLflow's own chatter in a stage's output (its pip probe, uv detection, system-metrics start/stop,
# artifact download bars, a dataset-source ambiguity vitnas resolves itself) is not the user's business;
# its real warnings and errors still show.
_QUIET_LOGGERS = ("mlflow.utils.environment", "mlflow.utils.uv_utils", "mlflow.system_metrics",
                  "mlflow.store.db.utils", "mlflow.tracking._model_registry", "mlflow.models.model", "alembic")


def _quiet_mlflow() -> None:
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
    warnings.filterwarnings("ignore", message=".*pip.*", module="mlflow")


def _mlflow():
    if not _READY:
        _quiet_mlflow()  # once per process, before mlflow is imported
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri not in _READY:
        with store_lock():
            mlflow.MlflowClient().search_experiments(max_results=1)  # creates / migrates the store once
        _READY.add(uri)
    return mlflow


def _param_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """MLflow param values: lists and mappings as JSON, so they read back unambiguously."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in params.items()}


class StageRun:
    """Logging handle of one stage run; every method is a no-op when tracking is off."""

    def __init__(self, run_id: str | None = None, prefix: str = "") -> None:
        self.run_id = run_id
        self.prefix = prefix  # "<stage>/": metric names of one stage group together in MLflow
        self.summary: dict[str, float] = {}  # the last value of each metric logged without a step

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active or not params:
            return
        items = _param_values(params)
        keys = list(items)
        for i in range(0, len(keys), 100):  # MLflow's per-call limit
            _mlflow().log_params({k: items[k] for k in keys[i:i + 100]})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log `metrics` (per epoch with `step`; a stage's results without one)."""
        if self.active and metrics:
            values = {self.prefix + k: float(v) for k, v in metrics.items()}
            _mlflow().log_metrics(values, step=step)
            if step is None:
                self.summary |= values

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            _mlflow().log_artifact(str(path), artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            _mlflow().log_artifacts(str(path), artifact_path)

    def log_figure(self, figure, name: str) -> None:
        if self.active:
            _mlflow().log_figure(figure, name)

    def log_table(self, columns: Mapping[str, Sequence[Any]], name: str) -> None:
        """A table (column -> values) the MLflow UI can sort and filter (Evaluation / Artifacts tab)."""
        if self.active:
            _mlflow().log_table(data={k: list(v) for k, v in columns.items()}, artifact_file=name)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.active:
            _mlflow().set_tags(dict(tags))

    def log_model(self, model, *, input_example, name: str = "model",
                  registered_model: str | None = None, params: Mapping[str, Any] | None = None,
                  files: Sequence[str | Path] = (), metadata: Mapping[str, Any] | None = None) -> str | None:
        """Log a torch model as a pt2 export (servable without vitnas installed, no pickle) and
        register it under `registered_model`; returns the new version, or None when not registered.
        `files` travel inside the model (its `extra_files/`), `metadata` in its MLmodel file.

        `input_example` (a numpy batch) traces the graph and gives the signature; use a batch of 2 or
        more, since torch.export specialises a batch dim of 1 and the model would then take only 1.
        """
        if not self.active:
            return None
        import copy

        import mlflow.pytorch
        import torch

        _mlflow()  # sets the tracking URI
        cpu = copy.deepcopy(model).cpu().eval()  # export traces on the example's device (CPU)
        logged = _param_values(params or {})
        info = mlflow.pytorch.log_model(cpu, name=name, input_example=input_example, params=logged or None,
                                        registered_model_name=registered_model, serialization_format="pt2",
                                        extra_files=[str(f) for f in files] or None,
                                        metadata=dict(metadata) if metadata else None,
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        return str(info.registered_model_version) if registered_model else None


def _experiment_id(mlflow, name: str) -> str:
    """The id of experiment `name`, created on first use, and marked as model training (MLflow 3's
    experiment kind) when it has no kind yet; a kind a user chose is kept."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        from mlflow.exceptions import MlflowException

        with store_lock():
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                try:
                    return mlflow.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
                except MlflowException as e:  # another pod created it first
                    if e.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    exp = mlflow.get_experiment_by_name(name)
    if EXPERIMENT_KIND_TAG not in exp.tags:
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def _version_tags() -> dict[str, str]:
    """The code version the process runs (the image tag in a pipeline pod), when known."""
    version = os.environ.get(CODE_VERSION_ENV)
    return {CODE_VERSION_TAG: version} if version else {}


def pipeline_parent(pipeline_run_id: str, experiment: str = "vitnas", *,
                    params: Mapping[str, Any] | None = None) -> str:
    """The run id of the parent run of a pipeline run, created on first use (with `params`).

    Find-or-create holds `store_lock`, so stages started together on one machine find one parent;
    in a Kubeflow run the pipeline's first step calls this before any stage pod starts.
    """
    mlflow = _mlflow()
    exp_id = _experiment_id(mlflow, experiment)
    with store_lock():
        return _find_or_create_parent(mlflow, exp_id, pipeline_run_id, params)


def _find_or_create_parent(mlflow, exp_id: str, pipeline_run_id: str, params: Mapping[str, Any] | None) -> str:
    found = mlflow.search_runs(
        experiment_ids=[exp_id], output_format="list", max_results=1,
        filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run_id}' and tags.`{ROLE_TAG}` = 'pipeline'",
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(exp_id, run_name=f"pipeline-{pipeline_run_id}",
                            tags={PIPELINE_TAG: pipeline_run_id, ROLE_TAG: "pipeline", **_version_tags(),
                                  **_lineage_tags()})
    if params:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in _param_values(params).items()]
        for i in range(0, len(items), 100):  # MLflow's per-call limit
            client.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id  # RUNNING until a stage that ends settles it (`settle_parent`)


def digest(path: str | Path) -> str:
    """What a stage run records of each input it consumed (`vitnas.digests.path_digest`)."""
    from vitnas.digests import path_digest

    return path_digest(path)


@functools.cache
def _git_commit(cwd: str) -> str | None:
    """HEAD of the checkout `cwd` is in (asked once per process and directory)."""
    import subprocess

    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def pipeline_id(pipeline_params: Mapping[str, Any] | None = None) -> str | None:
    """The id grouping the stage runs of one pipeline run: `VITNAS_PIPELINE_RUN_ID` (Kubeflow,
    `pipeline run-local`, the demo), else the DVC experiment name under `dvc exp run`, else under
    `dvc repro` the git commit and a digest of the whole params (stages re-run with the same code
    and params join the same parent). None outside these."""
    explicit = os.environ.get("VITNAS_PIPELINE_RUN_ID")
    if explicit:
        return explicit
    if os.environ.get("DVC_EXP_NAME"):
        return f"dvc-exp-{os.environ['DVC_EXP_NAME']}"
    if os.environ.get("DVC_STAGE"):
        params = hashlib.sha256(json.dumps(dict(pipeline_params or {}), sort_keys=True, default=str).encode())
        return f"dvc-{(_git_commit(os.getcwd()) or 'nogit')[:12]}-{params.hexdigest()[:12]}"
    return None


def _lineage_tags() -> dict[str, str]:
    tags = {}
    commit = _git_commit(os.getcwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    for env, tag in (("DVC_EXP_NAME", "vitnas.dvc_experiment"), ("DVC_EXP_BASELINE_REV", "vitnas.dvc_baseline")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def _log_dataset(client, run_id: str, data_dir: Path, value: str) -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    name = "data"
    meta = data_dir / "dataset.json"
    if meta.is_file():
        try:
            name = str(json.loads(meta.read_text()).get("name", name))
        except ValueError:
            pass
    ds = MetaDataset(source=resolve_dataset_source(str(data_dir.resolve())), name=name, digest=value)
    client.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(),
                                                     tags=[InputTag("mlflow.data.context", "training")])])


@dataclass(frozen=True)
class PipelineShape:
    """What a parent run needs to know of its pipeline: the stages that follow each stage (the
    parent is FINISHED only when no finished stage waits for one of them), and the metrics of each
    stage copied onto the parent (names or fnmatch patterns), so the runs table compares pipelines."""

    downstream: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    headline: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@contextmanager
def stage_run(stage: str, *, params: Mapping[str, Any] | None = None, experiment: str = "vitnas",
              enabled: bool = True, tags: Mapping[str, str] | None = None,
              pipeline_params: Mapping[str, Any] | None = None,
              inputs: Mapping[str, str | Path | None] | None = None,
              system_metrics: bool = False, shape: PipelineShape | None = None) -> Iterator[StageRun]:
    """An MLflow run for one stage, a child of its pipeline run's parent (see `pipeline_id`).

    `params`: the stage's declared keys; `pipeline_params`: every key (logged on the parent when
    this stage creates it); `inputs`: the upstream artifacts consumed, recorded as digests
    (`vitnas.input.<name>` tags; the data as an MLflow dataset input). Metric names are prefixed
    with `<stage>/`, so the experiment's charts group by stage. The stage's results (metrics logged
    without a step) that `shape.headline` names are copied onto the parent; the parent is RUNNING
    while a stage runs and settled by each stage that ends (`settle_parent`). Ctrl-C ends the run
    KILLED, an error FAILED. System metrics (MLflow's `system/...`) go to the stage run only.
    """
    if not enabled:
        yield StageRun(None)
        return
    mlflow = _mlflow()
    exp_id = _experiment_id(mlflow, experiment)
    client = mlflow.MlflowClient()
    all_tags = {STAGE_TAG: stage, ROLE_TAG: "stage", **_version_tags(), **_lineage_tags(), **dict(tags or {})}
    run_group = pipeline_id(pipeline_params)
    parent = os.environ.get("VITNAS_PARENT_RUN_ID") or (
        pipeline_parent(run_group, experiment, params=pipeline_params) if run_group else None)
    if run_group:
        all_tags[PIPELINE_TAG] = run_group
    if parent:
        all_tags[PARENT_TAG] = parent
        client.update_run(parent, status="RUNNING")
    digests = {name: digest(p) for name, p in (inputs or {}).items() if p is not None and Path(p).exists()}
    all_tags |= {f"vitnas.input.{name}": d for name, d in digests.items()}
    all_tags |= {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    end_stale_runs(mlflow, exp_id, stage, run_group)
    shape = shape or PipelineShape()
    status, handle = "FAILED", StageRun(None)
    try:
        with mlflow.start_run(experiment_id=exp_id, run_name=stage, tags=all_tags,
                              log_system_metrics=system_metrics or None) as run:
            handle = StageRun(run.info.run_id, prefix=f"{stage}/")
            handle.log_params(params or {})
            if "data" in digests:
                for run_id in filter(None, (run.info.run_id, parent)):
                    _log_dataset(client, run_id, Path(inputs["data"]), digests["data"])
            yield handle
            status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status == "KILLED" and handle.active:  # MLflow ends a run left by any exception FAILED
            client.set_terminated(handle.run_id, status="KILLED")
        if parent:
            with store_lock():  # stages ending together on this machine settle it one after the other
                if status == "FINISHED":
                    _roll_up(client, parent, handle, shape.headline.get(stage, ()))
                settle_parent(client, exp_id, parent, shape)


def _roll_up(client, parent: str, handle: StageRun, patterns: Sequence[str]) -> None:
    """Copy the stage's results that `patterns` name onto the parent run."""
    import fnmatch
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    picked = [Metric(k, v, now, 0) for k, v in handle.summary.items()
              if any(fnmatch.fnmatchcase(k.removeprefix(handle.prefix), p) for p in patterns)]
    if picked:  # a few headline values: one call
        client.log_batch(parent, metrics=picked)


def settle_parent(client, exp_id: str, parent: str, shape: PipelineShape) -> str:
    """Set the parent's status from its stage runs (the latest run of each stage): RUNNING while
    one runs; FAILED (KILLED) when one failed (was interrupted); KILLED when a finished stage is
    followed by one that has not finished (the pipeline stopped before its end, the missing stages
    in the `vitnas.pipeline.missing` tag); else FINISHED. Returns the status."""
    runs = client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
                              max_results=1000, order_by=["attributes.start_time DESC"])
    latest: dict[str, str] = {}
    for r in runs:
        latest.setdefault(r.data.tags.get(STAGE_TAG, ""), r.info.status)
    statuses = set(latest.values())
    if "RUNNING" in statuses:
        return "RUNNING"
    missing = sorted({d for s, st in latest.items() if st == "FINISHED" for d in shape.downstream.get(s, ())
                      if latest.get(d) != "FINISHED"})
    status = ("FAILED" if "FAILED" in statuses else "KILLED" if "KILLED" in statuses or missing
              else "FINISHED")
    from mlflow.exceptions import MlflowException

    for attempt in (1, 2):  # a stage of another machine may write the tag at the same moment (one insert wins)
        try:
            client.set_tag(parent, MISSING_TAG, ",".join(missing) or "none")
            break
        except MlflowException:
            if attempt == 2:
                raise
    client.set_terminated(parent, status=status)
    return status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def end_stale_runs(mlflow, exp_id: str, stage: str, pipeline_id: str | None) -> list[str]:
    """Mark KILLED the runs of `stage` left RUNNING by a process that died: those of the same
    pipeline run (it is being started again), and those of a process of this machine that no
    longer exists. Returns their run ids."""
    runs = mlflow.search_runs(
        experiment_ids=[exp_id], output_format="list", max_results=1000,
        filter_string=f"tags.`{STAGE_TAG}` = '{stage}' and attributes.status = 'RUNNING'")
    host = socket.gethostname()
    stale = []
    for r in runs:
        tags = r.data.tags
        same_pipeline = pipeline_id is not None and tags.get(PIPELINE_TAG) == pipeline_id
        pid = tags.get(PID_TAG, "")
        dead_here = tags.get(HOST_TAG) == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))
        if same_pipeline or dead_here:
            mlflow.MlflowClient().set_terminated(r.info.run_id, status="KILLED")
            stale.append(r.info.run_id)
    return stale


def promote_if_better(name: str, version: str, value: float, *, metric: str = "val_acc",
                      alias: str = "champion") -> bool:
    """Move `alias` of registered model `name` to `version` only when `value` beats the current
    holder's `metric` (ties keep the holder; the first version takes it). True when it moved.

    The value is stored as a tag of the version, so later comparisons do not depend on which of a
    run's per-step metric values MLflow shows as the latest.
    """
    import math

    client = _mlflow().MlflowClient()
    client.set_model_version_tag(name, version, metric, repr(float(value)))
    if not math.isfinite(value):
        return False
    held_version = client.get_registered_model(name).aliases.get(alias)
    if held_version is not None:
        if str(held_version) == str(version):
            return True
        current = client.get_model_version(name, str(held_version))
        held = current.tags.get(metric)
        if held is None:  # a holder set by hand: fall back to its run's metric
            logged = client.get_run(current.run_id).data.metrics if current.run_id else {}
            held = logged.get(metric, next((v for k, v in logged.items() if k.endswith("/" + metric)), None))
        if held is not None and value <= float(held):
            return False
    client.set_registered_model_alias(name, alias, version)
    return True
