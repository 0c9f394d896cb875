"""MLflow facade: stage runs log params/metrics/artifacts, and pipeline runs group them."""

from __future__ import annotations

import mlflow

from vitnas import tracking


def _runs(experiment: str):
    exp = mlflow.get_experiment_by_name(experiment)
    return mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="list")


def test_stage_runs_of_one_pipeline_share_a_parent(monkeypatch, tmp_path):
    monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", "run-123")
    artifact = tmp_path / "summary.json"
    artifact.write_text("{}")
    for stage in ("data", "supernet"):
        with tracking.stage_run(stage, params={f"{stage}.lr": 0.1, "x.list": [1, 2]},
                                experiment="t-parent") as run:
            run.log_metrics({"acc": 0.5}, step=1)
            run.log_artifact(artifact)
    runs = _runs("t-parent")
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "pipeline"]
    stages = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "stage"]
    assert len(parents) == 1 and len(stages) == 2
    pid = parents[0].info.run_id
    assert all(r.data.tags[tracking.PARENT_TAG] == pid for r in stages)
    assert all(r.data.tags[tracking.PIPELINE_TAG] == "run-123" for r in stages)
    by_stage = {r.data.tags[tracking.STAGE_TAG]: r for r in stages}
    assert by_stage["data"].data.params["data.lr"] == "0.1"
    assert by_stage["supernet"].data.params["x.list"] == "[1, 2]"
    assert by_stage["data"].data.metrics["acc"] == 0.5
    files = mlflow.MlflowClient().list_artifacts(by_stage["data"].info.run_id)
    assert [f.path for f in files] == ["summary.json"]


def test_separate_pipeline_runs_get_separate_parents(monkeypatch):
    for pid in ("a", "b"):
        monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", pid)
        with tracking.stage_run("data", experiment="t-two"):
            pass
    parents = [r for r in _runs("t-two") if r.data.tags.get(tracking.ROLE_TAG) == "pipeline"]
    assert sorted(r.data.tags[tracking.PIPELINE_TAG] for r in parents) == ["a", "b"]


def test_disabled_tracking_logs_nothing():
    with tracking.stage_run("data", experiment="t-off", enabled=False) as run:
        run.log_metrics({"acc": 1.0})
        assert not run.active
    assert mlflow.get_experiment_by_name("t-off") is None


def test_default_store_is_local_sqlite(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri() == "sqlite:///mlflow.db"
