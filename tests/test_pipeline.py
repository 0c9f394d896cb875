"""The same stages through Kubeflow (compiled, submitted, run locally via kfp.local) and DVC."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
import yaml
from _helpers import vitnas_process

from vitnas import tracking
from vitnas.config import parse_params
from vitnas.errors import ConfigError

STAGES = ("data", "supernet", "proxy", "search", "slim", "retrain", "transfer")


def _executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


def _k8s(spec: dict) -> dict:
    return spec.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})


def _load(path: Path) -> tuple[dict, dict]:
    """(pipeline spec, platform spec) of a compiled pipeline (two YAML documents)."""
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def test_typed_parameters_mirror_params_yaml(tmp_path, repo):
    from vitnas.pipeline.dag import compile_pipeline
    from vitnas.pipeline.runtime import merge_params, split_params, typed_params

    params = parse_params({"supernet": {"epochs": 7}, "slim": {"target_flops_ratio": 0.5}, "data": {"seed": 3}})
    spec, _ = _load(compile_pipeline(params, tmp_path / "p.yaml"))
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    names = {p.name for p in typed_params()}
    assert set(inputs) == names | {"params_json"}
    assert inputs["supernet_epochs"]["parameterType"] == "NUMBER_INTEGER"
    assert inputs["supernet_epochs"]["defaultValue"] == 7
    assert inputs["supernet_lr"]["parameterType"] == "NUMBER_DOUBLE"
    assert inputs["supernet_amp"]["parameterType"] == "BOOLEAN"
    assert inputs["search_fitness"]["parameterType"] == "STRING"
    assert inputs["data_seed"]["defaultValue"] == 3
    assert inputs["supernet_epochs"]["description"] == "params.yaml supernet.epochs."
    # nullable keys are typed as text ("" for null; numbers as YAML writes them); lists stay in params_json
    assert inputs["data_root"]["parameterType"] == "STRING" and inputs["data_root"]["defaultValue"] == ""
    assert inputs["data_shards"]["parameterType"] == "STRING"
    assert inputs["slim_target_flops_ratio"]["parameterType"] == "STRING"
    assert inputs["slim_target_flops_ratio"]["defaultValue"] == "0.5"
    assert inputs["search_params_max"]["defaultValue"] == ""
    assert inputs["data_max_train_images"]["description"] == \
        "params.yaml data.max_train_images (integer; empty for null)."
    rest = json.loads(inputs["params_json"]["defaultValue"])
    assert "slim" not in rest and "search" not in rest  # all their keys are scalars
    assert "supernet" not in rest and rest["proxy"]["proxies"] == list(params.proxy.proxies)
    typed = {k: v["defaultValue"] for k, v in inputs.items() if k != "params_json"}
    assert merge_params(inputs["params_json"]["defaultValue"], typed) == params
    root = merge_params(inputs["params_json"]["defaultValue"], {**typed, "data_root": "s3://b/imagenet",
                                                                 "data_dataset": "imagefolder"})
    assert root.data.root == "s3://b/imagenet"  # a per-run dataset is one typed parameter
    run = merge_params(inputs["params_json"]["defaultValue"],
                       {**typed, "data_max_train_images": "2e4", "supernet_ema_decay": "0.9998",
                        "search_params_max": "6M", "space_rel_pos": "false", "slim_target_flops_ratio": ""})
    assert inputs["data_val_fraction"]["defaultValue"] == "0.1"
    assert merge_params(inputs["params_json"]["defaultValue"], {**typed, "data_val_fraction": "10000"}
                        ).data.val_fraction == 10000  # a count
    assert (run.data.max_train_images, run.supernet.ema_decay, run.search.params_max, run.space.rel_pos,
            run.slim.target_flops_ratio) == (20000, 0.9998, 6e6, False, None)
    with pytest.raises(ConfigError, match="^data.max_train_images: "):
        merge_params(inputs["params_json"]["defaultValue"], {**typed, "data_max_train_images": "many"})
    # every scalar key of the repo's params.yaml round-trips
    from vitnas.config import load_params

    p = load_params(repo / "params.yaml")
    t, r = split_params(p)
    assert merge_params(r, t) == p


def test_merge_params_reports_conflicts_and_bad_values_in_one_line():
    from vitnas.pipeline.runtime import merge_params, split_params

    typed, rest = split_params(parse_params({}))
    assert merge_params(rest, {**typed, "supernet_epochs": 3.0}).supernet.epochs == 3  # KFP int as JSON number
    both = json.loads(rest) | {"supernet": {"epochs": 5}}
    with pytest.raises(ConfigError, match=r"^params_json: supernet.epochs is the typed pipeline parameter "
                                          r"supernet_epochs; set it there$"):
        merge_params(json.dumps(both), typed)
    with pytest.raises(ConfigError, match="^supernet.warmup_epochs: must be < supernet.epochs$"):
        merge_params(rest, {**typed, "supernet_epochs": 2, "supernet_warmup_epochs": 2})
    with pytest.raises(ConfigError, match="^params_json: invalid JSON"):
        merge_params("{not json", typed)
    with pytest.raises(ConfigError, match="^epochs: not a typed pipeline parameter$"):
        merge_params(rest, {"epochs": 1})


def test_init_component_takes_every_typed_parameter():
    from vitnas.pipeline.components import init_op
    from vitnas.pipeline.runtime import typed_params

    inputs = init_op().component_spec.inputs
    assert set(inputs) == {p.name for p in typed_params()} | {"params_json"}
    assert inputs["retrain_keep"].type == "String" and inputs["slim_round_to"].type == "Integer"


def _cluster(tmp_path, **kw):
    from vitnas.pipeline.dag import ClusterOptions, Toleration, compile_pipeline

    opts = ClusterOptions(image="registry.example/vitnas:abc1234", gpus=4, node_selector={"pool": "a100"},
                          tolerations=(Toleration.parse("nvidia.com/gpu:NoSchedule"),
                                       Toleration.parse("dedicated=ml:NoExecute")),
                          secret="vitnas-credentials", code_version="abc1234", **kw)
    return _load(compile_pipeline(parse_params({}), tmp_path / "p.yaml", opts))


def test_a_dataset_volume_is_mounted_into_every_step_that_reads_data(tmp_path):
    spec, platform = _cluster(tmp_path, data_pvc="imagenet", data_mount="/datasets")
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounted = {n.removeprefix("exec-").removesuffix("-op") for n, ex in k8s.items()
               if {"constant": "imagenet", "mountPath": "/datasets"}.items() <= (ex.get("pvcMount") or [{}])[0].items()}
    assert mounted == set(STAGES)  # every stage reads data (the data step its root, the others its output)
    assert "pvcMount" not in k8s["exec-init-op"]
    from vitnas.errors import ConfigError
    from vitnas.pipeline.dag import ClusterOptions

    with pytest.raises(ConfigError, match="--data-pvc 'Data_Set'"):
        ClusterOptions(data_pvc="Data_Set")
    with pytest.raises(ConfigError, match="--data-pvc: mount path 'data'"):
        ClusterOptions(data_pvc="imagenet", data_mount="data")


def test_compiled_pipeline_carries_cluster_settings(tmp_path):
    spec, platform = _cluster(tmp_path)
    executors = _executors(spec)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{s}-op" for s in ("init", *STAGES)}
    for name, ex in executors.items():
        c = ex["container"]
        assert c["image"] == "registry.example/vitnas:abc1234"
        assert {"name": "VITNAS_CODE_VERSION", "value": "abc1234"} in c["env"]  # in the KFP cache key
        assert "pip install" not in "\n".join(c["command"])  # the image already holds vitnas and kfp
        assert {"fieldPath": "metadata.labels['pipeline/runid']", "name": "VITNAS_PIPELINE_RUN_ID"} in \
            k8s[name]["fieldPathAsEnv"]
        secrets = k8s[name]["secretAsEnv"]
        assert {s["secretName"] for s in secrets} == {"vitnas-credentials"}
        required = [s for s in secrets if not s.get("optional")]
        assert [e["envVar"] for s in required for e in s["keyToEnv"]] == ["MLFLOW_TRACKING_URI"]
    gpus = {n.removeprefix("exec-").removesuffix("-op"): ex["container"].get("resources", {}).get("accelerator")
            for n, ex in executors.items()}
    assert {s: int(a["resourceCount"]) for s, a in gpus.items() if a} == {
        "supernet": 4, "slim": 4, "retrain": 4, "proxy": 4, "search": 4, "transfer": 1}
    assert all(a["resourceType"] == "nvidia.com/gpu" for a in gpus.values() if a)
    for stage in ("supernet", "retrain", "transfer"):
        ex = k8s[f"exec-{stage}-op"]
        assert ex["nodeSelector"] == {"labels": {"pool": "a100"}}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in ex["tolerations"]
        assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"} in ex["tolerations"]
        assert ex["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "8Gi",
                                         "volumeName": "dshm"}]
    for stage in ("init", "data"):  # CPU steps stay off the GPU nodes
        assert not {"nodeSelector", "tolerations", "emptyDirMounts"} & set(k8s[f"exec-{stage}-op"])
    # the data step asks for what it needs, the training steps for --cpu/--memory
    assert executors["exec-data-op"]["container"]["resources"]["resourceMemoryRequest"] == "8Gi"
    assert executors["exec-supernet-op"]["container"]["resources"]["resourceMemoryRequest"] == "16Gi"
    # torchrun width = the accelerator limit
    tasks = spec["root"]["dag"]["tasks"]
    for stage in ("supernet", "proxy", "search", "slim", "retrain"):
        assert tasks[f"{stage}-op"]["inputs"]["parameters"]["nproc_per_node"]["runtimeValue"]["constant"] == 4
    caching = {t: v["cachingOptions"].get("enableCache", False) for t, v in tasks.items()}
    assert caching == {"init-op": False, **{f"{s}-op": True for s in STAGES}}  # init opens the MLflow parent
    assert tasks["init-op"]["taskInfo"]["name"] == "init"
    assert sorted(tasks["transfer-op"]["dependentTasks"]) == ["data-op", "init-op", "retrain-op"]
    assert sorted(tasks["search-op"]["dependentTasks"]) == ["data-op", "init-op", "proxy-op", "supernet-op"]


def test_proxy_shards_compile_to_a_parallel_for_and_a_cpu_merge(tmp_path):
    """--proxy-shards 3: a ParallelFor over 3 GPU pods (each under torchrun on its GPUs), collected
    into a merge step that needs no GPU; search waits for the merge."""
    spec, platform = _cluster(tmp_path, proxy_shards=3)
    tasks, k8s = spec["root"]["dag"]["tasks"], _k8s(platform)
    assert "proxy-op" not in tasks and "proxy-merge-op" in tasks
    ((loop_name, loop),) = [(name, t) for name, t in tasks.items() if name.startswith("for-loop")]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--proxy-plan-op-Output"
    assert tasks["proxy-plan-op"]["inputs"]["parameters"]["num_shards"]["runtimeValue"]["constant"] == 3
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["proxy-shard-op"]
    assert inner["inputs"]["parameters"]["nproc_per_node"]["runtimeValue"]["constant"] == 4
    merge = tasks["proxy-merge-op"]
    assert merge["inputs"]["artifacts"]["shards"]["taskOutputArtifact"] == {  # dsl.Collected: every shard's output
        "producerTask": loop_name, "outputArtifactKey": "pipelinechannel--proxy-shard-op-proxy_shard"}
    executors = _executors(spec)
    assert executors["exec-proxy-shard-op"]["container"]["resources"]["accelerator"]["resourceCount"] == "4"
    assert "accelerator" not in executors["exec-proxy-merge-op"]["container"].get("resources", {})
    assert "tolerations" in k8s["exec-proxy-shard-op"] and "tolerations" not in k8s["exec-proxy-merge-op"]
    assert "proxy-merge-op" in tasks["search-op"]["dependentTasks"]
    from vitnas.pipeline.dag import ClusterOptions, compile_pipeline

    with pytest.raises(ConfigError, match="--proxy-shards 0"):
        compile_pipeline(parse_params({}), tmp_path / "q.yaml", ClusterOptions(proxy_shards=0))


def test_compiled_pipeline_holds_no_secret_values(tmp_path, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, f"sentinel-{key.lower()}")
    spec, platform = _cluster(tmp_path, mlflow_uri="http://mlflow.mlflow.svc.cluster.local:5000")
    text = (tmp_path / "p.yaml").read_text()
    assert "sentinel-" not in text
    for ex in _executors(spec).values():
        env = {e["name"]: e["value"] for e in ex["container"]["env"]}
        assert env == {"VITNAS_CODE_VERSION": "abc1234",
                       "MLFLOW_TRACKING_URI": "http://mlflow.mlflow.svc.cluster.local:5000"}
    for ex in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        (only,) = ex["secretAsEnv"]  # with --mlflow-uri, every key of the secret is optional
        assert only["optional"] is True and "MLFLOW_TRACKING_URI" not in {e["envVar"] for e in only["keyToEnv"]}


def test_cpu_only_compile_requests_no_gpus(tmp_path):
    from vitnas.pipeline.dag import ClusterOptions, compile_pipeline

    spec, platform = _load(compile_pipeline(parse_params({}), tmp_path / "cpu.yaml",
                                            ClusterOptions(gpus=0, shm_size=None, cpu=None, memory=None,
                                                           cache_supernet=False, image="reg.example/v:1")))
    caching = {t: v["cachingOptions"].get("enableCache", False) for t, v in spec["root"]["dag"]["tasks"].items()}
    assert not caching["supernet-op"] and caching["search-op"]  # --no-cache-supernet: it trains again
    for ex in _executors(spec).values():
        assert "accelerator" not in ex["container"].get("resources", {})
    for ex in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        assert set(ex) == {"fieldPathAsEnv"}
    nproc = spec["root"]["dag"]["tasks"]["supernet-op"]["inputs"]["parameters"]["nproc_per_node"]
    assert nproc["runtimeValue"]["constant"] == 1


def test_image_tag_defaults_to_the_git_commit(repo, tmp_path):
    from vitnas.pipeline.dag import image_reference

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                         check=True).stdout.strip()
    ref, _ = image_reference("reg.example/vitnas", None, repo)
    assert ref == f"reg.example/vitnas:{sha}"
    ref, notes = image_reference("reg.example/vitnas", None, tmp_path)  # not a git checkout
    assert ref == "reg.example/vitnas:latest" and notes == ["not a git checkout: image tag 'latest'"]
    assert image_reference("reg.example:5000/vitnas", "v1", tmp_path)[0] == "reg.example:5000/vitnas:v1"
    assert image_reference("reg.example/vitnas@sha256:" + "0" * 64, None, tmp_path)[0].endswith("0" * 64)
    with pytest.raises(ConfigError, match="already names a tag"):
        image_reference("reg.example/vitnas:v1", "v2", tmp_path)


def test_compile_command_options(tmp_path, repo, cli):
    out = tmp_path / "p.yaml"
    r = cli("pipeline", "compile", "--out", str(out), "--params", str(repo / "params.yaml"),
            "--image", "reg.example/vitnas", "--image-tag", "latest", "--gpus", "2",
            "--node-selector", "pool=gpu", "--toleration", "nvidia.com/gpu:NoSchedule",
            "--secret", "creds", "--shm-size", "2Gi", "--no-cache-supernet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out} (image reg.example/vitnas:latest)"
    assert "KFP caching is turned off" in r.stderr
    spec, platform = _load(out)
    tasks = spec["root"]["dag"]["tasks"]
    assert not any(t["cachingOptions"].get("enableCache") for t in tasks.values())  # mutable tag: no caching
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-slim-op"]["emptyDirMounts"][0]["sizeLimit"] == "2Gi"
    assert _executors(spec)["exec-slim-op"]["container"]["resources"]["accelerator"]["resourceCount"] == "2"


def test_bad_cluster_options_are_one_line_errors():
    from vitnas.cli import _cluster_options
    from vitnas.pipeline.dag import Toleration

    def options(**kw):
        args = dict(image="reg.example/vitnas", image_tag="t", gpus=1, accelerator="nvidia.com/gpu",
                    node_selector=None, toleration=None, secret="s", mlflow_uri=None, shm_size="8Gi", cpu="4",
                    memory="16Gi", cache_supernet=False)
        return _cluster_options(**{**args, **kw})

    with pytest.raises(ConfigError, match="^--node-selector pool: expected KEY=VALUE$"):
        options(node_selector=["pool"])
    with pytest.raises(ConfigError, match="^--toleration a=b:Sometimes: effect must be NoSchedule, "):
        options(toleration=["a=b:Sometimes"])
    with pytest.raises(ConfigError, match="^--toleration =x: expected key"):
        Toleration.parse("=x")
    opts = options(shm_size="0", cpu="none", memory="", toleration=["gpu=yes"])
    assert (opts.shm_size, opts.cpu, opts.memory, opts.code_version) == (None, None, None, "t")
    assert opts.tolerations == (Toleration("gpu", "yes", None),) and opts.image == "reg.example/vitnas:t"


class _FakeKfp(BaseHTTPRequestHandler):
    """The few KFP v2beta1 API calls `vitnas pipeline submit --wait` makes, recorded."""

    requests: list = []

    def _reply(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self.requests.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/healthz"):
            return self._reply({"multi_user": False})
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._reply({})  # no experiment of that name yet
        if self.path == "/apis/v2beta1/runs/run-42":
            return self._reply({"run_id": "run-42", "state": "SUCCEEDED"})
        self._reply({"error": "not found"}, 404)

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            return self._reply({"experiment_id": "exp-7", **body})
        if self.path == "/apis/v2beta1/runs":
            return self._reply({"run_id": "run-42", **body})
        self._reply({"error": "not found"}, 404)

    def log_message(self, *args):
        pass


def test_submit_creates_a_run_on_the_kfp_api(tmp_path, repo, cli):
    _FakeKfp.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKfp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"supernet": {"epochs": 3, "warmup_epochs": 1}, "search": {"params_max": "1M"}}))
    try:
        r = cli("pipeline", "submit", "--host", f"http://127.0.0.1:{server.server_port}",
                "--experiment", "nas-study", "--run-name", "try-1", "--params", str(params),
                "--image", "reg.example/vitnas", "--image-tag", "abc1234", "--secret", "creds", "--wait", cwd=tmp_path)
    finally:
        server.shutdown()
    assert r.returncode == 0, r.stderr
    assert "run try-1 (run-42) in experiment nas-study" in r.stdout and "run run-42: SUCCEEDED" in r.stdout
    posts = {path: body for method, path, body in _FakeKfp.requests if method == "POST"}
    assert posts["/apis/v2beta1/experiments"] == {"display_name": "nas-study"}
    run = posts["/apis/v2beta1/runs"]
    assert run["display_name"] == "try-1" and run["experiment_id"] == "exp-7"
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert {ex["container"]["image"] for ex in _executors(spec).values()} == {"reg.example/vitnas:abc1234"}
    assert "platform_spec" in run["pipeline_spec"]
    args = run["runtime_config"]["parameters"]
    assert args["supernet_epochs"] == 3 and args["search_params_max"] == "1000000.0"


@pytest.mark.slow
def test_submit_to_an_unreachable_host_fails_in_one_line(tmp_path, repo):
    r = vitnas_process("pipeline", "submit", "--host", "http://127.0.0.1:9", "--params", repo / "params.yaml",
                       "--image-tag", "x", "--mlflow-uri", "http://m:5000", cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach Kubeflow Pipelines at http://127.0.0.1:9:")


@pytest.mark.slow
def test_training_stage_under_torchrun(tmp_path, digits_dir, monkeypatch):
    """nproc_per_node > 1: the stage runs in torchrun worker processes; rank 0's metrics come back."""
    from vitnas.pipeline.runtime import run_stage

    params = parse_params({"supernet": {"epochs": 1, "warmup_epochs": 0, "batch_size": 64},
                           "space": {"embed_dim": [16], "depth": [1], "num_heads": [1], "mlp_ratio": [2.0]},
                           "proxy": {"num_candidates": 1}, "search": {"population": 1, "parents": 1},  # 1 arch
                           "tracking": {"enabled": False}})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    values = run_stage("supernet", params.model_dump_json(), 2, digits_dir, tmp_path / "s", progress=False)
    assert values == json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert values["epochs"] == 1


