# ruff: noqa: F811  (the fixtures `assets` and `ws` are imported from test_bad_inputs)
"""The bad-input battery, round two: the newer commands (pipeline compile, dvc-yaml, export,
validate, proxy --merge, timm's local-dir loader, import-autoformer) and the leftovers and lock
beside every output. Each case: exit 2, one `error:` line naming the key or file, nothing deleted or
replaced in the workspace, under 60 s and under 1 GiB of memory growth (`expect_error`).

Run alone: `uv run pytest tests/test_bad_inputs_2.py -v` (each case is one test id).
"""

from __future__ import annotations

import json
import os
import resource
import stat
from pathlib import Path

import pytest
import torch
import yaml
from test_bad_inputs import assets, expect_error, with_changes, ws  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(argv: list[str], cli) -> tuple[int, str, str]:
    r = cli(*argv)  # the in-process `vitnas` (conftest.py)
    return r.returncode, r.stdout, r.stderr


def _compile(*extra: str, out: str = "pl.yaml") -> list[str]:
    return ["pipeline", "compile", "--params", "p.yaml", "--out", out, "--image-tag", "abc1234", *extra]


# ---- 1. no command destroys what vitnas did not write ------------------------------------------------
def test_compile_never_replaces_a_foreign_file_its_params_or_a_link_target(ws, capsys, monkeypatch, cli):
    (ws / "theirs.yaml").write_text("apiVersion: v1\nkind: ConfigMap\n")
    expect_error(ws, _compile(out="theirs.yaml"), "theirs.yaml: not replaced", capsys, monkeypatch)
    expect_error(ws, _compile(out="p.yaml"), "p.yaml: refusing to write the compiled vitnas pipeline there: it "
                 "is an input", capsys, monkeypatch)
    (ws / "target.yaml").write_text("keep")
    (ws / "link.yaml").symlink_to(ws / "target.yaml")
    expect_error(ws, _compile(out="link.yaml"), "link.yaml: is a symbolic link", capsys, monkeypatch)
    expect_error(ws, _compile(out="data"), "data: is a directory", capsys, monkeypatch)
    # a pipeline vitnas compiled is replaced (no --force needed), and says so in its first line
    assert _run(_compile(), cli)[0] == 0
    first = (ws / "pl.yaml").read_text().splitlines()[0]
    assert first.startswith("# vitnas pipeline")
    code, _, err = _run(_compile("--gpus", "2"), cli)
    assert code == 0, err
    assert "nvidia.com/gpu" in (ws / "pl.yaml").read_text()


COMPILE_CASES = [
    ("cpu-word", ["--cpu", "lots"], "--cpu 'lots': not a Kubernetes quantity"),
    ("memory-negative", ["--memory", "-5Gi"], "--memory '-5Gi'"),
    ("shm-garbage", ["--shm-size", "abc"], "--shm-size 'abc'"),
    ("image-space", ["--image", "ghcr.io/me/vitnas latest"], "--image"),
    ("image-control", ["--image", "ghcr.io/me/vit\x07nas"], "--image"),
    ("tag-newline", ["--image-tag", "v1\nrm -rf"], "--image-tag"),
    ("selector-key", ["--node-selector", "pool name=a100"], "--node-selector 'pool name'"),
    ("selector-value", ["--node-selector", "pool=a 100"], "--node-selector 'a 100'"),
    ("secret-upper", ["--secret", "My_Secret"], "--secret 'My_Secret'"),
    ("pvc-name", ["--checkpoint-pvc", "ckpt/../x"], "--checkpoint-pvc"),
    ("toleration-key", ["--toleration", "bad key:NoSchedule"], "--toleration 'bad key'"),
    ("gpus-cap", ["--gpus", "100000"], "--gpus 100000: must be an integer in 0..64"),
    ("shards-cap", ["--proxy-shards", "1000000"], "--proxy-shards 1000000"),
    ("retries-cap", ["--retries", "1000"], "--retries 1000"),
    ("nodes-without-pvc", ["--nodes", "2"], "--nodes 2: needs --checkpoint-pvc"),
]


@pytest.mark.parametrize("extra,names", [(c[1], c[2]) for c in COMPILE_CASES], ids=[c[0] for c in COMPILE_CASES])
def test_compile_checks_cluster_settings_up_front(ws, extra, names, capsys, monkeypatch):
    expect_error(ws, _compile(*extra), names, capsys, monkeypatch, seconds=10)


