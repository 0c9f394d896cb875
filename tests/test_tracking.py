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
    assert by_stage["data"].data.metrics["data/acc"] == 0.5  # metric names carry the stage
    files = mlflow.MlflowClient().list_artifacts(by_stage["data"].info.run_id)
    assert [f.path for f in files] == ["summary.json"]


def test_separate_pipeline_runs_get_separate_parents(monkeypatch):
    for pid in ("a", "b"):
        monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", pid)
        with tracking.stage_run("data", experiment="t-two"):
            pass
    parents = [r for r in _runs("t-two") if r.data.tags.get(tracking.ROLE_TAG) == "pipeline"]
    assert sorted(r.data.tags[tracking.PIPELINE_TAG] for r in parents) == ["a", "b"]


def test_pipeline_parent_keeps_params_and_runs_carry_the_code_version(monkeypatch):
    monkeypatch.setenv(tracking.CODE_VERSION_ENV, "abc1234")
    parent = tracking.pipeline_parent("run-p", "t-params", params={"supernet.epochs": 3, "proxy.proxies": ["dss"]})
    assert tracking.pipeline_parent("run-p", "t-params", params={"supernet.epochs": 4}) == parent  # found, kept
    monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", "run-p")
    with tracking.stage_run("data", experiment="t-params") as run:
        pass
    p, child = mlflow.get_run(parent).data, mlflow.get_run(run.run_id).data
    assert p.params == {"supernet.epochs": "3", "proxy.proxies": '["dss"]'}
    assert p.tags[tracking.CODE_VERSION_TAG] == child.tags[tracking.CODE_VERSION_TAG] == "abc1234"
    assert child.tags[tracking.PARENT_TAG] == parent


def test_disabled_tracking_logs_nothing():
    with tracking.stage_run("data", experiment="t-off", enabled=False) as run:
        run.log_metrics({"acc": 1.0})
        assert not run.active
    assert mlflow.get_experiment_by_name("t-off") is None


def test_default_store_is_local_sqlite(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri() == "sqlite:///mlflow.db"


def test_champion_alias_moves_only_when_val_accuracy_improves():
    import numpy as np
    import torch

    name = "t-champion"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    example = np.random.default_rng(0).random((2, 1, 2, 2), dtype=np.float32)
    moved, versions = [], []
    for acc in (0.5, 0.4, 0.5, float("nan"), 0.7):  # first, lower, tie, not a number, higher
        with tracking.stage_run("retrain", experiment="t-champion") as run:
            version = run.log_model(model, input_example=example, registered_model=name)
            versions.append(version)
            moved.append(tracking.promote_if_better(name, version, acc))
    assert versions == ["1", "2", "3", "4", "5"]
    assert moved == [True, False, False, False, True]
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "5"
    assert float(client.get_model_version(name, "2").tags["val_acc"]) == 0.4
    assert tracking.promote_if_better(name, "5", 0.7)  # the holder itself stays champion
    # a pt2 export: loads without the defining code and takes any batch size
    served = mlflow.pytorch.load_model(f"models:/{name}@champion")
    x = torch.rand(5, 1, 2, 2)
    assert torch.allclose(served(x), model(x))


def test_log_model_is_a_no_op_when_tracking_is_off():
    import numpy as np
    import torch

    with tracking.stage_run("retrain", experiment="t-off-model", enabled=False) as run:
        assert run.log_model(torch.nn.Linear(2, 2), input_example=np.zeros((2, 2), np.float32),
                             registered_model="t-off-model") is None
    assert mlflow.get_experiment_by_name("t-off-model") is None


_SHAPE = tracking.PipelineShape(downstream={"data": ("supernet",), "supernet": ("search",), "search": ()},
                                headline={"supernet": ("val_acc_largest",), "search": ("best_*",)})


def _parent(experiment: str):
    return next(r for r in _runs(experiment) if r.data.tags.get(tracking.ROLE_TAG) == "pipeline")


def _stage(name, experiment, metrics=None, fail=None):
    with tracking.stage_run(name, experiment=experiment, shape=_SHAPE) as run:
        run.log_metrics({"epoch_acc": 0.1}, step=1)  # a series: never rolled up
        run.log_metrics(metrics or {})
        if fail:
            raise fail


def test_experiment_is_marked_as_model_training_unless_a_user_chose_a_kind():
    with tracking.stage_run("data", experiment="t-kind"):
        pass
    assert mlflow.get_experiment_by_name("t-kind").tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    untagged = mlflow.create_experiment("t-kind-old")  # made before vitnas set the kind
    mine = mlflow.create_experiment("t-kind-mine", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("t-kind-old", "t-kind-mine"):
        with tracking.stage_run("data", experiment=name):
            pass
    assert mlflow.get_experiment(untagged).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert mlflow.get_experiment(mine).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"


def test_parent_says_a_pipeline_stopped_midway_and_rolls_up_results(monkeypatch):
    monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", "run-stop")
    _stage("data", "t-settle")
    _stage("supernet", "t-settle", {"val_acc_largest": 0.9, "train_loss": 0.3})
    parent = _parent("t-settle")
    assert parent.info.status == "KILLED"  # search never ran
    assert parent.data.tags[tracking.MISSING_TAG] == "search"
    assert parent.data.metrics == {"supernet/val_acc_largest": 0.9}  # the headline only, no series
    _stage("search", "t-settle", {"best_fitness": 0.95, "best_params": 1e4, "evaluations": 30})
    parent = _parent("t-settle")
    assert parent.info.status == "FINISHED" and parent.data.tags[tracking.MISSING_TAG] == "none"
    assert parent.data.metrics == {"supernet/val_acc_largest": 0.9, "search/best_fitness": 0.95,
                                   "search/best_params": 1e4}


def test_parent_fails_with_a_stage_and_is_killed_by_ctrl_c(monkeypatch):
    import pytest

    monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", "run-fail")
    _stage("data", "t-fail")
    with pytest.raises(RuntimeError):
        _stage("supernet", "t-fail", fail=RuntimeError("out of memory"))
    assert _parent("t-fail").info.status == "FAILED"
    monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", "run-ctrl-c")
    with pytest.raises(KeyboardInterrupt):
        _stage("data", "t-fail", fail=KeyboardInterrupt())
    parent = next(r for r in _runs("t-fail") if r.data.tags.get(tracking.PIPELINE_TAG) == "run-ctrl-c"
                  and r.data.tags.get(tracking.ROLE_TAG) == "pipeline")
    child = next(r for r in _runs("t-fail") if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id)
    assert parent.info.status == child.info.status == "KILLED"


def test_a_stage_rerun_that_finishes_clears_the_failure(monkeypatch):
    import pytest

    monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", "run-retry")
    with pytest.raises(RuntimeError):
        _stage("search", "t-retry", fail=RuntimeError("boom"))
    _stage("search", "t-retry", {"best_fitness": 0.5})
    assert _parent("t-retry").info.status == "FINISHED"
