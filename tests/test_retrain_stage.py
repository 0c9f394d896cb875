"""The retrain stage and its trainer: contract, both input kinds, scratch, distillation, bit-exact
resume, registry champion, clear errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitnas import Arch, SearchSpace, build, count_flops, count_params, extract
from vitnas.config import parse_params
from vitnas.data import PreparedData
from vitnas.errors import ArtifactError, ConfigError
from vitnas.slim import load_model, save_model
from vitnas.stages import retrain as stage
from vitnas.stages._io import MARKER
from vitnas.supernet import Supernet
from vitnas.train import ClassifierTrainer, LossNotFinite, batches, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")
SPACE = SearchSpace(embed_dim=(16, 32), depth=(1, 2), num_heads=(1, 2), mlp_ratio=(2.0,), head_dim=8, patch_size=4,
                    img_size=16, in_chans=1, num_classes=10)
ARCH = Arch.create(embed_dim=16, depth=2, num_heads=[2, 1], mlp_ratio=2.0, head_dim=8, patch_size=4, img_size=16,
                   in_chans=1, num_classes=10)


def params(track: bool = False, **retrain):
    base = {"epochs": 2, "warmup_epochs": 0, "batch_size": 128, "lr": 2e-3}
    return parse_params({"tracking": {"enabled": track}, "retrain": base | retrain})


@pytest.fixture(scope="module")
def supernet_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return Supernet(SPACE).save(tmp_path_factory.mktemp("supernet") / "supernet.pt")


@pytest.fixture(scope="module")
def arch_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("search") / "best_arch.json"
    path.write_text(ARCH.to_json())
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, supernet_file) -> Path:
    """A slim-style output: arch.json + model.safetensors."""
    out = tmp_path_factory.mktemp("slim") / "slim"
    save_model(extract(Supernet.load(supernet_file), ARCH), ARCH, out)
    return out


def _acc(model, data_dir, split) -> float:
    x, y = PreparedData(data_dir).eval_tensors(split)
    return evaluate(model.eval(), batches(x, y, 256), torch.device("cpu"))["acc"]


def test_retrains_a_model_directory_and_writes_the_contract(digits_dir, model_dir, tmp_path):
    out = tmp_path / "retrain"
    m = stage.run(params(), digits_dir, None, model_dir, out, progress=False)
    assert {p.name for p in out.iterdir()} == set(stage.OUTPUTS) | {MARKER}
    # `champion` is MLflow's fact (returned and logged there), not the model's: not in metrics.json
    assert json.loads((out / "metrics.json").read_text()) == {k: v for k, v in m.items() if k != "champion"}
    assert m["params"] == count_params(ARCH) and m["flops"] == count_flops(ARCH)
    assert m["epochs"] == 2 and m["init_inherit"] == 1 and m["distill"] == 0 and m["champion"] == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert m["val_acc"] == max(h["val_acc"] for h in history) == history[m["best_epoch"] - 1]["val_acc"]
    # the saved model is a plain vitnas.build model with the reported accuracies
    model, arch = load_model(out)
    assert arch == ARCH and type(model) is type(build(ARCH))
    assert _acc(model, digits_dir, "val") == pytest.approx(m["val_acc"])
    assert _acc(model, digits_dir, "test") == pytest.approx(m["test_acc"])
    start, _ = load_model(model_dir)
    assert m["val_acc_init"] == pytest.approx(_acc(start, digits_dir, "val"))
    assert m["val_acc"] > m["val_acc_init"]  # an untrained supernet's subnet is near chance
    assert (out / "curves.png").stat().st_size > 1000
    assert (tmp_path / "retrain-checkpoints" / "checkpoint.pt").exists()


def test_arch_json_inherits_the_supernet_weights(digits_dir, supernet_file, arch_file, model_dir, tmp_path):
    a = stage.run(params(epochs=1), digits_dir, supernet_file, arch_file, tmp_path / "a", progress=False)
    b = stage.run(params(epochs=1), digits_dir, None, model_dir, tmp_path / "b", progress=False)
    assert a == pytest.approx(b | {"train_seconds": a["train_seconds"]})  # same start, same run
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()


def test_scratch_needs_no_supernet_and_never_reads_the_weights(digits_dir, arch_file, tmp_path):
    only_arch = tmp_path / "only-arch"  # a model directory whose weights are garbage
    only_arch.mkdir()
    (only_arch / "arch.json").write_text(ARCH.to_json())
    (only_arch / "model.safetensors").write_bytes(b"garbage")
    p = params(init="scratch", epochs=1)
    a = stage.run(p, digits_dir, None, arch_file, tmp_path / "a", progress=False)
    b = stage.run(p, digits_dir, None, only_arch, tmp_path / "b", progress=False)
    assert a["init_inherit"] == 0 and a["val_acc_init"] == b["val_acc_init"]
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()


def test_resume_is_bit_exact(digits_dir, supernet_file, arch_file, tmp_path, interrupt):
    """EMA, mixup, drop path and distillation from the supernet's largest subnet all resume exactly."""
    p = params(epochs=3, mixup=0.2, drop_path=0.1, ema_decay=0.9, distill=True, keep="last")
    full = stage.run(p, digits_dir, supernet_file, arch_file, tmp_path / "full", progress=False)
    assert full["distill"] == 1

    restore = interrupt(ClassifierTrainer, "train_epoch", lambda loader, epoch, *_: epoch == 2)
    with pytest.raises(KeyboardInterrupt):
        stage.run(p, digits_dir, supernet_file, arch_file, tmp_path / "part", progress=False)
    assert not (tmp_path / "part").exists()  # nothing half written
    restore()
    part = stage.run(p, digits_dir, supernet_file, arch_file, tmp_path / "part", resume=True, progress=False)

    assert (tmp_path / "full/model.safetensors").read_bytes() == (tmp_path / "part/model.safetensors").read_bytes()
    assert (tmp_path / "full/history.json").read_text() == (tmp_path / "part/history.json").read_text()
    ca, cb = (torch.load(tmp_path / f"{n}-checkpoints/checkpoint.pt", weights_only=True) for n in ("full", "part"))
    for k, v in ca["trainer"]["model"].items():  # the raw weights too, not only the saved EMA
        assert torch.equal(v, cb["trainer"]["model"][k]), k
    assert {k: v for k, v in full.items() if k != "train_seconds"} == \
        {k: v for k, v in part.items() if k != "train_seconds"}