def test_leftovers_and_locks_vitnas_cannot_prove_it_made_are_kept(ws, capsys, monkeypatch, cli):
    """A plain `vitnas data --out out` keeps a user's `.out.old-*` directory, `.out.tmp-*` file and
    `.out.lock` file, and removes the leftover an interrupted vitnas run tagged as its own."""
    from vitnas.stages._io import LEFTOVER_FORMAT, LEFTOVER_TAG

    backup = ws / ".out.old-mybackup"
    backup.mkdir()
    (backup / "thesis.tex").write_text("years of work")
    (ws / ".out.tmp-notes.txt").write_text("notes")
    (ws / ".out.lock").write_text("my lock notes")
    ours = ws / ".out.tmp-k3j2h1"  # what a killed run leaves: tagged with its own name
    ours.mkdir()
    (ours / LEFTOVER_TAG).write_text(json.dumps({"format": LEFTOVER_FORMAT, "name": ours.name}))
    copied = ws / ".out.old-copy"  # a tag copied from elsewhere names another directory: kept
    copied.mkdir()
    (copied / LEFTOVER_TAG).write_text(json.dumps({"format": LEFTOVER_FORMAT, "name": ours.name}))
    code, _, err = _run(["data", "--params", "p.yaml", "--no-track", "--out", "out"], cli)
    assert code == 0, err
    assert (backup / "thesis.tex").read_text() == "years of work"
    assert (ws / ".out.tmp-notes.txt").read_text() == "notes"
    assert (ws / ".out.lock").read_text() == "my lock notes"
    assert copied.is_dir() and not ours.exists()
    assert (ws / "out" / "dataset.json").is_file() and not (ws / "out" / LEFTOVER_TAG).exists()


def test_a_lock_vitnas_created_is_removed_and_a_dead_runs_lock_is_reused(ws):
    from vitnas.stages._io import claim_output

    with claim_output(ws / "o", "data"):
        assert json.loads((ws / ".o.lock").read_text())["format"] == "vitnas-lock/1"
    assert not (ws / ".o.lock").exists()
    (ws / ".o.lock").write_text(json.dumps({"format": "vitnas-lock/1", "pid": 1}))  # a killed run's lock
    with claim_output(ws / "o", "data"):
        pass
    assert not (ws / ".o.lock").exists()


def test_dvc_yaml_never_writes_through_a_link_or_over_a_foreign_file(ws, capsys, monkeypatch, cli):
    (ws / "real.yaml").write_text("stages: {}\n")
    (ws / "dvc.yaml").symlink_to(ws / "real.yaml")
    expect_error(ws, ["dvc-yaml", "--out", "dvc.yaml"], "dvc.yaml: is a symbolic link", capsys, monkeypatch)
    (ws / "latin1.yaml").write_bytes("stages:\n  caf\xe9: {}\n".encode("latin1"))
    expect_error(ws, ["dvc-yaml", "--out", "latin1.yaml"], "latin1.yaml: not replaced", capsys, monkeypatch)
    expect_error(ws, ["dvc-yaml", "--check", "--out", "latin1.yaml"], "latin1.yaml: differs", capsys, monkeypatch)
    assert _run(["dvc-yaml", "--out", "gen.yaml"], cli)[0] == 0
    assert _run(["dvc-yaml", "--out", "gen.yaml"], cli)[0] == 0  # its own: replaced
    assert _run(["dvc-yaml", "--check", "--out", "gen.yaml"], cli)[0] == 0


def _export(*extra: str, out: str = "m.pt2") -> list[str]:
    return ["export", "model", "--format", "pt2", "--data", "data", "--out", out, *extra]


def test_export_never_replaces_its_inputs_or_a_foreign_file(ws, capsys, monkeypatch):
    expect_error(ws, _export("--force", out="model/model.safetensors"),
                 "model/model.safetensors: refusing to write the vitnas export there: it is inside an input",
                 capsys, monkeypatch)
    expect_error(ws, _export("--force", out="model/extra.pt2"), "model/extra.pt2: refusing", capsys, monkeypatch)
    (ws / "theirs.pt2").write_bytes(b"PK\x03\x04 a user's archive")
    expect_error(ws, _export("--force", out="theirs.pt2"), "theirs.pt2: not replaced", capsys, monkeypatch)


