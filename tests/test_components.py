"""Every Kubeflow component's body, called as a function (`python_func`, as kubeflow/pipelines-
components tests its components) and chained as the DAG chains them, in this process: the bodies,
their artifact paths and what they log are checked without the kfp.local run's one subprocess per
step."""

from __future__ import annotations

import json
from pathlib import Path

from _helpers import TINY

from vitnas.config import parse_params
from vitnas.pipeline import components as c
from vitnas.pipeline.runtime import split_params
from vitnas.stages.contract import ORDER

# the shared tiny params, with a 400-image train split and 4 proxy candidates (2 shards of 2)
PARAMS = TINY | {"data": {"max_train_images": 400}, "proxy": TINY["proxy"] | {"num_candidates": 4}}


class Artifact:
    """What KFP hands a component body: a path, metadata, and the Metrics/ClassificationMetrics calls."""

    def __init__(self, path: Path, *, folder: bool = False):
        if folder:
            path.mkdir(parents=True)
        self.path, self.metadata, self.metrics = str(path), {}, {}

    def log_metric(self, name, value):
        self.metrics[name] = value

    def log_confusion_matrix(self, categories, matrix):
        self.confusion = (categories, matrix)


def test_component_bodies_chain_like_the_dag(tmp_path, monkeypatch, one_thread):
    monkeypatch.delenv("VITNAS_PIPELINE_RUN_ID", raising=False)
    typed, rest = split_params(parse_params(PARAMS))
    per_stage = c.init_op().python_func(params_json=rest, **typed)
    assert list(per_stage._fields) == list(ORDER)
    assert set(json.loads(per_stage.slim)) == {"tracking", "slim", "data"}  # only the keys slim reads

    def art(name, folder=False):
        return Artifact(tmp_path / name, folder=folder)

    data, m = art("data"), art("m-data")
    c.data_op.python_func(params=per_stage.data, data=data, metrics=m)
    assert (Path(data.path) / "dataset.json").is_file() and m.metrics["train_count"] == 400

    supernet, m, report = art("supernet"), art("m-supernet"), art("supernet.html")
    c.supernet_op.python_func(params=per_stage.supernet, nproc_per_node=1, checkpoint_root="", trainjob="",
                              data=data, supernet=supernet, metrics=m, report=report)
    assert (Path(supernet.path) / "supernet.pt").is_file() and "val_acc_largest" in m.metrics
    assert "<img" in Path(report.path).read_text()  # the curves, inlined

    plan = c.proxy_plan_op.python_func(params=per_stage.proxy, num_shards=2)
    shards = []
    for k, spec in enumerate(plan):
        shards.append(art(f"proxy-shard-{k}"))
        c.proxy_shard_op.python_func(spec=spec, nproc_per_node=1, data=data, proxy_shard=shards[-1])
    proxy, m = art("proxy"), art("m-proxy")
    c.proxy_merge_op.python_func(params=per_stage.proxy, data=data, shards=shards, proxy=proxy, metrics=m)
    assert len((Path(proxy.path) / "scores.jsonl").read_text().splitlines()) == 4

    search, m, report = art("search"), art("m-search"), art("search.html")
    c.search_op.python_func(params=per_stage.search, nproc_per_node=1, checkpoint_root=str(tmp_path / "ckpt"),
                            data=data, supernet=supernet, search=search, metrics=m, report=report)
    assert (Path(search.path) / "best_arch.json").is_file() and m.metrics["evaluations"] > 0
    assert (tmp_path / "ckpt" / "local" / "search").is_dir()  # the checkpoint volume, keyed by run id

    slim, m, report = art("slim"), art("m-slim"), art("slim.html")
    c.slim_op.python_func(params=per_stage.slim, nproc_per_node=1, data=data, supernet=supernet, search=search,
                          slim=slim, metrics=m, report=report)
    assert (Path(slim.path) / "model.safetensors").is_file()

    retrain, m, report, confusion = art("retrain"), art("m-retrain"), art("retrain.html"), art("confusion")
    c.retrain_op.python_func(params=per_stage.retrain, nproc_per_node=1, checkpoint_root="", trainjob="",
                             data=data, supernet=supernet, slim=slim, retrain=retrain, metrics=m, report=report,
                             test_confusion=confusion)
    classes, matrix = confusion.confusion
    assert len(classes) == len(matrix) == 10 and sum(map(sum, matrix)) == json.loads(
        (Path(data.path) / "dataset.json").read_text())["splits"]["test"]

    transfer, m, report = art("transfer"), art("m-transfer"), art("transfer.html")
    c.transfer_op.python_func(params=per_stage.transfer, data=data, retrain=retrain, transfer=transfer,
                              metrics=m, report=report)
    assert 0 <= m.metrics["digits-cifar.top1"] <= 1
