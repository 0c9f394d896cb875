"""The data stage and its readers, on digits and on files written in the real on-disk formats."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vitnas.config import parse_params
from vitnas.data import PreparedData, load_source, split_indices
from vitnas.errors import ArtifactError, ConfigError, DataError
from vitnas.stages import data as data_stage


def test_splits_are_deterministic_disjoint_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    a = split_indices(labels, val_fraction=0.1, test_fraction=0.2, seed=3)
    b = split_indices(labels, val_fraction=0.1, test_fraction=0.2, seed=3)
    c = split_indices(labels, val_fraction=0.1, test_fraction=0.2, seed=4)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    sets = {k: set(v.tolist()) for k, v in a.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"])
    assert not (sets["val"] & sets["test"])
    assert set().union(*sets.values()) == set(range(500))
    assert len(a["test"]) == 100 and len(a["val"]) == 40
    assert np.bincount(labels[a["test"]]).tolist() == [10] * 10  # stratified


def test_official_test_split_is_kept_and_val_carved_from_train():
    s = split_indices(np.repeat(np.arange(4), 25), val_fraction=0.2, test_fraction=None, seed=0)
    assert set(s) == {"train", "val"} and len(s["val"]) == 20


def test_max_train_images_subsets_train_only_and_keeps_val_and_test():
    labels = np.repeat(np.arange(10), 100)
    full = split_indices(labels, val_fraction=0.1, test_fraction=0.2, seed=0)
    cut = split_indices(labels, val_fraction=0.1, test_fraction=0.2, seed=0, max_train_images=300)
    for k in ("val", "test"):  # selection and reporting splits do not depend on the limit
        np.testing.assert_array_equal(full[k], cut[k])
    assert len(cut["train"]) == 300 and set(cut["train"].tolist()) <= set(full["train"].tolist())
    assert np.bincount(labels[cut["train"]]).tolist() == [30] * 10  # stratified
    same = split_indices(labels, val_fraction=0.1, test_fraction=0.2, seed=0, max_train_images=10_000)
    np.testing.assert_array_equal(same["train"], full["train"])  # a limit above the split keeps it all


def test_split_sizes_may_be_image_counts_as_in_sklearn():
    labels = np.repeat(np.arange(10), 100)
    s = split_indices(labels, val_fraction=50, test_fraction=200, seed=0)
    assert (len(s["test"]), len(s["val"]), len(s["train"])) == (200, 50, 750)
    assert np.bincount(labels[s["test"]]).tolist() == [20] * 10  # still stratified
    with pytest.raises(ConfigError, match=r"^data.val_fraction: 900 images from 800 images to split leaves a "
                                          r"split empty"):
        split_indices(labels, val_fraction=900, test_fraction=200, seed=0)
    assert parse_params({"data": {"val_fraction": 10000, "test_fraction": 0.2}}).data.val_fraction == 10000
    with pytest.raises(ConfigError, match="^data.test_fraction: data.val_fraction"):
        parse_params({"data": {"val_fraction": 0.5, "test_fraction": 0.5}})


def test_a_val_split_too_big_for_memory_is_refused_naming_the_key(digits_dir, monkeypatch):
    monkeypatch.setenv("VITNAS_MEMORY_LIMIT", "200K")  # val: 144 x 1 x 16 x 16 x 4 bytes = 144 KiB > half
    with pytest.raises(ConfigError, match=r"^data.val_fraction: the val split is held in memory as float32 "
                                          r"tensors here: 144 images of 1x16x16 need .*; set data.val_fraction "
                                          r"to an image count such as 50$"):
        PreparedData(digits_dir).eval_tensors("val")
    monkeypatch.setenv("VITNAS_MEMORY_LIMIT", "400K")
    assert len(PreparedData(digits_dir).eval_tensors("val")[1]) == 144


def test_digits_stage_writes_the_contract(digits_dir):
    meta = json.loads((digits_dir / "dataset.json").read_text())
    assert (meta["name"], meta["num_classes"], meta["img_size"], meta["in_chans"]) == ("digits", 10, 16, 1)
    assert meta["splits"] == {"train": 1293, "val": 144, "test": 360}
    assert sum(meta["splits"].values()) == 1797
    metrics = json.loads((digits_dir / "metrics.json").read_text())
    assert metrics["val_count"] == 144 and all(isinstance(v, (int, float)) for v in metrics.values())
    data = PreparedData(digits_dir)
    x, y = data.eval_tensors("val")
    assert x.shape == (144, 1, 16, 16) and y.shape == (144,)
    train = data.dataset("train", train=True, augment={"scale": [0.7, 1.0], "hflip": 0.0})
    img, label = train[0]
    assert img.shape == (1, 16, 16) and 0 <= label < 10
    # Normalised with train statistics: roughly zero mean, unit std on train.
    xt = torch.stack([data.dataset("train")[i][0] for i in range(300)])
    assert abs(xt.mean().item()) < 0.15 and 0.7 < xt.std().item() < 1.3


def test_data_stage_is_deterministic(tmp_path, digits_dir):
    out = tmp_path / "again"
    data_stage.run(parse_params({}), out, track=False)
    for split in ("train", "val", "test"):
        a, b = PreparedData(digits_dir).part(split), PreparedData(out).part(split)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.images, b.images)


def _write_cifar10(root, n_per_batch=12, n_test=10):
    """A small CIFAR-10 in torchvision's on-disk format (pickled batches, latin1 keys)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n, name):
        return {"batch_label": name, "labels": [int(i % 10) for i in range(n)],
                "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "filenames": [f"img{i}.png" for i in range(n)]}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_per_batch, f"training batch {i} of 5"), f)
    test = batch(n_test, "testing batch 1 of 1")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(test, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": n_per_batch}, f)
    return test


def test_cifar10_reader_on_real_format(tmp_path):
    test = _write_cifar10(tmp_path / "cifar")
    raw = load_source("cifar10", str(tmp_path / "cifar"))
    assert raw.classes[0] == "class0" and raw.in_chans == 3
    assert raw.train.images.shape == (60, 32, 32, 3) and raw.test.images.shape == (10, 32, 32, 3)
    # torchvision's parser: row-major CHW bytes -> HWC image
    np.testing.assert_array_equal(raw.test.images[3], test["data"][3].reshape(3, 32, 32).transpose(1, 2, 0))
    out = tmp_path / "data"
    params = parse_params({"data": {"dataset": "cifar10", "root": str(tmp_path / "cifar"), "img_size": 32,
                                    "val_fraction": 0.2}})
    data_stage.run(params, out, track=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["splits"] == {"train": 48, "val": 12, "test": 10} and meta["test_source"] == "official"
    x, _ = PreparedData(out).eval_tensors("test")
    assert x.shape == (10, 3, 32, 32)


def test_cifar_missing_or_corrupt_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"data.root: cifar10 not found at .*cifar-10-batches-py"):
        load_source("cifar10", str(tmp_path))
    _write_cifar10(tmp_path / "c")
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"data.root: .*data_batch_3: not a CIFAR python batch"):
        load_source("cifar10", str(tmp_path / "c"))


def test_imagefolder_with_train_and_test(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 3)):
        for cls in ("cat", "dog"):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    out = tmp_path / "data"
    data_stage.run(parse_params({"data": {"dataset": "imagefolder", "root": str(tmp_path / "imgs"),
                                          "img_size": 16, "val_fraction": 0.2}}), out, track=False)
    data = PreparedData(out)
    assert data.meta["splits"] == {"train": 16, "val": 4, "test": 6} and data.num_classes == 2
    img, label = data.dataset("test")[0]
    assert img.shape == (3, 16, 16) and label in (0, 1)
    assert data.dataset("train", train=True)[0][0].shape == (3, 16, 16)


def test_missing_or_corrupt_artifacts_are_clear_errors(tmp_path, digits_dir):
    with pytest.raises(ArtifactError, match="dataset.json: not found"):
        PreparedData(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dataset.json").write_text("{oops")
    with pytest.raises(ArtifactError, match="dataset.json: corrupt"):
        PreparedData(bad)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in digits_dir.iterdir():
        if f.is_file():  # transfer/ holds the digits-* transfer targets
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "val.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ArtifactError, match="val.npz: corrupt split file"):
        PreparedData(broken).part("val")


def test_failed_stage_leaves_nothing_half_written(tmp_path, monkeypatch, digits_dir):
    out = tmp_path / "data"
    data_stage.run(parse_params({}), out, track=False)
    before = sorted(p.name for p in out.iterdir())

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(data_stage, "write_json", boom)
    with pytest.raises(RuntimeError):
        data_stage.run(parse_params({"data": {"seed": 5}}), out, track=False)
    assert sorted(p.name for p in out.iterdir()) == before  # the old output is intact
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temp dirs left behind
    np.testing.assert_array_equal(PreparedData(out).part("val").labels, PreparedData(digits_dir).part("val").labels)
