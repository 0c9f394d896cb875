"""Models people take away: `vitnas validate` reports the retrain stage's own accuracies, `vitnas export`
writes ONNX / pt2 files that compute what the eager model computes (checked, or the file is removed),
timm loads the retrain output, and exporting never changes what the eager model computes afterwards."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch
from _helpers import vitnas_process

import vitnas
from vitnas import Arch
from vitnas.config import parse_params
from vitnas.data import PreparedData
from vitnas.deploy import export as export_mod
from vitnas.deploy.export import ExportError, check_parity, export, run_exported
from vitnas.models.model_dir import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = Arch.create(embed_dim=16, depth=2, num_heads=[2, 1], mlp_ratio=2.0, head_dim=8, patch_size=4, img_size=16,
                   in_chans=1, num_classes=10)
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))


@pytest.fixture(scope="module")
def retrained(tmp_path_factory, digits_dir) -> tuple[Path, dict]:
    """A 3-epoch scratch retrain of a tiny arch: the model directory and its metrics."""
    from vitnas.stages import retrain

    root = tmp_path_factory.mktemp("deploy")
    (root / "arch.json").write_text(ARCH.to_json())
    p = parse_params({"tracking": {"enabled": False},
                      "retrain": {"epochs": 3, "warmup_epochs": 0, "batch_size": 32, "lr": 3e-3, "init": "scratch",
                                  "drop_path": 0.0, "label_smoothing": 0.0}})
    metrics = retrain.run(p, digits_dir, None, root / "arch.json", root / "retrain", progress=False)
    return root / "retrain", metrics


@pytest.mark.parametrize("split", ["val", "test"])
def test_validate_reports_the_retrain_stages_accuracy(retrained, digits_dir, cli, split):
    model_dir, metrics = retrained
    r = cli("validate", model_dir, "--data", digits_dir, "--split", split, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    n = len(PreparedData(digits_dir).dataset(split))
    assert got["top1"] == pytest.approx(metrics[f"{split}_acc"], abs=1e-9) and got["images"] == n
    assert got["top1"] <= got["top5"] <= 1 and got["loss"] > 0 and got["images_per_s"] > 0
    human = cli("validate", model_dir, "--data", digits_dir, "--split", split)
    assert human.returncode == 0 and f"top-1 {got['top1']:.4f}" in human.stdout and "images/s" in human.stdout


def test_validate_rejects_a_bad_split_and_a_missing_data_dir(retrained, digits_dir, tmp_path, cli):
    model_dir, _ = retrained
    r = cli("validate", model_dir, "--data", digits_dir, "--split", "dev")
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "--split" in r.stderr
    r = cli("validate", model_dir, "--data", tmp_path / "nothing")
    assert r.returncode == 2 and "nothing" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("fmt", ["pt2", pytest.param("onnx", marks=[pytest.mark.slow, pytest.mark.skipif(
    not HAS_ONNX, reason="the onnx extra is not installed")])])
def test_export_writes_a_file_that_agrees_with_the_eager_model(retrained, digits_dir, tmp_path, fmt, cli):
    model_dir, _ = retrained
    out = tmp_path / f"model.{fmt}"
    args = ("export", model_dir, "--format", fmt, "--dynamic-batch", "--data", digits_dir, "--out", out)
    # onnx in a fresh process, as a user's shell sees it: the exporters' warnings must not leak
    r = vitnas_process(*args, cwd=tmp_path) if fmt == "onnx" else cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and f"wrote {out}" in r.stdout and "max |exported - eager|" in r.stdout
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left
    assert fmt != "onnx" or r.stderr == ""
    # dynamic batch: any batch size runs and matches the eager model
    model, _ = load_model(model_dir)
    x, _ = PreparedData(digits_dir).eval_tensors("test")
    got, runtime = run_exported(out, fmt, x[:7])
    with torch.no_grad():
        want = model.eval()(x[:7])
    assert got.shape == (7, 10) and (got - want).abs().max() < 1e-4, runtime


def test_export_refuses_to_replace_a_file_and_checks_its_arguments(retrained, digits_dir, tmp_path, cli):
    model_dir, _ = retrained
    out = tmp_path / "model.pt2"
    out.write_text("a user's file")
    r = cli("export", model_dir, "--format", "pt2", "--data", digits_dir, "--out", out)
    assert r.returncode == 2 and "--force" in r.stderr and out.read_text() == "a user's file"
    r = cli("export", model_dir, "--format", "pt2", "--data", digits_dir, "--out", tmp_path, "--force")
    assert r.returncode == 2 and "directory" in r.stderr
    r = cli("export", model_dir, "--format", "tflite", "--data", digits_dir, "--out", tmp_path / "m")
    assert r.returncode == 2 and "--format" in r.stderr and not (tmp_path / "m").exists()
    r = cli("export", model_dir, "--format", "pt2", "--data", digits_dir, "--out", out, "--force")
    assert r.returncode == 2 and "never replaces a file it did not write" in r.stderr  # --force or not
    assert out.read_text() == "a user's file"
    out.unlink()
    assert cli("export", model_dir, "--format", "pt2", "--data", digits_dir, "--out", out).returncode == 0
    r = cli("export", model_dir, "--format", "pt2", "--data", digits_dir, "--out", out, "--force")
    assert r.returncode == 0 and out.read_bytes()[:2] == b"PK"  # its own export: replaced with --force


def test_a_file_that_fails_parity_is_removed(retrained, digits_dir, tmp_path, monkeypatch, cli):
    model_dir, _ = retrained
    monkeypatch.setattr(export_mod, "check_parity",
                        lambda model, path, fmt, x: export_mod.Parity(0.5, "test", len(x)))
    out = tmp_path / "bad.pt2"
    r = cli("export", model_dir, "--format", "pt2", "--data", digits_dir, "--out", out)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "0.5" in r.stderr and "nothing written" in r.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_parity_catches_a_different_model(retrained, digits_dir, tmp_path):
    model_dir, _ = retrained
    model, _ = load_model(model_dir)
    x, _ = PreparedData(digits_dir).eval_tensors("val")
    export(model, x[:2], tmp_path / "m.pt2", "pt2")
    assert check_parity(model, tmp_path / "m.pt2", "pt2", x[:2]).max_abs_diff < 1e-5
    other = vitnas.build(ARCH)
    assert check_parity(other, tmp_path / "m.pt2", "pt2", x[:2]).max_abs_diff > 1e-3
    with pytest.raises(ExportError, match="--format"):
        export(model, x[:2], tmp_path / "m.x", "tflite")


def test_timm_loads_the_retrain_output(retrained, digits_dir):
    model_dir, _ = retrained
    ours, _ = load_model(model_dir)
    theirs = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    x, _ = PreparedData(digits_dir).eval_tensors("val")
    with torch.no_grad():
        assert torch.equal(ours.eval()(x[:16]), theirs(x[:16]))
    cfg = timm.data.resolve_model_data_config(theirs)
    assert tuple(cfg["input_size"]) == (1, 16, 16) and cfg["crop_pct"] == 1.0  # timm keeps JSON lists
    assert cfg["mean"] == pytest.approx(PreparedData(digits_dir).meta["mean"], abs=1e-6)


def test_exporting_a_relative_position_model_leaves_the_eager_model_unchanged(tmp_path):
    """Regression: the exporter's fake tensors once poisoned the eager model's cached position grids."""
    torch.manual_seed(0)
    a = ARCH.replace(rel_pos=True)
    model = vitnas.build(a).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        before = model(x)
    export(model, x[:2], tmp_path / "m.pt2", "pt2", dynamic_batch=True)
    with torch.no_grad():
        assert torch.equal(model(x), before)
        fresh = vitnas.build(a).eval()
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(fresh(x), before)