@pytest.mark.slow
def test_pipeline_runs_locally_through_kfp_local(tmp_path, monkeypatch, on_mlflow_server):
    """All seven stages with a tiny config, as the cluster runs them (one subprocess each), logging
    to a real `mlflow server`, read back through the REST API its UI reads."""
    from vitnas.pipeline.dag import run_local

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", "kfp-local-test")
    params = parse_params({"tracking": {"experiment": "kfp-local"},
                           "supernet": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128},
                           "space": {"embed_dim": [16, 32], "depth": [1, 2], "num_heads": [1, 2]},
                           "proxy": {"num_candidates": 3, "proxies": ["dss", "params"]},
                           "search": {"population": 4, "parents": 2, "mutations": 2, "crossovers": 2,
                                      "generations": 1},
                           "slim": {"epochs": 1},
                           "retrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128},
                           "transfer": {"targets": [{"name": "digits-cifar", "epochs": 1, "warmup_epochs": 0,
                                                     "batch_size": 128}]}})
    t0 = time.time()
    real_print = builtins.print
    outputs = run_local(params, tmp_path / "kfp", proxy_shards=2)  # proxy: a ParallelFor of 2 pods, merged
    assert builtins.print is real_print  # kfp.local's per-task log indentation (racy in ParallelFor) is undone
    print(f"kfp.local pipeline: {time.time() - t0:.0f} s")
    assert set(outputs) == set(STAGES)
    meta = json.loads((Path(outputs["data"]) / "dataset.json").read_text())
    assert meta["splits"] == {"train": 1293, "val": 144, "test": 360}
    exp = mlflow.get_experiment_by_name("kfp-local")
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "pipeline"]
    assert parent.data.tags[tracking.PIPELINE_TAG] == "kfp-local-test"
    assert parent.data.params["supernet.epochs"] == "1"  # the init step logged the merged params
    stages = {r.data.tags.get(tracking.STAGE_TAG): r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "stage"}
    assert set(stages) == set(STAGES)
    for r in stages.values():
        assert r.data.tags[tracking.PIPELINE_TAG] == "kfp-local-test"
        assert r.data.tags[tracking.PARENT_TAG] == parent.info.run_id
        assert r.info.status == "FINISHED"
    assert stages["data"].data.metrics["data/val_count"] == 144
    assert 0 <= stages["supernet"].data.metrics["supernet/val_acc_largest"] <= 1
    assert (Path(outputs["supernet"]) / "supernet.pt").exists()
    assert len((Path(outputs["proxy"]) / "scores.jsonl").read_text().splitlines()) == 3
    shards = sorted((tmp_path / "kfp").rglob("shard.json"))
    assert [json.loads(f.read_text())["candidates"] for f in shards] in ([2, 1], [1, 2])
    from vitnas.stages import proxy as proxy_stage

    proxy_stage.run(params, outputs["data"], tmp_path / "proxy-one", track=False, progress=False)
    for name in ("scores.jsonl", "top_k.json"):  # the merged shards are the one-pod stage's output
        assert (Path(outputs["proxy"]) / name).read_text() == (tmp_path / "proxy-one" / name).read_text()
    best = json.loads((Path(outputs["search"]) / "best_arch.json").read_text())
    slimmed = json.loads((Path(outputs["slim"]) / "arch.json").read_text())
    assert slimmed["depth"] == best["depth"] and (Path(outputs["slim"]) / "model.safetensors").exists()
    retrained = json.loads((Path(outputs["retrain"]) / "arch.json").read_text())
    assert retrained == slimmed and (Path(outputs["retrain"]) / "model.safetensors").exists()
    transfer = json.loads((Path(outputs["transfer"]) / "metrics.json").read_text())
    assert 0 <= transfer["digits-cifar.top1"] <= 1
    # the KFP UI's views: an HTML report per stage with its figures, the test confusion matrix
    reports = {p.parent.name: p.read_text() for p in (tmp_path / "kfp").rglob("report")}
    assert {"supernet-op", "search-op", "slim-op", "retrain-op", "transfer-op"} <= set(reports)
    assert "data:image/png;base64," in reports["retrain-op"]
    # search's own interactive report (inline SVG, every candidate) is its KFP view
    assert reports["search-op"] == (Path(outputs["search"]) / "report.html").read_text()
    assert "<svg" in reports["search-op"] and "best_fitness" in reports["search-op"]
    confusion = json.loads((Path(outputs["retrain"]) / "confusion.json").read_text())
    assert sum(map(sum, confusion["matrix"])) == 360 and len(confusion["classes"]) == 10
    _what_the_mlflow_ui_shows(on_mlflow_server, params, tmp_path, monkeypatch)


