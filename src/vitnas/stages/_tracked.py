"""A stage's MLflow run, with the one tracking on/off rule (kept apart from the epoch runner so
that stages which train nothing do not depend on the training code)."""

from __future__ import annotations

from typing import Any

from vitnas import tracking
from vitnas.config import Params
from vitnas.stages.contract import STAGES, downstream, logged_params


def tracking_on(params: Params, track: bool | None, main: bool = True) -> bool:
    """The one tracking rule: `track` when given, else `tracking.enabled`; the main process only."""
    return (params.tracking.enabled if track is None else track) and main


def pipeline_shape() -> tracking.PipelineShape:
    """The pipeline as its MLflow parent run sees it, from the contract."""
    return tracking.PipelineShape(downstream(), {n: s.headline for n, s in STAGES.items()})


def open_run(stage: str, params: Params, track: bool | None, *, main: bool = True,
             extra_params: dict[str, Any] | None = None, system_metrics: bool = False, **kwargs):
    """The stage's MLflow run (`tracking_on`); params are the stage's declared keys (+ `extra_params`);
    system metrics when the stage asks for them and `tracking.system_metrics` allows."""
    return tracking.stage_run(stage, params=logged_params(params, stage) | (extra_params or {}),
                              pipeline_params=params.flat(), experiment=params.tracking.experiment,
                              enabled=tracking_on(params, track, main), shape=pipeline_shape(),
                              system_metrics=system_metrics and params.tracking.system_metrics, **kwargs)
