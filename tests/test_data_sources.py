"""Datasets where they live: image folders and CIFAR/MNIST-format files under an s3:// prefix
(moto's S3 server on loopback), tar shards (in the output or on S3), and the checks at prepare time.
No test here reads a local copy of an S3 dataset: the images exist only in the bucket."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vitnas.config import parse_params
from vitnas.data import PreparedData, write_prepared
from vitnas.data.prepared import ShardOptions, SplitDataset
from vitnas.errors import ArtifactError, DataError
from vitnas.stages import data as data_stage
from vitnas.train.loop import epoch_loader, reseed

BUCKET = "datasets"  # the `s3` fixture's bucket (conftest.py)


def _jpeg(rng, h=30, w=40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _upload_folder(client, prefix: str, *, per_class=(10, 3), extra: dict[str, bytes] | None = None) -> None:
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class, strict=True):
        for c in ("cat", "dog"):
            for i in range(n):
                client.put_object(Bucket=BUCKET, Key=f"{prefix}/{split}/{c}/{i:03d}.JPEG", Body=_jpeg(rng))
    for key, body in (extra or {}).items():
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=body)


def _params(**data) -> object:
    return parse_params({"data": {"dataset": "imagefolder", "img_size": 16, **data}, "tracking": {"enabled": False},
                         "transfer": {"targets": []}})


def test_an_image_folder_in_s3_is_sharded_into_the_output_and_read_without_the_bucket(s3, tmp_path, monkeypatch):
    _upload_folder(s3, "imagenet-like")
    p = _params(root=f"s3://{BUCKET}/imagenet-like", store_size=20)
    metrics = data_stage.run(p, tmp_path / "data", track=False)
    assert metrics["train_count"] + metrics["val_count"] == 20 and metrics["test_count"] == 6  # val/ is the test
    d = PreparedData(tmp_path / "data")
    assert d.meta["storage"] == "shards" and d.meta["classes"] == ["cat", "dog"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the bucket is gone for later stages
    x, y = d.eval_tensors("test")
    assert x.shape == (6, 3, 16, 16) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    assert d.dataset("train").image(0).size == (27, 20)  # pre-resized: shorter side 20
    with tarfile.open(next((tmp_path / "data" / "shards").glob("train-*.tar"))) as t:  # WebDataset layout
        names = t.getnames()
    assert names[0].endswith(".png") and names[1] == names[0][:-4] + ".cls"  # up to 64 px: PNG


def test_shards_on_s3_leave_the_output_small_and_are_fetched_once_and_verified(s3, tmp_path, monkeypatch):
    _upload_folder(s3, "src")
    monkeypatch.setenv("VITNAS_SHARD_CACHE", str(tmp_path / "cache"))
    p = _params(root=f"s3://{BUCKET}/src", shards=f"s3://{BUCKET}/shards", shard_size=4)
    data_stage.run(p, tmp_path / "data", track=False)
    assert not any((tmp_path / "data" / "shards").iterdir())  # the output keeps the manifest and index only
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="shards/")["Contents"]}
    assert "shards/shards.json" in keys and "shards/train-000000.tar" in keys
    d = PreparedData(tmp_path / "data")
    x, _ = d.eval_tensors("train")
    assert len(list((tmp_path / "cache").rglob("*.tar"))) == len({k for k in keys if k.startswith("shards/train")})
    # the same images as local shards of the same folder
    local = _params(root=f"s3://{BUCKET}/src", shards="out", shard_size=4)
    data_stage.run(local, tmp_path / "data2", track=False)
    assert torch.equal(x, PreparedData(tmp_path / "data2").eval_tensors("train")[0])
    # and read image by image with ranged GETs, never copied (a dataset larger than the node's disk)
    monkeypatch.setenv("VITNAS_SHARD_CACHE", "none")
    assert torch.equal(x, PreparedData(tmp_path / "data").eval_tensors("train")[0])
    monkeypatch.setenv("VITNAS_SHARD_CACHE", str(tmp_path / "cache"))
    # a shard changed on the store: refused by its digest
    s3.put_object(Bucket=BUCKET, Key="shards/val-000000.tar", Body=b"x" * 100)
    with pytest.raises(ArtifactError, match="val-000000.tar: shard does not match its digest"):
        PreparedData(tmp_path / "data").eval_tensors("val")
    # a prefix holding someone else's objects is never written to
    s3.put_object(Bucket=BUCKET, Key="theirs/report.pdf", Body=b"%PDF")
    with pytest.raises(DataError, match="data.shards: s3://datasets/theirs: holds objects vitnas did not write"):
        data_stage.run(_params(root=f"s3://{BUCKET}/src", shards=f"s3://{BUCKET}/theirs"), tmp_path / "d3",
                       track=False)
    assert not (tmp_path / "d3").exists()


def test_a_local_shard_changed_after_prepare_is_refused(tmp_path, id_images):
    raw = id_images(40)
    write_prepared(raw, {"train": np.arange(30), "val": np.arange(30, 40), "test": np.arange(0)}, tmp_path,
                   img_size=8, shards=ShardOptions(shard_size=16))
    shard = tmp_path / "shards" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-1024])
    with pytest.raises(ArtifactError, match="train-000001.tar: shard does not match its digest"):
        PreparedData(tmp_path).eval_tensors("train")


def test_digits_as_shards_equal_the_in_memory_splits(digits_dir, tmp_path):
    p = parse_params({"data": {"shards": "out", "shard_size": 500}, "tracking": {"enabled": False}})
    data_stage.run(p, tmp_path / "sharded", track=False)
    a, b = PreparedData(digits_dir), PreparedData(tmp_path / "sharded")
    assert b.meta["storage"] == "shards" and a.meta["mean"] == b.meta["mean"]
    for split in ("train", "val", "test"):
        (xa, ya), (xb, yb) = a.eval_tensors(split), b.eval_tensors(split)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # training sees the same augmented batches under the same seed
    def epoch(data: PreparedData) -> list:
        reseed(3, 1)  # what every training loop does at an epoch start
        return list(epoch_loader(data.dataset("train", train=True), batch_size=32, seed=3, epoch=1))

    for (xa, ya), (xb, yb) in zip(epoch(a), epoch(b), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_two_ranks_with_two_workers_each_see_every_image_once(tmp_path, id_images):
    n = 64
    write_prepared(id_images(n), {"train": np.arange(n), "val": np.arange(0), "test": np.arange(0)}, tmp_path,
                   img_size=8, shards=ShardOptions(shard_size=10))
    d = PreparedData(tmp_path)
    base = d.dataset("train")
    ds = SplitDataset(base.part, base.root, 1, lambda im: torch.as_tensor(np.array(im)), base.reader)
    seen = []
    for rank in range(2):
        for x, _ in epoch_loader(ds, batch_size=8, seed=0, epoch=2, rank=rank, world_size=2, workers=2):
            seen += (x[:, 0, 0].long() + 256 * x[:, 0, 1].long()).tolist()
    assert sorted(seen) == list(range(n))


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)


@pytest.mark.parametrize("bad,names", [
    ("corrupt", "train/dog/bad.jpg: not a readable image"),
    ("truncated", "train/dog/cut.jpg: not a readable image"),
    ("bomb", "train/dog/big.png: decompression bomb"),
])
def test_bad_images_are_named_at_prepare_time_or_skipped_and_counted(tmp_path, bad, names, monkeypatch):
    rng = np.random.default_rng(1)
    files = {f"train/{c}/{i}.jpg": _jpeg(rng) for c in ("cat", "dog") for i in range(6)}
    if bad == "corrupt":
        files["train/dog/bad.jpg"] = b"\xff\xd8 not a jpeg"
    elif bad == "truncated":
        files["train/dog/cut.jpg"] = _jpeg(rng)[:200]
    else:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # the 40x30 photos pass, a 100x100 image is a bomb
        buf = io.BytesIO()
        Image.new("L", (100, 100)).save(buf, format="PNG")
        files["train/dog/big.png"] = buf.getvalue()
    _write_tree(tmp_path / "folder", files)
    p = _params(root=str(tmp_path / "folder"), shards="out")
    with pytest.raises(DataError, match=names):
        data_stage.run(p, tmp_path / "out", track=False)
    assert not (tmp_path / "out").exists()
    metrics = data_stage.run(_params(root=str(tmp_path / "folder"), shards="out", skip_bad_images=True),
                             tmp_path / "out", track=False)
    assert metrics["skipped_bad_images"] == 1
    assert metrics["train_count"] + metrics["val_count"] + metrics["test_count"] == 12


@pytest.mark.parametrize("extra,names", [
    ({"train/dog/notes.txt": b"hello"}, "train/dog/notes.txt: not an image file"),
    ({"train/bird/": b""}, "train/bird: empty class folder"),
    ({"train/dog/../../escape.jpg": b"x"}, "the key leaves the dataset root"),
])
def test_s3_folder_problems_are_one_line_naming_the_object(s3, tmp_path, extra, names):
    _upload_folder(s3, "messy", extra=extra)
    with pytest.raises(DataError, match=names):
        data_stage.run(_params(root=f"s3://{BUCKET}/messy"), tmp_path / "out", track=False)
    assert not (tmp_path / "out").exists()


def test_missing_bucket_and_missing_credentials_are_one_line(s3, tmp_path, monkeypatch, cli):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"data": {"dataset": "imagefolder", "root": "s3://nope/x"}}))
    r = cli("check-params", "-p", tmp_path / "p.yaml")
    assert r.returncode == 2 and r.stderr.strip() == "error: data.root: s3://nope/x: no such bucket"
    r = cli("data", "-p", tmp_path / "p.yaml", "--out", tmp_path / "o", "--no-track")
    assert r.returncode == 2 and "data.root: s3://nope/x: no such bucket" in r.stderr and not (tmp_path / "o").exists()
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    (tmp_path / "q.yaml").write_text(yaml.safe_dump({"data": {"dataset": "imagefolder", "root": f"s3://{BUCKET}/x"}}))
    r = cli("check-params", "-p", tmp_path / "q.yaml")
    assert r.returncode == 2 and "data.root: s3://datasets/x: no S3 credentials" in r.stderr


def test_mnist_format_files_in_s3_are_read_like_a_local_root(s3, tmp_path):
    import gzip
    import struct

    rng = np.random.default_rng(0)

    def idx(images: np.ndarray) -> bytes:
        return struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes()

    for prefix, n in (("train", 40), ("t10k", 10)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        s3.put_object(Bucket=BUCKET, Key=f"fm/{prefix}-images-idx3-ubyte.gz", Body=gzip.compress(idx(x)))
        s3.put_object(Bucket=BUCKET, Key=f"fm/{prefix}-labels-idx1-ubyte.gz",
                      Body=gzip.compress(struct.pack(">II", 2049, n) + y.tobytes()))
    p = parse_params({"data": {"dataset": "fashion-mnist", "root": f"s3://{BUCKET}/fm", "img_size": 28,
                               "val_fraction": 0.25}, "tracking": {"enabled": False}, "space": {"preset": "mnist28"},
                      "transfer": {"targets": []}})
    metrics = data_stage.run(p, tmp_path / "data", track=False)
    assert metrics["test_count"] == 10 and metrics["train_count"] + metrics["val_count"] == 40
    assert json.loads((tmp_path / "data" / "dataset.json").read_text())["storage"] == "arrays"


@pytest.mark.slow
def test_the_pipeline_runs_through_kfp_local_with_the_dataset_only_in_s3(s3, tmp_path, monkeypatch):
    """An image folder that exists only in a bucket, sharded to another prefix: every step of the
    Kubeflow pipeline (one subprocess each, as pods) reads it from S3, none from a local copy; the
    training steps stream the shards (`data.shuffle_buffer`, a typed pipeline parameter)."""
    from vitnas.pipeline.dag import run_local

    _upload_folder(s3, "photos", per_class=(40, 10))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VITNAS_SHARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", "kfp-local-s3")
    params = parse_params({
        "data": {"dataset": "imagefolder", "root": f"s3://{BUCKET}/photos", "img_size": 16, "store_size": 16,
                 "shards": f"s3://{BUCKET}/photo-shards", "shard_size": 16, "shuffle_buffer": 32},
        "tracking": {"experiment": "kfp-local-s3"},
        "supernet": {"epochs": 1, "warmup_epochs": 0, "batch_size": 16},
        "space": {"embed_dim": [16, 32], "depth": [1, 2], "num_heads": [1, 2]},
        "proxy": {"num_candidates": 3, "proxies": ["dss", "params"], "batch_size": 8},
        "search": {"population": 4, "parents": 2, "mutations": 2, "crossovers": 2, "generations": 1},
        "slim": {"epochs": 1, "batch_size": 16},
        "retrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 16},
        "transfer": {"targets": []}})
    outputs = run_local(params, tmp_path / "kfp")
    data = Path(outputs["data"])
    meta = json.loads((data / "dataset.json").read_text())
    assert meta["storage"] == "shards" and meta["splits"]["test"] == 20 and not any((data / "shards").iterdir())
    assert list((tmp_path / "cache").rglob("*.tar"))  # the steps fetched the shards from the bucket
    retrain = json.loads((Path(outputs["retrain"]) / "metrics.json").read_text())
    assert 0 <= retrain["test_acc"] <= 1


def test_greyscale_folders_own_statistics_duplicates_and_a_small_val_split(tmp_path, capsys):
    """data.in_chans/mean/std fit the user's data; byte-identical images across splits and a val
    split too small to rank candidates are reported."""
    rng = np.random.default_rng(2)
    files = {f"train/{c}/{i}.jpg": _jpeg(rng) for c in ("cat", "dog") for i in range(8)}
    files["test/cat/copy.jpg"] = files["train/cat/0.jpg"]  # the same bytes in train and test
    files.update({f"test/dog/{i}.jpg": _jpeg(rng) for i in range(2)})
    _write_tree(tmp_path / "folder", files)
    p = _params(root=str(tmp_path / "folder"), in_chans=1, mean=[0.5], std=[0.25], val_fraction=0.25)
    metrics = data_stage.run(p, tmp_path / "out", track=False)
    d = PreparedData(tmp_path / "out")
    assert d.in_chans == 1 and d.meta["mean"] == [0.5] and d.meta["std"] == [0.25]
    assert d.eval_tensors("train")[0].shape[1] == 1
    assert metrics["duplicates_across_splits"] == 1 and d.meta["duplicate_example"].startswith("test #")
    err = capsys.readouterr().err
    assert "warning: the val split has 4 images: one image is 25 points of accuracy" in err
    assert "1 val/test images are byte-identical" in err
    with pytest.raises(Exception, match="data.mean: 3 values for 1 channel"):
        _params(root="x", in_chans=1, mean=[0.5, 0.5, 0.5])
    with pytest.raises(Exception, match="data.in_chans: cifar10 has 3 channel"):
        parse_params({"data": {"dataset": "cifar10", "root": "x", "in_chans": 1, "img_size": 32}})


@pytest.mark.slow
def test_a_dvc_tracked_folder_in_a_git_repository_is_read_through_dvc_api(tmp_path):
    """data.dvc_repo + data.dvc_rev + data.root (the path inside the repository): the folder is
    read at that revision (a later commit that changes it does not leak in) and sharded."""
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "datasets"
    rng = np.random.default_rng(3)
    _write_tree(repo / "photos", {f"train/{c}/{i}.jpg": _jpeg(rng) for c in ("cat", "dog") for i in range(6)})
    dvc = str(Path(sys.executable).parent / "dvc")

    def run(*cmd):
        r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr

    run("git", "init", "-q")
    run("git", "config", "user.email", "t@example.com")
    run("git", "config", "user.name", "t")
    run(dvc, "init", "-q")
    run(dvc, "add", "-q", "photos")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "photos v1")
    run("git", "tag", "v1")
    shutil.rmtree(repo / "photos" / "train" / "dog")  # v2: the dogs are gone
    run(dvc, "add", "-q", "photos")
    run("git", "commit", "-q", "-am", "photos v2")
    p = _params(root="photos", dvc_repo=str(repo), dvc_rev="v1", val_fraction=0.25, test_fraction=0.25)
    metrics = data_stage.run(p, tmp_path / "out", track=False)
    d = PreparedData(tmp_path / "out")
    assert d.meta["classes"] == ["cat", "dog"] and sum(d.meta["splits"].values()) == 12
    assert d.meta["storage"] == "shards" and metrics["train_count"] == len(d.eval_tensors("train")[1])
    v2 = data_stage.run(_params(root="photos", dvc_repo=str(repo), val_fraction=0.25, test_fraction=0.25),
                        tmp_path / "out2", track=False)
    assert v2["train_count"] + v2["val_count"] + v2["test_count"] == 6  # the default branch: cats only
    with pytest.raises(DataError, match="data.root: nowhere not found in"):
        data_stage.run(_params(root="nowhere", dvc_repo=str(repo)), tmp_path / "out3", track=False)


def test_a_local_folder_gets_the_same_checks_as_a_bucket(tmp_path):
    rng = np.random.default_rng(4)
    base = {f"train/{c}/{i}.jpg": _jpeg(rng) for c in ("cat", "dog") for i in range(4)}
    _write_tree(tmp_path / "a", {**base, "train/dog/notes.txt": b"hello", "train/dog/.DS_Store": b"x"})
    with pytest.raises(DataError, match="train/dog/notes.txt: not an image file"):
        data_stage.run(_params(root=str(tmp_path / "a")), tmp_path / "o", track=False)
    _write_tree(tmp_path / "b", base)
    (tmp_path / "b" / "train" / "bird").mkdir()
    with pytest.raises(DataError, match="train/bird: empty class folder"):
        data_stage.run(_params(root=str(tmp_path / "b")), tmp_path / "o", track=False)
    _write_tree(tmp_path / "c", base)
    (tmp_path / "secret.jpg").write_bytes(_jpeg(rng))
    (tmp_path / "c" / "train" / "cat" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(DataError, match="link.jpg: a symbolic link that leaves the dataset root"):
        data_stage.run(_params(root=str(tmp_path / "c")), tmp_path / "o", track=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_torchrun_ranks_with_two_workers_each_read_every_sharded_image_once(tmp_path, id_images):
    """The same split as above, read by 2 real processes under torchrun, each with 2 DataLoader
    workers over the shards (fork-safe file handles): every image once per epoch."""
    import os
    import subprocess
    import sys

    n = 64
    (tmp_path / "data").mkdir()
    write_prepared(id_images(n), {"train": np.arange(n), "val": np.arange(0), "test": np.arange(0)},
                   tmp_path / "data", img_size=8, shards=ShardOptions(shard_size=10))
    script = tmp_path / "read.py"
    script.write_text(f"""