def _rest(server: str, path: str, body: dict | None = None) -> dict:
    import urllib.parse
    import urllib.request

    if body is None:
        with urllib.request.urlopen(f"{server}/api/2.0/mlflow/{path}", timeout=30) as r:
            return json.loads(r.read())
    req = urllib.request.Request(f"{server}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _parents(server: str, exp_id: str) -> dict[str, dict]:
    runs = _rest(server, "runs/search", {"experiment_ids": [exp_id],
                                         "filter": f"tags.`{tracking.ROLE_TAG}` = 'pipeline'"})["runs"]
    return {next(t["value"] for t in r["data"]["tags"] if t["key"] == tracking.PIPELINE_TAG): r for r in runs}


def _what_the_mlflow_ui_shows(server, params, tmp_path, monkeypatch):
    """The experiment opens on the model-training pages; the parent of the whole run is FINISHED
    with the headline results; a run stopped after its first stage says KILLED and what is missing."""
    exp = _rest(server, "experiments/get-by-name?experiment_name=kfp-local")["experiment"]
    assert {"key": tracking.EXPERIMENT_KIND_TAG, "value": "custom_model_development"} in exp["tags"]
    parent = _parents(server, exp["experiment_id"])["kfp-local-test"]
    assert parent["info"]["status"] == "FINISHED"
    metrics = {m["key"] for m in parent["data"]["metrics"]}
    assert metrics == {"supernet/val_acc_largest", "supernet/val_acc_smallest", "search/best_fitness",
                       "search/best_params", "search/best_flops", "slim/params_ratio", "slim/flops_ratio",
                       "slim/val_acc_after", "retrain/test_acc", "retrain/params", "retrain/flops",
                       "transfer/digits-cifar.top1"}  # the headlines only: no series, no system metrics
    from vitnas.stages import data as data_stage

    monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", "kfp-local-stopped")
    data_stage.run(params, tmp_path / "data-only")
    stopped = _parents(server, exp["experiment_id"])["kfp-local-stopped"]
    assert stopped["info"]["status"] == "KILLED"
    missing = "proxy,retrain,search,slim,supernet,transfer"  # every stage after data
    assert {"key": tracking.MISSING_TAG, "value": missing} in stopped["data"]["tags"]


def _copy_project(repo: Path, dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (repo / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / f, dest / f)


@pytest.mark.slow
def test_dvc_repro_of_the_data_stage_in_a_temp_copy(tmp_path, repo):
    _copy_project(repo, tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = [str(Path(sys.executable).parent / "dvc")]
    r = subprocess.run(dvc + ["repro", "data"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((tmp_path / "artifacts/data/dataset.json").read_text())
    assert meta["splits"]["val"] == 144
    metrics = subprocess.run(dvc + ["metrics", "show", "--json"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=True).stdout
    assert '"val_count": 144' in metrics.replace("\n", "").replace("  ", " ") or "144" in metrics
    r = subprocess.run(dvc + ["repro", "data"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "didn't change" in r.stdout  # cached: nothing reruns
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["data"]["seed"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    r = subprocess.run(dvc + ["status", "data"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "modified" in r.stdout and "data" in r.stdout  # a params change invalidates the stage


def test_dockerfile_passes_hadolint(repo):
    hadolint = Path(sys.executable).parent / "hadolint"
    r = subprocess.run([str(hadolint), str(repo / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (repo / "Dockerfile").read_text()
    assert "uv sync --frozen" in text and "USER 10001" in text and "nvidia/cuda" in text
    # .dockerignore is an allowlist of exactly what the Dockerfile copies
    lines = [x for x in (repo / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*"
    copied = {src.removeprefix("./") for line in text.splitlines() if line.startswith("COPY ")
              and "--from" not in line for src in line.split()[1:-1]}
    assert {x[1:] for x in lines if x.startswith("!")} == copied


def test_deploy_manifests_are_valid_and_match_mlflow_server(repo):
    docs = [d for f in sorted((repo / "deploy").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "mlflow"), ("Service", "mlflow"), ("Secret", "mlflow-s3"),
            ("Secret", "vitnas-credentials")} <= kinds
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    assert args["artifacts-destination"].startswith("s3://") and "allowed-hosts" in args
    from mlflow.cli import cli

    assert container["image"] == f"ghcr.io/mlflow/mlflow:v{mlflow.__version__}-full"  # server = client version
    known = {o for p in cli.commands["server"].params for o in p.opts}
    assert {f"--{flag}" for flag in args} <= known  # only flags the locked MLflow version has
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-s3"
    for secret in (d for d in docs if d["kind"] == "Secret"):
        for key, value in secret["stringData"].items():
            assert value == "CHANGE-ME" or not key.endswith(("_KEY", "_KEY_ID", "PASSWORD")), key
