"""The supernet training stage: outputs, resume, divergence, data parallel, validation subnets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vitnas.config import parse_params
from vitnas.stages import supernet as stage
from vitnas.stages._io import MARKER
from vitnas.supernet import Supernet
from vitnas.supernet.trainer import SupernetTrainer, step_archs
from vitnas.train import LossNotFinite

TINY = {
    "tracking": {"enabled": False},
    "space": {"embed_dim": [16, 32], "depth": [1, 2], "num_heads": [1, 2], "mlp_ratio": [2.0], "head_dim": 8},
    "supernet": {"epochs": 2, "warmup_epochs": 0, "batch_size": 128, "val_random_subnets": 2},
    "proxy": {"num_candidates": 10},  # the tiny space has 12 archs
    "search": {"population": 10, "parents": 5},
}


def tiny(**supernet) -> dict:
    p = json.loads(json.dumps(TINY))
    p["supernet"].update(supernet)
    return p


def test_stage_writes_contract_and_validates_subnets(digits_dir, tmp_path):
    out = tmp_path / "supernet"
    metrics = stage.run(parse_params(tiny()), digits_dir, out, progress=False)
    assert {p.name for p in out.iterdir()} == {"supernet.pt", "metrics.json", "history.json", "curves.png", MARKER}
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for key in ("val_acc_smallest", "val_acc_largest", "val_acc_random0", "val_acc_random1", "params_largest"):
        assert key in metrics
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    net = Supernet.load(out / "supernet.pt")
    assert net.space.embed_dim == (16, 32) and net.space.num_classes == 10 and net.space.in_chans == 1
    assert (tmp_path / "supernet-checkpoints" / "checkpoint.pt").exists()


def test_resume_continues_to_the_same_result(digits_dir, tmp_path, interrupt):
    params = parse_params(tiny(epochs=3, mixup=0.2, drop_path=0.1))
    stage.run(params, digits_dir, tmp_path / "full", progress=False)

    restore = interrupt(SupernetTrainer, "train_epoch", lambda loader, epoch, *_: epoch == 2)
    with pytest.raises(KeyboardInterrupt):
        stage.run(params, digits_dir, tmp_path / "part", progress=False)
    assert not (tmp_path / "part").exists()  # nothing half written
    restore()
    before = torch.load(tmp_path / "part-checkpoints" / "checkpoint.pt", weights_only=True)["seconds"]
    resumed = stage.run(params, digits_dir, tmp_path / "part", resume=True, progress=False)
    assert before > 0 and resumed["train_seconds"] >= before  # time before the kill counts, as in retrain

    a = torch.load(tmp_path / "full" / "supernet.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "part" / "supernet.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((tmp_path / "full/history.json").read_text()) == \
        json.loads((tmp_path / "part/history.json").read_text())


def test_resume_ignores_a_checkpoint_of_other_params(digits_dir, tmp_path, capsys):
    stage.run(parse_params(tiny(epochs=1, warmup_epochs=0)), digits_dir, tmp_path / "s", progress=False)
    stage.run(parse_params(tiny(epochs=1, lr=5e-4)), digits_dir, tmp_path / "s", resume=True, progress=False)
    assert "made with other params, inputs or data; starting over" in capsys.readouterr().out


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(digits_dir, tmp_path, monkeypatch):
    real = Supernet.forward
    calls = {"n": 0}
    steps_per_epoch = 1293 // 128

    def poisoned(self, x, arch=None):
        calls["n"] += 1
        out = real(self, x, arch)
        return out * float("nan") if self.training and calls["n"] > steps_per_epoch + 2 else out

    monkeypatch.setattr(Supernet, "forward", poisoned)
    with pytest.raises(LossNotFinite,
                       match=r"training diverged at epoch 2 step \d+ .*last good checkpoint \(epoch 1\)"):
        stage.run(parse_params(tiny(epochs=3)), digits_dir, tmp_path / "s", progress=False)
    ckpt = torch.load(tmp_path / "s-checkpoints" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["trainer"]["model"].values())
    assert not (tmp_path / "s").exists()


def test_sandwich_sampling_trains_largest_smallest_and_random(digits_dir, tmp_path):
    space = parse_params(tiny()).search_space(num_classes=10, in_chans=1)
    archs = step_archs(space, "sandwich", 2, seed=0, epoch=0, step=0)
    assert archs[0] == space.largest() and archs[1] == space.smallest() and len(archs) == 4
    assert step_archs(space, "uniform", 0, 0, 3, 5) == step_archs(space, "uniform", 0, 0, 3, 5)
    metrics = stage.run(parse_params(tiny(sampling="sandwich", epochs=1)), digits_dir, tmp_path / "s",
                        progress=False)
    assert 0.0 <= metrics["val_acc_largest"] <= 1.0


def test_bad_inputs_are_clear(tmp_path, digits_dir):
    from vitnas.errors import ArtifactError, ConfigError

    with pytest.raises(ArtifactError, match="dataset.json: not found"):
        stage.run(parse_params(tiny()), tmp_path / "nodata", tmp_path / "s")
    with pytest.raises(ConfigError, match="supernet.batch_size: 5000 is larger than the training split"):
        stage.run(parse_params(tiny(batch_size=5000)), digits_dir, tmp_path / "s")
    with pytest.raises(ArtifactError, match="img_size 16 != data.img_size 32"):
        stage.run(parse_params(tiny() | {"data": {"img_size": 32}}), digits_dir, tmp_path / "s")


@pytest.mark.slow
def test_data_parallel_with_two_cpu_processes(digits_dir, tmp_path):
    """torchrun with 2 gloo processes: both train the same subnets, weights stay identical
    (checked every epoch by the stage), rank 0 writes the output."""
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(tiny(batch_size=64)))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "vitnas", "supernet",
                        "--params", str(params), "--data", str(digits_dir), "--out", str(tmp_path / "s")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("epoch 2/2") == 1  # only rank 0 reports
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0.0 <= metrics["val_acc_largest"] <= 1.0
