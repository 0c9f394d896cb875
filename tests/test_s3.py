"""S3 where the project uses it, against moto's S3 server on loopback: the DVC remote (push/pull)
and MLflow artifacts proxied by an `mlflow server --artifacts-destination s3://...`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch

from vitnas import tracking

BUCKET = "vitnas"
BIN = Path(sys.executable).parent
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(moto_endpoint):
    """moto's S3 server with the bucket; yields (endpoint URL, client)."""
    client = boto3.client("s3", endpoint_url=moto_endpoint, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                                if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return moto_endpoint, client


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow
def test_dvc_push_and_pull_through_an_s3_remote(s3, tmp_path):
    endpoint, client = s3
    env = {**os.environ, **CREDENTIALS, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def dvc(*args):
        r = subprocess.run([str(BIN / "dvc"), *args], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"dvc {' '.join(args)}: {r.stdout}{r.stderr}"
        return r.stdout

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc("init", "-q")
    dvc("remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc")
    dvc("remote", "modify", "--local", "storage", "endpointurl", endpoint)  # MinIO-style store
    data = tmp_path / "artifacts" / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {f"part{i}.bin": rng.bytes(50_000 + i) for i in range(3)}
    for name, blob in files.items():
        (data / name).write_bytes(blob)
    dvc("add", "artifacts/data")
    dvc("push")
    pushed = _keys(client, "dvc/")
    assert len(pushed) == len(files) + 1  # the files and the directory listing, content-addressed
    assert all(k.startswith("dvc/files/md5/") for k in pushed)

    shutil.rmtree(data)
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    dvc("pull")
    assert {p.name: p.read_bytes() for p in data.iterdir()} == files


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def ready(self, timeout: float = 180) -> str:
        """Wait for /health; returns the tracking URI."""
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                _stop(self.proc)
                pytest.fail(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(s3, tmp_path_factory):
    """`mlflow server` with a sqlite store and artifacts proxied to the moto bucket. Started with the
    module, so it boots while the DVC test runs."""
    endpoint, _ = s3
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    # No server-side job runner (GenAI scorers; 8 extra processes), as in deploy/mlflow.yaml.
    env = {**os.environ, **CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": endpoint,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with (root / "server.log").open("w") as log:
        proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri",
                                 f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", f"s3://{BUCKET}/mlflow",
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                 "--allowed-hosts", f"127.0.0.1:{port}"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    yield _Server(proc, f"http://127.0.0.1:{port}", root / "server.log")
    _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and its uvicorn worker (its own process group, started above)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_mlflow_model_round_trip_through_server_with_s3_artifacts(s3, mlflow_server, tmp_path, monkeypatch):
    """The client knows only the server's URL (no S3 endpoint or keys): artifacts and the model go
    through the server into the bucket. Downloads come back through presigned S3 URLs the server
    hands out (MLflow's default with an S3 destination), or fully through the server with
    MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false (a client that cannot reach the S3 endpoint)."""
    import mlflow.pytorch

    _, client = s3
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.ready())
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", "kfp-run-s3")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    x = np.random.default_rng(0).standard_normal((4, 1, 4, 4)).astype(np.float32)
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"ok": True}))

    from vitnas.config import parse_params
    from vitnas.pipeline.runtime import init_pipeline, split_params

    params = parse_params({"tracking": {"experiment": "s3-test"}})
    typed, rest = split_params(params)
    init_pipeline(rest, typed)  # the pipeline's first step opens the parent run
    with tracking.stage_run("retrain", experiment="s3-test", params={"retrain.epochs": 1}) as run:
        run.log_metrics({"val_acc": 0.5})
        run.log_artifact(summary)
        version = run.log_model(model, input_example=x, registered_model="vitnas-s3-test")
    assert version == "1"

    info = mlflow.get_run(run.run_id).info
    assert info.artifact_uri.startswith("mlflow-artifacts:/")  # uploads go through the server
    keys = _keys(client, "mlflow/")
    assert any(k.endswith(f"{run.run_id}/artifacts/summary.json") for k in keys)
    assert any(k.endswith("/MLmodel") for k in keys)
    for presigned in ("false", "true"):  # through the server, then straight from S3
        monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", presigned)
        (dst := tmp_path / presigned).mkdir()
        loaded = mlflow.pytorch.load_model(f"models:/vitnas-s3-test/{version}", dst_path=str(dst))
        with torch.no_grad():
            assert torch.allclose(loaded(torch.from_numpy(x)), model(torch.from_numpy(x)), atol=1e-6)
    back = mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path="summary.json",
                                               dst_path=str(tmp_path))
    assert json.loads(Path(back).read_text()) == {"ok": True}

    runs = mlflow.search_runs(experiment_names=["s3-test"], output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "pipeline"]
    assert parent.data.tags[tracking.PIPELINE_TAG] == "kfp-run-s3"
    assert mlflow.get_run(run.run_id).data.tags[tracking.PARENT_TAG] == parent.info.run_id
