"""MLflow lineage: every pipeline run has a parent holding everything that explains a result, and
each stage run records what it consumed."""

from __future__ import annotations

import json

import mlflow
import pytest

from vitnas import tracking
from vitnas.config import parse_params

pytestmark = pytest.mark.usefixtures("one_thread")


def _runs(experiment: str):
    exp = mlflow.get_experiment_by_name(experiment)
    return mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="list")


def test_a_dvc_experiment_gets_a_parent_with_params_commit_name_and_dataset(monkeypatch, digits_dir):
    monkeypatch.delenv("VITNAS_PIPELINE_RUN_ID", raising=False)
    monkeypatch.setenv("DVC_STAGE", "supernet")
    monkeypatch.setenv("DVC_EXP_NAME", "brave-fox")
    full = {"supernet.epochs": 3, "retrain.epochs": 7}
    for stage in ("supernet", "search"):
        with tracking.stage_run(stage, params={f"{stage}.x": 1}, pipeline_params=full, experiment="t-dvc",
                                inputs={"data": digits_dir}):
            pass
    runs = _runs("t-dvc")
    parent = next(r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "pipeline")
    stages = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "stage"]
    assert len(stages) == 2 and all(r.data.tags[tracking.PARENT_TAG] == parent.info.run_id for r in stages)
    assert parent.data.tags[tracking.PIPELINE_TAG] == "dvc-exp-brave-fox"
    assert parent.data.tags["vitnas.dvc_experiment"] == "brave-fox"
    assert parent.data.params == {"supernet.epochs": "3", "retrain.epochs": "7"}
    assert len(parent.data.tags.get("mlflow.source.git.commit", "")) == 40  # the tests run in the repo
    data_digest = tracking.digest(digits_dir)
    for r in (parent, *stages):
        (ds,) = mlflow.get_run(r.info.run_id).inputs.dataset_inputs
        assert ds.dataset.digest == data_digest and ds.dataset.name == "digits"
    assert all(r.data.tags["vitnas.input.data"] == data_digest for r in stages)
    assert parent.info.end_time >= max(r.info.end_time for r in stages)  # lasts until its last stage ends


def test_plain_dvc_repro_groups_stages_by_commit_and_params(monkeypatch):
    monkeypatch.delenv("VITNAS_PIPELINE_RUN_ID", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("DVC_STAGE", "data")
    a, b = tracking.pipeline_id({"x": 1}), tracking.pipeline_id({"x": 2})
    assert a.startswith("dvc-") and a != b and a == tracking.pipeline_id({"x": 1})
    monkeypatch.delenv("DVC_STAGE")
    assert tracking.pipeline_id({"x": 1}) is None  # a plain `vitnas <stage>` call has no pipeline


TINY = {
    "tracking": {"experiment": "t-lineage"},
    "space": {"embed_dim": [16, 32], "depth": [1, 2], "num_heads": [1, 2], "mlp_ratio": [2.0], "head_dim": 8},
    "supernet": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128, "val_random_subnets": 1},
    "proxy": {"num_candidates": 3},
    "search": {"population": 4, "parents": 2, "mutations": 2, "crossovers": 2, "generations": 1},
    "slim": {"epochs": 1, "batch_size": 128},
    "retrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128, "registered_model": None},
}


@pytest.mark.slow
def test_two_pipeline_runs_differ_in_the_retrain_runs_lineage(tmp_path, monkeypatch, digits_dir):
    """Only the supernet seed differs upstream: the two retrain runs show it through their inputs'
    digests, their parents' params, and their arch genes."""
    from vitnas.stages import retrain, search, slim, supernet

    for name, seed in (("a", 0), ("b", 1)):
        monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", f"lineage-{name}")
        raw = json.loads(json.dumps(TINY))
        raw["supernet"]["seed"] = seed
        p = parse_params(raw)
        w = tmp_path / name
        supernet.run(p, digits_dir, w / "supernet", progress=False)
        search.run(p, digits_dir, w / "supernet/supernet.pt", w / "search", progress=False)
        slim.run(p, digits_dir, w / "supernet/supernet.pt", w / "search/best_arch.json", w / "slim", progress=False)
        retrain.run(p, digits_dir, w / "supernet/supernet.pt", w / "slim", w / "retrain", progress=False)
    runs = _runs("t-lineage")
    by = {(r.data.tags[tracking.PIPELINE_TAG], r.data.tags.get(tracking.STAGE_TAG, "parent")): r for r in runs}
    ra, rb = by[("lineage-a", "retrain")], by[("lineage-b", "retrain")]
    assert ra.data.params["retrain.epochs"] == rb.data.params["retrain.epochs"]  # its own params: equal
    assert ra.data.tags["vitnas.input.data"] == rb.data.tags["vitnas.input.data"]
    assert ra.data.tags["vitnas.input.supernet"] != rb.data.tags["vitnas.input.supernet"]
    assert ra.data.tags["vitnas.input.arch"] != rb.data.tags["vitnas.input.arch"]
    assert {"arch.embed_dim", "arch.depth", "arch.params", "arch.flops"} <= set(ra.data.params)
    pa, pb = by[("lineage-a", "parent")], by[("lineage-b", "parent")]
    assert (pa.data.params["supernet.seed"], pb.data.params["supernet.seed"]) == ("0", "1")
    assert ra.data.tags[tracking.PARENT_TAG] == pa.info.run_id
    for stage in ("supernet", "search", "slim"):  # every upstream run of a is in a's parent
        assert by[("lineage-a", stage)].data.tags[tracking.PARENT_TAG] == pa.info.run_id
    assert all(k.startswith("retrain/") for k in ra.data.metrics)
    exp = mlflow.get_experiment_by_name("t-lineage")
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    (model_a,) = [m for m in models if m.source_run_id == ra.info.run_id]  # the LoggedModel carries the arch
    assert model_a.params["arch.params"] == ra.data.params["arch.params"] and "arch.embed_dim" in model_a.params
