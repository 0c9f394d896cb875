"""The bad-input battery: every wrong params.yaml value and every missing, corrupt, oversized or
planted artifact gets one `error:` line naming the key or file, exit code 2, before any work, and
leaves the workspace exactly as it was. Planted pickles would create a marker file: it never appears.

Run alone: `uv run pytest tests/test_bad_inputs.py -v` (each case is one test id).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vitnas import cli
from vitnas.config import parse_params
from vitnas.models import build
from vitnas.supernet import Supernet

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "params.yaml").read_text())
PWNED = "PWNED"  # what every planted payload tries to create in the workspace


class Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def with_changes(changes: dict) -> dict:
    """The shipped params with dotted-key changes ({"search.population": 5})."""
    p = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        *path, last = key.split(".")
        d = p
        for k in path:
            d = d.setdefault(k, {})
        d[last] = value
    return p


# ---- params.yaml cases: (id, yaml text or {dotted key: value}, the key or text the error names) ----
P = with_changes
PARAM_CASES = [
    ("empty-file", "", "empty params file"),
    ("only-comments", "# nothing\n", "empty params file"),
    ("not-a-mapping", "- data\n- space\n", "expected a mapping"),
    ("scalar", "42\n", "expected a mapping"),
    ("invalid-yaml", "data: [16\n", "invalid YAML at line"),
    ("duplicate-section", "data:\n  seed: 1\ndata:\n  seed: 2\n", "'data' is written twice"),
    ("duplicate-key", "supernet:\n  lr: 1.0e-3\n  lr: 2.0e-3\n", "'lr' is written twice"),
    ("python-tag", "data: !!python/object/apply:os.system ['touch PWNED']\n", "invalid YAML"),
    ("unknown-section", P({"supernett": {}}), "supernett: unknown key"),
    ("unknown-key", P({"supernet.learning_rate": 1.0}), "supernet.learning_rate: unknown key"),
    ("dataset-unknown", P({"data.dataset": "imagenet"}), "data.dataset"),
    ("seed-negative", P({"data.seed": -1}), "data.seed"),
    ("seed-too-big", P({"data.seed": 2**32}), "data.seed"),
    ("top-seed-string", P({"seed": "x"}), "seed"),
    ("img-size-zero", P({"data.img_size": 0}), "data.img_size"),
    ("img-size-huge", P({"data.img_size": 4096}), "data.img_size"),
    ("img-size-not-divisible", P({"data.img_size": 10}), "data.img_size"),
    ("val-fraction-zero", P({"data.val_fraction": 0}), "data.val_fraction"),
    ("fractions-sum", P({"data.val_fraction": 0.5, "data.test_fraction": 0.5}), "data.test_fraction"),
    ("auto-augment", P({"data.augment.auto_augment": "bogus-m9"}), "data.augment.auto_augment"),
    ("augment-scale-order", P({"data.augment.scale": [0.9, 0.1]}), "data.augment.scale"),
    ("augment-interpolation", P({"data.augment.interpolation": "cubic"}), "data.augment.interpolation"),
    ("cifar-without-root", P({"data.dataset": "cifar10"}), "data.root"),
    ("preset-unknown", P({"space.preset": "vit-huge"}), "space.preset"),
    ("embed-1e7", P({"space.embed_dim": [10_000_000]}), "space.embed_dim"),
    ("depth-1e6", P({"space.depth": [1_000_000]}), "space.depth"),
    ("embed-empty", P({"space.embed_dim": []}), "space.embed_dim"),
    ("heads-zero", P({"space.num_heads": [0]}), "space.num_heads"),
    ("mlp-negative", P({"space.mlp_ratio": [-1.0]}), "space.mlp_ratio"),
    ("embed-duplicate", P({"space.embed_dim": [64, 64]}), "space.embed_dim"),
    ("custom-missing", P({"space.preset": None, "space.depth": [2]}), "space.embed_dim"),
    ("space-memory", P({"space.embed_dim": [60000], "space.depth": [200], "space.mlp_ratio": [8.0]}),
     "space.embed_dim"),
    ("lr-inf", "supernet:\n  lr: .inf\n", "supernet.lr"),
    ("lr-nan", "retrain:\n  lr: .nan\n", "retrain.lr"),
    ("lr-negative", P({"supernet.lr": -1.0}), "supernet.lr"),
    ("lr-string", P({"supernet.lr": "fast"}), "supernet.lr"),
    ("epochs-zero", P({"supernet.epochs": 0}), "supernet.epochs"),
    ("epochs-float", P({"supernet.epochs": 1.5}), "supernet.epochs"),
    ("warmup-too-long", P({"supernet.warmup_epochs": 60}), "supernet.warmup_epochs"),
    ("min-lr-above-lr", P({"retrain.min_lr": 1.0}), "retrain.min_lr"),
    ("sampling-unknown", P({"supernet.sampling": "greedy"}), "supernet.sampling"),
    ("pretrained-missing", P({"supernet.pretrained": "weights/deit.pth"}), "supernet.pretrained"),
    ("pretrained-not-timm", P({"supernet.pretrained": "not_a_timm_model"}), "supernet.pretrained"),
    ("label-smoothing-one", P({"supernet.label_smoothing": 1.0}), "supernet.label_smoothing"),
    ("proxies-unknown", P({"proxy.proxies": ["dss", "nope"]}), "proxy.proxies"),
    ("proxies-duplicate", P({"proxy.proxies": ["dss", "dss"]}), "proxy.proxies"),
    ("proxies-empty", P({"proxy.proxies": []}), "proxy.proxies"),
    ("candidates-1e9", P({"proxy.num_candidates": 1_000_000_000}), "proxy.num_candidates"),
    ("candidates-above-space", P({"space.embed_dim": [32], "space.depth": [2], "space.num_heads": [1],
                                  "space.mlp_ratio": [2.0], "proxy.num_candidates": 5}), "proxy.num_candidates"),
    ("search-proxy-unknown", P({"search.proxy": "nope"}), "search.proxy"),
    ("search-proxy-set-level", P({"search.proxy": "dss_rank"}), "search.proxy"),
    ("population-1e9", P({"search.population": 1_000_000_000}), "search.population"),
    ("population-above-space", P({"space.embed_dim": [32], "space.depth": [2], "space.num_heads": [1, 2],
                                  "space.mlp_ratio": [2.0], "proxy.num_candidates": 2}), "search.population"),
    ("parents-above-population", P({"search.parents": 40}), "search.parents"),
    ("no-offspring", P({"search.mutations": 0, "search.crossovers": 0}), "search.mutations"),
    ("params-max-below-space", P({"search.params_max": 1000}), "search.params_max"),
    ("params-min-above-space", P({"search.params_min": "1G"}), "search.params_min"),
    ("flops-max-below-space", P({"search.flops_max": 10}), "search.flops_max"),
    ("window-reversed", P({"search.params_min": 50000, "search.params_max": 40000}), "search.params_max"),
    ("count-garbage", P({"search.params_max": "lots"}), "search.params_max"),
    ("count-inf", P({"search.params_max": "1e999"}), "search.params_max"),
    ("latency-without-table", P({"search.latency_max_ms": 3.0}), "search.latency_table"),
    ("latency-table-missing", P({"search.latency_max_ms": 3.0, "search.latency_table": "nope.json"}),
     "search.latency_table"),
    ("latency-table-corrupt", P({"search.latency_max_ms": 3.0, "search.latency_table": "garbage.json"}),
     "search.latency_table"),
    ("latency-table-unused", P({"search.latency_table": "garbage.json"}), "search.latency_table"),
    ("hierarchical-plain-space", P({"search.strategy": "hierarchical"}), "search.strategy"),
    ("glit-proxy-fitness", P({"space.preset": "glit-demo", "search.fitness": "proxy"}), "search.fitness"),
    ("level2-without-hierarchical", P({"search.level2_epochs": 3}), "search.level2_epochs"),
    ("mutation-prob", P({"search.mutation_prob": 2}), "search.mutation_prob"),
    ("round-to-huge", P({"slim.round_to": 1_000_000}), "slim.round_to"),
    ("two-slim-targets", P({"slim.target_params_ratio": 0.5}), "slim.target_params_ratio"),
    ("slim-target-zero", P({"slim.target_flops_ratio": 0}), "slim.target_flops_ratio"),
    ("teacher-missing", P({"retrain.distill": True, "retrain.teacher": "no/such/model"}), "retrain.teacher"),
    ("teacher-without-distill", P({"retrain.teacher": "model"}), "retrain.teacher"),
    ("retrain-init", P({"retrain.init": "pretrained"}), "retrain.init"),
    ("target-unknown", P({"transfer.targets": [{"name": "imagenet"}]}), "transfer.targets.imagenet: input should be"),
    ("target-without-root", P({"transfer.targets": [{"name": "cifar10"}]}), "transfer.targets.cifar10.root"),
    ("target-twice", P({"transfer.targets": [{"name": "digits-cifar"}, {"name": "digits-cifar"}]}),
     "transfer.targets: target 'digits-cifar' is listed twice"),
    ("target-warmup", P({"transfer.targets": [{"name": "digits-cifar", "epochs": 1}]}),
     "transfer.targets.digits-cifar.warmup_epochs"),
    ("target-wrong-task-key", P({"transfer.targets": [{"name": "digits-cifar", "detector": "retinanet"}]}),
     "transfer.targets.digits-cifar.detector"),
    ("experiment-empty", P({"tracking.experiment": ""}), "tracking.experiment"),
    ("population-string", P({"search.population": "many"}), "search.population"),
    ("epochs-1e15", P({"supernet.epochs": 10**15}), "supernet.epochs"),
    ("eval-batch-1e12", P({"search.eval_batch_size": 10**12}), "search.eval_batch_size"),
    ("retrain-epochs-1e9", P({"retrain.epochs": 10**9}), "retrain.epochs"),
    ("imagefolder-digits-transfer", P({"data.dataset": "imagefolder", "data.root": "x"}),
     "transfer.targets.digits-cifar: 'digits-cifar' would fine-tune your image-folder model on the embedded digits"),
    ("shards-bad", P({"data.shards": "ftp://x"}), "data.shards: expected null, 'out' or an s3://"),
    ("store-size-without-shards", P({"data.store_size": 32}), "data.store_size: only used with data.shards"),
    ("dvc-rev-without-repo", P({"data.dvc_rev": "v1"}), "data.dvc_rev: only used with data.dvc_repo"),
    ("in-chans-of-digits", P({"data.in_chans": 3}), "data.in_chans: digits has 1 channel(s), got 3"),
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, digits_dir):
    """Valid inputs to corrupt one at a time: prepared data, a supernet file, a model directory."""
    root = tmp_path_factory.mktemp("assets")
    shutil.copytree(digits_dir, root / "data")
    params = parse_params(BASE)
    space = params.search_space(num_classes=10, in_chans=1)
    Supernet(space).save(root / "supernet.pt")
    from vitnas.slim import save_model

    arch = space.smallest()
    save_model(build(arch), arch, root / "model")
    return root


@pytest.fixture
def ws(tmp_path, monkeypatch, assets):
    """A workspace (the working directory) holding a fresh copy of the assets."""
    for name in ("data", "model"):
        shutil.copytree(assets / name, tmp_path / name)
    shutil.copy(assets / "supernet.pt", tmp_path / "supernet.pt")
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(BASE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VITNAS_MEMORY_LIMIT", "8G")  # the same limit on every machine
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() and not p.is_symlink() else \
            "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def expect_error(ws: Path, argv: list[str], names: str, capsys, monkeypatch, *, seconds: float = 60,
                 memory_mb: int = 1024) -> str:
    """Run `vitnas ARGV` in this process; assert exit 2, one `error:` line naming `names`, nothing
    written or changed in the workspace, no payload run, and bounded time and memory."""
    before = snapshot(ws)
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["vitnas", *argv])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    with pytest.raises(SystemExit) as e:
        cli.main()
    elapsed = time.time() - t0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert e.value.code == 2, (e.value.code, err, out)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert names in lines[0], lines[0]
    assert not (ws / PWNED).exists() and not Path(PWNED).exists(), "a planted payload ran"
    assert snapshot(ws) == before, "the workspace changed"
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    assert grown_mb < memory_mb, f"memory grew by {grown_mb:.0f} MB"
    return lines[0]


@pytest.mark.parametrize("text,names", [(c[1], c[2]) for c in PARAM_CASES], ids=[c[0] for c in PARAM_CASES])
def test_bad_params_are_one_line_before_any_work(ws, text, names, capsys, monkeypatch):
    f = ws / "bad.yaml"
    f.write_text(text if isinstance(text, str) else yaml.safe_dump(text))
    # check-params, and a stage: the same line, before the stage reads or writes anything
    expect_error(ws, ["check-params", "--params", str(f)], names, capsys, monkeypatch, seconds=30)
    expect_error(ws, ["data", "--params", str(f), "--out", "out", "--no-track"], names, capsys, monkeypatch,
                 seconds=30)
    assert not (ws / "out").exists()


def test_param_battery_is_large_enough():
    assert len(PARAM_CASES) >= 70 and len({c[0] for c in PARAM_CASES}) == len(PARAM_CASES)


# ---- params files that are not files --------------------------------------------------------------
def test_params_path_problems(ws, capsys, monkeypatch):
    expect_error(ws, ["check-params", "--params", "nope.yaml"], "nope.yaml: params file not found", capsys,
                 monkeypatch)
    expect_error(ws, ["check-params", "--params", "data"], "data: is a directory", capsys, monkeypatch)
    (ws / "latin1.yaml").write_bytes("data:\n  name: caf\xe9\n".encode("latin1"))
    expect_error(ws, ["check-params", "--params", "latin1.yaml"], "latin1.yaml: not a UTF-8", capsys, monkeypatch)


# ---- artifacts: (id, setup(ws) -> argv, what the error names) -----------------------------------------
def _json_edit(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def _npz(path: Path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _stage(cmd: str, *extra: str) -> list[str]:
    return [cmd, "--params", "p.yaml", "--no-track", *extra]


def _supernet(*extra: str) -> list[str]:
    return _stage("supernet", "--data", "data", "--out", "out", *extra)


def _search(*extra: str) -> list[str]:
    return _stage("search", "--data", "data", "--supernet", "supernet.pt", "--out", "out", *extra)


def _slim(arch: str) -> list[str]:
    return _stage("slim", "--data", "data", "--supernet", "supernet.pt", "--arch", arch, "--out", "out")


def _foreign_out(ws: Path) -> list[str]:
    (ws / "mine").mkdir()
    (ws / "mine" / "important.txt").write_text("keep")
    return _stage("data", "--out", "mine")


def _file_out(ws: Path) -> list[str]:
    (ws / "notes.txt").write_text("keep")
    return _stage("data", "--out", "notes.txt")


def _symlink_out(ws: Path) -> list[str]:
    (ws / "link").symlink_to(ws / "model")
    return _stage("data", "--out", "link")


def _params_parent_out(ws: Path) -> list[str]:
    (ws / "cfg").mkdir()
    shutil.copy(ws / "p.yaml", ws / "cfg" / "p.yaml")
    return ["data", "--params", "cfg/p.yaml", "--no-track", "--out", "cfg", "--force"]


def _other_stage_out(ws: Path) -> list[str]:
    return _supernet()[:-2] + ["--out", "data", "--force"]  # this run's input: never, even with --force


def _marked_other(ws: Path) -> list[str]:
    (ws / "scores").mkdir()
    (ws / "scores" / ".vitnas-output.json").write_text(json.dumps({"format": "vitnas-output/1", "stage": "proxy"}))
    (ws / "scores" / "scores.jsonl").write_text("")
    return _stage("data", "--out", "scores")


def _locked(ws: Path) -> list[str]:
    fd = os.open(ws / ".out.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another writer holds it (released when the test process's fd closes)
    _locked.fd = fd
    return _stage("data", "--out", "out")


def _dataset_json(**changes):
    def setup(ws: Path) -> list[str]:
        _json_edit(ws / "data" / "dataset.json", **changes)
        return _supernet()
    return setup


def _dataset_text(text: str):
    def setup(ws: Path) -> list[str]:
        (ws / "data" / "dataset.json").write_text(text)
        return _supernet()
    return setup


def _labels_out_of_range(ws: Path) -> list[str]:
    with np.load(ws / "data" / "train.npz") as z:
        images, labels = z["images"], z["labels"].copy()
    labels[3] = 99
    _npz(ws / "data" / "train.npz", images=images, labels=labels)
    return _supernet()


def _npz_corrupt(ws: Path) -> list[str]:
    (ws / "data" / "train.npz").write_bytes(b"PK\x03\x04garbage")
    return _supernet()


def _npz_pickle(ws: Path) -> list[str]:
    with np.load(ws / "data" / "train.npz") as z:
        images, n = z["images"], len(z["labels"])
    _npz(ws / "data" / "train.npz", images=images, labels=np.array([Payload(ws / PWNED)] * n, dtype=object))
    return _supernet()


def _escaping_paths(ws: Path) -> list[str]:
    _json_edit(ws / "data" / "dataset.json", storage="files", root=str(ws / "data"))
    with np.load(ws / "data" / "train.npz") as z:
        labels = z["labels"]
    paths = np.array(["../../etc/passwd"] * len(labels))
    _npz(ws / "data" / "train.npz", paths=paths, labels=labels)
    return _supernet()


def _checkpoint(content):
    def setup(ws: Path) -> list[str]:
        ckpt = ws / "out-checkpoints"
        ckpt.mkdir()
        if callable(content):
            torch.save(content(ws), ckpt / "checkpoint.pt")
        else:
            (ckpt / "checkpoint.pt").write_bytes(content)
        return _supernet("--resume")
    return setup


def _search_checkpoint(ws: Path) -> list[str]:
    (ws / "out-checkpoints").mkdir()
    torch.save({"fingerprint": "x", "search": Payload(ws / PWNED)}, ws / "out-checkpoints" / "checkpoint.pt")
    return _search("--resume")


def _retrain_checkpoint(ws: Path) -> list[str]:
    (ws / "out-checkpoints").mkdir()
    torch.save({"trainer": Payload(ws / PWNED)}, ws / "out-checkpoints" / "checkpoint.pt")
    return _stage("retrain", "--data", "data", "--arch", "model", "--out", "out", "--resume")


def _supernet_file(content):
    def setup(ws: Path) -> list[str]:
        if callable(content):
            torch.save(content(ws), ws / "supernet.pt")
        else:
            (ws / "supernet.pt").write_bytes(content)
        return _search()
    return setup


def _huge_space(ws: Path) -> dict:
    space = parse_params(BASE).search_space(num_classes=10, in_chans=1).to_dict()
    return {"format": "vitnas-supernet/1", "space": space | {"embed_dim": [10_000_000]}, "state_dict": {}}


def _other_space_supernet(ws: Path) -> list[str]:
    other = parse_params(with_changes({"space.embed_dim": [16, 32]})).search_space(num_classes=10, in_chans=1)
    Supernet(other).save(ws / "supernet.pt")
    return _search()


def _arch_file(text: str):
    def setup(ws: Path) -> list[str]:
        (ws / "arch.json").write_text(text)
        return _slim("arch.json")
    return setup


def _arch_changes(**changes):
    def setup(ws: Path) -> list[str]:
        _json_edit(ws / "model" / "arch.json", **changes)
        return _slim("model")
    return setup


def _no_weights(ws: Path) -> list[str]:
    (ws / "model" / "model.safetensors").unlink()
    return _slim("model")


def _weights_corrupt(ws: Path) -> list[str]:
    (ws / "model" / "model.safetensors").write_bytes(b"\xff" * 64)
    return _slim("model")


def _weights_payload(ws: Path) -> list[str]:
    (ws / "model" / "model.safetensors").write_bytes(pickle.dumps(Payload(ws / PWNED)))
    return _slim("model")


def _model_classes(ws: Path) -> list[str]:
    _json_edit(ws / "model" / "arch.json", num_classes=7)
    (ws / "r.yaml").write_text(yaml.safe_dump(with_changes({"retrain.init": "scratch"})))
    return ["retrain", "--params", "r.yaml", "--no-track", "--data", "data", "--arch", "model", "--out", "out"]


def _transfer_missing_model(ws: Path) -> list[str]:
    return _stage("transfer", "--data", "data", "--model", "nowhere", "--out", "out")


def _write_cifar(folder: Path, *, payload_in: str | None = None, target: Path | None = None) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"labels": [i % 10 for i in range(4)], "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8)}
        if name == payload_in:
            batch["data"] = Payload(target)
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))


def _cifar_payload_data(ws: Path) -> list[str]:
    _write_cifar(ws / "cifar" / "cifar-10-batches-py", payload_in="data_batch_2", target=ws / PWNED)
    (ws / "c.yaml").write_text(yaml.safe_dump(with_changes({"data.dataset": "cifar10", "data.root": "cifar",
                                                            "data.img_size": 32})))
    return ["data", "--params", "c.yaml", "--no-track", "--out", "out"]


def _cifar_missing(ws: Path) -> list[str]:
    (ws / "cifar").mkdir()
    (ws / "c.yaml").write_text(yaml.safe_dump(with_changes({"data.dataset": "cifar10", "data.root": "cifar",
                                                            "data.img_size": 32})))
    return ["data", "--params", "c.yaml", "--no-track", "--out", "out"]


def _transfer_payload(ws: Path) -> list[str]:
    _write_cifar(ws / "data" / "transfer" / "digits-cifar" / "cifar-10-batches-py", payload_in="test_batch",
                 target=ws / PWNED)
    (ws / "t.yaml").write_text(yaml.safe_dump(with_changes({"transfer.targets": [{"name": "digits-cifar"}]})))
    return ["transfer", "--params", "t.yaml", "--no-track", "--data", "data", "--model", "model", "--out", "out"]


def _transfer_cifar_payload(ws: Path) -> list[str]:
    _write_cifar(ws / "c10" / "cifar-10-batches-py", payload_in="batches.meta", target=ws / PWNED)
    (ws / "c10" / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps(Payload(ws / PWNED)))
    (ws / "t.yaml").write_text(yaml.safe_dump(with_changes({"transfer.targets": [{"name": "cifar10",
                                                                                  "root": "c10"}]})))
    return ["transfer", "--params", "t.yaml", "--no-track", "--data", "data", "--model", "model", "--out", "out"]


def _pretrained_payload(ws: Path) -> list[str]:
    torch.save({"blocks.0.attn.qkv.weight": Payload(ws / PWNED)}, ws / "deit.pth")
    (ws / "pre.yaml").write_text(yaml.safe_dump(with_changes({"supernet.pretrained": "deit.pth"})))
    return ["supernet", "--params", "pre.yaml", "--no-track", "--data", "data", "--out", "out"]


def _latency_out_foreign(ws: Path) -> list[str]:
    (ws / "table.json").write_text('{"mine": true}')
    return _stage("latency-table", "--data", "data", "--out", "table.json")


def _proxy_garbage_line(ws: Path) -> list[str]:
    return _stage("proxy", "--data", "data", "--out", "scores")  # the run itself happens in the test


ARTIFACT_CASES = [
    ("out-foreign-dir", _foreign_out, "mine: not replaced: it holds files vitnas did not write (important.txt)"),
    ("out-is-file", _file_out, "notes.txt: exists and is not a directory"),
    ("out-is-cwd", lambda ws: _stage("data", "--out", ".", "--force"), "it is the current directory"),
    ("out-is-symlink", _symlink_out, "link: is a symbolic link"),
    ("out-holds-params", _params_parent_out, "cfg: refusing to write an output there"),
    ("out-is-an-input", _other_stage_out, "data: refusing to write an output there: it is an input of this run"),
    ("out-other-stage", _marked_other, "scores: not replaced: it holds the output of `vitnas proxy`"),
    ("out-locked", _locked, "out: another vitnas process is writing it"),
    ("checkpoints-foreign", lambda ws: (ws / "ck").mkdir() or (ws / "ck" / "x.txt").write_text("k") and
     _supernet("--checkpoints", "ck"), "ck: not replaced"),
    ("data-missing", lambda ws: _stage("supernet", "--data", "nodata", "--out", "out"), "nodata/dataset.json"),
    ("dataset-json-garbage", _dataset_text("{"), "dataset.json: corrupt"),
    ("dataset-json-list", _dataset_text("[1, 2]"), "dataset.json: not a vitnas dataset description"),
    ("dataset-json-binary", lambda ws: (ws / "data" / "dataset.json").write_bytes(b"\xff\xfe{") and _supernet(),
     "dataset.json: corrupt"),
    ("num-classes-string", _dataset_json(num_classes="ten"), "dataset.json: 'num_classes'"),
    ("num-classes-1e9", _dataset_json(num_classes=10**9), "dataset.json: 'num_classes'"),
    ("in-chans-zero", _dataset_json(in_chans=0), "dataset.json: 'in_chans'"),
    ("mean-wrong-length", _dataset_json(mean=[0.1, 0.2, 0.3]), "dataset.json: 'mean'"),
    ("splits-negative", _dataset_json(splits={"train": -1, "val": 1, "test": 1}), "dataset.json: 'splits'"),
    ("dataset-img-size-mismatch", _dataset_json(img_size=32), "dataset.json: img_size 32"),
    ("labels-out-of-range", _labels_out_of_range, "train.npz: labels outside"),
    ("npz-corrupt", _npz_corrupt, "train.npz: corrupt split file"),
    ("npz-pickled-objects", _npz_pickle, "train.npz: corrupt split file"),
    ("paths-escape-root", _escaping_paths, "train.npz: path '../../etc/passwd' leaves the dataset root"),
    ("checkpoint-payload", _checkpoint(lambda ws: {"fingerprint": Payload(ws / PWNED)}),
     "checkpoint.pt: unreadable checkpoint"),
    ("checkpoint-truncated", _checkpoint(b"PK\x03\x04trunc"), "checkpoint.pt: unreadable checkpoint"),
    ("checkpoint-not-dict", _checkpoint(lambda ws: [1, 2, 3]), "checkpoint.pt: not a vitnas checkpoint"),
    ("search-checkpoint-payload", _search_checkpoint, "checkpoint.pt: unreadable checkpoint"),
    ("retrain-checkpoint-payload", _retrain_checkpoint, "checkpoint.pt: unreadable checkpoint"),
    ("supernet-missing", lambda ws: (ws / "supernet.pt").unlink() or _search(), "supernet.pt: supernet file not found"),
    ("supernet-corrupt", _supernet_file(b"not a torch file"), "supernet.pt: not a readable torch file"),
    ("supernet-payload", _supernet_file(lambda ws: {"format": Payload(ws / PWNED)}),
     "supernet.pt: not a readable torch file"),
    ("supernet-huge-space", _supernet_file(_huge_space), "supernet.pt: malformed supernet file"),
    ("supernet-other-space", _other_space_supernet, "supernet was trained on another search space"),
    ("pretrained-payload", _pretrained_payload, "deit.pth"),
    ("proxy-supernet-payload", lambda ws: torch.save({"format": Payload(ws / PWNED)}, ws / "supernet.pt") or
     _stage("proxy", "--data", "data", "--supernet", "supernet.pt", "--out", "out"),
     "supernet.pt: not a readable torch file"),
    ("arch-missing", lambda ws: _slim("nope.json"), "nope.json: architecture file not found"),
    ("arch-not-json", _arch_file("{embed"), "arch.json: corrupt architecture file (not valid JSON"),
    ("arch-nan", _arch_file('{"embed_dim": NaN}'), "arch.json"),
    ("arch-embed-1e7", _arch_changes(embed_dim=10_000_000), "arch.json: embed_dim"),
    ("arch-memory", _arch_changes(embed_dim=60000, mlp_ratio=None, mlp_hidden=[600000] * 2),
     "arch.json"),
    ("arch-unknown-key", _arch_changes(colour="red"), "arch.json: colour: unknown architecture key"),
    ("model-no-weights", _no_weights, "model.safetensors: not found"),
    ("model-weights-corrupt", _weights_corrupt, "model.safetensors"),
    ("model-weights-pickle", _weights_payload, "model.safetensors"),
    ("model-classes-mismatch", _model_classes, "arch.json: arch has num_classes=7"),
    ("transfer-model-missing", _transfer_missing_model, "nowhere/arch.json: not found"),
    ("cifar-payload-data", _cifar_payload_data, "data_batch_2: not a CIFAR python batch"),
    ("cifar-missing-files", _cifar_missing, "data.root: cifar10 not found"),
    ("transfer-digits-cifar-payload", _transfer_payload, "test_batch: not a CIFAR python batch"),
    ("transfer-cifar-meta-payload", _transfer_cifar_payload, "batches.meta: not a CIFAR python batch"),
    ("latency-out-foreign", _latency_out_foreign, "table.json: not replaced"),
]


@pytest.mark.parametrize("setup,names", [(c[1], c[2]) for c in ARTIFACT_CASES], ids=[c[0] for c in ARTIFACT_CASES])
def test_bad_artifacts_are_one_line_before_any_work(ws, setup, names, capsys, monkeypatch, one_thread):
    argv = setup(ws)
    expect_error(ws, argv, names, capsys, monkeypatch)


def test_artifact_battery_is_large_enough():
    assert len(ARTIFACT_CASES) >= 39 and len({c[0] for c in ARTIFACT_CASES}) == len(ARTIFACT_CASES)
    assert len(ARTIFACT_CASES) + len(PARAM_CASES) >= 80


def test_garbage_line_in_scores_is_reported_with_its_number(ws, capsys, monkeypatch, one_thread):
    """A hand-edited scores.jsonl is never silently cut at the first bad line."""
    small = with_changes({"proxy.num_candidates": 3, "proxy.proxies": ["dss", "params"], "tracking.enabled": False})
    (ws / "p.yaml").write_text(yaml.safe_dump(small))
    monkeypatch.setattr(sys, "argv", ["vitnas", *_proxy_garbage_line(ws)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0
    log = ws / "scores" / "scores.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0] + "garbage\n" + "".join(lines[1:]))
    expect_error(ws, _proxy_garbage_line(ws), "scores.jsonl:2: not a score record", capsys, monkeypatch)


def test_force_replaces_a_foreign_directory_but_never_a_file(ws, capsys, monkeypatch):
    _foreign_out(ws)
    expect_error(ws, _file_out(ws) + ["--force"], "notes.txt: exists and is not a directory", capsys, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["vitnas", *_stage("data", "--out", "mine", "--force")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0
    assert not (ws / "mine" / "important.txt").exists() and (ws / "mine" / "dataset.json").is_file()
    assert (ws / "notes.txt").read_text() == "keep"
