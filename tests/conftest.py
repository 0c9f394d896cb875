"""Shared fixtures: an isolated MLflow store, the prepared digits data, the repo root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_mlflow(tmp_path_factory):
    """Every test logs into a throwaway sqlite store, never the user's mlflow.db."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "VITNAS_PIPELINE_RUN_ID",
                                          "VITNAS_PARENT_RUN_ID")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    os.environ.pop("VITNAS_PIPELINE_RUN_ID", None)
    os.environ.pop("VITNAS_PARENT_RUN_ID", None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """The data stage's output for the default params (digits), made once per test session."""
    from vitnas.config import parse_params
    from vitnas.stages import data

    out = tmp_path_factory.mktemp("artifacts") / "data"
    data.run(parse_params({}), out, track=False)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def cli(monkeypatch, capsys):
    """The `vitnas` command in this process (torch is imported once per session, not once per
    call): run(*args) -> CompletedProcess(args, exit code, stdout, stderr)."""
    import subprocess
    import sys

    from vitnas.cli import main

    def run(*args, cwd=None):
        capsys.readouterr()  # only this call's output
        monkeypatch.setattr(sys, "argv", ["vitnas", *map(str, args)])
        if cwd is not None:
            monkeypatch.chdir(cwd)
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code or 0
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return run


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's S3 server on a free loopback port (the stand-in for MinIO/S3); yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


S3_BUCKET = "datasets"


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """An empty bucket `datasets` on the session's moto server, with this process's AWS_*
    environment pointing at it; yields a boto3 client."""
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    if S3_BUCKET in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        for obj in client.list_objects_v2(Bucket=S3_BUCKET).get("Contents", []):
            client.delete_object(Bucket=S3_BUCKET, Key=obj["Key"])
    else:
        client.create_bucket(Bucket=S3_BUCKET)
    return client


@pytest.fixture
def id_images():
    """A factory of RawDatasets of n 8x8 grey images whose first two pixels spell their index
    (labels: index % 2), so a test can tell which images a loader delivered."""
    import numpy as np

    from vitnas.data import RawDataset
    from vitnas.data.sources import RawPart

    def make(n: int) -> RawDataset:
        images = np.zeros((n, 8, 8, 1), dtype=np.uint8)
        images[:, 0, 0, 0] = np.arange(n) % 256
        images[:, 0, 1, 0] = np.arange(n) // 256
        return RawDataset(name="ids", classes=["even", "odd"], in_chans=1,
                          train=RawPart(labels=(np.arange(n) % 2).astype(np.int64), images=images))

    return make


@pytest.fixture(scope="session")
def supernet_file(tmp_path_factory) -> Path:
    """An untrained supernet of the default (demo) space sized for digits, made once per session:
    enough for the plumbing of the stages that read one (a module may define its own)."""
    import torch

    from vitnas.config import parse_params
    from vitnas.supernet import Supernet

    space = parse_params({}).search_space(num_classes=10, in_chans=1)
    torch.manual_seed(0)
    return Supernet(space).save(tmp_path_factory.mktemp("supernet") / "supernet.pt")


class StageRunRecorder:
    """Stands in for the MLflow facade's StageRun (the facade itself is tested in test_tracking):
    records the stage, its run's arguments, metrics with their steps, artifacts (each must exist
    when logged), tables and the logged model."""

    def __init__(self):
        self.stage, self.kwargs, self.model = None, {}, None
        self.metrics: list[tuple[dict, int | None]] = []
        self.artifacts: list[str] = []
        self.tables: dict[str, dict] = {}

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_artifact(self, path, artifact_path=None):
        assert Path(path).exists()  # logged once it is complete
        self.artifacts.append(Path(path).name)

    def log_table(self, columns, name):
        self.tables[name] = columns

    def log_model(self, model, **kwargs):
        assert all(Path(f).is_file() for f in kwargs.get("files", ()))  # once the directory is in place
        self.model = kwargs

    def __getattr__(self, name):
        return lambda *a, **k: None


@pytest.fixture
def stage_runs(monkeypatch) -> StageRunRecorder:
    """Stages log into a `StageRunRecorder` instead of MLflow."""
    from contextlib import contextmanager

    from vitnas import tracking

    rec = StageRunRecorder()

    @contextmanager
    def stage_run(stage_name, **kwargs):
        rec.stage, rec.kwargs = stage_name, kwargs
        yield rec

    monkeypatch.setattr(tracking, "stage_run", stage_run)
    return rec


@pytest.fixture
def interrupt(monkeypatch):
    """interrupt(cls, "method", when) makes `cls.method` raise KeyboardInterrupt (as a kill would)
    on the call whose arguments satisfy `when(*args)`, or on the when-th call for an int; returns a
    function that undoes it."""
    def arm(cls, name, when):
        real = getattr(cls, name)
        calls = [0]

        def interrupted(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == when if isinstance(when, int) else when(*args, **kwargs):
                raise KeyboardInterrupt
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, interrupted)
        return lambda: monkeypatch.setattr(cls, name, real)

    return arm


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (what the UI reads) on a free loopback port, with its own sqlite store
    and artifact folder; yields its URL."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError((root / "server.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not answer in 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def on_mlflow_server(mlflow_server, monkeypatch):
    """This test (and the processes it starts) logs to the real server; the session's store after."""
    import mlflow

    before = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(before)