import json, os, numpy as np, torch
from vitnas.data import PreparedData
from vitnas.data.prepared import SplitDataset
from vitnas.train.loop import epoch_loader
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
base = PreparedData({str(tmp_path / "data")!r}).dataset("train")
ds = SplitDataset(base.part, base.root, 1, lambda im: torch.as_tensor(np.array(im)), base.reader)
seen = []
for x, _ in epoch_loader(ds, batch_size=8, seed=0, epoch=5, rank=rank, world_size=world, workers=2):
    seen += (x[:, 0, 0].long() + 256 * x[:, 0, 1].long()).tolist()
open({str(tmp_path)!r} + f"/seen-{{rank}}.json", "w").write(json.dumps(seen))
""")
    torchrun = Path(sys.executable).parent / "torchrun"
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)], capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = [json.loads((tmp_path / f"seen-{k}.json").read_text()) for k in range(2)]
    assert len(seen[0]) == len(seen[1]) == n // 2 and sorted(seen[0] + seen[1]) == list(range(n))


def test_the_imagenet_s3_config_checks_its_bucket_and_compiles_a_pipeline_streaming_it(s3, tmp_path, cli):
    """configs/imagenet-s3.yaml, as the README's recipe uses it: check-params reaches the bucket, and
    the compiled pipeline takes the dataset's keys as typed per-run parameters."""
    config = Path(__file__).resolve().parents[1] / "configs" / "imagenet-s3.yaml"
    r = cli("check-params", "-p", config)
    assert r.returncode == 2 and r.stderr.strip() == "error: data.root: s3://my-bucket/imagenet: no such bucket"
    s3.create_bucket(Bucket="my-bucket")
    r = cli("check-params", "-p", config)
    assert r.returncode == 0, r.stderr
    r = cli("pipeline", "compile", "-p", config, "--out", tmp_path / "p.yaml", "--image", "reg.example/vitnas",
            "--image-tag", "v1", "--gpus", "8", "--secret", "vitnas-credentials", "--data-pvc", "imagenet-ro")
    assert r.returncode == 0, r.stderr
    spec = yaml.safe_load_all((tmp_path / "p.yaml").read_text()).__next__()
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["data_root"]["defaultValue"] == "s3://my-bucket/imagenet"
    assert inputs["data_shards"]["defaultValue"] == "s3://my-bucket/vitnas-shards/imagenet"
    assert inputs["data_shuffle_buffer"]["defaultValue"] == "5000" and inputs["data_val_fraction"]["defaultValue"] \
        == "10000"