def test_resume_starts_over_when_the_inputs_changed(digits_dir, model_dir, supernet_file, arch_file, tmp_path,
                                                    capsys):
    stage.run(params(epochs=1), digits_dir, None, model_dir, tmp_path / "r", progress=False)
    capsys.readouterr()
    other = tmp_path / "other"  # same arch and params, other weights
    torch.manual_seed(1)
    save_model(build(ARCH), ARCH, other)
    stage.run(params(epochs=1), digits_dir, None, other, tmp_path / "r", resume=True, progress=False)
    assert "made with other params, inputs or data; starting over" in capsys.readouterr().out


def test_distills_from_a_teacher_directory(digits_dir, model_dir, arch_file, tmp_path):
    p = params(epochs=1, init="scratch", distill=True, teacher=str(model_dir), distill_temperature=2.0)
    m = stage.run(p, digits_dir, None, arch_file, tmp_path / "r", progress=False)
    assert m["distill"] == 1
    hist = json.loads((tmp_path / "r/history.json").read_text())
    assert hist[0]["train_kd"] > 0 and hist[0]["train_task"] > 0


def test_registers_the_model_and_moves_champion_only_on_improvement(digits_dir, model_dir, tmp_path,
                                                                    monkeypatch):
    import mlflow

    from vitnas import tracking

    name = "t-retrain-stage"
    p = params(track=True, epochs=1, registered_model=name)
    on_disk = []
    real = tracking.StageRun.log_model

    def log_model(self, model, **kw):  # registration happens only once the model directory is in place
        on_disk.append((tmp_path / "a" / "model.safetensors").is_file())
        return real(self, model, **kw)

    monkeypatch.setattr(tracking.StageRun, "log_model", log_model)
    first = stage.run(p, digits_dir, None, model_dir, tmp_path / "a", progress=False)
    monkeypatch.setattr(tracking.StageRun, "log_model", real)
    assert on_disk == [True]
    assert first["champion"] == 1
    client = mlflow.MlflowClient()
    holder = client.get_model_version_by_alias(name, "champion")
    assert str(holder.version) == "1" and float(holder.tags["val_acc"]) == pytest.approx(first["val_acc"])
    # the registered model is a pt2 export: it runs without vitnas, on any batch size
    served = mlflow.pytorch.load_model(f"models:/{name}@champion")
    x, _ = PreparedData(digits_dir).eval_tensors("val")
    local, _ = load_model(tmp_path / "a")
    assert torch.allclose(served(x[:5]), local.eval()(x[:5]), atol=1e-5)
    # ...and it is the model directory: timm builds the same network from the files inside it
    import timm

    source = client.get_model_version(name, "1").source  # models:/m-<id>: the LoggedModel
    logged_model = mlflow.get_logged_model(source.removeprefix("models:/"))
    files = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{logged_model.artifact_location}/extra_files"))
    assert sorted(p.name for p in files.iterdir()) == ["arch.json", "config.json", "model.safetensors"]
    timm_model = timm.create_model(f"local-dir:{files}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(served(x[:5]), timm_model(x[:5]), atol=1e-5)
    info = mlflow.models.get_model_info(f"models:/{logged_model.model_id}")
    assert info.metadata["pretrained_cfg"] == json.loads((tmp_path / "a/config.json").read_text())["pretrained_cfg"]
    logged = logged_model.params
    assert logged["data.mean"] == str(PreparedData(digits_dir).meta["mean"]) and logged["data.dataset"] == "digits"
    assert logged["arch.params"] == str(first["params"]) and logged["arch.flops"] == str(first["flops"])
    again = stage.run(p, digits_dir, None, model_dir, tmp_path / "b", progress=False)  # a tie does not move it
    assert again["val_acc"] == first["val_acc"] and again["champion"] == 0
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert {str(v.version) for v in client.search_model_versions(f"name = '{name}'")} == {"1", "2"}


def test_bad_inputs_fail_clearly_and_write_nothing(digits_dir, supernet_file, arch_file, model_dir, tmp_path):
    out = tmp_path / "retrain"
    with pytest.raises(ArtifactError, match="architecture file not found"):
        stage.run(params(init="scratch"), digits_dir, None, tmp_path / "nope.json", out, progress=False)
    with pytest.raises(ArtifactError, match="architecture file not found"):
        stage.run(params(init="scratch"), digits_dir, None, tmp_path, out, progress=False)
    with pytest.raises(ArtifactError, match="needs the supernet"):
        stage.run(params(), digits_dir, None, arch_file, out, progress=False)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "arch.json").write_text(ARCH.to_json())
    (corrupt / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ArtifactError, match=r"model.safetensors: unreadable weights") as e:
        stage.run(params(), digits_dir, None, corrupt, out, progress=False)
    assert "\n" not in str(e.value)
    (corrupt / "arch.json").write_text("{broken")
    with pytest.raises(ArtifactError, match="arch.json"):
        stage.run(params(init="scratch"), digits_dir, None, corrupt, out, progress=False)
    with pytest.raises(ConfigError, match=r"^retrain.distill: no teacher"):
        stage.run(params(distill=True), digits_dir, None, model_dir, out, progress=False)
    with pytest.raises(ConfigError, match=r"^retrain.distill: no teacher.*not found"):
        stage.run(params(distill=True), digits_dir, tmp_path / "none.pt", model_dir, out, progress=False)
    with pytest.raises(ConfigError, match=r"^retrain.batch_size: 60000 is larger"):
        stage.run(params(batch_size=60000), digits_dir, None, model_dir, out, progress=False)
    five = tmp_path / "five"
    a5 = ARCH.replace(num_classes=5)
    save_model(build(a5), a5, five)
    with pytest.raises(ArtifactError, match="num_classes=5 but the data"):
        stage.run(params(), digits_dir, None, five, out, progress=False)
    with pytest.raises(ArtifactError, match="num_classes=5 but the data"):  # a teacher that does not fit
        stage.run(params(distill=True, teacher=str(five)), digits_dir, None, model_dir, out, progress=False)
    with pytest.raises(ConfigError, match=r"^retrain.teacher: only used with retrain.distill"):
        params(teacher=str(model_dir))
    assert not out.exists()