def test_export_appears_only_after_its_parity_check_and_own_files_need_force(ws, capsys, monkeypatch, cli):
    from vitnas.deploy import export as export_mod

    real = export_mod.check_parity
    seen = []

    def killed(model, path, fmt, x):  # the process dies while checking: nothing at --out yet
        seen.append((Path(path).name, (ws / "m.pt2").exists()))
        raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "check_parity", killed)
    assert _run(_export(), cli)[0] != 0  # click turns the interrupt into "Aborted!"
    assert seen and seen[0][0] != "m.pt2" and seen[0][1] is False
    assert not (ws / "m.pt2").exists() and not list(ws.glob(".m*"))
    monkeypatch.setattr(export_mod, "check_parity", real)
    assert _run(_export(), cli)[0] == 0
    assert export_mod.is_vitnas_export(ws / "m.pt2")
    expect_error(ws, _export(), "m.pt2: exists (vitnas wrote it)", capsys, monkeypatch)
    assert _run(_export("--force"), cli)[0] == 0


# ---- 2. bounded before building ---------------------------------------------------------------------
def _edit_model(ws: Path, **changes) -> None:
    """Change the model directory's arch.json and config.json together (they agree)."""
    arch = json.loads((ws / "model" / "arch.json").read_text())
    arch.update(changes)
    if "mlp_hidden" in changes:
        arch.pop("mlp_ratio", None)
    (ws / "model" / "arch.json").write_text(json.dumps(arch))
    config = json.loads((ws / "model" / "config.json").read_text())
    config["model_args"]["arch"] = arch
    (ws / "model" / "config.json").write_text(json.dumps(config))


HUGE = {"embed_dim": 8192, "num_heads": [128], "head_dim": 32, "mlp_hidden": [32768], "depth": 1}  # 0.8 G params
DEEP = {"depth": 1024, "num_heads": [1] * 1024, "mlp_ratio": [2.0] * 1024}


@pytest.mark.parametrize("cmd", ["validate", "export"])
@pytest.mark.parametrize("arch", [HUGE, DEEP], ids=["0.8G-params", "depth-1024"])
def test_model_described_bigger_than_its_weights_is_refused_before_building(ws, cmd, arch, capsys, monkeypatch):
    monkeypatch.setenv("VITNAS_MEMORY_LIMIT", "64G")  # the header check, not the memory limit, must stop it
    _edit_model(ws, **arch)
    argv = ["validate", "model", "--data", "data"] if cmd == "validate" else _export()
    expect_error(ws, argv, "model.safetensors: weights do not fit the architecture", capsys, monkeypatch,
                 seconds=30, memory_mb=512)


def test_timm_local_dir_applies_the_same_checks(ws, monkeypatch):
    import timm

    import vitnas  # noqa: F401 (registers vitnas_vit)
    from vitnas.errors import VitnasError

    monkeypatch.setenv("VITNAS_MEMORY_LIMIT", "64G")
    _edit_model(ws, **HUGE)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(VitnasError, match="model.safetensors: weights do not fit the architecture"):
        timm.create_model(f"local-dir:{ws / 'model'}", pretrained=True)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024 < 512
    monkeypatch.setenv("VITNAS_MEMORY_LIMIT", "8G")
    with pytest.raises(VitnasError, match="embed_dim: .*config.json: the model needs about"):
        timm.create_model(f"local-dir:{ws / 'model'}", pretrained=True)


def test_config_json_contradicting_arch_json_is_refused(ws, capsys, monkeypatch):
    arch = json.loads((ws / "model" / "arch.json").read_text())
    arch["num_heads"] = [2, 2]
    (ws / "model" / "arch.json").write_text(json.dumps(arch))  # config.json still says one head
    expect_error(ws, ["validate", "model", "--data", "data"], "model/config.json: its architecture describes another "
                 "model than arch.json", capsys, monkeypatch)
    import timm

    from vitnas.errors import VitnasError

    with pytest.raises(VitnasError, match="describes another model than arch.json"):
        timm.create_model(f"local-dir:{ws / 'model'}", pretrained=True)


