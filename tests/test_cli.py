"""The `vitnas` command as users meet it: help, stage commands, one-line errors."""

from __future__ import annotations

import json

import yaml
from _helpers import vitnas_process

run = vitnas_process


def test_help_lists_the_stages():
    r = run("--help")
    assert r.returncode == 0
    for word in ("data", "pipeline", "check-params", "spaces", "arch"):
        assert word in r.stdout
    assert "--out" in run("data", "--help").stdout


def test_help_in_a_log_is_plain_and_whole():
    # not a terminal (a pipe, as in a CI log or a pod's log): no boxes cutting option help at 80 columns
    r = run("pipeline", "compile", "--help")
    assert r.returncode == 0 and "╭" not in r.stdout and "│" not in r.stdout
    assert "MLFLOW_TRACKING_URI" in r.stdout and "PersistentVolumeClaim" in r.stdout
    assert "..." not in r.stdout.replace("torchrun --nproc_per_node N -m vitnas", "")
    assert max(len(line) for line in r.stdout.splitlines()) <= 100


def test_data_command_writes_output_and_bad_params_fail_in_one_line(tmp_path, repo, cli):
    out = tmp_path / "d"
    r = cli("data", "--params", str(repo / "params.yaml"), "--out", str(out), "--no-track")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "dataset.json").read_text())["num_classes"] == 10

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"search": {"params_min": "5M", "params_max": "1M"}}))
    r = cli("data", "--params", str(bad), "--out", str(tmp_path / "never"))
    assert r.returncode == 2
    assert r.stderr.strip() == "error: search.params_max: must be > search.params_min"
    assert not (tmp_path / "never").exists()


def test_arch_and_spaces_tools(tmp_path, cli):
    r = cli("arch", "autoformer-t")
    assert r.returncode == 0 and "params 5.868 M" in r.stdout
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "head_dim": 16,
                             "patch_size": 4, "img_size": 16, "in_chans": 1, "num_classes": 10}))
    assert "params" in cli("arch", str(f)).stdout
    r = cli("arch", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "not found" in r.stderr
    assert "autoformer-tiny" in cli("spaces").stdout