def test_nan_loss_stops_with_a_clear_error(digits_dir, model_dir, tmp_path, monkeypatch):
    real = ClassifierTrainer.step

    def poisoned(self, x, y, where="step"):
        if self.updates >= 12:  # in epoch 2 (10 steps an epoch)
            self.model.pos_embed.data.fill_(float("nan"))
        return real(self, x, y, where)

    monkeypatch.setattr(ClassifierTrainer, "step", poisoned)
    with pytest.raises(LossNotFinite, match=r"diverged at retrain epoch 2 step 3.*checkpoint \(epoch 1\)"):
        stage.run(params(epochs=3), digits_dir, None, model_dir, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_cli_command(digits_dir, arch_file, tmp_path):
    from typer.testing import CliRunner

    from vitnas.cli import app

    pfile = tmp_path / "params.yaml"
    pfile.write_text(json.dumps({"tracking": {"enabled": False},
                                 "retrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128, "init": "scratch"}}))
    args = ["retrain", "--params", str(pfile), "--data", str(digits_dir), "--arch", str(arch_file)]
    r = CliRunner().invoke(app, args + ["--out", str(tmp_path / "r"), "--checkpoints", str(tmp_path / "ck")])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "test_acc=" in r.output and (tmp_path / "ck" / "checkpoint.pt").exists()
    # a user error reaches `vitnas.cli.main` (one line, exit 2: see test_cli) as a VitnasError
    r = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "none.json"), "--out", str(tmp_path / "never")])
    assert isinstance(r.exception, ArtifactError) and "architecture file not found" in str(r.exception)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_data_parallel_with_two_cpu_processes(digits_dir, supernet_file, arch_file, tmp_path):
    """torchrun, 2 gloo processes, with EMA and distillation: replicas stay identical (the stage checks
    every epoch) and only rank 0 reports and writes."""
    pfile = tmp_path / "p.yaml"
    pfile.write_text(json.dumps({"tracking": {"enabled": False}, "retrain": {
        "epochs": 2, "warmup_epochs": 0, "batch_size": 64, "ema_decay": 0.9, "distill": True}}))
    torchrun = Path(sys.executable).parent / "torchrun"
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "vitnas", "retrain",
                        "--params", str(pfile), "--data", str(digits_dir), "--supernet", str(supernet_file),
                        "--arch", str(arch_file), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("retrain epoch 2/2") == 1
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["epochs"] == 2 and m["distill"] == 1 and 0.0 <= m["test_acc"] <= 1.0


# ---- the trainer on its own -------------------------------------------------------------------
def _trainer(**kw) -> ClassifierTrainer:
    torch.manual_seed(0)
    return ClassifierTrainer(build(ARCH, drop_path_rate=0.1), num_classes=10, epochs=2, steps_per_epoch=4, lr=1e-3,
                             warmup_epochs=1, mixup=0.5, ema_decay=0.9, **kw)


def test_trainer_state_dict_resumes_bit_exactly_with_rng():
    """Without the stage's per-epoch reseeding: mixup and drop path draws come from the saved RNG."""
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(4)]
    a = _trainer()
    a.train_epoch(data[:2], 0, progress=False)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # serialised now: the live tensors keep training
    a.train_epoch(data[2:], 0, progress=False)
    torch.manual_seed(123)  # a fresh process's RNG differs
    b = _trainer()
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    b.train_epoch(data[2:], 0, progress=False)
    for (k, va), vb in zip(a.eval_model.state_dict().items(), b.eval_model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert a.optimizer.param_groups[0]["lr"] == b.optimizer.param_groups[0]["lr"] and a.updates == b.updates == 4


def test_trainer_rejects_a_non_finite_loss_before_updating():
    t = _trainer()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    x = torch.full((4, 1, 16, 16), float("inf"))
    with pytest.raises(LossNotFinite, match="retrain|train"):
        t.step(x, torch.zeros(4, dtype=torch.long))
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items()) and t.updates == 0