@pytest.mark.parametrize("argv,names", [
    (["check-params", "-p", "p.yaml", "--set", "space.depth=[1e6]"], "space.depth: 1,000,000 is above"),
    (["check-params", "-p", "p.yaml", "--set", "space.depth=[1000000]"], "space.depth: 1,000,000 is above"),
    (["check-params", "-p", "p.yaml", "--set", "space.embed_dim=[1e9]"], "space.embed_dim"),
    (["arch", "deep.json"], "deep.json: depth: 1,000,000 is above"),
], ids=["space-depth-float", "space-depth-int", "space-embed", "arch-depth-1e6"])
def test_limits_are_checked_before_anything_grows_with_them(ws, argv, names, capsys, monkeypatch):
    (ws / "deep.json").write_text(json.dumps({"embed_dim": 32, "depth": 1e6, "num_heads": 1, "mlp_ratio": 2.0,
                                              "head_dim": 16, "patch_size": 4, "img_size": 16, "in_chans": 1,
                                              "num_classes": 10}))
    expect_error(ws, argv, names, capsys, monkeypatch, seconds=5)


# ---- 3. one line, never a traceback, never silent --------------------------------------------------
@pytest.fixture
def shards(ws, cli):
    """Two proxy shard outputs of three candidates (a small params file, p.yaml)."""
    small = with_changes({"proxy.num_candidates": 3, "proxy.proxies": ["dss", "params"], "tracking.enabled": False})
    (ws / "p.yaml").write_text(yaml.safe_dump(small))
    for k in range(2):
        code, _, err = _run(["proxy", "--params", "p.yaml", "--data", "data", "--shard", f"{k}/2", "--out", f"s{k}"],
                            cli)
        assert code == 0, err
    return ws


def _poke_scores(path: Path, change) -> None:
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    change(rec)
    path.write_text("\n".join([json.dumps(rec)] + lines[1:]) + "\n")


@pytest.mark.parametrize("change,names", [
    (lambda r: r["scores"].update(dss="high"), "s0/scores.jsonl:1: not a score record (score 'dss' is 'high'"),
    (lambda r: r.update(scores={}), "s0/scores.jsonl:1: not a score record (no score for 'dss')"),
    (lambda r: r["scores"].update(dss=float("nan")), "s0/scores.jsonl:1: not a score record (score 'dss' is nan"),
    (lambda r: r.update(params="many"), "s0/scores.jsonl:1: not a score record ('params' is not a count)"),
], ids=["string-score", "empty-scores", "nan-score", "string-params"])
def test_proxy_merge_checks_every_shard_record_before_writing(shards, change, names, capsys, monkeypatch):
    _poke_scores(shards / "s0" / "scores.jsonl", change)
    argv = ["proxy", "--params", "p.yaml", "--no-track", "--data", "data", "--merge", "s0", "--merge", "s1",
            "--out", "merged"]
    expect_error(shards, argv, names, capsys, monkeypatch)
    assert not (shards / "merged").exists()


def test_autoformer_tensor_claiming_more_than_its_storage_is_refused(ws, capsys, monkeypatch):
    one = torch.zeros(1)
    bomb = one.as_strided((100_000_000, 10_000), (0, 0))  # 1e12 elements over 4 bytes of storage
    torch.save({"model": {"patch_embed_super.proj.weight": bomb}}, ws / "af.pth")
    expect_error(ws, ["import-autoformer", "af.pth", "--space", "autoformer-tiny", "--out", "sn.pt"],
                 "af.pth: not a readable torch file (ValueError: a tensor of shape [100000000, 10000] claims",
                 capsys, monkeypatch)


def test_check_params_catches_a_missing_data_root(ws, capsys, monkeypatch):
    (ws / "f.yaml").write_text(yaml.safe_dump(with_changes({"data.dataset": "imagefolder", "data.root": "nowhere",
                                                           "transfer.targets": []})))
    expect_error(ws, ["check-params", "-p", "f.yaml"], "data.root: nowhere does not exist", capsys, monkeypatch)


def test_every_output_file_has_one_mode(ws):
    from vitnas.space import SearchSpace
    from vitnas.stages._io import write_json
    from vitnas.supernet import Supernet

    old = os.umask(0o022)
    try:
        Supernet(SearchSpace.preset("demo")).save(ws / "sn.pt")
        write_json(ws / "m.json", {})
        (ws / "plain.txt").write_text("")
    finally:
        os.umask(old)
    modes = {stat.S_IMODE((ws / n).stat().st_mode) for n in ("sn.pt", "m.json", "plain.txt")}
    assert modes == {0o644}
