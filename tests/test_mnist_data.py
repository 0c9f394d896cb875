"""MNIST, Fashion-MNIST and KMNIST from idx files (small files written in the real format)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from vitnas.config import parse_params
from vitnas.data import load_source
from vitnas.errors import ConfigError, DataError


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    head = (0x00000800 + arr.ndim).to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make(folder: Path, n_train: int = 120, n_test: int = 30, gz: bool = True, size: int = 28) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        y = np.arange(n) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte", x, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", y, gz)
        out[split] = (x, y)
    return out


@pytest.mark.parametrize("name,layout,gz", [("fashion-mnist", "flat", True), ("mnist", "torchvision", False),
                                            ("kmnist", "torchvision", True)])
def test_reads_both_layouts_gzipped_or_not(tmp_path, name, layout, gz):
    folder = tmp_path if layout == "flat" else tmp_path / {"mnist": "MNIST", "kmnist": "KMNIST"}[name] / "raw"
    ref = make(folder, gz=gz)
    raw = load_source(name, str(tmp_path))
    assert raw.in_chans == 1 and len(raw.classes) == 10 and raw.train.images.shape == (120, 28, 28, 1)
    assert np.array_equal(raw.train.images[..., 0], ref["train"][0])
    assert np.array_equal(raw.test.labels, ref["t10k"][1]) and raw.test.labels.dtype == np.int64
    if name == "fashion-mnist":
        assert raw.classes[0] == "T-shirt/top" and raw.classes[-1] == "Ankle boot"


def test_data_stage_splits_train_and_keeps_the_official_test(tmp_path):
    from vitnas.stages import data

    make(tmp_path / "fm", n_train=200, n_test=40)
    p = parse_params({"tracking": {"enabled": False},
                      "data": {"dataset": "fashion-mnist", "root": str(tmp_path / "fm"), "img_size": 28}})
    metrics = data.run(p, tmp_path / "out", track=False)
    assert metrics["test_count"] == 40 and metrics["train_count"] + metrics["val_count"] == 200
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["num_classes"] == 10 and meta["in_chans"] == 1
    again = data.run(p, tmp_path / "out2", track=False)
    assert again == metrics  # seeded val split
    assert (tmp_path / "out" / "val.npz").read_bytes() == (tmp_path / "out2" / "val.npz").read_bytes()


def test_bad_files_give_one_line_naming_the_file(tmp_path):
    make(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found"):
        load_source("mnist", str(tmp_path))
    make(tmp_path)
    lbl = tmp_path / "train-labels-idx1-ubyte.gz"
    lbl.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 8))  # wrong magic for labels
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: not an idx1-ubyte file"):
        load_source("mnist", str(tmp_path))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(120, 12), True)  # label 12 of 10 classes
    with pytest.raises(DataError, match="label 12 is not one of the 10 classes"):
        load_source("mnist", str(tmp_path))
    img = tmp_path / "train-images-idx3-ubyte.gz"
    img.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (120).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                                  + b"\x00" * 100))  # truncated data
    with pytest.raises(DataError, match="has fewer"):
        load_source("mnist", str(tmp_path))
    img.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (2**31 - 1).to_bytes(4, "big") * 3))  # a huge header
    with pytest.raises(DataError, match="implausible shape"):
        load_source("mnist", str(tmp_path))
    img.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="unreadable"):
        load_source("mnist", str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        load_source("kmnist", str(tmp_path / "nowhere"))


def test_params_need_a_root_unless_debian_installed_it():
    if Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("dataset-fashion-mnist is installed here")
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        parse_params({"data": {"dataset": "fashion-mnist", "img_size": 28}})
    with pytest.raises(ConfigError, match="data.root: required for dataset 'kmnist'"):
        parse_params({"data": {"dataset": "kmnist", "img_size": 28}})


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def test_fashion_mnist_config_runs_on_real_format_files(tmp_path):
    """configs/fashion-mnist.yaml passes validation, and its data stage and mnist28 supernet run on
    small idx files (the real data is not needed in CI)."""
    from vitnas.config import read_yaml
    from vitnas.stages import data, supernet

    cfg = read_yaml(Path(__file__).parents[1] / "configs" / "fashion-mnist.yaml")
    make(tmp_path / "fm", n_train=400, n_test=40)  # root: Debian's path by default, not installed in CI
    assert parse_params(_merge(cfg, {"data": {"root": str(tmp_path / "fm")}})).space.preset == "mnist28"
    p = parse_params(_merge(cfg, {"tracking": {"enabled": False},
                                  "data": {"root": str(tmp_path / "fm"), "max_train_images": 128},
                                  "supernet": {"epochs": 1, "warmup_epochs": 0, "batch_size": 64,
                                               "val_random_subnets": 1}}))
    m = data.run(p, tmp_path / "data", track=False)
    assert (m["train_count"], m["val_count"], m["test_count"]) == (128, 20, 40)
    out = supernet.run(p, tmp_path / "data", tmp_path / "supernet", device="cpu", track=False, progress=False)
    assert 0.0 <= out["val_acc_largest"] <= 1.0 and (tmp_path / "supernet" / "supernet.pt").exists()
