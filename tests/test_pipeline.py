"""The same stages through Kubeflow (compiled, and run locally via kfp.local) and DVC."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import yaml

from vitnas import tracking
from vitnas.config import parse_params


def test_pipeline_compiles_with_params_as_default(tmp_path):
    from pipelines.vitnas_pipeline import compile_pipeline

    params = parse_params({"data": {"seed": 7}})
    out = compile_pipeline(params, tmp_path / "p.yaml")
    spec = yaml.safe_load(out.read_text())
    default = spec["root"]["inputDefinitions"]["parameters"]["params_json"]["defaultValue"]
    assert parse_params(json.loads(default)) == params
    executors = spec["deploymentSpec"]["executors"]
    assert executors["exec-data-op"]["container"]["image"].startswith("ghcr.io/vitnas/vitnas")
    body = "\n".join(executors["exec-data-op"]["container"]["command"])
    assert "pip install" not in body  # the image already holds vitnas and kfp


def test_pipeline_runs_locally_through_kfp_local(tmp_path, monkeypatch):
    from pipelines.vitnas_pipeline import run_local

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", "kfp-local-test")
    params = parse_params({"tracking": {"experiment": "kfp-local"},
                           "supernet": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128},
                           "space": {"embed_dim": [16, 32], "depth": [1, 2], "num_heads": [1, 2]},
                           "proxy": {"num_candidates": 3, "proxies": ["dss", "params"]},
                           "search": {"population": 4, "parents": 2, "mutations": 2, "crossovers": 2,
                                      "generations": 1},
                           "slim": {"epochs": 1}})
    outputs = run_local(params, tmp_path / "kfp")
    data_dir = Path(outputs["data"])
    meta = json.loads((data_dir / "dataset.json").read_text())
    assert meta["splits"] == {"train": 1293, "val": 144, "test": 360}
    exp = mlflow.get_experiment_by_name("kfp-local")
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="list")
    stages = {r.data.tags.get(tracking.STAGE_TAG): r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "stage"}
    assert set(stages) == {"data", "supernet", "proxy", "search", "slim"}
    assert all(r.data.tags[tracking.PIPELINE_TAG] == "kfp-local-test" for r in stages.values())
    assert stages["data"].data.metrics["val_count"] == 144
    assert 0 <= stages["supernet"].data.metrics["val_acc_largest"] <= 1
    assert (Path(outputs["supernet"]) / "supernet.pt").exists()
    assert len((Path(outputs["proxy"]) / "scores.jsonl").read_text().splitlines()) == 3
    best = json.loads((Path(outputs["search"]) / "best_arch.json").read_text())
    slimmed = json.loads((Path(outputs["slim"]) / "arch.json").read_text())
    assert slimmed["depth"] == best["depth"] and (Path(outputs["slim"]) / "model.safetensors").exists()


def _copy_project(repo: Path, dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (repo / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / f, dest / f)


def test_dvc_repro_of_the_data_stage_in_a_temp_copy(tmp_path, repo):
    _copy_project(repo, tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = [str(Path(sys.executable).parent / "dvc")]
    r = subprocess.run(dvc + ["repro", "data"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((tmp_path / "artifacts/data/dataset.json").read_text())
    assert meta["splits"]["val"] == 144
    metrics = subprocess.run(dvc + ["metrics", "show", "--json"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=True).stdout
    assert '"val_count": 144' in metrics.replace("\n", "").replace("  ", " ") or "144" in metrics
    r = subprocess.run(dvc + ["repro", "data"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "didn't change" in r.stdout  # cached: nothing reruns
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["data"]["seed"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    r = subprocess.run(dvc + ["status", "data"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "modified" in r.stdout and "data" in r.stdout  # a params change invalidates the stage


def test_dockerfile_passes_hadolint(repo):
    hadolint = Path(sys.executable).parent / "hadolint"
    r = subprocess.run([str(hadolint), str(repo / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (repo / "Dockerfile").read_text()
    assert "uv sync --frozen" in text and "USER 10001" in text and "nvidia/cuda" in text
