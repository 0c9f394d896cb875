"""The slim stage: contract outputs, budget met, both input kinds, tracking, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vitnas import Arch, build, count_flops, count_params
from vitnas.config import parse_params
from vitnas.data import PreparedData
from vitnas.errors import ArtifactError, ConfigError
from vitnas.slim import load_model
from vitnas.stages import slim as stage
from vitnas.stages._io import MARKER
from vitnas.train import batches, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def params(**slim):
    return parse_params({"tracking": {"enabled": False}, "slim": {"epochs": 1, "batch_size": 128} | slim})


@pytest.fixture(scope="module")
def arch_file(tmp_path_factory) -> Path:
    arch = Arch.create(embed_dim=48, depth=3, num_heads=[4, 2, 3], mlp_ratio=[4.0, 3.0, 2.0], head_dim=16,
                       patch_size=4, img_size=16, in_chans=1, num_classes=10)
    path = tmp_path_factory.mktemp("search") / "best_arch.json"
    path.write_text(arch.to_json())
    return path


def _val_acc(model, data_dir) -> float:
    x, y = PreparedData(data_dir).eval_tensors("val")
    return evaluate(model.eval(), batches(x, y, 256), torch.device("cpu"))["acc"]


def test_stage_writes_the_contract_and_meets_the_flops_budget(digits_dir, supernet_file, arch_file, tmp_path):
    out = tmp_path / "slim"
    m = stage.run(params(round_to=4), digits_dir, supernet_file, arch_file, out, progress=False)
    assert {p.name for p in out.iterdir()} == set(stage.OUTPUTS) | {MARKER}
    assert json.loads((out / "metrics.json").read_text()) == m
    before = Arch.load(arch_file)
    after = Arch.load(out / "arch.json")
    assert m["flops_before"] == count_flops(before) and m["flops_after"] == count_flops(after)
    assert m["params_before"] == count_params(before) and m["params_after"] == count_params(after)
    assert abs(m["flops_after"] / (0.6 * m["flops_before"]) - 1) <= 0.02
    assert m["target_ratio"] == 0.6 and m["target_is_flops"] == 1
    assert all(h % 4 == 0 or h == 16 for h in after.head_dim)
    assert all(u % 4 == 0 for u in after.mlp_hidden)
    assert m["prune_max_abs_diff"] <= 1e-4
    # the saved model is a plain vitnas.build model whose accuracy is the reported one
    model, arch = load_model(out)
    assert arch == after and type(model) is type(build(after))
    assert _val_acc(model, digits_dir) == pytest.approx(m["val_acc_after"])
    assert m["val_acc_binarized"] == pytest.approx(m["val_acc_after"], abs=2e-3)
    assert 0 <= m["val_acc_before"] <= 1 and (out / "widths.png").stat().st_size > 1000


def test_stage_removes_tokens_physically_when_asked(digits_dir, supernet_file, arch_file, tmp_path):
    out = tmp_path / "slim"
    m = stage.run(params(token_keep_ratio=0.6, target_flops_ratio=0.5), digits_dir, supernet_file, arch_file, out,
                  progress=False)
    after = Arch.load(out / "arch.json")
    assert after.keep_tokens is not None and list(after.keep_tokens) == sorted(after.keep_tokens, reverse=True)
    assert m["tokens_kept"] == pytest.approx(sum(after.keep_tokens) / (3 * 16))
    assert abs(m["tokens_kept"] - 0.6) <= 0.1  # fewer only where a layer keeps its last token
    assert abs(m["flops_after"] / (0.5 * m["flops_before"]) - 1) <= 0.02 and m["flops_after"] == count_flops(after)
    assert m["prune_max_abs_diff"] <= 1e-4
    model, _ = load_model(out)
    assert _val_acc(model, digits_dir) == pytest.approx(m["val_acc_after"])


def test_stage_slims_a_model_directory_to_a_params_budget(digits_dir, tmp_path):
    arch = Arch.create(embed_dim=32, depth=2, num_heads=[2, 3], mlp_hidden=[96, 64], head_dim=8, patch_size=4,
                       img_size=16, in_chans=1, num_classes=10)
    from vitnas.slim import save_model

    torch.manual_seed(0)
    src = tmp_path / "retrain"
    save_model(build(arch), arch, src)
    m = stage.run(params(target_params_ratio=0.7, distill=False), digits_dir, None, src, tmp_path / "slim",
                  progress=False)
    assert abs(m["params_after"] / (0.7 * m["params_before"]) - 1) <= 0.02
    assert m["target_is_flops"] == 0 and m["params_before"] == count_params(arch)
    model, _ = load_model(src)
    assert m["val_acc_before"] == pytest.approx(_val_acc(model, digits_dir))


def test_stage_is_seeded(digits_dir, supernet_file, arch_file, tmp_path):
    a = stage.run(params(), digits_dir, supernet_file, arch_file, tmp_path / "a", progress=False)
    b = stage.run(params(), digits_dir, supernet_file, arch_file, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "arch.json").read_text() == (tmp_path / "b" / "arch.json").read_text()
    assert a["val_acc_after"] == b["val_acc_after"]


def test_stage_tracks_metrics_figure_and_arch(digits_dir, supernet_file, arch_file, tmp_path, stage_runs):
    rec = stage_runs
    p = parse_params({"slim": {"epochs": 2, "batch_size": 128}})
    m = stage.run(p, digits_dir, supernet_file, arch_file, tmp_path / "slim", progress=False)
    assert rec.stage == "slim" and rec.kwargs["enabled"] is True
    assert "slim.w_attn" in rec.kwargs["params"]
    assert [s for _, s in rec.metrics if s is not None] == [1, 2]
    # per-epoch series follow the one rule of every training stage: `epoch_<name>` at step = epoch
    assert all("epoch_mask_attn_mean" in mm and "epoch_val_acc_masked" in mm for mm, s in rec.metrics if s is not None)
    assert rec.metrics[-1] == (m, None)
    assert set(rec.artifacts) == {"arch.json", "widths.png"}
    # the slimmed model is logged as the model directory it is: files, preprocessing, exact costs
    assert sorted(Path(f).name for f in rec.model["files"]) == ["arch.json", "config.json", "model.safetensors"]
    assert rec.model["params"]["arch.params"] == m["params_after"] and rec.model["params"]["data.dataset"] == "digits"
    assert rec.model["metadata"]["pretrained_cfg"]["input_size"] == [1, 16, 16]
    assert rec.model["registered_model"] is None


def test_bad_inputs_fail_clearly_and_write_nothing(digits_dir, supernet_file, arch_file, tmp_path):
    out = tmp_path / "slim"
    with pytest.raises(ArtifactError, match="arch.json: not found"):
        stage.run(params(), digits_dir, None, tmp_path, out, progress=False)  # a directory without arch.json
    with pytest.raises(ArtifactError, match="architecture file not found"):
        stage.run(params(), digits_dir, supernet_file, tmp_path / "nope.json", out, progress=False)
    with pytest.raises(ArtifactError, match="needs the supernet"):
        stage.run(params(), digits_dir, None, arch_file, out, progress=False)
    with pytest.raises(ArtifactError, match="supernet file not found"):
        stage.run(params(), digits_dir, tmp_path / "none.pt", arch_file, out, progress=False)

    outside = tmp_path / "big.json"  # embed 80 is not a choice of the demo space
    outside.write_text(Arch.load(arch_file).replace(embed_dim=80).to_json())
    with pytest.raises(ArtifactError, match="not in the supernet's search space"):
        stage.run(params(), digits_dir, supernet_file, outside, out, progress=False)

    other = tmp_path / "other"  # a model for 5 classes does not fit digits
    from vitnas.slim import save_model

    a5 = Arch.load(arch_file).replace(num_classes=5)
    save_model(build(a5), a5, other)
    with pytest.raises(ArtifactError, match="num_classes=5 but the data"):
        stage.run(params(), digits_dir, None, other, out, progress=False)

    with pytest.raises(ConfigError, match=r"^slim.target_flops_ratio: 0.01 is below the smallest model"):
        stage.run(params(target_flops_ratio=0.01), digits_dir, supernet_file, arch_file, out, progress=False)
    with pytest.raises(ConfigError, match=r"^slim.target_params_ratio: 0.05 is below"):
        stage.run(params(target_params_ratio=0.05), digits_dir, supernet_file, arch_file, out, progress=False)
    with pytest.raises(ConfigError, match=r"^slim.batch_size"):
        stage.run(params(batch_size=60000), digits_dir, supernet_file, arch_file, out, progress=False)
    assert not out.exists()


def test_a_diverging_slim_says_where_and_what_to_change_and_writes_nothing(digits_dir, supernet_file, arch_file,
                                                                           tmp_path, monkeypatch):
    from vitnas.slim.masks import MaskedViT
    from vitnas.train import LossNotFinite

    real = MaskedViT.forward
    calls = {"n": 0}

    def poisoned(self, x):
        calls["n"] += 1
        out = real(self, x)
        return out * float("nan") if self.training and calls["n"] > 3 else out

    monkeypatch.setattr(MaskedViT, "forward", poisoned)
    with pytest.raises(LossNotFinite, match=r"^slim: training diverged at slim epoch 1 step \d+: loss is nan\. "
                                            r"Nothing was written\. Lower slim\.lr"):
        stage.run(parse_params({"slim": {"epochs": 2, "batch_size": 128}}), digits_dir, supernet_file, arch_file,
                  tmp_path / "slim", progress=False)
    assert not (tmp_path / "slim").exists()


def test_fading_makes_the_cut_free_and_a_costly_cut_is_reported(digits_dir, supernet_file, arch_file, tmp_path,
                                                               capsys):
    """The default fades out what the budget drops over the last half of the mask epochs, so the pruned
    model is the masked one; ViT-Slim's cut at the end (fade_epochs 0) is checked against cut_tolerance."""
    m = stage.run(params(epochs=2), digits_dir, supernet_file, arch_file, tmp_path / "fade", progress=False)
    assert m["fade_epochs"] == 1 and m["cut_drop"] == pytest.approx(0, abs=1e-9)
    assert m["val_acc_masked"] == pytest.approx(m["val_acc_after"]) and m["prune_max_abs_diff"] <= 1e-4
    assert "warning" not in capsys.readouterr().out
    m = stage.run(params(epochs=2, fade_epochs=0, cut_tolerance=0.0), digits_dir, supernet_file, arch_file,
                  tmp_path / "cut", progress=False)
    assert m["fade_epochs"] == 0 and m["cut_drop"] == pytest.approx(m["val_acc_masked"] - m["val_acc_after"])
    assert ("more than slim.cut_tolerance 0" in capsys.readouterr().out) == (m["cut_drop"] > 0)
    with pytest.raises(ConfigError, match="^slim.fade_epochs: 3 is more than slim.epochs"):
        parse_params({"slim": {"epochs": 2, "fade_epochs": 3}})
